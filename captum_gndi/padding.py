"""Padding exclusion: padded token positions are no units, so they are never intervened on.

:func:`exclude_padding` wraps the layer baselines of :class:`~captum_gndi.Heads` points in
:class:`PaddingExcluded`, which returns the activation itself at padded positions, so ``h - b``
is zero there. ``LayerGNDI.attribute`` and ``compute_gndi`` apply it when the model's keyword
inputs hold an ``attention_mask`` (read by :func:`captum_gndi.model_calls.attention_mask_of`).
This module belongs to the core: it imports only :mod:`captum_gndi.baselines` and
:mod:`captum_gndi.interventions` (``captum_gndi.adapters.exclude_padding`` re-exports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .baselines import LayerBaseline, resolve_layer_baseline
from .interventions import Heads, LayerSpec

__all__ = ["PaddingExcluded", "exclude_padding"]


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
