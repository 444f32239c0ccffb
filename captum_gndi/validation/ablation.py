"""True interventions do(h := b) on layers or channels, and the damage they do to the model.

A *unit* is what one intervention neutralises: a whole layer (``Unit("layer3.1.bn2")``) or one
channel of a layer's activation (``Unit("layer3.1.bn2", channel=7)``). :func:`select_units` lists
the units of a set of layers in forward order (all channels, or a seeded random sample of them),
and :func:`ablate` measures, for every unit and every example, how much the intervention
``do(h := b)`` (zero or data-set-mean baseline ``b``) damages the model's output:

- ``accuracy_drop``: clean accuracy minus intervened accuracy; per example 1 when a correct
  prediction becomes wrong, -1 for the reverse, 0 otherwise (needs labels).
- ``loss_increase``: intervened minus clean cross-entropy (needs labels).
- ``output_delta``: the L2 norm of the change of the output (the logits of a classifier, the
  embedding of an encoder): the metric of the G-NDI paper's public code.
- ``kl``: ``KL(p_clean || p_intervened)`` of the softmax of the output (needs labels, which mark the
  output as a classifier's logits).
- ``embedding_cosine``: ``1 - cos(y_clean, y_intervened)``, for embedding models.

All interventions go through :func:`captum_gndi.interventions.intervene`, like every other
computation of the package; Captum's ``LayerFeatureAblation`` gives the same numbers (tested).
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
from ..interventions import LayerSpec, intervene
from ..runs import (
    Layers,
    baseline_label,
    call_model,
    channel_count,
    first_batch,
    iterate_batches,
    make_runner,
    resolve_device,
    resolve_layers,
    warn_if_training,
)
from ..scoring import layer_baselines

__all__ = [
    "DAMAGE_METRICS",
    "LABELLED_METRICS",
    "AblationResult",
    "Unit",
    "ablate",
    "intervened_output",
    "layer_baselines",
    "select_units",
]

DAMAGE_METRICS = ("accuracy_drop", "loss_increase", "output_delta", "kl", "embedding_cosine")
"""Damage metrics understood by :func:`ablate`."""

LABELLED_METRICS = ("accuracy_drop", "loss_increase", "kl")
"""Metrics that need labelled data and a classifier's logits."""


@dataclass(frozen=True)
class Unit:
    """One intervention target: a whole layer, or one channel of it.

    Attributes:
        layer: The layer's name (a key of the resolved layer dict).
        channel: The channel index along ``channel_dim``, or ``None`` for the whole layer.
        depth: The layer's position in forward (execution) order, counting from 0.
    """

    layer: str
    channel: int | None = None
    depth: int = 0

    @property
    def name(self) -> str:
        """``"layer"`` or ``"layer[channel]"``."""
        return self.layer if self.channel is None else f"{self.layer}[{self.channel}]"


def _probe(
    model: nn.Module, inputs: tuple[Tensor, ...], named: Mapping[str, LayerSpec]
) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """Forward-order position and activation shape of every layer, from one forward pass."""
    names, specs = list(named), list(named.values())
    order: list[int] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def edit(position: int, h: Tensor) -> None:
        if names[position] not in shapes:
            order.append(position)
            shapes[names[position]] = tuple(h.shape)

    with torch.no_grad(), intervene(specs, edit, labels=names):
        call_model(model, inputs)
    return {names[p]: depth for depth, p in enumerate(order)}, shapes


def select_units(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    granularity: str = "layer",
    n_channels: int | None = None,
    seed: int = 0,
    channel_dim: int = 1,
    device: torch.device | str | None = None,
) -> list[Unit]:
    """List the units of ``layers`` in forward order.

    Args:
        model: The model.
        data: A data loader; its first batch is run once to find the forward order and the
            number of channels of every layer.
        layers: Dict name -> module, or a list of dotted names / modules.
        granularity: ``"layer"`` (one unit per layer) or ``"channel"`` (one per channel).
        n_channels: With ``granularity="channel"``, sample this many channels uniformly without
            replacement from all channels of all layers (``None``: every channel).
        seed: Seed of the channel sample.
        channel_dim: Activation dimension holding channels (1 for CNNs, -1 for transformers).
        device: Where to run (default: the model's device).

    Returns:
        Units sorted by forward order (then channel), each with its layer's ``depth``.

    Examples:
        >>> units = select_units(model, loader, find_layers(model, "conv"), "channel", 300)
        >>> units[0].name
        'conv1[5]'
    """
    if granularity not in ("layer", "channel"):
        raise ValueError(f"granularity must be 'layer' or 'channel', got {granularity!r}.")
    named = resolve_layers(model, layers)
    device = resolve_device(model, device)
    inputs, _ = first_batch(data, device)
    depth, shapes = _probe(model, inputs, named)
    ordered = sorted(named, key=depth.__getitem__)
    if granularity == "layer":
        if n_channels is not None:
            raise ValueError("n_channels needs granularity='channel'.")
        return [Unit(name, None, depth[name]) for name in ordered]
    every = [
        Unit(name, c, depth[name])
        for name in ordered
        for c in range(channel_count(shapes[name], channel_dim, name))
    ]
    if n_channels is None or n_channels >= len(every):
        return every
    if n_channels < 1:
        raise ValueError(f"n_channels must be >= 1, got {n_channels}.")
    picked = np.random.default_rng(seed).choice(len(every), size=n_channels, replace=False)
    return [every[i] for i in sorted(picked)]


def _edit_for(
    baseline: LayerBaseline, channel: int | None, channel_dim: int, label: str
):  # -> EditFn
    def edit(_: int, h: Tensor) -> Tensor:
        b = resolve_layer_baseline(baseline, h, label)
        if channel is None:
            return b.clone()
        out = h.detach().clone()
        out.select(channel_dim, channel).copy_(b.select(channel_dim, channel))
        return out

    return edit


def intervened_output(
    model: nn.Module,
    inputs: Tensor | tuple[Tensor, ...],
    layer: LayerSpec,
    baseline: LayerBaseline = None,
    channel: int | None = None,
    channel_dim: int = 1,
) -> Tensor:
    """The model's output under ``do(h := b)`` on one layer or one channel of it.

    Args:
        model: The model (any module whose forward takes ``*inputs``).
        inputs: A tensor or a tuple of input tensors.
        layer: The module (or :class:`~captum_gndi.LayerCall`) to intervene on.
        baseline: The layer baseline (see :mod:`captum_gndi.baselines`); ``None`` is zero.
        channel: Intervene on this channel only (``None``: the whole layer).
        channel_dim: Activation dimension holding channels.

    Returns:
        The model output, computed without gradients.

    Examples:
        >>> y = intervened_output(model, x, model.layer1[0].bn2)  # skip the first block's branch
        >>> y_c = intervened_output(model, x, model.conv1, channel=3)  # zero channel 3
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    edit = _edit_for(baseline, channel, channel_dim, "layer")
    with torch.no_grad(), intervene([layer], edit):
        return call_model(model, inputs)


def _per_example_damage(
    metric: str, clean: Tensor, intervened: Tensor, labels: Tensor | None
) -> Tensor:
    if metric == "output_delta":
        return torch.linalg.vector_norm(clean - intervened, dim=1)
    if metric == "embedding_cosine":
        return 1 - F.cosine_similarity(clean, intervened, dim=1)
    if metric == "kl":
        log_p, log_q = F.log_softmax(clean, dim=1), F.log_softmax(intervened, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(1)
    if metric == "loss_increase":
        return F.cross_entropy(intervened, labels, reduction="none") - F.cross_entropy(
            clean, labels, reduction="none"
        )
    correct_clean = (clean.argmax(1) == labels).to(clean.dtype)
    return correct_clean - (intervened.argmax(1) == labels).to(clean.dtype)


def check_damage(damage: Sequence[str], has_labels: bool) -> tuple[str, ...]:
    """Validate damage metric names against the data (labelled or not)."""
    damage = (damage,) if isinstance(damage, str) else tuple(damage)
    unknown = [m for m in damage if m not in DAMAGE_METRICS]
    if unknown or not damage:
        raise ValueError(f"Unknown damage metric(s) {unknown}; choose from {DAMAGE_METRICS}.")
    needing = [m for m in damage if m in LABELLED_METRICS]
    if needing and not has_labels:
        raise ValueError(
            f"Damage metric(s) {needing} need labelled data (batches of (inputs, labels)) and a "
            "classifier's logits. For an embedding model use damage=('output_delta', "
            "'embedding_cosine')."
        )
    return damage


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


def ablate(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    damage: Sequence[str] = ("accuracy_drop", "loss_increase", "output_delta", "kl"),
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    granularity: str = "layer",
    n_channels: int | None = None,
    seed: int = 0,
    units: Sequence[Unit] | None = None,
    channel_dim: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
) -> AblationResult:
    """Measure the damage of ``do(h := b)`` on every unit, over a data set.

    For each batch the model runs once cleanly and once per unit with the unit's activation
    replaced by its baseline (the whole layer, or one channel along ``channel_dim``).

    Args:
        model: The model; its output must be ``(N, K)`` (logits, or an embedding).
        data: A DataLoader (or iterable) of ``(inputs, labels)``, ``((inputs...), labels)`` or
            unlabelled input tensors.
        layers: Dict name -> module (e.g. from ``captum_gndi.adapters.find_layers``) or a list
            of dotted names.
        damage: Metrics among :data:`DAMAGE_METRICS`.
        baseline: ``"zero"``, ``"mean"``, a number, or a dict name -> layer baseline.
        granularity: ``"layer"`` or ``"channel"`` (ignored when ``units`` is given).
        n_channels: Random sample size of channels (see :func:`select_units`).
        seed: Seed of the channel sample.
        units: Precomputed units (from :func:`select_units`); overrides the three options above.
        channel_dim: Activation dimension holding channels.
        device: Where to run (default: the model's device); batches are moved there.
        progress: Show a progress bar.
        max_batches: Stop after this many batches.

    Returns:
        An :class:`AblationResult` with mean and per-example damage.

    Raises:
        ValueError: For unknown metrics, or label-based metrics on unlabelled data.

    Examples:
        >>> result = ablate(model, test_loader, find_layers(model, "branch"))
        >>> dict(zip(result.names, result.damage["accuracy_drop"]))
    """
    warn_if_training(model)
    named = resolve_layers(model, layers)
    device = resolve_device(model, device)
    if units is None:
        units = select_units(model, data, named, granularity, n_channels, seed, channel_dim, device)
    units = list(units)
    unknown = sorted({u.layer for u in units} - set(named))
    if unknown:
        raise ValueError(f"Units refer to layers {unknown} that are not in `layers`.")
    specs = layer_baselines(model, data, named, baseline, device, progress, max_batches)
    has_labels = first_batch(data, device)[1] is not None
    metrics = check_damage(damage, has_labels)
    labelled = any(m in LABELLED_METRICS for m in metrics)

    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    bar = tqdm(
        total=None if total is None else total * len(units), desc="ablation", disable=not progress
    )
    per_example: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    clean_correct, clean_loss, n = 0.0, 0.0, 0
    for inputs, labels in iterate_batches(data, device, max_batches, False, "ablation"):
        run = make_runner(model, inputs, None, None)
        with torch.no_grad():
            clean = run()
        columns: dict[str, list[Tensor]] = {m: [] for m in metrics}
        for unit in units:
            edit = _edit_for(specs[unit.layer], unit.channel, channel_dim, unit.layer)
            with torch.no_grad(), intervene([named[unit.layer]], edit, labels=[unit.layer]):
                intervened = run()
            for metric in metrics:
                columns[metric].append(_per_example_damage(metric, clean, intervened, labels))
            bar.update(1)
        for metric in metrics:
            per_example[metric].append(torch.stack(columns[metric], 1).double().cpu().numpy())
        if labelled:
            clean_correct += float((clean.argmax(1) == labels).sum())
            clean_loss += float(F.cross_entropy(clean, labels, reduction="sum"))
        n += inputs[0].shape[0]
    bar.close()
    stacked = {m: np.concatenate(parts, 0) for m, parts in per_example.items()}
    clean_stats = {"accuracy": clean_correct / n, "loss": clean_loss / n} if labelled else {}
    settings = {
        "baseline": baseline_label(baseline),
        "granularity": "channel" if any(u.channel is not None for u in units) else "layer",
        "channel_dim": channel_dim,
    }
    return AblationResult(
        units=units,
        damage={m: v.mean(0) for m, v in stacked.items()},
        damage_per_example=stacked,
        clean=clean_stats,
        n_examples=n,
        settings=settings,
    )
