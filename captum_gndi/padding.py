"""Padding exclusion: padded token positions are no units, so they are never intervened on.

:func:`exclude_padding` wraps the layer baselines of every point whose activation is
token-major, ``(N, T, ...)`` like the mask (:class:`~captum_gndi.Heads` points, a
``HookedTransformer``'s raw ``hook_z``, blocks, MLP outputs), in :class:`PaddingExcluded`,
which returns the activation itself at padded positions, so ``h - b`` is zero there.
``LayerGNDI.attribute`` and ``compute_gndi`` apply it when the model's keyword inputs hold an
``attention_mask`` (read by :func:`captum_gndi.model_calls.attention_mask_of`);
``LayerGNDI.attribute`` also finds it in ``additional_forward_args`` by the model's signature
(:func:`attention_mask_argument`) and warns when token ids hold the pad id but no mask reaches
the model (:func:`warn_unmasked_padding`).
This module belongs to the core: it imports only :mod:`captum_gndi.baselines` and
:mod:`captum_gndi.interventions` (``captum_gndi.adapters.exclude_padding`` re-exports it).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .baselines import LayerBaseline, resolve_layer_baseline
from .interventions import Heads, LayerSpec

__all__ = [
    "PaddingExcluded",
    "attention_mask_argument",
    "exclude_padding",
    "warn_unmasked_padding",
]


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
    strict: bool = True

    def __call__(self, h: Tensor) -> Tensor:
        """The baseline for activation ``h`` (padded positions: ``h`` itself)."""
        h = h.detach()
        b = resolve_layer_baseline(self.spec, h, self.label)
        mask = self.attention_mask
        if mask.dim() != 2:
            return b  # a 4-D (N, 1, T, S) mask of the model's own: no padding to read off
        if tuple(mask.shape) != tuple(h.shape[:2]):
            if not self.strict or h.dim() < 2:
                return b  # not token-major (N, T, ...): no padding to keep out
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
    """Wrap the layer baselines so that padded token positions are not intervened on.

    Token positions where ``attention_mask`` is 0 are no units: the model's own attention masks
    them out as keys, so what happens there reaches a real token only through the readout (the
    padded rows of a last hidden state, for instance). With the wrapped baselines
    (:class:`PaddingExcluded`) ``h - b`` is zero at padded positions, so position x head scores
    there are exactly 0 (not NaN: the effect of an intervention that changes nothing), and a
    head's ``(N, H)`` score is the effect of setting it to its baseline at real tokens only.
    ``LayerGNDI.attribute`` applies this when an ``attention_mask`` reaches the model. The rule
    is the same for every point: :class:`~captum_gndi.Heads` points (whose ``(N, T, H, d)``
    view must match the mask, else an error), and modules and
    :class:`~captum_gndi.LayerCall` points whose activation is ``(N, T, ...)`` like the mask
    (other shapes keep their baseline), so a ``HookedTransformer``'s raw ``hook_z`` and a
    bridge's ``Heads`` point score padding alike. Multi-tensor baselines are returned
    unchanged.

    Args:
        layers: The intervention points.
        baselines: One layer baseline per point.
        attention_mask: ``(N, T)``, nonzero for real tokens; ``None`` changes nothing.

    Returns:
        The baselines, wrapped (multi-tensor ones unchanged).

    Examples:
        >>> specs = exclude_padding(points, [None] * len(points), batch["attention_mask"])
    """
    if attention_mask is None or not isinstance(attention_mask, Tensor):
        return list(baselines)
    return [
        spec
        if isinstance(spec, (tuple, PaddingExcluded))
        else PaddingExcluded(spec, attention_mask, layer.name or "heads")
        if isinstance(layer, Heads)
        else PaddingExcluded(spec, attention_mask, "layer", strict=False)
        for layer, spec in zip(layers, baselines)
    ]


def attention_mask_argument(
    forward_func: Any,
    n_inputs: int,
    forward_args: Sequence[Any] | None,
    forward_kwargs: Mapping[str, Any] | None,
) -> Tensor | None:
    """The ``attention_mask`` that reaches the model, however it is passed.

    By keyword (``forward_kwargs``), or the Captum way: Captum calls
    ``forward_func(*inputs, *additional_forward_args)``, so an additional argument is the
    attention mask when the parameter it lands on is named ``attention_mask`` in the signature
    of ``forward_func`` (its ``forward`` for a module; Hugging Face models, or a lambda such as
    ``lambda input_ids, attention_mask: ...``).

    Args:
        forward_func: The model or forward function.
        n_inputs: The number of input tensors (they take the first positional parameters).
        forward_args: Captum's additional forward arguments, as a tuple (or ``None``).
        forward_kwargs: Keyword inputs for the model.

    Returns:
        The mask tensor, or ``None`` if none reaches the model.

    Examples:
        >>> attention_mask_argument(bert, 1, (mask,), None) is mask  # forward(input_ids, mask)
        True
    """
    mask = (forward_kwargs or {}).get("attention_mask")
    if isinstance(mask, Tensor) or not forward_args:
        return mask if isinstance(mask, Tensor) else None
    try:
        signature = inspect.signature(getattr(forward_func, "forward", forward_func))
    except (TypeError, ValueError):
        return None
    positional = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    names = positional[n_inputs : n_inputs + len(forward_args)]
    for name, value in zip(names, forward_args):
        if name == "attention_mask" and isinstance(value, Tensor):
            return value
    return None


def warn_unmasked_padding(model: Any, inputs: Sequence[Tensor], stacklevel: int = 3) -> None:
    """Warn when token ids hold the model's pad id (``config.pad_token_id``) but no attention
    mask reaches the model: padded positions are then attended to and scored like real ones."""
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if not isinstance(pad, int):
        return
    ids = [
        t for t in inputs if isinstance(t, Tensor) and t.dim() == 2 and not t.is_floating_point()
    ]
    if any(bool((t == pad).any()) for t in ids):
        warnings.warn(
            f"The token ids contain the pad id {pad} but no attention_mask reaches the model, so "
            "padded positions are attended to and scored like real tokens. Pass the tokenizer's "
            "mask: forward_kwargs={'attention_mask': mask}, or in additional_forward_args at the "
            "position of the model's attention_mask parameter.",
            stacklevel=stacklevel,
        )
