"""``validate``: ablate every unit, score it with every criterion, compare, report.

Units are whole layers, channels, or the groups of a ``layer_mask`` (Captum's
``LayerFeatureAblation`` semantics; the ground truth of a group is Captum's
``LayerFeatureAblation`` itself, see :mod:`captum_gndi.interventions.lfa`). The ablation, the
damage metrics and the default metrics (``LABELLED_DEFAULT`` / ``UNLABELLED_DEFAULT`` of
:mod:`captum_gndi.interventions.damage`) are those of :mod:`captum_gndi.interventions`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..baselines import LayerBaseline
from ..criteria import (
    CriterionSettings,
    UndefinedCriterion,
    build_context,
    check_criteria,
    score_each,
)
from ..criteria.groups import LayerMask
from ..interventions.damage import LABELLED_DEFAULT, UNLABELLED_DEFAULT
from ..interventions.model_state import preserve_model
from ..patching import is_patching_data
from ..runs import DataTarget, Layers, first_batch, resolve_device, resolve_layers
from .ablation import ablate, layer_baselines, select_units
from .patching import validate_patching
from .report import ValidationReport, build_report

__all__ = ["validate"]


@preserve_model
def validate(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    criteria: Sequence[str] | None = None,
    damage: Sequence[str] | None = None,
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    granularity: str = "layer",
    n_channels: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    out_dir: str | Path | None = None,
    target: DataTarget = "label",
    n_steps: int = 16,
    n_random: int = 10,
    channel_dim: int = 1,
    n_boot: int = 2000,
    metadata: Mapping[str, Any] | None = None,
    methods: Sequence[str] | None = None,
    layer_mask: LayerMask | None = None,
    direction: str = "noising",
    metric: Callable[[Any, Tensor], Tensor] | None = None,
    gndi_target: DataTarget = None,
    norm: str | float = "l2",
    n_probes: int | None = None,
) -> ValidationReport:
    """Check how well importance criteria predict the damage of true interventions.

    Runs :func:`~captum_gndi.interventions.ablation.ablate` (the damage of ``do(h := b)`` on every
    unit), :func:`~captum_gndi.criteria.score_criteria` (every criterion's score of the
    same units, with the same baseline) and
    :func:`~captum_gndi.validation.report.build_report` (correlations with bootstrap intervals,
    permutation p-values, partial correlations given depth, comparisons with the controls,
    per-example agreement).

    Args:
        model: The model, in eval mode; left unchanged.
        data: A DataLoader (re-iterable) of ``(inputs, labels)``, or of unlabelled inputs for an
            embedding model.
        layers: Dict name -> module (e.g. ``captum_gndi.adapters.find_layers(model, "branch")``)
            or a list of dotted names.
        criteria: Criteria names (see :func:`~captum_gndi.criteria.available_criteria`);
            ``None``: all. Criteria undefined for this model (e.g. HRank on a transformer, SNIP
            without labels) are skipped with a warning and listed in the report's metadata.
        damage: Damage metrics; the first is the report's primary metric. ``None``:
            accuracy drop, loss increase, output change and KL for labelled data; output change
            and embedding cosine distance otherwise.
        baseline: ``"zero"``, ``"mean"`` (data-set mean activation), a number, or a dict.
        granularity: ``"layer"``, ``"channel"`` or ``"group"`` (implied by ``layer_mask``).
        n_channels: With ``granularity="channel"`` (or a ``layer_mask``), the size of a seeded
            random sample of channels (groups) (``None``: all of them).
        seed: Seed of the channel sample, the random control and the resampling.
        device: Where to run (default: the model's device).
        progress: Show progress bars.
        max_batches: Use at most this many batches (for ablation, scores and baselines alike).
        out_dir: If given, the report (markdown, JSON, CSV, figures) is written there.
        target: Output of the logit- and loss-based criteria (``"label"``, ``"predicted"``, an
            int, or ``None`` for embedding models).
        n_steps: Integration points of the path-integrated criteria.
        n_random: Seeds of the random control.
        channel_dim: Activation dimension holding channels (1 for CNNs, -1 for transformers).
        n_boot: Bootstrap resamples per confidence interval.
        metadata: Extra entries for the report's header (e.g. the model's name).
        methods: Deprecated spelling of ``criteria``.
        layer_mask: Groups as units (``granularity="group"``, implied): one integer mask for
            every layer, or a dict name -> mask, with Captum's ``LayerFeatureAblation``
            semantics (group ids ``0..G-1``; batch dimension 1, or one row per example of the
            data in the order it is read). The damage of a group is measured by Captum's
            ``LayerFeatureAblation`` with the same mask; criteria that are undefined for groups
            (the weight-based ones, HRank, parameter count) are skipped with a warning.
        direction: With patching data (a :class:`~captum_gndi.tasks.PatchingTask` or a list of
            ``PatchingBatch``, and a metric model ``f(input_ids, answers) -> (N, 1)``):
            ``"noising"`` (run clean, patch corrupted in) or ``"denoising"``. The ground truth
            is then exact activation patching, the damage metrics ``effect`` (signed) and
            ``abs_effect``, and the criteria without a meaning there are skipped with the
            reason (:func:`~captum_gndi.validation.patching.validate_patching`; ``baseline``,
            ``damage``, ``target`` and ``layer_mask`` are not used).
        metric: With patching data: ``metric(output, answers)`` with a plain model.
        gndi_target: The output the G-NDI criteria measure (``None``: the whole output, a class
            index, ``"label"`` or ``"predicted"``; ``compute_gndi``'s ``target``).
        norm: G-NDI's norm over the output (``"l2"``, ``"l1"``, ``"linf"``, ``p >= 1`` or
            ``"fisher"``).
        n_probes: Estimate G-NDI's squared L2 / Fisher norm from this many random
            vector-Jacobian products per batch (see
            :class:`~captum_gndi.criteria.CriterionSettings`).

    Returns:
        The :class:`~captum_gndi.validation.report.ValidationReport`.

    Examples:
        >>> from captum_gndi.adapters import find_layers
        >>> report = validate(model, test_loader, find_layers(model, "branch"), out_dir="report")
        >>> print(report)
        >>> quarters = torch.arange(4).repeat_interleave(16).reshape(1, 64, 1, 1)
        >>> report = validate(model, test_loader, ["layer3.2.conv2"], layer_mask=quarters)
    """
    started = time.perf_counter()
    if methods is not None:
        warnings.warn(
            "validate(methods=...) is deprecated; use criteria=...",
            DeprecationWarning,
            stacklevel=2,
        )
        criteria = methods
    if is_patching_data(data):
        if gndi_target is not None or norm != "l2" or n_probes is not None:
            raise ValueError(
                "With patching data G-NDI is the signed first-order effect on the metric "
                "model's one number per pair; drop gndi_target=, norm= and n_probes=."
            )
        if baseline not in (None, "zero") or damage is not None or layer_mask is not None:
            raise ValueError(
                "With patching data the baseline of a unit is its activation on the other "
                "prompt and the damage its exact patching effect; drop baseline=, damage= and "
                "layer_mask=."
            )
        return validate_patching(
            model, data, layers, criteria, granularity, channel_dim, n_channels, direction,
            metric, n_steps, n_random, seed, device=device, max_batches=max_batches,
            n_boot=n_boot, metadata=metadata, out_dir=out_dir,
        )  # fmt: skip
    named = resolve_layers(model, layers)
    method_names = check_criteria(criteria)
    CriterionSettings(  # the options' checks, before the ablations
        target=target, gndi_target=gndi_target, norm=norm, n_probes=n_probes, n_steps=n_steps,
        n_random=n_random,
    )  # fmt: skip
    device = resolve_device(model, device)
    has_labels = first_batch(data, device)[1] is not None
    if damage is None:
        damage = LABELLED_DEFAULT if has_labels else UNLABELLED_DEFAULT
    units = select_units(
        model, data, named, granularity, n_channels, seed, channel_dim, device, layer_mask
    )
    if layer_mask is not None:
        granularity = "group"
    specs = layer_baselines(model, data, named, baseline, device, progress, max_batches)
    ablation = ablate(
        model, data, named, damage, specs, units=units, channel_dim=channel_dim,
        device=device, progress=progress, max_batches=max_batches, layer_mask=layer_mask,
    )  # fmt: skip
    seconds = {"ablation": time.perf_counter() - started}
    ctx = build_context(
        model,
        data,
        named,
        granularity=granularity,
        baseline=specs,
        target=target,
        gndi_target=gndi_target,
        norm=norm,
        n_probes=n_probes,
        units=units,
        seed=seed,
        n_random=n_random,
        n_steps=n_steps,
        channel_dim=channel_dim,
        device=device,
        progress=progress,
        max_batches=max_batches,
        layer_mask=layer_mask,
    )
    scores: dict[str, np.ndarray] = {}
    per_example: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for name, result, elapsed in _timed(score_each(ctx, method_names)):
        if isinstance(result, UndefinedCriterion):
            warnings.warn(f"Skipping {name}: {result}", stacklevel=2)
            skipped[name] = str(result)
            continue
        scores[name], rows = result
        seconds[name] = elapsed
        if rows is not None:
            per_example[name] = rows
    if not scores:
        raise ValueError(f"No criterion is defined for this model: {skipped}")
    info = {
        **dict(metadata or {}),
        "model": (metadata or {}).get("model", type(model).__name__),
        "n_examples": ablation.n_examples,
        "n_units": len(units),
        "granularity": granularity,
        "n_channels": n_channels,
        "baseline": baseline if isinstance(baseline, (str, int, float)) else "custom",
        "layers": list(named),
        "clean": ablation.clean,
        "target": target,
        "n_steps": n_steps,
        "seed": seed,
        "skipped": skipped,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    for key, value, default in [
        ("gndi_target", gndi_target, None),
        ("norm", norm, "l2"),
        ("n_probes", n_probes, None),
    ]:
        if value != default:
            info[key] = value
    if "ground_truth" in ablation.settings:
        info["ground_truth"] = ablation.settings["ground_truth"]
    report = build_report(
        units=[u.name for u in units],
        depth=np.asarray([u.depth for u in units], dtype=float),
        damage=ablation.damage,
        scores=scores,
        damage_per_example=ablation.damage_per_example,
        scores_per_example=per_example,
        metadata=info,
        n_boot=n_boot,
        seed=seed,
    )
    if out_dir is not None:
        report.save(out_dir)
    return report


def _timed(results: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any, float]]:
    """Attach to each yielded item the seconds it took to produce."""
    iterator = iter(results)
    while True:
        start = time.perf_counter()
        try:
            name, result = next(iterator)
        except StopIteration:
            return
        yield name, result, time.perf_counter() - start
