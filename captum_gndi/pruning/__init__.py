"""Structured channel pruning driven by G-NDI (or any other channel criterion).

The workflow::

    layers = find_prunable(model, images[:8])                 # conv/linear outputs to prune
    scores = channel_importance(model, train_loader, layers, "gndi")
    keep = select_channels(scores, sparsity=0.5)              # global ranking by default
    print(pruning_report(model, layers, keep, images[:8]))    # parameters and FLOPs removed
    apply_channel_masks(model, layers, keep)                  # torch.nn.utils.prune masks
    ...
    undo_pruning(model)                                       # exact restore

:func:`sparsity_curve` measures accuracy against sparsity for several criteria (optionally
after a short fine-tune), and :func:`prune_physically` (needs ``torch-pruning``) returns a
physically smaller model with the same channels removed. :class:`GNDIImportance` plugs G-NDI
into Torch-Pruning's own pruners (``tp.pruner.MetaPruner(model, example, GNDIImportance(loader),
iterative_steps=k)``), recomputed on the pruned model at every step.
"""

from __future__ import annotations

from typing import Any

from .evaluate import (
    DEFAULT_SPARSITIES,
    CurvePoint,
    SparsityCurve,
    evaluate_accuracy,
    finetune,
    sparsity_curve,
)
from .flops import PruningReport, count_flops, pruning_report
from .layers import PRUNABLE_TYPES, PrunableLayer, find_prunable
from .masks import ChannelMask, apply_channel_masks, channel_masks, undo_pruning
from .ranking import NORMALIZATIONS, SCOPES, normalize_scores, select_channels
from .scores import CRITERIA, channel_importance

__all__ = [
    "CRITERIA",
    "DEFAULT_SPARSITIES",
    "GNDIImportance",
    "NORMALIZATIONS",
    "PRUNABLE_TYPES",
    "SCOPES",
    "ChannelMask",
    "CurvePoint",
    "PrunableLayer",
    "PruningReport",
    "ScoreImportance",
    "SparsityCurve",
    "apply_channel_masks",
    "channel_importance",
    "channel_masks",
    "count_flops",
    "evaluate_accuracy",
    "find_prunable",
    "finetune",
    "normalize_scores",
    "prune_physically",
    "pruning_report",
    "select_channels",
    "sparsity_curve",
    "undo_pruning",
]

_PHYSICAL = ("prune_physically", "TP_IMPORTANCES")
_IMPORTANCE = ("GNDIImportance", "ScoreImportance")


def __getattr__(name: str) -> Any:
    """Import the Torch-Pruning integration only when it is used (it is an optional extra)."""
    if name in _PHYSICAL:
        from . import physical

        return getattr(physical, name)
    if name in _IMPORTANCE:
        from . import importance

        return getattr(importance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
