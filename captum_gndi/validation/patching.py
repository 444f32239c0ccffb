"""``validate`` on patching data: criteria against the exact effects of activation patching.

With a :class:`~captum_gndi.tasks.PatchingTask` (or a loader of ``(clean, corrupted, answers)``
batches) and a metric model ``f(input_ids, answers) -> (N, 1)``, the ground truth of a unit is
its exact patching effect ``f(x) - f(x; do(h_u := b_u))``, ``b_u`` its activation on the other
prompt of the pair (:mod:`captum_gndi.interventions.patching`), measured per example as two
damage metrics: ``effect`` (signed; the primary one) and ``abs_effect`` (its absolute value).

The criteria that have a meaning there are computed with the same per-example baselines:

- ``gndi``: the signed first-order effect ``J (h - b)`` (minus attribution patching),
- ``gndi_path``: the same integrated along each unit's own path (``n_steps`` points),
- ``grad_x_activation`` (control): ``|J (h - b)|`` per example, Captum's
  ``LayerGradientXActivation`` with the corrupted activation as baseline,
- ``activation_change`` (control): ``||h - b||_2`` over the unit's elements,
- ``depth`` and ``random`` (controls).

The others are reported as skipped with the reason (:data:`UNDEFINED_ON_PATCHING`): they need
labels and a loss, or score weights, which do not depend on the corrupted prompt, or integrate
from Captum's zero input baseline.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._captum_compat import integration_points
from ..criteria import check_criteria
from ..engine import ScoringJob, capture_activations, compute_effects, signed_effect
from ..interventions.backends import make_backend
from ..interventions.hooks import LayerSpec
from ..interventions.patching import (
    ABS_EFFECT,
    EFFECT,
    PatchedBatch,
    patched_batches,
    unit_effects,
)
from ..interventions.selection import Unit, probe_layers
from ..patching import check_direction, metric_model_and_layers, source_label
from ..runs import Layers, make_runner, resolve_device, resolve_layers, warn_if_training
from ..tasks.core import PatchingTask
from ..units import ChannelDim, unit_index
from .report import ValidationReport, build_report

__all__ = ["PATCHING_CRITERIA", "UNDEFINED_ON_PATCHING", "validate_patching"]

PATCHING_CRITERIA = (
    "gndi",
    "gndi_path",
    "grad_x_activation",
    "activation_change",
    "depth",
    "random",
)
"""The criteria :func:`validate_patching` computes."""

_LABELS = "needs labels and a loss; a patching task has a metric model and answers, not labels"
_WEIGHTS = (
    "scores weights, which do not depend on the corrupted prompt (the patching baseline plays "
    "no part)"
)
UNDEFINED_ON_PATCHING = {
    "snip": _LABELS,
    "grasp": _LABELS,
    "taylor": _LABELS,
    "synflow": _WEIGHTS,
    "magnitude": _WEIGHTS,
    "param_count": _WEIGHTS,
    "hrank": "ranks convolutional feature maps and takes no baseline",
    "layer_conductance": (
        "integrates from Captum's zero input baseline, not the corrupted prompt (gndi_path is "
        "the path-integrated estimate here; LayerGNDI's path='input' is EAP-IG)"
    ),
    "layer_integrated_gradients": (
        "integrates from Captum's zero input baseline, not the corrupted prompt (gndi_path is "
        "the path-integrated estimate here; LayerGNDI's path='input' is EAP-IG)"
    ),
}
"""Criterion -> why it is skipped on patching data."""


def _units(
    named: Mapping[str, LayerSpec],
    depth: Mapping[str, int],
    shapes: Mapping[str, tuple[int, ...]],
    granularity: str,
    channel_dim: ChannelDim,
    n_channels: int | None,
    seed: int,
) -> list[Unit]:
    """Every unit (or a seeded sample of ``n_channels`` per layer), in forward order."""
    rng = np.random.default_rng(seed)
    units: list[Unit] = []
    for name in sorted(named, key=depth.__getitem__):
        if granularity == "layer":
            units.append(Unit(name, depth=depth[name]))
            continue
        count = unit_index("channel", shapes[name], name, channel_dim).n_groups
        ids = range(count)
        if n_channels is not None and n_channels < count:
            ids = sorted(rng.choice(count, size=n_channels, replace=False).tolist())
        units.extend(Unit(name, channel=int(g), depth=depth[name]) for g in ids)
    return units


def _first_order(
    model: nn.Module,
    batches: Sequence[PatchedBatch],
    named: Mapping[str, LayerSpec],
    granularity: str,
    channel_dim: ChannelDim,
    n_steps: int,
) -> dict[str, Tensor]:
    """Per-example signed effects ``(N, n_units_of_layer)`` of G-NDI (or path-integrated)."""
    names, specs = list(named), list(named.values())
    alphas, weights = (
        ((1.0,), (1.0,)) if n_steps == 1 else integration_points(n_steps, "gausslegendre")
    )
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    for position, item in enumerate(batches):
        job = ScoringJob(
            run=make_runner(model, item.batch.inputs, None, None),
            layers=specs,
            labels=names,
            baselines=[item.baselines[name] for name in names],
            channel_dim=channel_dim,
        )
        effects, _ = compute_effects(
            job,
            "auto",
            granularity,  # type: ignore[arg-type]
            alphas,
            weights,
            warn_cost=position == 0,
        )
        for name, effect in zip(names, effects):
            parts[name].append(signed_effect(effect, name).detach().reshape(effect.shape[1], -1))
    return {name: torch.cat(rows, 0) for name, rows in parts.items()}


def _activation_change(
    model: nn.Module,
    batches: Sequence[PatchedBatch],
    named: Mapping[str, LayerSpec],
    granularity: str,
    channel_dim: ChannelDim,
) -> dict[str, Tensor]:
    """Per-example ``||h - b||_2`` over each unit's elements, ``(N, n_units_of_layer)``."""
    names, specs = list(named), list(named.values())
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    for item in batches:
        job = ScoringJob(
            run=make_runner(model, item.batch.inputs, None, None),
            layers=specs,
            labels=names,
            baselines=[None] * len(names),
        )
        _, activations = capture_activations(job)
        for name, h in zip(names, activations):
            squares = (h - item.baselines[name]).double().pow(2).reshape(h.shape[0], -1)
            index = unit_index(granularity, h.shape, name, channel_dim, device=h.device)
            if index.mask is None:
                sums = squares.sum(1, keepdim=True)
            else:
                ids = torch.broadcast_to(index.mask, h.shape).reshape(h.shape[0], -1)
                sums = squares.new_zeros(h.shape[0], index.n_groups).scatter_add_(1, ids, squares)
            parts[name].append(sums.sqrt())
    return {name: torch.cat(rows, 0) for name, rows in parts.items()}


def _columns(per_layer: Mapping[str, Tensor], units: Sequence[Unit]) -> np.ndarray:
    """``(N, U)``: each unit's column of its layer's per-example values."""
    return (
        torch.stack(
            [per_layer[u.layer][:, 0 if u.channel is None else u.channel] for u in units], 1
        )
        .double()
        .cpu()
        .numpy()
    )


def validate_patching(
    model: nn.Module,
    data: PatchingTask | Iterable[Any],
    layers: Layers,
    criteria: Sequence[str] | None = None,
    granularity: str = "layer",
    channel_dim: ChannelDim = 1,
    n_channels: int | None = None,
    direction: str = "noising",
    metric: Callable[[Any, Tensor], Tensor] | None = None,
    n_steps: int = 16,
    n_random: int = 10,
    seed: int = 0,
    engine: str = "auto",
    units_per_pass: int = 8,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    n_boot: int = 2000,
    metadata: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
) -> ValidationReport:
    """Compare criteria with exact patching effects (what ``validate`` does on patching data).

    Args:
        model: The metric model ``f(input_ids, answers) -> (N, 1)``, or the model with
            ``metric``.
        data: A :class:`~captum_gndi.tasks.PatchingTask` or a loader of ``(clean, corrupted,
            answers)`` batches (read once, kept in memory).
        layers: Dict name -> intervention point (e.g. ``find_layers(model, "head")``) or
            dotted names.
        criteria: Criterion names (``None``: all); those not in :data:`PATCHING_CRITERIA` are
            skipped with the reason of :data:`UNDEFINED_ON_PATCHING` (a warning, and the
            report's ``skipped`` metadata).
        granularity: ``"layer"`` or ``"channel"`` (the indices of ``channel_dim``, a tuple for
            position x head; the unit is the row-major flat index).
        channel_dim: The unit dimension(s) for ``"channel"``.
        n_channels: A seeded random sample of this many units per layer (``None``: all).
        direction: ``"noising"`` (run clean, patch corrupted in) or ``"denoising"``.
        metric: ``metric(output, answers)`` with a plain model.
        n_steps: Integration points of ``gndi_path``.
        n_random: Seeds of the random control.
        seed: Seed of the unit sample, the random control and the resampling.
        engine: How the exact patching runs (``"auto"``, ``"suffix"``, ``"hooks"``).
        units_per_pass: Units stacked in one forward pass of the exact patching.
        device: Where to run (default: the model's device).
        max_batches: Use at most this many batches.
        n_boot: Bootstrap resamples per confidence interval.
        metadata: Extra entries for the report's header.
        out_dir: If given, the report is written there.

    Returns:
        The :class:`~captum_gndi.validation.report.ValidationReport` (damage metrics
        ``effect`` and ``abs_effect``).
    """
    check_direction(direction)
    if granularity not in ("layer", "channel"):
        raise ValueError(
            f"granularity must be 'layer' or 'channel' on patching data, got {granularity!r}."
        )
    names = check_criteria(criteria)
    model, layers = metric_model_and_layers(model, layers, metric)
    warn_if_training(model)
    named = resolve_layers(model, layers)
    device = resolve_device(model, device)
    batches = patched_batches(model, data, named, direction, device, max_batches)
    depth, shapes = probe_layers(model, batches[0].batch.inputs, named)
    units = _units(named, depth, shapes, granularity, channel_dim, n_channels, seed)
    by_layer: dict[str, list[int | None]] = {}
    for unit in units:
        by_layer.setdefault(unit.layer, []).append(unit.channel)

    backend = make_backend(model, named, engine)
    effects: dict[str, list[np.ndarray]] = {EFFECT.name: [], ABS_EFFECT.name: []}
    for name, ids in by_layer.items():
        mask = unit_index(granularity, shapes[name], name, channel_dim, device=device).mask
        signed = unit_effects(backend, batches, name, mask, ids, EFFECT, units_per_pass)
        effects[EFFECT.name].append(signed.T.double().cpu().numpy())
        effects[ABS_EFFECT.name].append(signed.abs().T.double().cpu().numpy())
    per_example = {metric: np.concatenate(parts, 1) for metric, parts in effects.items()}

    scores: dict[str, np.ndarray] = {}
    rows: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    first: np.ndarray | None = None
    for criterion in names:
        if criterion in ("gndi", "grad_x_activation"):
            if first is None:
                first = _columns(
                    _first_order(model, batches, named, granularity, channel_dim, 1), units
                )
            rows[criterion] = first if criterion == "gndi" else np.abs(first)
        elif criterion == "gndi_path":
            rows[criterion] = _columns(
                _first_order(model, batches, named, granularity, channel_dim, n_steps), units
            )
        elif criterion == "activation_change":
            rows[criterion] = _columns(
                _activation_change(model, batches, named, granularity, channel_dim), units
            )
        elif criterion == "depth":
            levels = np.asarray([u.depth for u in units], dtype=float)
            scores[criterion] = levels.max() - levels
        elif criterion == "random":
            scores[criterion] = np.stack(
                [np.random.default_rng(seed + i).random(len(units)) for i in range(n_random)]
            )
        else:
            skipped[criterion] = UNDEFINED_ON_PATCHING.get(criterion, "undefined on patching data")
            warnings.warn(f"Skipping {criterion}: {skipped[criterion]}", stacklevel=3)
    scores.update({criterion: values.mean(0) for criterion, values in rows.items()})
    if not scores:
        raise ValueError(f"No criterion is defined on patching data: {skipped}")
    info = {
        **dict(metadata or {}),
        "model": (metadata or {}).get("model", type(model).__name__),
        "n_examples": int(per_example[EFFECT.name].shape[0]),
        "n_units": len(units),
        "granularity": granularity,
        "n_channels": n_channels,
        "baseline": source_label(direction),
        "direction": direction,
        "layers": list(named),
        "n_steps": n_steps,
        "seed": seed,
        "skipped": skipped,
        "engine": backend.name,
    }
    report = build_report(
        units=[u.name for u in units],
        depth=np.asarray([u.depth for u in units], dtype=float),
        damage={metric: values.mean(0) for metric, values in per_example.items()},
        scores=scores,
        damage_per_example=per_example,
        scores_per_example=rows,
        metadata=info,
        n_boot=n_boot,
        seed=seed,
    )
    if out_dir is not None:
        report.save(out_dir)
    return report
