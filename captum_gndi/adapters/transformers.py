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
head's output and nothing else. :func:`exclude_padding` keeps padded token positions out of the
intervention (``LayerGNDI.attribute`` applies it when ``forward_kwargs`` holds an
``attention_mask``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..baselines import LayerBaseline, resolve_layer_baseline
from ..interventions import Heads, LayerCall, LayerSpec
from .generic import (
    KILLS_DOWNSTREAM,
    Point,
    UnsupportedKind,
    is_linear,
    kind_argument,
    leaf_points,
)

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
            next-token prediction, at the last real token of each row when an
            ``attention_mask`` is passed, so right-padded batches score no pad position),
            giving ``(N, V)``; ``None`` keeps all logits.

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
        mask = kwargs.get("attention_mask")
        if mask is None or self.token_index != -1:
            return logits[:, self.token_index]
        # the last *real* token of each row (right or left padding), not a pad position
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, -1).max(1).values.clamp_min(0)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]


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


@dataclass(frozen=True, eq=False)
class PaddingExcluded:
    """A layer baseline that leaves padded token positions of a :class:`~captum_gndi.Heads`
    point untouched: the baseline ``spec`` at real tokens and the activation itself at padding.

    Called with the point's activation ``h`` of shape ``(N, T, H, d_head)``, it returns
    ``where(mask, b, h)`` with ``b`` the resolved ``spec``, so ``h - b`` is zero at every padded
    position: intervening on a head sets it to its baseline at real tokens only, and every
    score of a padded position (position x head, units, path-integrated) is exactly 0.

    A mask that is not 2-D (a 4-D mask built by hand) leaves the baseline as it is.

    Attributes:
        spec: The layer baseline at real tokens (see :mod:`captum_gndi.baselines`).
        attention_mask: ``(N, T)``, nonzero for real tokens (Hugging Face's convention).
        label: The layer's name, for error messages.
    """

    spec: LayerBaseline
    attention_mask: Tensor
    label: str = "heads"

    def __call__(self, h: Tensor) -> Tensor:
        """The baseline for activation ``h`` (padded positions: ``h`` itself)."""
        h = h.detach()
        b = resolve_layer_baseline(self.spec, h, self.label)
        mask = self.attention_mask
        if mask.dim() != 2:
            return b  # a 4-D (N, 1, T, S) mask of the model's own: no padding to read off
        if tuple(mask.shape) != tuple(h.shape[:2]):
            raise ValueError(
                f"The attention_mask has shape {tuple(mask.shape)}, but the heads of "
                f"'{self.label}' have {tuple(h.shape[:2])} (batch, positions); give the (N, T) "
                "padding mask that the tokenizer returned with these inputs."
            )
        keep = (mask != 0).to(h.device).reshape(*mask.shape, *([1] * (h.dim() - 2)))
        return torch.where(keep, b, h)


def exclude_padding(
    layers: Sequence[LayerSpec],
    baselines: Sequence[LayerBaseline],
    attention_mask: Tensor | None,
) -> list[LayerBaseline]:
    """Wrap the baselines of :class:`~captum_gndi.Heads` points so padding is not intervened on.

    Token positions where ``attention_mask`` is 0 are no units: the model's own attention masks
    them out as keys, so what happens there reaches a real token only through the readout (the
    padded rows of a last hidden state, for instance). With the wrapped baselines
    (:class:`PaddingExcluded`) ``h - b`` is zero at padded positions, so position x head scores
    there are exactly 0 (not NaN: the effect of an intervention that changes nothing), and a
    head's ``(N, H)`` score is the effect of setting it to its baseline at real tokens only.
    ``LayerGNDI.attribute`` applies this when ``forward_kwargs`` holds an ``attention_mask``;
    other points (modules, :class:`~captum_gndi.LayerCall`) and multi-tensor baselines are
    returned unchanged.

    Args:
        layers: The intervention points.
        baselines: One layer baseline per point.
        attention_mask: ``(N, T)``, nonzero for real tokens; ``None`` changes nothing.

    Returns:
        The baselines, those of ``Heads`` points wrapped.

    Examples:
        >>> specs = exclude_padding(points, [None] * len(points), batch["attention_mask"])
    """
    if attention_mask is None or not isinstance(attention_mask, Tensor):
        return list(baselines)
    return [
        PaddingExcluded(spec, attention_mask, layer.name or "heads")
        if isinstance(layer, Heads) and not isinstance(spec, (tuple, PaddingExcluded))
        else spec
        for layer, spec in zip(layers, baselines)
    ]
