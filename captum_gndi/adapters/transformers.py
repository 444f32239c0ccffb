"""Intervention points and wrappers for Hugging Face ``transformers`` models.

``transformers`` is never imported here: models are recognised by the module path of their
classes, and transformer layers by structure. A ``ModuleList`` whose every element has both an
attention output projection and an MLP output projection at the paths of one row below is a
list of transformer layers (so task heads and wrappers such as :class:`SentenceEmbedding` need
no extra rule). The points are sublayer outputs *before* the residual addition:

=============================  ==========================  ===================  ==============
family                         attention point             mlp point            norm
=============================  ==========================  ===================  ==============
BERT, RoBERTa, ELECTRA,        ``attention.output.dense``  ``output.dense``     post-LN (ViT:
DeBERTa-v2, ViT (4.x)                                                           pre-LN)
DistilBERT                     ``attention.out_lin``       ``ffn.lin2``         post-LN
GPT-2                          ``attn.c_proj``             ``mlp.c_proj``       pre-LN
Llama, Mistral, Qwen2          ``self_attn.o_proj``        ``mlp.down_proj``    pre-RMSNorm
ViT (transformers 5)           ``attention.o_proj``        ``mlp.fc2``          pre-LN
ALBERT (shared layers)         ``attention.dense``         ``ffn_output``       post-LN
=============================  ==========================  ===================  ==============

Zeroing a point removes that sublayer's contribution: in pre-norm models the residual stream
skips the sublayer exactly; in post-norm models the LayerNorm after the addition still runs on
the stream. Dropout after the projection is the identity in eval mode. ALBERT runs one shared
layer ``num_hidden_layers`` times, so its points are :class:`~captum_gndi.LayerCall` objects,
one per call, named ``"<module path>[call k]"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..interventions import LayerCall
from .generic import (
    KILLS_DOWNSTREAM,
    Point,
    UnsupportedKind,
    is_linear,
    kind_argument,
    leaf_points,
)

__all__ = [
    "ModelLogits",
    "SentenceEmbedding",
    "eager_attention",
    "is_transformers_model",
    "model_logits",
    "sentence_embedding",
    "transformers_points",
]


@dataclass(frozen=True)
class _Rule:
    attention: str
    mlp: str


_RULES = (
    _Rule("attention.output.dense", "output.dense"),  # BERT, RoBERTa, ELECTRA, DeBERTa-v2, ViT 4
    _Rule("attention.out_lin", "ffn.lin2"),  # DistilBERT
    _Rule("attn.c_proj", "mlp.c_proj"),  # GPT-2
    _Rule("self_attn.o_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2
    _Rule("attention.o_proj", "mlp.fc2"),  # ViT in transformers 5
)
_PRE_NORMS = ("layernorm_before", "ln_1", "input_layernorm")


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` contains a module defined in the ``transformers`` package."""
    return any(type(m).__module__.startswith("transformers.") for m in model.modules())


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


@dataclass(frozen=True)
class _Layer:
    name: str
    module: nn.Module
    rule: _Rule


def _layers(model: nn.Module) -> list[_Layer]:
    """Transformer layers, found as ModuleLists whose elements all match one rule."""
    lists: list[str] = []
    layers: list[_Layer] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(outer + ".") for outer in lists):
            continue
        for rule in _RULES:
            if all(_has(m, rule.attention) and _has(m, rule.mlp) for m in module):
                lists.append(name)
                prefix = f"{name}." if name else ""
                layers += [_Layer(prefix + k, m, rule) for k, m in module.named_children()]
                break
    return layers


def _sublayer_meaning(what: str, layer: str, post_norm: bool) -> str:
    tail = "; the LayerNorm after the addition still runs" if post_norm else ""
    return (
        f"zeroing this removes the {what} sublayer of {layer} (the residual stream skips it{tail})"
    )


def _block_meaning(layer: str) -> str:
    return (
        f"zeroing this kills everything downstream (the output of {layer} is the whole "
        "residual stream there)"
    )


def _layer_points(layer: _Layer, wanted: str) -> list[Point]:
    if wanted == "block":
        return [Point(layer.name, layer.module, "block", _block_meaning(layer.name))]
    post_norm = not any(hasattr(layer.module, n) for n in _PRE_NORMS)
    points = []
    for kind, rel, what in (
        ("attention", layer.rule.attention, "attention"),
        ("mlp", layer.rule.mlp, "MLP"),
    ):
        if wanted in (kind, "auto", "branch"):
            meaning = _sublayer_meaning(what, layer.name, post_norm)
            points.append(
                Point(f"{layer.name}.{rel}", layer.module.get_submodule(rel), kind, meaning)
            )
    return points


@dataclass(frozen=True)
class _AlbertCall:
    depth: int  # which of the num_hidden_layers layers this call computes
    groups: str  # dotted name of the albert_layer_groups ModuleList
    group: str  # dotted name of the shared layer group that runs
    call: int  # call index of that group's modules


def _albert_calls(model: nn.Module) -> list[_AlbertCall]:
    """One entry per ALBERT depth, in execution order."""
    calls = []
    for name, module in model.named_modules():
        if type(module).__name__ != "AlbertTransformer" or not hasattr(module, "config"):
            continue
        n_layers = module.config.num_hidden_layers
        n_groups = module.config.num_hidden_groups
        groups = f"{name}.albert_layer_groups" if name else "albert_layer_groups"
        seen = [0] * n_groups
        for depth in range(n_layers):
            group = int(depth / (n_layers / n_groups))  # as in AlbertTransformer.forward
            calls.append(_AlbertCall(depth, groups, f"{groups}.{group}", seen[group]))
            seen[group] += 1
    return calls


def _shared(model: nn.Module, path: str, call: int) -> tuple[str, LayerCall]:
    layer = LayerCall(model.get_submodule(path), call, name=path)
    return f"{path}[call {call}]", layer


def _albert_points(model: nn.Module, wanted: str) -> list[Point]:
    calls = _albert_calls(model)
    if wanted == "conv":
        raise UnsupportedKind("ALBERT has no convolution layers")
    if wanted == "linear":
        groups = {c.groups for c in calls}
        points = []
        for name, module in model.named_modules():
            if name in groups:
                for c in calls:
                    if c.groups == name:
                        points += _albert_linears(model, c)
            elif is_linear(module) and not any(name.startswith(g + ".") for g in groups):
                points.append(Point(name, module, "linear", KILLS_DOWNSTREAM))
        return points
    points = []
    for c in calls:
        group = model.get_submodule(c.group)
        for j, _layer in enumerate(group.albert_layers):
            path = f"{c.group}.albert_layers.{j}"
            label = f"ALBERT layer {c.depth}" + (f".{j}" if len(group.albert_layers) > 1 else "")
            if wanted == "block":
                name, spec = _shared(model, path, c.call)
                points.append(Point(name, spec, "block", _block_meaning(label)))
                continue
            for kind, rel, what in (
                ("attention", "attention.dense", "attention"),
                ("mlp", "ffn_output", "MLP"),
            ):
                if wanted in (kind, "auto", "branch"):
                    name, spec = _shared(model, f"{path}.{rel}", c.call)
                    meaning = _sublayer_meaning(what, label, post_norm=True)
                    points.append(Point(name, spec, kind, meaning))
    return points


def _albert_linears(model: nn.Module, c: _AlbertCall) -> list[Point]:
    group = model.get_submodule(c.group)
    points = []
    for rel, module in group.named_modules():
        if is_linear(module):
            name, spec = _shared(model, f"{c.group}.{rel}", c.call)
            meaning = (
                f"zeroing this changes only a sublayer of ALBERT layer {c.depth}; the residual "
                "stream still carries the signal past it"
            )
            points.append(Point(name, spec, "linear", meaning))
    return points


def transformers_points(
    model: nn.Module, kind: str = "auto", *, granularity: str | None = None
) -> list[Point] | None:
    """Intervention points of a Hugging Face model, or ``None`` for an unknown architecture.

    Args:
        model: A ``transformers`` model, or a module containing one (a task head, a wrapper).
        kind: One of ``captum_gndi.adapters.KINDS``; ``"auto"`` and ``"branch"`` give the
            attention and MLP points of each layer, in forward order.
        granularity: Deprecated name of ``kind`` (kept for one release; warns).

    Returns:
        The points, or ``None`` when no transformer layer list is recognised (the caller
        falls back to the generic walk).

    Raises:
        UnsupportedKind: For ``"conv"`` on a model without convolutions.

    Examples:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
        ...                             num_attention_heads=2, intermediate_size=37))
        >>> [p.name for p in transformers_points(bert, "mlp")]
        ['encoder.layer.0.output.dense', 'encoder.layer.1.output.dense']
    """
    kind = kind_argument(kind, granularity, "transformers_points")
    if _albert_calls(model):
        return _albert_points(model, kind)
    layers = _layers(model)
    if not layers:
        return None
    if kind in ("conv", "linear"):
        contexts = {
            layer.name: (
                f"zeroing this changes only a sublayer of {layer.name}; the residual stream "
                "still carries the signal past it"
            )
            for layer in layers
        }
        points = leaf_points(model, kind, contexts)
        if not points:
            raise UnsupportedKind(
                f"{type(model).__name__} has no {kind} layers"
                + (
                    " (its Conv1D modules are linear layers: use 'linear')"
                    if kind == "conv" and any(type(m).__name__ == "Conv1D" for m in model.modules())
                    else ""
                )
            )
        return points
    return [p for layer in layers for p in _layer_points(layer, kind)]


class SentenceEmbedding(nn.Module):
    """Mean-pooled sentence embedding of a Hugging Face encoder, as a tensor-valued model.

    ``forward(input_ids, attention_mask=None)`` returns the mean of the last hidden state over
    the tokens where ``attention_mask`` is 1 (all tokens without a mask), shape ``(N, D)``: the
    pooling of sentence-transformers models such as all-MiniLM-L6-v2. The encoder is kept as
    ``self.model``, so ``find_layers(wrapper.model)`` returns modules that are submodules of the
    wrapper, and the names of ``find_layers(wrapper)`` are those names prefixed with
    ``"model."``.

    Args:
        model: The encoder (for example a ``BertModel``).
        normalize: L2-normalise the embeddings, as the full all-MiniLM-L6-v2 pipeline
            (Transformer, Pooling, Normalize) does.

    Examples:
        >>> embed = SentenceEmbedding(bert).eval()
        >>> points = find_layers(embed.model, "mlp")
        >>> LayerGNDI(embed, list(points.values())).attribute(ids, additional_forward_args=mask)
    """

    def __init__(self, model: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """Embed a batch of token ids.

        Args:
            input_ids: Token ids, ``(N, T)``.
            attention_mask: 1 for real tokens and 0 for padding, ``(N, T)``.
            **kwargs: Passed on to the encoder (e.g. ``token_type_ids``).

        Returns:
            The pooled embeddings, ``(N, D)``.
        """
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            hidden = output[0]
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled


class ModelLogits(nn.Module):
    """A Hugging Face model whose forward returns ``.logits`` instead of a ``ModelOutput``.

    The model is kept as ``self.model`` (see :class:`SentenceEmbedding` for what that means for
    layer names).

    Args:
        model: A model whose output has a ``logits`` field (a ``...ForSequenceClassification``,
            ``...ForCausalLM``, ``ViTForImageClassification``, ...).
        token_index: For per-token logits ``(N, T, V)``, keep only this position (``-1``: the
            next-token prediction), giving ``(N, V)``; ``None`` keeps all logits.

    Examples:
        >>> clf = ModelLogits(vit_classifier).eval()
        >>> LayerGNDI(clf, find_layers(clf.model)["vit.encoder.layer.0.output.dense"])
    """

    def __init__(self, model: nn.Module, token_index: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.token_index = token_index

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Run the model and return its logits.

        Args:
            *args: Positional inputs of the model (``input_ids``, ``pixel_values``, ...).
            **kwargs: Keyword inputs of the model.

        Returns:
            The logits (at ``token_index`` if one was given).

        Raises:
            ValueError: If ``token_index`` is set and the logits are not ``(N, T, V)``.
        """
        output = self.model(*args, **kwargs)
        logits = getattr(output, "logits", None)
        if logits is None:
            logits = output[0]
        if self.token_index is None:
            return logits
        if logits.dim() != 3:
            raise ValueError(
                f"token_index needs per-token logits (N, T, V); the model returned shape "
                f"{tuple(logits.shape)}. Use model_logits(model) without token_index."
            )
        return logits[:, self.token_index]


def sentence_embedding(model: nn.Module, normalize: bool = False) -> SentenceEmbedding:
    """Wrap an encoder as a model returning attention-masked mean-pooled embeddings ``(N, D)``.

    Args:
        model: A Hugging Face encoder (``BertModel``, ...).
        normalize: L2-normalise the embeddings (the last step of all-MiniLM-L6-v2's pipeline).

    Returns:
        A :class:`SentenceEmbedding` in the encoder's training mode.

    Examples:
        >>> embed = sentence_embedding(AutoModel.from_pretrained(path)).eval()
        >>> vectors = embed(batch["input_ids"], batch["attention_mask"])
    """
    return SentenceEmbedding(model, normalize=normalize).train(model.training)


def model_logits(model: nn.Module, token_index: int | None = None) -> ModelLogits:
    """Wrap a Hugging Face model so that its forward returns ``.logits``.

    Args:
        model: A model whose output has a ``logits`` field.
        token_index: Keep only this sequence position of ``(N, T, V)`` logits (``-1``: next
            token); ``None`` keeps everything.

    Returns:
        A :class:`ModelLogits` in the model's training mode.

    Examples:
        >>> lm = model_logits(gpt2_lm_head_model, token_index=-1).eval()
        >>> LayerGNDI(lm, find_layers(lm.model)["transformer.h.0.mlp.c_proj"]).attribute(
        ...     input_ids, target=next_token_ids)
    """
    return ModelLogits(model, token_index=token_index).train(model.training)


def _is_pretrained(module: nn.Module) -> bool:
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
        for cls in type(module).__mro__
    )


def _can_switch(module: nn.Module) -> bool:
    if not hasattr(module, "set_attn_implementation"):
        return False
    check = getattr(module, "_can_set_attn_implementation", None)
    try:
        return check() if callable(check) else True
    except OSError:  # transformers 4.x reads the model's source file to decide
        return False


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Make attention forward-mode differentiable on CPU for the duration of a ``with`` block.

    PyTorch has no forward-AD formula for the fused CPU kernels of
    ``scaled_dot_product_attention`` (SDPA) or for ``nn.MultiheadAttention``'s fast path, so
    forward-mode G-NDI fails on them (``mode="auto"`` then falls back to reverse mode). Inside
    the block:

    - every Hugging Face ``PreTrainedModel`` in ``model`` that can switch its attention at run
      time is set to ``"eager"`` with ``set_attn_implementation`` and restored afterwards.
      transformers 5 models and the 4.x models written against ``AttentionInterface`` (GPT-2,
      Llama, Mistral, Qwen2, ViT in 4.57) switch; 4.x models that pick an attention class when
      they are built (BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA in 4.57) do not;
    - SDPA is restricted to its math backend (``torch.nn.attention.sdpa_kernel``), which has
      forward AD, so the models that could not switch work too;
    - the ``nn.MultiheadAttention`` fast path (torchvision's ViT) is turned off.

    All three are restored on exit, also after an exception. The numbers are the same up to
    floating-point rounding.

    Args:
        model: The model, or a wrapper containing it.

    Yields:
        The model.

    Examples:
        >>> with eager_attention(model):
        ...     scores = LayerGNDI(model, layers).attribute(ids, mode="forward")
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    switched: list[tuple[nn.Module, str]] = []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        for module in model.modules():
            current = getattr(getattr(module, "config", None), "_attn_implementation", None)
            if _is_pretrained(module) and current not in (None, "eager") and _can_switch(module):
                module.set_attn_implementation("eager")
                switched.append((module, current))
        torch.backends.mha.set_fastpath_enabled(False)
        with sdpa_kernel(SDPBackend.MATH):
            yield model
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, implementation in reversed(switched):
            module.set_attn_implementation(implementation)
