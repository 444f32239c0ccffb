"""Screen and verify: the exact top-k units of a model at a fraction of brute-force ablation.

First-order G-NDI scores every unit (channel, group or layer) of a set of layers in ``1 + K``
passes, but ranks single-unit damage only approximately; the exact answer needs one
intervention ``do(h_u := b_u)`` per unit. :func:`verify_top_k` combines the two, in the spirit
of AtP* (Kramár et al. 2024), which screens with attribution patching and verifies with
activation patching:

1. **Screen.** Score every unit with first-order G-NDI over the data (:func:`compute_gndi`,
   with ``layer_mask`` for groups): the predicted damage ``s_u``. On patching data other
   screens are offered (``path="input"``, GradDrop and their maxima: ``screen=``,
   :mod:`captum_gndi.verify.screens`).
2. **Audit.** Ablate a uniform random sample of ``m`` units among those G-NDI does *not* put in
   its top k (default ``m = ceil(k / expected_misses)``, see below), so that the calibration
   also sees the low-ranked units, where first-order errors are largest.
3. **Verify** units in order of decreasing ``s_u`` with exact interventions (the damage
   ``d_u``, from :func:`captum_gndi.interventions.ablation.batch_damage`, the routine the
   validation harness's ``ablate`` uses), several units per forward pass and with the
   network's prefix before the layer run once.
4. **Stop** when no unverified unit can still enter the top k (the *stopping rule*,
   :mod:`captum_gndi.verify.rule`, which derives it).

Patching data. With a :class:`~captum_gndi.tasks.PatchingTask` (or a loader of ``(clean,
corrupted, answers)`` batches) and a metric model ``f(input_ids, answers) -> (N, 1)``, the
baseline of a unit is its activation on the other prompt of each pair (per example, see
:mod:`captum_gndi.patching`), the screen is the absolute mean of signed G-NDI estimates
(``screen=``: first order, the default, ``path="input"``, GradDrop or a maximum), and
the true damage of a unit is the absolute mean of its exact patching effect ``f(x) - f(x;
do(h_u := b_u))`` (:data:`captum_gndi.interventions.patching.EFFECT`), whose signed value is
kept in ``result.effects``.

Cost. Each intervention runs only the part of the network after the layer when the model can be
traced by :mod:`torch.fx` (``engine="suffix"``, :mod:`captum_gndi.interventions.backends`): the
prefix runs once per layer and batch, its
values are kept, and ``units_per_pass`` edited copies of the layer's activation go through the
suffix as one stacked batch. Models that cannot be traced use hooks on the full forward pass,
still stacking ``units_per_pass`` copies of the inputs (``engine="hooks"``).

Examples:
    >>> from captum_gndi import find_layers, verify_top_k
    >>> result = verify_top_k(model, loader, find_layers(model, "branch"), k=10)
    >>> print(result)  # the exact top 10 channels, their damage, and the cost
    >>> result.units[0], result.n_ablations, result.n_units
    (('layer1.2.bn2', 9), 50, 336)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..baselines import LayerBaseline
from ..input_path import find_input_layer
from ..interventions.ablation import batch_damage
from ..interventions.backends import ENGINES, CleanBatch, make_backend
from ..interventions.damage import DAMAGE_METRICS, Damage, DamageMetric, resolve_damage
from ..interventions.model_state import preserve_model
from ..interventions.patching import EFFECT, patched_batches
from ..interventions.selection import Unit, probe_layers
from ..patching import (
    check_direction,
    is_patching_data,
    metric_model_and_layers,
    source_label,
)
from ..runs import (
    DataTarget,
    Layers,
    RankBatches,
    all_reduce,
    baseline_label,
    iterate_batches,
    make_runner,
    resolve_device,
    resolve_layers,
    warn_if_training,
)
from ..scoring import layer_baselines
from ..units import ChannelDim, LayerMask, resolve_layer_masks, unit_index
from .result import UnitKey, VerifyResult
from .rule import calibration_quantile, screen_and_verify
from .screens import check_screen, screen_scores

__all__ = ["verify_top_k"]


@preserve_model
def verify_top_k(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    k: int,
    granularity: str = "channel",
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    damage: Damage = "output_delta",
    expected_misses: float = 1.0,
    quantile: float | None = None,
    audit: int | float | None = None,
    units_per_pass: int = 8,
    layer_mask: LayerMask | None = None,
    channel_dim: ChannelDim = 1,
    target: DataTarget = None,
    engine: str = "auto",
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    max_cache_bytes: int = 2**31,
    progress: bool = True,
    seed: int = 0,
    direction: str = "noising",
    metric: Callable[[Any, Tensor], Tensor] | None = None,
    screen: str = "auto",
    n_steps: int = 4,
    largest: bool = True,
) -> VerifyResult:
    """The exact top-k units by ablation damage, verifying only what G-NDI cannot rule out.

    Scores every unit with first-order G-NDI, audits a random sample of low-ranked units, then
    ablates units in order of predicted damage until the stopping rule of the module docstring
    holds: the k-th verified damage exceeds every unverified unit's G-NDI score times the
    conformal ``q``-quantile of the true/predicted damage ratios seen so far.

    Args:
        model: The model, in eval mode; its output must be ``(N, K)`` (logits or an embedding).
        data: A DataLoader or list of batches (a tensor, ``(inputs, labels)`` or
            ``((inputs...), labels)``). It is read once and kept in memory (on ``device``);
            under ``torch.distributed`` each rank keeps its shard, and the damages are summed
            over ranks, so every rank returns the same result.
            Or patching data (see the module docstring): a
            :class:`~captum_gndi.tasks.PatchingTask` or a list of ``PatchingBatch``; ``model``
            is then a metric model ``f(input_ids, answers) -> (N, 1)`` (or the model with
            ``metric``), and ``baseline``, ``damage`` and ``target`` are fixed by the task.
        layers: Dict name -> module (e.g. ``find_layers(model, "branch")``) or dotted names.
        k: How many units to return (1 <= k <= number of units).
        granularity: ``"channel"`` (one unit per index of ``channel_dim``) or ``"layer"`` (one
            unit per layer); ignored when ``layer_mask`` is given (groups).
        baseline: ``"zero"``, ``"mean"`` (each layer's data-set mean activation), a number, or a
            dict name -> layer baseline; the same baseline for G-NDI and the ablations.
        damage: The damage metric of the ground truth: ``"output_delta"`` (L2 norm of the output
            change, default; ``"output_l2"`` is a synonym), ``"kl"``, ``"loss_increase"``
            (``"loss"``), ``"accuracy_drop"`` (``"accuracy"``) or ``"embedding_cosine"`` (the
            registry :mod:`captum_gndi.interventions.damage`), or a callable
            ``damage(clean_out, intervened_out, labels) -> (N,)``.
        expected_misses: The bound the rule puts on the expected number of true top-k units it
            leaves unverified, under exchangeable ratios: sets ``q = max(0.5, 1 -
            expected_misses / k)`` and the default audit size ``ceil(1 / (1 - q))``. Lower is
            safer and costlier.
        quantile: Set ``q`` directly instead (in (0, 1)).
        audit: Size of the random audit of units outside G-NDI's top k: ``None`` for
            ``ceil(1 / (1 - q))``, a count, or a fraction (< 1) of the units.
        units_per_pass: Units intervened on in one stacked forward pass (memory grows with it).
        layer_mask: Groups (Captum's ``LayerFeatureAblation`` convention): an integer tensor
            broadcastable to the activation holding group ids ``0..G-1``, one for all layers,
            or a dict / list with one per layer. The ground truth of group g sets the elements
            with ``mask == g`` to the baseline.
        channel_dim: Activation dimension(s) holding the channels (1 for CNNs, -1 for
            transformer states, a tuple for e.g. position x head; the unit index is then the
            row-major flat index).
        target: G-NDI's target (``None``: the norm over the whole output, which matches
            ``output_delta``; ``"label"`` or a class index otherwise).
        engine: ``"auto"`` (traced suffix when :mod:`torch.fx` can trace the model, hooks
            otherwise), ``"suffix"`` or ``"hooks"``.
        device: Where to run (default: the model's device).
        max_batches: Use at most this many batches.
        max_cache_bytes: Memory for cached prefix values (beyond it prefixes are recomputed).
        progress: Show progress bars.
        seed: Seed of the audit sample.
        direction: With patching data: ``"noising"`` (default: run the clean prompt, patch
            corrupted activations in) or ``"denoising"`` (run the corrupted prompt, patch clean
            activations in: TransformerLens's default).
        metric: With patching data: ``metric(output, answers)``, one number per example, with
            a plain model.
        screen: What predicts the damage (:mod:`captum_gndi.verify.screens`):
            ``"first_order"`` (first-order G-NDI: minus attribution patching on patching
            data), ``"input"`` (``path="input"`` G-NDI, EAP-IG, ``n_steps`` points),
            ``"combined"`` (the larger of the two per unit), ``"graddrop"`` (AtP*'s GradDrop,
            :mod:`captum_gndi.verify.graddrop`: the largest first-order estimate with one
            residual block's gradient dropped; ``1 + B`` backward passes) or
            ``"combined_graddrop"`` (the larger of ``"input"`` and ``"graddrop"``); every
            screen but ``"first_order"`` needs patching data. ``"auto"`` (default):
            ``"first_order"`` (the reason, measured: the screens module).
        n_steps: Input-path points of the ``"input"``, ``"combined"`` and
            ``"combined_graddrop"`` screens (each costs ``n_steps`` forward and backward passes
            over the data).
        largest: ``True`` for the k most damaging units; ``False`` for the k *least* damaging
            ones (e.g. the channels to prune), verified in order of increasing score with the
            mirrored rule (:mod:`captum_gndi.verify.rule`).

    Returns:
        A :class:`VerifyResult`: the top k ``units`` with their ``damages``, ``n_ablations``,
        ``n_units``, ``miss_probability``, ...; ``print(result)`` shows a table.

    Raises:
        ValueError: For ``k < 1`` or ``k > n_units``, an unknown damage metric (or a labelled
            one on unlabelled data), a bad granularity, audit or engine.

    Examples:
        >>> result = verify_top_k(model, loader, find_layers(model, "branch"), k=20)
        >>> print(result)
        >>> result.units[:3], result.fraction, result.miss_probability
        >>> # groups: two halves of every channel's spatial map
        >>> mask = (torch.arange(16 * 32 * 32).reshape(1, 16, 32, 32) // 512)
        >>> verify_top_k(model, loader, ["layer1.0.bn2"], k=4, layer_mask=mask)
        >>> # the ten heads whose patching moves the IOI logit difference most
        >>> result = verify_top_k(tasks.logit_diff(lm), task, find_layers(lm, "head"), k=10,
        ...                       channel_dim=2)
        >>> result.units[0], result.effects[0], result.n_ablations
    """
    start = time.perf_counter()
    calibration_quantile(k, expected_misses, quantile, units_per_pass)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    if layer_mask is None and granularity not in ("channel", "layer"):
        raise ValueError(
            f"granularity must be 'channel' or 'layer' (or pass layer_mask for groups), got "
            f"{granularity!r}."
        )
    patching = is_patching_data(data)
    if patching:
        check_direction(direction)
        if baseline not in (None, "zero") or target is not None or damage != "output_delta":
            raise ValueError(
                "With patching data the baseline of a unit is its activation on the other "
                "prompt, and the damage the change of the metric model's output; drop "
                "baseline=, target= and damage=."
            )
        model, layers = metric_model_and_layers(model, layers, metric)
    elif metric is not None:
        raise ValueError(
            "metric= needs patching data (a PatchingTask or a list of PatchingBatch); for "
            "other data pass the metric as the model itself."
        )
    screen = check_screen(screen, patching, n_steps, find_input_layer(model) is not None)
    warn_if_training(model)
    named = resolve_layers(model, layers)
    names = list(named)
    device = resolve_device(model, device)
    batches: list[CleanBatch] = []
    batch_baselines: list[Mapping[str, LayerBaseline]] = []
    if patching:
        for item in patched_batches(model, data, named, direction, device, max_batches):
            batches.append(item.batch)
            batch_baselines.append(item.baselines)
        metric_ = EFFECT
    else:
        for inputs, labels in iterate_batches(data, device, max_batches, False, "verify_top_k"):
            with torch.no_grad():
                clean = make_runner(model, inputs, None, None)()
            batches.append(CleanBatch(inputs, labels, clean.detach()))
        metric_ = _check_damage(damage, all(b.labels is not None for b in batches))
        cached = RankBatches(  # under torch.distributed: this rank's shard, not split again
            (b.inputs, b.labels) if b.labels is not None else (b.inputs,) for b in batches
        )
        batch_baselines = [layer_baselines(model, cached, named, baseline, device, False)]
        batch_baselines *= len(batches)

    # screen: G-NDI of every unit
    depth, shapes = probe_layers(model, batches[0].inputs, named)
    masks = resolve_layer_masks(layer_mask, names)
    mode = "group" if masks is not None else granularity
    predicted = screen_scores(
        model,
        data if patching else cached,
        named,
        screen,
        n_steps=n_steps,
        baseline="zero" if patching else batch_baselines[0],
        target=target,
        device=device,
        progress=progress,
        max_batches=max_batches if patching else None,
        granularity=granularity,
        channel_dim=channel_dim,
        layer_mask=masks,
        direction=direction,
    )
    scores: dict[UnitKey, float] = {}
    for name in sorted(names, key=depth.__getitem__):
        values = predicted[name].flatten().cpu().numpy()
        if mode == "layer":
            scores[Unit(name, None, depth[name]).key] = float(values.sum())
        else:
            units = [
                Unit(name, g, depth[name])
                if mode == "channel"
                else Unit(name, None, depth[name], g)
                for g in range(len(values))
            ]
            scores.update({unit.key: float(v) for unit, v in zip(units, values)})
    if k > len(scores):
        raise ValueError(
            f"k={k} is larger than the number of units ({len(scores)} {mode} units in "
            f"{len(names)} layers); pass k <= {len(scores)}."
        )
    scoring_s = time.perf_counter() - start

    # verify: exact interventions through the interventions package
    unit_masks = {
        name: unit_index(
            mode, shapes[name], name, channel_dim, None if masks is None else masks[name], device
        ).mask
        for name in names
    }
    backend = make_backend(model, named, engine, max_cache_bytes)
    metrics = {metric_.name: metric_}
    # under torch.distributed every rank ablates its own batches; damages are summed over
    # ranks, so every rank sees the same numbers and the stopping rule takes the same decisions
    local = torch.tensor(sum(b.clean.shape[0] for b in batches), dtype=torch.float64, device=device)
    count = int(all_reduce([local], device)[0].item())  # type: ignore[union-attr]
    signed: dict[UnitKey, float] = {}

    def ablate_units(chunk: Sequence[UnitKey]) -> dict[UnitKey, float]:
        by_layer: dict[str, list[int | None]] = {}
        for name, index in chunk:
            by_layer.setdefault(name, []).append(index)
        found: dict[UnitKey, float] = {}
        for name, ids in by_layer.items():
            total = torch.zeros(len(ids), dtype=torch.float64)
            for position, batch in enumerate(batches):
                per_example = batch_damage(
                    backend, name, position, batch, batch_baselines[position][name],
                    unit_masks[name], ids, metrics, units_per_pass,
                )[metric_.name]  # fmt: skip
                total += per_example.double().sum(1).cpu()
            total = all_reduce([total.to(device)], device)[0].cpu()  # type: ignore[union-attr]
            means = (total / count).numpy()
            signed.update({(name, g): float(d) for g, d in zip(ids, means)})
            found.update(
                {(name, g): float(d) for g, d in zip(ids, np.abs(means) if patching else means)}
            )
        return found

    result = screen_and_verify(
        scores,
        ablate_units,
        k,
        expected_misses=expected_misses,
        quantile=quantile,
        audit=audit,
        units_per_pass=units_per_pass,
        seed=seed,
        progress=progress,
        largest=largest,
    )
    result.damage, result.engine = metric_.name, backend.name
    if patching:
        result.damage = "abs_effect"
        result.effects = np.array([signed[unit] for unit in result.units])
    result.timings = {
        "scoring_s": scoring_s,
        "verify_s": result.timings["verify_s"],
        "total_s": time.perf_counter() - start,
    }
    result.settings.update(
        {
            "granularity": mode,
            "baseline": source_label(direction) if patching else baseline_label(baseline),
            "damage": result.damage,
            "channel_dim": channel_dim if isinstance(channel_dim, int) else list(channel_dim),
            "target": target,
            "n_examples": count,
            "screen": screen,
        }
    )
    if screen != "first_order":
        result.settings["n_steps"] = n_steps
    if patching:
        result.settings["direction"] = direction
    return result


def _check_damage(damage: Damage, has_labels: bool) -> DamageMetric:
    """The one damage metric of :func:`verify_top_k` (a name, an alias or a callable)."""
    if not isinstance(damage, str) and not callable(damage):
        raise TypeError(
            f"damage must be one metric name (a string) or a callable, got "
            f"{type(damage).__name__}; choose from {DAMAGE_METRICS}."
        )
    (metric,) = resolve_damage(damage, has_labels=True).values()
    if metric.needs_labels and not has_labels:
        raise ValueError(
            f"damage={metric.name!r} needs labelled data (batches of (inputs, labels)) and a "
            "classifier's logits; use damage='output_delta' for unlabelled data."
        )
    return metric
