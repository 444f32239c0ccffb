"""Exposing torchvision's attention heads: :func:`expose_heads`.

torchvision applies the output projection of ``nn.MultiheadAttention`` and of Swin's attention
*functionally* (``F.multi_head_attention_forward`` and ``shifted_window_attention`` read the
weights), so the projection module never runs and no hook sees its input. Inside
``with expose_heads(model):`` each such module computes its concatenated head outputs with
torchvision's own function (output projection set to the identity, an exact matrix product) and
then *calls* its projection module on them, so a :class:`~captum_gndi.Heads` point on it works.
torchvision is imported only when a model built from it is passed in.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["expose_heads"]


def _identity(projection: nn.Linear) -> Tensor:
    weight = projection.weight
    return torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)


def _mha_forward(
    self: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention.forward`` (its non-fused path) with ``out_proj`` called."""
    is_batched = query.dim() == 3
    if self.batch_first and is_batched:  # as MultiheadAttention.forward: keep the `is` identity
        if key is value:
            if query is key:
                query = key = value = query.transpose(1, 0)
            else:
                query, key = (x.transpose(1, 0) for x in (query, key))
                value = key
        else:
            query, key, value = (x.transpose(1, 0) for x in (query, key, value))
    separate = {}
    if not self._qkv_same_embed_dim:
        separate = dict(
            use_separate_proj_weight=True,
            q_proj_weight=self.q_proj_weight,
            k_proj_weight=self.k_proj_weight,
            v_proj_weight=self.v_proj_weight,
        )
    context, weights = F.multi_head_attention_forward(
        query,
        key,
        value,
        self.embed_dim,
        self.num_heads,
        self.in_proj_weight,
        self.in_proj_bias,
        self.bias_k,
        self.bias_v,
        self.add_zero_attn,
        self.dropout,
        _identity(self.out_proj),  # the concatenated heads, exactly
        None,
        training=self.training,
        key_padding_mask=key_padding_mask,
        need_weights=need_weights,
        attn_mask=attn_mask,
        average_attn_weights=average_attn_weights,
        is_causal=is_causal,
        **separate,
    )
    if not is_batched:  # (L, E): one example
        return self.out_proj(context.unsqueeze(0)).squeeze(0), weights
    output = self.out_proj(context.transpose(0, 1))  # (N, L, E): positions in dimension 1
    return (output if self.batch_first else output.transpose(0, 1)), weights


def _swin_forward(self: nn.Module, x: Tensor) -> Tensor:
    """``ShiftedWindowAttention(V2).forward`` with ``proj`` called on ``(B, H * W, C)``."""
    from torchvision.models import swin_transformer

    context = swin_transformer.shifted_window_attention(
        x,
        self.qkv.weight,
        _identity(self.proj),  # the concatenated heads, exactly
        self.get_relative_position_bias(),
        self.window_size,
        self.num_heads,
        shift_size=self.shift_size,
        attention_dropout=self.attention_dropout,
        dropout=0.0,
        qkv_bias=self.qkv.bias,
        proj_bias=None,
        logit_scale=getattr(self, "logit_scale", None),
        training=self.training,
    )
    # proj acts on each position alone, so it commutes with the window merge, the shift and the
    # crop that shifted_window_attention applies after it
    output = self.proj(context.flatten(1, 2)).unflatten(1, context.shape[1:3])
    return F.dropout(output, p=self.dropout, training=self.training)


def _exposed_forward(module: nn.Module) -> Any:
    if isinstance(module, nn.MultiheadAttention):
        return _mha_forward
    if type(module).__module__.startswith("torchvision."):
        from torchvision.models import swin_transformer

        if isinstance(module, swin_transformer.ShiftedWindowAttention):
            return _swin_forward  # V2 is a subclass
    return None


@contextmanager
def expose_heads(model: nn.Module) -> Iterator[nn.Module]:
    """Make torchvision's attention call its output projection, for :class:`~captum_gndi.Heads`.

    ``nn.MultiheadAttention`` (torchvision's ViT, and any model of your own that uses it) and
    Swin's ``ShiftedWindowAttention`` / ``ShiftedWindowAttentionV2`` apply their output
    projection's weights functionally, so the projection module never runs and a ``Heads``
    point on it (``find_layers(model, "head")``) raises "never called". Inside the block each
    such module computes its concatenated head outputs with PyTorch's / torchvision's own
    function, with the output projection replaced by the identity (an exact matrix product),
    and then calls its projection module on them as ``(N, T, H * d_head)`` (Swin: ``T`` =
    the stage's height x width, row-major, windows merged back and the shift undone; the
    projection is position-wise, so applying it there is the same map). The outputs equal the
    original ones up to the rounding of the projection's matrix product; masks, dropout,
    ``need_weights`` and the returned attention weights behave as before. The fused inference
    fast path of ``nn.MultiheadAttention`` is not used inside the block. Modules are restored on
    exit, also after an exception; nested blocks are fine.

    Args:
        model: The model, or a wrapper containing it.

    Yields:
        The model.

    Examples:
        >>> heads = find_layers(vit, "head")["encoder.layers.encoder_layer_0.self_attention.heads"]
        >>> with expose_heads(vit):
        ...     scores = LayerGNDI(vit, heads).attribute(
        ...         images, target=0, granularity="channel", channel_dim=2)  # (N, H)
    """
    patched: list[tuple[nn.Module, Any]] = []
    try:
        for module in model.modules():
            forward = _exposed_forward(module)
            if forward is None or getattr(module.forward, "__func__", None) is forward:
                continue  # not an attention we know, or already exposed by an outer block
            patched.append((module, module.__dict__.get("forward")))
            module.forward = types.MethodType(forward, module)
        yield model
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
