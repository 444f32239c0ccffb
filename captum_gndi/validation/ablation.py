"""True interventions do(h := b) on layers, channels or groups, and the damage they do.

A *unit* is what one intervention neutralises: a whole layer (``Unit("layer3.1.bn2")``), one
channel of a layer's activation (``Unit("layer3.1.bn2", channel=7)``) or one group of a
``layer_mask`` (``Unit("layer3.1.bn2", group=3)``, named ``"layer3.1.bn2[g3]"``; Captum's
``LayerFeatureAblation`` semantics, see :mod:`captum_gndi.criteria.groups`). :func:`select_units`
lists the units of a set of layers in forward order (all channels or groups, or a seeded random
sample of them), and :func:`ablate` measures, for every unit and every example, how much the
intervention ``do(h := b)`` (zero or data-set-mean baseline ``b``) damages the model's output:

- ``accuracy_drop``: clean accuracy minus intervened accuracy; per example 1 when a correct
  prediction becomes wrong, -1 for the reverse, 0 otherwise (needs labels).
- ``loss_increase``: intervened minus clean cross-entropy (needs labels).
- ``output_delta``: the L2 norm of the change of the output (the logits of a classifier, the
  embedding of an encoder): the metric of the G-NDI paper's public code.
- ``kl``: ``KL(p_clean || p_intervened)`` of the softmax of the output (needs labels, which mark the
  output as a classifier's logits).
- ``embedding_cosine``: ``1 - cos(y_clean, y_intervened)``, for embedding models.

Layer and channel interventions go through :func:`captum_gndi.interventions.intervene`, like
every other computation of the package. The ground truth of a *group* unit is an independent
implementation, Captum's own ``captum.attr.LayerFeatureAblation`` with the same ``layer_mask`` and
``layer_baselines`` equal to the harness's baseline: the model is wrapped as a forward function
returning the per-example damage against the clean output, so that LFA's ``f(x) - f_do(x)`` is
``damage(clean) - damage(do)``, and each group's value is read at one of its elements (per
example). LFA runs once per damage metric (``G + 1`` forward passes each, fewer when only a
sample of the groups is scored: the other groups are then merged into one). Points LFA cannot
hook (a :class:`~captum_gndi.LayerCall`, a :class:`~captum_gndi.Heads` with ``call_index``, a
module with a tuple output) fall back, with a warning, to the harness's own intervention
(:func:`intervened_output` with ``group=``), which the tests check against LFA.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerFeatureAblation
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..baselines import LayerBaseline, resolve_layer_baseline
from ..criteria.groups import (
    LayerMask,
    batch_mask,
    check_mask_rows,
    full_dims,
    group_count,
    resolve_layer_masks,
)
from ..interventions import Heads, LayerCall, LayerSpec, intervene
from ..runs import (
    KeywordInputs,
    Layers,
    baseline_label,
    call_model,
    channel_count,
    first_batch,
    iterate_batches,
    keyword_forward,
    make_runner,
    resolve_device,
    resolve_layers,
    warn_if_training,
)
from ..scoring import layer_baselines

__all__ = [
    "DAMAGE_METRICS",
    "LABELLED_METRICS",
    "LFA",
    "OWN",
    "AblationResult",
    "Unit",
    "ablate",
    "group_masks",
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
    """One intervention target: a whole layer, one channel of it, or one group of a mask.

    Attributes:
        layer: The layer's name (a key of the resolved layer dict).
        channel: The channel index along ``channel_dim``, or ``None``.
        depth: The layer's position in forward (execution) order, counting from 0.
        group: The group id of the layer's ``layer_mask``, or ``None``. A unit with neither a
            channel nor a group is the whole layer.
    """

    layer: str
    channel: int | None = None
    depth: int = 0
    group: int | None = None

    def __post_init__(self) -> None:
        if self.channel is not None and self.group is not None:
            raise ValueError(
                f"Unit('{self.layer}') has both channel={self.channel} and group={self.group}; "
                "a unit is a whole layer, one channel or one group of a layer_mask."
            )

    @property
    def name(self) -> str:
        """``"layer"``, ``"layer[channel]"`` or ``"layer[g<group>]"``."""
        if self.group is not None:
            return f"{self.layer}[g{self.group}]"
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
    layer_mask: LayerMask | None = None,
) -> list[Unit]:
    """List the units of ``layers`` in forward order.

    Args:
        model: The model.
        data: A data loader; its first batch is run once to find the forward order and the
            number of channels of every layer.
        layers: Dict name -> module, or a list of dotted names / modules.
        granularity: ``"layer"`` (one unit per layer), ``"channel"`` (one per channel) or
            ``"group"`` (one per group of ``layer_mask``; implied by it).
        n_channels: With ``granularity="channel"`` (or ``"group"``), sample this many channels
            (groups) uniformly without replacement from those of all layers (``None``: all).
        seed: Seed of the channel sample.
        channel_dim: Activation dimension holding channels (1 for CNNs, -1 for transformers).
        device: Where to run (default: the model's device).
        layer_mask: Groups with Captum's ``LayerFeatureAblation`` semantics: one integer mask
            for every layer, or a dict name -> mask, with group ids ``0..G-1`` and batch
            dimension 1 or one row per example of the data (see
            :mod:`captum_gndi.criteria.groups`).

    Returns:
        Units sorted by forward order (then channel or group), each with its layer's ``depth``.

    Raises:
        ValueError: For an unknown granularity, a mask combined with
            ``granularity="channel"``, or a mask the engine rejects (see
            :func:`captum_gndi.units.check_layer_mask`).

    Examples:
        >>> units = select_units(model, loader, find_layers(model, "conv"), "channel", 300)
        >>> units[0].name
        'conv1[5]'
        >>> mask = torch.arange(4).repeat_interleave(4).reshape(1, 16, 1, 1)  # 4 groups of 4
        >>> [u.name for u in select_units(model, loader, ["conv1"], layer_mask=mask)]
        ['conv1[g0]', 'conv1[g1]', 'conv1[g2]', 'conv1[g3]']
    """
    named = resolve_layers(model, layers)
    granularity = _granularity(granularity, layer_mask)
    masks = resolve_layer_masks(layer_mask, list(named))
    device = resolve_device(model, device)
    inputs, _ = first_batch(data, device)
    depth, shapes = _probe(model, inputs, named)
    ordered = sorted(named, key=depth.__getitem__)
    if granularity == "layer":
        if n_channels is not None:
            raise ValueError("n_channels needs granularity='channel' (or a layer_mask).")
        return [Unit(name, None, depth[name]) for name in ordered]
    if granularity == "group":
        assert masks is not None  # _granularity checked it
        every = [
            Unit(name, None, depth[name], g)
            for name in ordered
            for g in range(group_count(masks[name], shapes[name], name))
        ]
    else:
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


def _granularity(granularity: str, layer_mask: LayerMask | None) -> str:
    """The unit granularity, ``"group"`` when a mask is given (clear errors otherwise)."""
    if granularity not in ("layer", "channel", "group"):
        raise ValueError(f"granularity must be 'layer', 'channel' or 'group', got {granularity!r}.")
    if layer_mask is not None:
        if granularity == "channel":
            raise ValueError(
                "layer_mask defines the units itself; it cannot be combined with "
                "granularity='channel'. Drop one of them."
            )
        return "group"
    if granularity == "group":
        raise ValueError("granularity='group' needs a layer_mask.")
    return granularity


def group_masks(
    model: nn.Module,
    data: Iterable[Any],
    named: Mapping[str, LayerSpec],
    units: Sequence[Unit],
    layer_mask: LayerMask | None,
    device: torch.device,
) -> tuple[dict[str, Tensor], dict[str, int]]:
    """The checked masks of the layers that hold group units, and their group counts.

    Args:
        model: The model.
        data: The data (its first batch gives the activations' shapes).
        named: Layer name -> intervention point.
        units: The units.
        layer_mask: The mask(s) that define the group units.
        device: Where to run.

    Returns:
        ``(masks, n_groups)``: layer name -> mask with as many dimensions as the activation,
        and layer name -> G; empty without group units.

    Raises:
        ValueError: For group units without a ``layer_mask``, or a mask the engine rejects.
    """
    grouped = list(dict.fromkeys(u.layer for u in units if u.group is not None))
    if not grouped:
        return {}, {}
    if layer_mask is None:
        raise ValueError(
            f"Units of layers {grouped} are groups of a layer_mask; pass the same layer_mask= "
            "that selected them."
        )
    masks = resolve_layer_masks(layer_mask, grouped) or {}
    _, shapes = _probe(model, first_batch(data, device)[0], {n: named[n] for n in grouped})
    counts = {name: group_count(masks[name], shapes[name], name) for name in grouped}
    too_high = [u.name for u in units if u.group is not None and u.group >= counts[u.layer]]
    if too_high:
        raise ValueError(f"Units {too_high[:5]} name groups that the layer_mask does not have.")
    full = {name: full_dims(masks[name], len(shapes[name])).to(device) for name in grouped}
    return full, counts


def _edit_for(
    baseline: LayerBaseline,
    channel: int | None,
    channel_dim: int,
    label: str,
    group: int | None = None,
    mask: Tensor | None = None,
):  # -> EditFn
    def edit(_: int, h: Tensor) -> Tensor:
        b = resolve_layer_baseline(baseline, h, label)
        if group is not None:
            assert mask is not None
            inside = mask.to(h.device) == group
            return torch.where(inside, b.to(h.dtype), h.detach())
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
        ValueError: For ``group`` without ``layer_mask`` (or with ``channel``), or a mask the
            engine rejects (:func:`captum_gndi.units.check_layer_mask`).

    Examples:
        >>> y = intervened_output(model, x, model.layer1[0].bn2)  # skip the first block's branch
        >>> y_c = intervened_output(model, x, model.conv1, channel=3)  # zero channel 3
        >>> mask = torch.tensor([0, 0, 1, 1]).reshape(1, 4, 1, 1)
        >>> y_g = intervened_output(model, x, model.conv1, layer_mask=mask, group=1)  # 2 and 3
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if group is not None or layer_mask is not None:
        if group is None or layer_mask is None or channel is not None:
            raise ValueError(
                "A group intervention needs both layer_mask and group (and no channel)."
            )
        edit = _group_edit(baseline, layer_mask, group, "layer")
    else:
        edit = _edit_for(baseline, channel, channel_dim, "layer")
    with torch.no_grad(), intervene([layer], edit):
        return call_model(model, inputs)


def _group_edit(baseline: LayerBaseline, layer_mask: Tensor, group: int, label: str):  # -> EditFn
    """An edit that checks the mask against the activation, then sets one group to ``b``."""

    def edit(position: int, h: Tensor) -> Tensor:
        n_groups = group_count(layer_mask, h.shape, label)
        if not 0 <= group < n_groups:
            raise ValueError(
                f"group={group} is not a group id of the layer_mask (0..{n_groups - 1})."
            )
        mask = full_dims(layer_mask, h.dim())
        if mask.shape[0] not in (1, h.shape[0]):
            raise ValueError(
                f"layer_mask has batch dimension {mask.shape[0]}; give 1 or the batch size "
                f"{h.shape[0]} (Captum's LayerFeatureAblation convention)."
            )
        return _edit_for(baseline, None, 1, label, group, mask)(position, h)

    return edit


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
    layer_mask: LayerMask | None = None,
) -> AblationResult:
    """Measure the damage of ``do(h := b)`` on every unit, over a data set.

    For each batch the model runs once cleanly and once per unit with the unit's activation
    replaced by its baseline (the whole layer, or one channel along ``channel_dim``). Group
    units (a ``layer_mask``) are ablated by Captum's ``LayerFeatureAblation`` with the same mask
    and the same baseline (see the module's docstring).

    Args:
        model: The model; its output must be ``(N, K)`` (logits, or an embedding).
        data: A DataLoader (or iterable) of ``(inputs, labels)``, ``((inputs...), labels)`` or
            unlabelled input tensors.
        layers: Dict name -> module (e.g. from ``captum_gndi.adapters.find_layers``) or a list
            of dotted names.
        damage: Metrics among :data:`DAMAGE_METRICS`.
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
    ground_truth: dict[str, str] = {}
    for inputs, labels in iterate_batches(data, device, max_batches, False, "ablation"):
        run = make_runner(model, inputs, None, None)
        with torch.no_grad():
            clean = run()
        columns: dict[str, list[Tensor | None]] = {m: [None] * len(units) for m in metrics}
        for i, unit in enumerate(units):
            if unit.group is not None:
                continue
            edit = _edit_for(specs[unit.layer], unit.channel, channel_dim, unit.layer)
            with torch.no_grad(), intervene([named[unit.layer]], edit, labels=[unit.layer]):
                intervened = run()
            for metric in metrics:
                columns[metric][i] = _per_example_damage(metric, clean, intervened, labels)
            bar.update(1)
        if grouped:
            batch = {name: batch_mask(masks[name], n, inputs[0].shape[0], name) for name in grouped}
            for name in grouped:
                picked = [(i, u.group) for i, u in enumerate(units) if u.layer == name]
                damages, how = _group_damage(
                    model, inputs, labels, clean, named[name], name, specs[name], batch[name],
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


LFA = "captum.attr.LayerFeatureAblation"
"""The ground truth of group units (recorded in :attr:`AblationResult.settings`)."""
OWN = "captum_gndi.interventions.intervene"
"""The fallback ground truth for points LFA cannot hook."""


def _group_damage(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    labels: Tensor | None,
    clean: Tensor,
    spec: LayerSpec,
    label: str,
    baseline: LayerBaseline,
    mask: Tensor,
    groups: Sequence[int],
    metrics: Sequence[str],
    run: Callable[[], Tensor],
) -> tuple[dict[str, Tensor], str]:
    """Per-example damage ``(n, len(groups))`` of each group's intervention, and its method.

    Captum's ``LayerFeatureAblation`` where it can hook the point; else :func:`_edit_for`.
    """
    h, hookable = _capture(model, inputs, spec, label)
    b = resolve_layer_baseline(baseline, h, label)
    if not hookable:
        warnings.warn(
            f"Captum's LayerFeatureAblation cannot hook '{label}' (a LayerCall, a Heads point "
            "with call_index, or a module whose output is not one tensor); its groups are "
            "ablated with the harness's own intervention instead.",
            stacklevel=4,
        )
        out: dict[str, list[Tensor]] = {m: [] for m in metrics}
        for g in groups:
            edit = _edit_for(baseline, None, 1, label, g, mask)
            with torch.no_grad(), intervene([spec], edit, labels=[label]):
                intervened = run()
            for metric in metrics:
                out[metric].append(_per_example_damage(metric, clean, intervened, labels))
        return {m: torch.stack(v, 1) for m, v in out.items()}, OWN
    # Groups that are not scored are merged into one extra group (ablated once, not read).
    n_groups = max(int(mask.max().item()), max(groups)) + 1
    if sorted(groups) != list(range(n_groups)):
        remap = torch.full((n_groups,), len(groups), dtype=torch.long, device=mask.device)
        remap[torch.as_tensor(list(groups), device=mask.device)] = torch.arange(
            len(groups), device=mask.device
        )
        lfa_mask, read = remap[mask.long()], list(range(len(groups)))
    else:
        lfa_mask, read = mask.long(), list(groups)
    module = spec.module if isinstance(spec, Heads) else spec
    lfa_mask = lfa_mask.to(h.device)
    lfa_baseline = torch.broadcast_to(b, h.shape).to(h.dtype)
    if isinstance(spec, Heads):  # LFA sees the projection's input (N, T, H * d)
        lfa_mask = torch.broadcast_to(lfa_mask, (lfa_mask.shape[0], *h.shape[1:])).flatten(-2)
        lfa_baseline = lfa_baseline.flatten(-2)
    forward = _damage_forward(model, inputs, clean, labels, metrics)
    with torch.no_grad():
        reference = forward(*inputs)  # f(x): the damage of the unperturbed model (0 up to rounding)
    ablation = LayerFeatureAblation(forward, module)
    n = clean.shape[0]
    out_damage: dict[str, Tensor] = {}
    for m, metric in enumerate(metrics):
        with torch.no_grad():
            attribution = ablation.attribute(
                tuple(inputs),
                layer_baselines=lfa_baseline,
                target=m,
                layer_mask=lfa_mask,
                attribute_to_layer_input=isinstance(spec, Heads),
            )
        flat = attribution.detach().reshape(n, -1)
        ids = torch.broadcast_to(lfa_mask, attribution.shape).reshape(n, -1)
        columns = []
        for g in read:
            hit = ids == g
            element = hit.to(torch.uint8).argmax(1, keepdim=True)
            value = flat.gather(1, element)[:, 0]
            # LFA: f(x) - f_do(x) with f = damage; a group absent from an example changes nothing
            columns.append(torch.where(hit.any(1), reference[:, m] - value, reference[:, m]))
        out_damage[metric] = torch.stack(columns, 1)
    return out_damage, LFA


def _capture(
    model: nn.Module, inputs: tuple[Tensor, ...], spec: LayerSpec, label: str
) -> tuple[Tensor, bool]:
    """The layer's activation on ``inputs``, and whether Captum's LFA can hook the point."""
    seen: dict[str, Any] = {}

    def edit(_: int, h: Tensor) -> None:
        seen.setdefault("h", h.detach())

    module = spec.module if isinstance(spec, (Heads, LayerCall)) else spec

    def output_hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        seen.setdefault("tensor_output", isinstance(output, Tensor))

    def input_hook(_module: nn.Module, args: Any) -> None:
        seen.setdefault("tensor_output", len(args) == 1 and isinstance(args[0], Tensor))

    hook = (
        module.register_forward_pre_hook(input_hook)
        if isinstance(spec, Heads)
        else module.register_forward_hook(output_hook)
    )
    try:
        with torch.no_grad(), intervene([spec], edit, labels=[label]):
            call_model(model, inputs)
    finally:
        hook.remove()
    h = seen["h"]
    if not isinstance(h, Tensor):
        raise ValueError(
            f"Layer '{label}' has several tensors that are intervened on jointly; a layer_mask "
            "needs a layer with one tensor. Pick the submodule that produces the tensor to split."
        )
    plain = not isinstance(spec, LayerCall) and not (
        isinstance(spec, Heads) and spec.call_index is not None
    )
    return h, plain and bool(seen.get("tensor_output"))


def _damage_forward(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    clean: Tensor,
    labels: Tensor | None,
    metrics: Sequence[str],
) -> Callable[..., Tensor]:
    """``forward(*inputs) -> (n, M)``: each metric's per-example damage against ``clean``."""
    call: Callable[..., Any] = (
        keyword_forward(model, inputs.keys) if isinstance(inputs, KeywordInputs) else model
    )

    def forward(*args: Tensor) -> Tensor:
        output = call(*args).reshape(clean.shape)
        return torch.stack([_per_example_damage(m, clean, output, labels) for m in metrics], 1)

    return forward
