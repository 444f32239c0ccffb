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

``kind="head"`` gives one :class:`~captum_gndi.Heads` point per attention layer, named
``"<attention module>.heads"`` (``"...attention.heads[call k]"`` for ALBERT): the *input* of the
attention output projection of the table (the concatenated head outputs), seen as ``(N, T, H,
d_head)`` with ``H`` read from the attention module (``num_attention_heads``, ``num_heads``,
``n_heads``, ``n_head``) or from its config. Setting head ``h`` there to its baseline changes that
head's output and nothing else.

This module finds the points. The other Hugging Face concepts live one per module and are
re-exported here under their old names: the output wrappers (:mod:`.hf_outputs`:
:func:`sentence_embedding`, :func:`model_logits`), the attention-backend switch
(:mod:`.hf_attention`: :func:`eager_attention`) and padding exclusion, which the core applies
(:mod:`captum_gndi.padding`: :func:`exclude_padding` keeps padded token positions out of the
intervention; ``LayerGNDI.attribute`` applies it when ``forward_kwargs`` holds an
``attention_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..interventions import Heads, LayerCall
from ..padding import PaddingExcluded, exclude_padding
from .generic import (
    KILLS_DOWNSTREAM,
    Point,
    UnsupportedKind,
    is_linear,
    kind_argument,
    leaf_points,
)
from .hf_attention import eager_attention
from .hf_outputs import ModelLogits, SentenceEmbedding, model_logits, sentence_embedding

__all__ = [
    "HEAD_COUNT_ATTRIBUTES",
    "ModelLogits",
    "PaddingExcluded",
    "SentenceEmbedding",
    "eager_attention",
    "exclude_padding",
    "head_count",
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

HEAD_COUNT_ATTRIBUTES = ("num_attention_heads", "num_heads", "n_heads", "n_head")
"""Attributes (of an attention module, its submodules or a config) that hold the head count."""


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


def head_count(attention: nn.Module, model: nn.Module | None = None) -> int:
    """The number of heads of an attention module, from its attributes or its config.

    Looks for :data:`HEAD_COUNT_ATTRIBUTES` on ``attention`` and its submodules (BERT's
    ``attention.self.num_attention_heads``, GPT-2's ``attn.num_heads``, DistilBERT's
    ``n_heads``, torchvision's ``num_heads``), then on the ``config`` of ``attention`` or of the
    first module of ``model`` that has one (Llama, Mistral and Qwen2 keep it only there;
    ``num_key_value_heads`` is never used: the output projection sees all query heads).

    Args:
        attention: The attention module.
        model: The model, searched for a config when ``attention`` has none.

    Returns:
        The head count.

    Raises:
        UnsupportedKind: When no head count is found.

    Examples:
        >>> head_count(gpt2.transformer.h[0].attn)
        12
    """
    for module in attention.modules():
        for attribute in HEAD_COUNT_ATTRIBUTES:
            value = getattr(module, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    holders = [attention, *(model.modules() if model is not None else ())]
    for holder in holders:
        config = getattr(holder, "config", None)
        for attribute in HEAD_COUNT_ATTRIBUTES:
            value = getattr(config, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    raise UnsupportedKind(
        f"the number of heads of {type(attention).__name__} is not known (no "
        f"{'/'.join(HEAD_COUNT_ATTRIBUTES)} attribute or config field); build the point "
        "yourself with captum_gndi.Heads(projection, n_heads)"
    )


def _head_meaning(layer: str, projection: str) -> str:
    return (
        f"setting head h of {layer} to its baseline changes that head's output only (heads: "
        f"the input of {projection} as (N, T, H, d_head))"
    )


def _head_point(model: nn.Module, layer: _Layer) -> Point:
    projection = layer.rule.attention
    attention = projection.split(".")[0]
    n_heads = head_count(layer.module.get_submodule(attention), model)
    name = f"{layer.name}.{attention}.heads"
    heads = Heads(layer.module.get_submodule(projection), n_heads, name=name)
    return Point(name, heads, "head", _head_meaning(layer.name, f"{layer.name}.{projection}"))


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
            if wanted == "head":
                name = f"{path}.attention.heads[call {c.call}]"
                n_heads = head_count(model.get_submodule(f"{path}.attention"), model)
                projection = model.get_submodule(f"{path}.attention.dense")
                heads = Heads(projection, n_heads, call_index=c.call, name=name)
                meaning = _head_meaning(label, f"{path}.attention.dense[call {c.call}]")
                points.append(Point(name, heads, "head", meaning))
                continue
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
            attention and MLP points of each layer, in forward order; ``"head"`` one
            :class:`~captum_gndi.Heads` point per attention layer.
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
    if kind == "head":
        return [_head_point(model, layer) for layer in layers]
    return [p for layer in layers for p in _layer_points(layer, kind)]
