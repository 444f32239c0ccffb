"""Physically smaller models through Torch-Pruning, with any channel scores as its importance.

Optional: needs ``torch-pruning`` (``pip install captum_gndi[pruning]``). Torch-Pruning removes
the pruned channels from the convolution, its BatchNorm and every layer that consumes them, so
the result is a smaller dense model. With channel scores, exactly the channels
:func:`~captum_gndi.pruning.select_channels` drops are removed (with their coupled channels), the
same ones the masks of :func:`~captum_gndi.pruning.apply_channel_masks` zero; with Torch-Pruning's
own importances its ``MetaPruner`` chooses, among the layers passed as prunable only (every other
conv/linear is handed to it as ignored).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

try:
    import torch_pruning as tp
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "Physical pruning needs Torch-Pruning: pip install captum_gndi[pruning] "
        "(or pip install torch-pruning). Channel masks (apply_channel_masks) work without it."
    ) from error

from ..runs import iterate_batches
from .coupling import remove_channels
from .layers import PRUNABLE_TYPES, PrunableLayer, as_inputs
from .ranking import check_sparsity, select_channels

__all__ = ["TP_IMPORTANCES", "prune_physically"]

TP_IMPORTANCES = ("tp-magnitude", "tp-taylor")
"""Torch-Pruning's own importances accepted by :func:`prune_physically` by name."""


def _accumulate_gradients(model: nn.Module, data: Iterable[Any], max_batches: int) -> None:
    device = next(model.parameters()).device
    model.eval()
    for inputs, labels in iterate_batches(data, device, max_batches, False, "Taylor gradients"):
        if labels is None:
            raise ValueError("tp-taylor needs batches of (inputs, labels) to compute the loss.")
        F.cross_entropy(model(*inputs), labels).backward()


def prune_physically(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    layers: Sequence[PrunableLayer],
    importance: str | Mapping[str, Tensor],
    sparsity: float,
    *,
    global_pruning: bool = True,
    data: Iterable[Any] | None = None,
    max_batches: int = 4,
) -> nn.Module:
    """Remove the least important channels of ``layers`` from a copy of ``model``.

    Args:
        model: The model (left unchanged; a pruned deep copy is returned).
        example_inputs: One batch of inputs, for Torch-Pruning's dependency graph.
        layers: The prunable layers (from :func:`~captum_gndi.pruning.find_prunable`); every
            other conv/linear is kept whole.
        importance: Layer name -> ``(C,)`` channel scores (e.g. from
            :func:`~captum_gndi.pruning.channel_importance` with ``"gndi"``), or the name of a
            Torch-Pruning importance: ``"tp-magnitude"`` (group L2 norm of the weights) or
            ``"tp-taylor"`` (group first-order Taylor, gradients from ``data``).
        sparsity: Fraction of the channels of ``layers`` to remove, in [0, 1).
        global_pruning: One ranking over all layers (``True``) or the same fraction per layer.
        data: Batches of ``(inputs, labels)``, needed for ``"tp-taylor"``.
        max_batches: Batches of ``data`` used for the Taylor gradients.

    Returns:
        The physically pruned copy, in eval mode.

    Raises:
        ValueError: For an unknown importance name, a sparsity outside [0, 1), or
            ``"tp-taylor"`` without data.

    Examples:
        >>> small = prune_physically(model, images[:8], layers, gndi_scores, 0.5)
        >>> sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
        True
    """
    sparsity = check_sparsity(sparsity)
    inputs = as_inputs(example_inputs)
    if not isinstance(importance, str):
        missing = sorted({layer.name for layer in layers} - set(importance))
        if missing:
            raise ValueError(f"importance has no scores for layers {missing}.")
        scope = "global" if global_pruning else "layer"
        keep = select_channels({la.name: importance[la.name] for la in layers}, sparsity, scope)
        return remove_channels(model, inputs, [layer.name for layer in layers], keep)
    pruned = copy.deepcopy(model).eval()
    names = {layer.name for layer in layers}
    ignored = [
        m for n, m in pruned.named_modules() if isinstance(m, PRUNABLE_TYPES) and n not in names
    ]
    if importance == "tp-magnitude":
        scorer: tp.importance.Importance = tp.importance.GroupMagnitudeImportance(p=2)
    elif importance == "tp-taylor":
        if data is None:
            raise ValueError("importance='tp-taylor' needs data=(inputs, labels) batches.")
        _accumulate_gradients(pruned, data, max_batches)
        scorer = tp.importance.GroupTaylorImportance()
    else:
        raise ValueError(
            f"importance must be layer name -> scores or one of {TP_IMPORTANCES}, "
            f"got {importance!r}."
        )
    pruner = tp.pruner.MetaPruner(
        pruned,
        inputs if len(inputs) > 1 else inputs[0],
        importance=scorer,
        global_pruning=global_pruning,
        pruning_ratio=sparsity,
        ignored_layers=ignored,
    )
    pruner.step()
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()
