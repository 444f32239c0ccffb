"""Batched ablation: the damage of ``do(h := b)`` on units, on either back end.

:func:`batch_damage` is the one ablation routine: the per-example damage of a list of units of
one layer on one batch, ``units_per_pass`` of them stacked in one forward pass, on a back end
of :mod:`~captum_gndi.interventions.backends` (hooks on the full forward pass, or the traced
suffix after the layer), with the edit of :mod:`~captum_gndi.interventions.edits` and the
metrics of :mod:`~captum_gndi.interventions.damage`. Two clients call it:
:func:`ablate` (every unit and every example over a data set, the validation harness's ground
truth; group units go to Captum's ``LayerFeatureAblation``, :mod:`~captum_gndi.interventions.lfa`)
and :func:`captum_gndi.verify_top_k` (the units its stopping rule asks for, averaged over the
data). :func:`intervened_output` is the model's output under one intervention.

The baseline is resolved against the clean activation of each batch
(:func:`captum_gndi.baselines.resolve_layer_baseline`): zero, a number, the data-set mean, a
tensor (one row per example is allowed) or a callable of the activation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..baselines import LayerBaseline, resolve_layer_baseline
from ..model_calls import call_model
from ..runs import (
    Layers,
    baseline_label,
    first_batch,
    iterate_batches,
    make_runner,
    resolve_device,
    resolve_layers,
    warn_if_training,
)
from ..scoring import layer_baselines
from ..units import LayerMask, batch_mask, check_mask_rows, full_dims, group_count, unit_index
from .backends import CleanBatch, HookBackend, make_backend
from .damage import LABELLED_DEFAULT, Damage, DamageMetric, resolve_damage
from .edits import set_units
from .hooks import LayerSpec, intervene
from .lfa import group_damage
from .model_state import preserve_model
from .selection import Unit, group_masks, probe_layers, select_units

__all__ = ["AblationResult", "ablate", "batch_damage", "intervened_output"]


def batch_damage(
    backend: HookBackend,
    name: str,
    index: int,
    batch: CleanBatch,
    baseline: LayerBaseline,
    mask: Tensor | None,
    ids: Sequence[int | None],
    metrics: Mapping[str, DamageMetric],
    units_per_pass: int = 1,
) -> dict[str, Tensor]:
    """Per-example damage ``(U, N)`` of setting each unit ``ids[j]`` of layer ``name`` to ``b``.

    Args:
        backend: Where the interventions run (hooks or the traced suffix).
        name: The layer.
        index: The batch's position in the data (the suffix back end's cache key).
        batch: The batch and its clean output.
        baseline: The layer baseline, resolved against the batch's clean activation.
        mask: Unit ids broadcastable to the activation (channels from
            :func:`captum_gndi.units.unit_index`, or a ``layer_mask``), or ``None`` for the
            whole layer.
        ids: The units' ids in ``mask`` (``[None]`` for the whole layer).
        metrics: Name -> damage metric.
        units_per_pass: At most this many units per forward pass.

    Returns:
        Metric name -> ``(len(ids), N)`` per-example damage.
    """
    n = batch.clean.shape[0]
    limit = backend.max_copies(name, index, batch)
    step = units_per_pass if limit is None else min(units_per_pass, limit)
    parts: dict[str, list[Tensor]] = {m: [] for m in metrics}
    for start in range(0, len(ids), step):
        chunk = list(ids[start : start + step])

        def edit(h: Tensor, chunk: list[int | None] = chunk) -> Tensor:
            return set_units(h, resolve_layer_baseline(baseline, h, name), mask, chunk)

        out = backend.outputs(name, index, batch, edit, len(chunk)).reshape(len(chunk), n, -1)
        for metric_name, metric in metrics.items():
            parts[metric_name].append(metric(batch.clean, out, batch.labels))
    return {m: torch.cat(values, 0) for m, values in parts.items()}


def intervened_output(
    model: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    layer: LayerSpec,
    baseline: LayerBaseline = None,
    channel: int | None = None,
    channel_dim: int = 1,
    layer_mask: Tensor | None = None,
    group: int | None = None,
) -> Tensor:
    """The model's output under ``do(h := b)`` on one layer, one channel or one group of it.

    Args:
        model: The model (any module whose forward takes ``*inputs``).
        inputs: A tensor or a tuple of input tensors.
        layer: The module (or :class:`~captum_gndi.LayerCall`) to intervene on.
        baseline: The layer baseline (see :mod:`captum_gndi.baselines`); ``None`` is zero.
        channel: Intervene on this channel only (``None``: the whole layer).
        channel_dim: Activation dimension holding channels.
        layer_mask: With ``group``: an integer mask broadcastable to the activation (batch
            dimension 1 or the batch size), Captum's ``LayerFeatureAblation`` semantics.
        group: Intervene on the elements where ``layer_mask == group`` only.

    Returns:
        The model output, computed without gradients.

    Raises:
        ValueError: For ``group`` without ``layer_mask`` (or with ``channel``), a channel or
            group the activation does not have, or a mask the engine rejects
            (:func:`captum_gndi.units.check_layer_mask`).

    Examples:
        >>> y = intervened_output(model, x, model.layer1[0].bn2)  # skip the first block's branch
        >>> y_c = intervened_output(model, x, model.conv1, channel=3)  # zero channel 3
        >>> mask = torch.tensor([0, 0, 1, 1]).reshape(1, 4, 1, 1)
        >>> y_g = intervened_output(model, x, model.conv1, layer_mask=mask, group=1)  # 2 and 3
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if (group is not None or layer_mask is not None) and (
        group is None or layer_mask is None or channel is not None
    ):
        raise ValueError("A group intervention needs both layer_mask and group (and no channel).")

    def edit(_: int, h: Tensor) -> Tensor:
        b = resolve_layer_baseline(baseline, h, "layer")
        if layer_mask is not None:
            n_groups = group_count(layer_mask, h.shape, "layer")
            if not 0 <= group < n_groups:  # type: ignore[operator]
                raise ValueError(
                    f"group={group} is not a group id of the layer_mask (0..{n_groups - 1})."
                )
            mask = full_dims(layer_mask, h.dim())
            if mask.shape[0] not in (1, h.shape[0]):
                raise ValueError(
                    f"layer_mask has batch dimension {mask.shape[0]}; give 1 or the batch size "
                    f"{h.shape[0]} (Captum's LayerFeatureAblation convention)."
                )
            return set_units(h, b, mask, [group])
        if channel is None:
            return set_units(h, b, None, [None])
        channels = unit_index("channel", h.shape, "layer", channel_dim)
        if not 0 <= channel < channels.n_groups:
            raise ValueError(
                f"channel={channel} is not a channel of the activation "
                f"(0..{channels.n_groups - 1})."
            )
        return set_units(h, b, channels.mask, [channel])

    with torch.no_grad(), intervene([layer], edit):
        return call_model(model, inputs)


@dataclass
class AblationResult:
    """Damage of true interventions, per unit and per example.

    Attributes:
        units: The units, in the column order of every array.
        damage: Metric -> mean damage per unit, shape ``(U,)``.
        damage_per_example: Metric -> damage per example and unit, shape ``(N, U)``.
        clean: Clean accuracy and mean cross-entropy (when a label-based metric was asked for).
        n_examples: Number of examples ``N``.
        settings: The options used.
    """

    units: list[Unit]
    damage: dict[str, np.ndarray]
    damage_per_example: dict[str, np.ndarray]
    clean: dict[str, float]
    n_examples: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Unit names, in column order."""
        return [unit.name for unit in self.units]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of the mean damage per unit."""
        return {
            "n_examples": self.n_examples,
            "clean": dict(self.clean),
            "settings": dict(self.settings),
            "units": {
                unit.name: {metric: float(v[i]) for metric, v in self.damage.items()}
                for i, unit in enumerate(self.units)
            },
        }


@preserve_model
def ablate(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    damage: Damage | Sequence[Damage] = LABELLED_DEFAULT,
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    granularity: str = "layer",
    n_channels: int | None = None,
    seed: int = 0,
    units: Sequence[Unit] | None = None,
    channel_dim: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    layer_mask: LayerMask | None = None,
    engine: str = "hooks",
    units_per_pass: int = 1,
) -> AblationResult:
    """Measure the damage of ``do(h := b)`` on every unit, over a data set.

    For each batch the model runs once cleanly and once per unit with the unit's activation
    replaced by its baseline (the whole layer, or one channel along ``channel_dim``), through
    :func:`batch_damage` on the back end ``engine`` asks for. Group units (a ``layer_mask``) are
    ablated by Captum's ``LayerFeatureAblation`` with the same mask and the same baseline (see
    :mod:`captum_gndi.interventions.lfa`).

    Args:
        model: The model; its output must be ``(N, K)`` (logits, or an embedding).
        data: A DataLoader (or iterable) of ``(inputs, labels)``, ``((inputs...), labels)`` or
            unlabelled input tensors.
        layers: Dict name -> module (e.g. from ``captum_gndi.adapters.find_layers``) or a list
            of dotted names.
        damage: Metrics among :data:`~captum_gndi.interventions.damage.DAMAGE_METRICS`, or
            callables ``damage(clean_out, intervened_out, labels) -> (N,)``.
        baseline: ``"zero"``, ``"mean"``, a number, or a dict name -> layer baseline.
        granularity: ``"layer"``, ``"channel"`` or ``"group"`` (ignored when ``units`` is
            given; ``"group"`` is implied by ``layer_mask``).
        n_channels: Random sample size of channels or groups (see :func:`select_units`).
        seed: Seed of the channel sample.
        units: Precomputed units (from :func:`select_units`); overrides the three options above.
        channel_dim: Activation dimension holding channels.
        device: Where to run (default: the model's device); batches are moved there.
        progress: Show a progress bar.
        max_batches: Stop after this many batches.
        layer_mask: Groups (one mask for every layer, or a dict name -> mask; see
            :func:`select_units`); needed for group units.
        engine: How layer and channel units run (:func:`~captum_gndi.interventions.backends.
            make_backend`): ``"hooks"`` (default: full forward passes), ``"suffix"`` or
            ``"auto"``.
        units_per_pass: Units of one layer stacked in one forward pass (1: one pass each).

    Returns:
        An :class:`AblationResult` with mean and per-example damage.

    Raises:
        ValueError: For unknown metrics, label-based metrics on unlabelled data, group units
            without a ``layer_mask``, or a mask the engine rejects.

    Examples:
        >>> result = ablate(model, test_loader, find_layers(model, "branch"))
        >>> dict(zip(result.names, result.damage["accuracy_drop"]))
        >>> heads = torch.arange(4).reshape(1, 1, 4, 1)  # (N, T, H, d): one group per head
        >>> result = ablate(model, loader, {"attn": Heads(proj, 4)}, layer_mask=heads)
    """
    warn_if_training(model)
    named = resolve_layers(model, layers)
    device = resolve_device(model, device)
    if units is None:
        units = select_units(
            model, data, named, granularity, n_channels, seed, channel_dim, device, layer_mask
        )
    units = list(units)
    unknown = sorted({u.layer for u in units} - set(named))
    if unknown:
        raise ValueError(f"Units refer to layers {unknown} that are not in `layers`.")
    masks, _ = group_masks(model, data, named, units, layer_mask, device)
    grouped = list(masks)
    specs = layer_baselines(model, data, named, baseline, device, progress, max_batches)
    has_labels = first_batch(data, device)[1] is not None
    metrics = resolve_damage(damage, has_labels, aliases=False)
    labelled = any(m.needs_labels for m in metrics.values())
    plan: dict[tuple[str, bool], list[int]] = {}  # (layer, per channel) -> unit positions
    for i, unit in enumerate(units):
        if unit.group is None:
            plan.setdefault((unit.layer, unit.channel is not None), []).append(i)
    channel_layers = {name: named[name] for name, per_channel in plan if per_channel}
    _, shapes = probe_layers(model, first_batch(data, device)[0], channel_layers)
    channel_masks = {
        name: unit_index("channel", shapes[name], name, channel_dim, device=device).mask
        for name in channel_layers
    }
    backend = make_backend(model, named, engine)

    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    bar = tqdm(
        total=None if total is None else total * len(units), desc="ablation", disable=not progress
    )
    per_example: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    clean_correct, clean_loss, n = 0.0, 0.0, 0
    ground_truth: dict[str, str] = {}
    for index, (inputs, labels) in enumerate(
        iterate_batches(data, device, max_batches, False, "ablation")
    ):
        run = make_runner(model, inputs, None, None)
        with torch.no_grad():
            clean = run()
        batch = CleanBatch(inputs, labels, clean)
        columns: dict[str, list[Tensor | None]] = {m: [None] * len(units) for m in metrics}
        for (name, per_channel), positions in plan.items():
            damages = batch_damage(
                backend, name, index, batch, specs[name],
                channel_masks[name] if per_channel else None,
                [units[i].channel for i in positions], metrics, units_per_pass,
            )  # fmt: skip
            for metric, values in damages.items():
                for j, i in enumerate(positions):
                    columns[metric][i] = values[j]
            bar.update(len(positions))
        if grouped:
            rows = {name: batch_mask(masks[name], n, inputs[0].shape[0], name) for name in grouped}
            for name in grouped:
                picked = [(i, u.group) for i, u in enumerate(units) if u.layer == name]
                damages, how = group_damage(
                    model, inputs, labels, clean, named[name], name, specs[name], rows[name],
                    [g for _, g in picked], metrics, run,
                )  # fmt: skip
                ground_truth[name] = how
                for metric in metrics:
                    for column, (i, _) in enumerate(picked):
                        columns[metric][i] = damages[metric][:, column]
                bar.update(len(picked))
        for metric in metrics:
            stacked_columns = torch.stack(columns[metric], 1)  # type: ignore[arg-type]
            per_example[metric].append(stacked_columns.double().cpu().numpy())
        if labelled:
            clean_correct += float((clean.argmax(1) == labels).sum())
            clean_loss += float(F.cross_entropy(clean, labels, reduction="sum"))
        n += inputs[0].shape[0]
    bar.close()
    check_mask_rows(masks, n)
    stacked = {m: np.concatenate(parts, 0) for m, parts in per_example.items()}
    clean_stats = {"accuracy": clean_correct / n, "loss": clean_loss / n} if labelled else {}
    settings: dict[str, Any] = {
        "baseline": baseline_label(baseline),
        "granularity": _units_granularity(units),
        "channel_dim": channel_dim,
    }
    if engine != "hooks":
        settings["engine"] = backend.name
    if ground_truth:
        settings["ground_truth"] = ground_truth
    return AblationResult(
        units=units,
        damage={m: v.mean(0) for m, v in stacked.items()},
        damage_per_example=stacked,
        clean=clean_stats,
        n_examples=n,
        settings=settings,
    )


def _units_granularity(units: Sequence[Unit]) -> str:
    """``"group"``, ``"channel"`` or ``"layer"``: the finest kind of unit in ``units``."""
    if any(u.group is not None for u in units):
        return "group"
    return "channel" if any(u.channel is not None for u in units) else "layer"
