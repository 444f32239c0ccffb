"""From per-channel importance scores to keep masks at a target sparsity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

__all__ = ["NORMALIZATIONS", "SCOPES", "normalize_scores", "select_channels"]

Normalization = Literal["none", "l1", "l2", "max"]
Scope = Literal["global", "layer"]
NORMALIZATIONS = ("none", "l1", "l2", "max")
SCOPES = ("global", "layer")


def check_sparsity(sparsity: float) -> float:
    """Validate a channel sparsity: a number in [0, 1)."""
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float))
        or not 0 <= sparsity < 1
    ):
        raise ValueError(
            f"sparsity must be a fraction of channels in [0, 1) (e.g. 0.5 prunes half), got "
            f"{sparsity!r}."
        )
    return float(sparsity)


def normalize_scores(scores: Tensor, normalize: Normalization) -> Tensor:
    """Rescale one layer's channel scores.

    Args:
        scores: ``(C,)`` non-negative scores of one layer.
        normalize: ``"none"``, ``"l1"`` (divide by the sum of absolute values), ``"l2"`` (by the
            Euclidean norm) or ``"max"`` (by the largest absolute value). An all-zero layer stays
            zero.

    Returns:
        The rescaled ``(C,)`` float64 scores.

    Examples:
        >>> normalize_scores(torch.tensor([1.0, 3.0]), "l1")
        tensor([0.2500, 0.7500], dtype=torch.float64)
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}.")
    scores = scores.detach().to(torch.float64).cpu()
    if normalize == "none":
        return scores
    ord_ = {"l1": 1, "l2": 2, "max": float("inf")}[normalize]
    scale = torch.linalg.vector_norm(scores, ord=ord_)
    return scores / scale if scale > 0 else scores


def select_channels(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scope: Scope = "global",
    normalize: Normalization = "none",
    min_keep: int = 1,
) -> dict[str, Tensor]:
    """Choose the channels to keep: the least important ones are pruned.

    Args:
        scores: Layer name -> ``(C,)`` channel importance (higher = more important).
        sparsity: Fraction of channels to prune, in [0, 1). With ``scope="global"`` this is the
            fraction of all channels of all layers, rounded to the nearest channel; with
            ``scope="layer"`` each layer loses ``round(sparsity * C)`` channels.
        scope: ``"global"`` (one ranking over all layers, after per-layer normalisation) or
            ``"layer"`` (each layer ranked on its own; normalisation does not matter then).
        normalize: Per-layer normalisation before a global ranking: ``"none"``, ``"l1"``,
            ``"l2"`` or ``"max"`` (see :func:`normalize_scores`).
        min_keep: Channels every layer keeps at least (a layer with no channel left
            disconnects the network; Torch-Pruning cannot remove all channels of a layer).

    Returns:
        Layer name -> bool tensor ``(C,)``, ``True`` for kept channels. Ties are broken by layer
        order, then channel index (the first channel is pruned first).

    Raises:
        ValueError: For a sparsity outside [0, 1), an unknown scope or normalisation, empty,
            non-1-D or non-finite scores.

    Examples:
        >>> keep = select_channels({"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([2.0])}, 0.34)
        >>> keep["a"].tolist(), keep["b"].tolist()
        ([True, False], [True])
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    if not scores:
        raise ValueError("scores is empty; pass layer name -> (C,) channel scores.")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}.")
    normalized = {}
    for name, layer_scores in scores.items():
        if not isinstance(layer_scores, Tensor) or layer_scores.dim() != 1 or not len(layer_scores):
            raise ValueError(f"scores['{name}'] must be a non-empty 1-D tensor of channel scores.")
        if not torch.isfinite(layer_scores).all():
            raise ValueError(
                f"scores['{name}'] contains NaN or inf; check the criterion's computation."
            )
        normalized[name] = normalize_scores(layer_scores, normalize)
    keep = {name: torch.ones(len(s), dtype=torch.bool) for name, s in normalized.items()}
    if scope == "layer":
        for name, s in normalized.items():
            n_prune = min(round(sparsity * len(s)), max(len(s) - min_keep, 0))
            keep[name][torch.argsort(s, stable=True)[:n_prune]] = False
        return keep
    names = list(normalized)
    flat = torch.cat([normalized[n] for n in names])
    owner = torch.cat([torch.full((len(normalized[n]),), i) for i, n in enumerate(names)])
    index = torch.cat([torch.arange(len(normalized[n])) for n in names])
    budget = round(sparsity * len(flat))
    left = {n: len(normalized[n]) for n in names}
    for position in torch.argsort(flat, stable=True).tolist():
        if budget == 0:
            break
        name = names[int(owner[position])]
        if left[name] <= min_keep:
            continue
        keep[name][index[position]] = False
        left[name] -= 1
        budget -= 1
    return keep
