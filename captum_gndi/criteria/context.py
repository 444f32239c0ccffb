"""What every criterion is given, and the helpers criteria share.

A criterion is a small function ``criterion(ctx) -> (scores, per_example)`` (the
:class:`Criterion` protocol). Its :class:`CriterionContext` holds the model, the data, the
resolved layers, the units to score, one layer baseline per layer and the
:class:`~captum_gndi.criteria.settings.CriterionSettings` (target, integration points, seeds,
device, ...); :func:`build_context` builds it once, from a settings object or from keyword
arguments. :meth:`CriterionContext.batches` yields :class:`CriterionBatch` objects that carry
their own rows of every ``layer_mask``, so nothing on the shared context changes from batch to
batch. The helpers here (:func:`per_example_scores`, :func:`unit_sums`, ...) turn per-layer
tensors into the ``(N, U)`` per-example matrix every per-example criterion returns.

This module reads data only through :mod:`captum_gndi.runs` and builds scoring jobs for
:mod:`captum_gndi.engine`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..baselines import LayerBaseline
from ..engine import ScoringJob, capture_activations
from ..interventions import LayerCall, LayerSpec
from ..interventions.selection import Unit, group_masks, select_units
from ..runs import (
    Layers,
    batch_target,
    iterate_batches,
    make_runner,
    resolve_device,
    resolve_layers,
    warn_if_training,
)
from ..scoring import layer_baselines
from .groups import batch_mask, check_mask_rows, compact_mask, group_sums
from .settings import CriterionSettings

__all__ = [
    "Criterion",
    "CriterionBatch",
    "CriterionContext",
    "CriterionResult",
    "PerLayer",
    "UndefinedCriterion",
    "build_context",
    "check_float_inputs",
    "first_tensor",
    "per_example_scores",
    "unit_sums",
]

CriterionResult = tuple[np.ndarray, Optional[np.ndarray]]
"""``(scores, per_example)``: ``(U,)`` scores (``(S, U)`` for several runs, e.g. ``random``) and
``(N, U)`` per-example scores, or ``None`` for a criterion defined on the whole data set."""


class UndefinedCriterion(ValueError):
    """A criterion that is undefined for this model, layer or data (the message says why)."""


@dataclass(frozen=True)
class CriterionBatch:
    """One batch as :meth:`CriterionContext.batches` yields it, with its rows of every mask.

    Attributes:
        inputs: The batch's inputs, on the context's device.
        labels: Its labels, or ``None``.
        masks: Layer name -> this batch's rows of the layer's ``layer_mask`` (group units only).
    """

    inputs: tuple[Tensor, ...]
    labels: Tensor | None
    masks: dict[str, Tensor] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class CriterionContext:
    """Everything a criterion reads: the model, the data, the units and the settings.

    Build it with :func:`build_context`, which resolves the layers, the units and the
    baselines and checks the settings. It is frozen: nothing on it changes while criteria run
    (per-batch data travels in :class:`CriterionBatch`).

    Attributes:
        model: The model (in eval mode); criteria leave it unchanged.
        data: A re-iterable of batches (read through :func:`captum_gndi.runs.iterate_batches`).
        named: Layer name -> intervention point.
        units: The units to score (whole layers or channels), in forward order.
        baselines: Layer name -> layer baseline (``do(h := b)``).
        settings: The options (target, G-NDI's ``gndi_target``, ``norm`` and ``n_probes``,
            ``n_steps``, ``method``, seeds, ``channel_dim``, progress, batch limit), with
            ``device`` resolved to a ``torch.device``.
        layer_masks: Layer name -> its data-set ``layer_mask`` (as many dimensions as the
            activation; batch dimension 1 or one row per example) for group units.
        n_groups: Layer name -> its number of groups G.
    """

    model: nn.Module
    data: Iterable[Any]
    named: dict[str, LayerSpec]
    units: list[Unit]
    baselines: dict[str, LayerBaseline]
    settings: CriterionSettings
    layer_masks: dict[str, Tensor] = field(default_factory=dict)
    n_groups: dict[str, int] = field(default_factory=dict)

    @property
    def channel_level(self) -> bool:
        """Whether any unit is a single channel."""
        return any(unit.channel is not None for unit in self.units)

    @property
    def group_level(self) -> bool:
        """Whether any unit is a group of a ``layer_mask``."""
        return any(unit.group is not None for unit in self.units)

    def no_groups(self, criterion: str, why: str) -> None:
        """Raise :class:`UndefinedCriterion` when the units are groups of a ``layer_mask``.

        Args:
            criterion: The criterion's name.
            why: What the criterion needs that a group of activation elements lacks.

        Raises:
            UndefinedCriterion: At group granularity.
        """
        if self.group_level:
            raise UndefinedCriterion(
                f"{criterion} is undefined for groups of a layer_mask: {why}. Use "
                "granularity='layer' or 'channel' for it."
            )

    @property
    def layer_names(self) -> list[str]:
        """Layers that hold at least one unit, in forward order."""
        return list(dict.fromkeys(unit.layer for unit in self.units))

    def columns(self, layer: str) -> tuple[list[int], list[int | None]]:
        """Column indices and channels (group ids for group units) of one layer's units."""
        picked = [
            (i, u.group if u.group is not None else u.channel)
            for i, u in enumerate(self.units)
            if u.layer == layer
        ]
        return [i for i, _ in picked], [c for _, c in picked]

    def batches(self, what: str) -> Iterator[CriterionBatch]:
        """This rank's batches on the device, labelled ``what`` in the progress bar.

        Each :class:`CriterionBatch` carries its rows of every ``layer_mask``; after the last
        batch, checks that per-example masks had one row per example.
        """
        s = self.settings
        offset = 0
        for inputs, labels in iterate_batches(self.data, s.device, s.max_batches, s.progress, what):
            n = inputs[0].shape[0]
            masks = {
                name: batch_mask(mask, offset, n, name) for name, mask in self.layer_masks.items()
            }
            yield CriterionBatch(inputs, labels, masks)
            offset += n
        check_mask_rows(self.layer_masks, offset)

    def sums(
        self, batch: CriterionBatch, layer: str, values: Tensor, keys: Sequence[int | None]
    ) -> Tensor:
        """Sum per-example ``values`` (shaped like the layer's activation) over every unit.

        Args:
            batch: The batch ``values`` come from (its rows of the layer's mask are used).
            layer: The layer's name.
            values: ``(n, *shape)`` values of that batch.
            keys: The units' channels, or group ids (as :meth:`columns` gives them).

        Returns:
            ``(n, len(keys))`` sums over the whole layer, one channel or one group.
        """
        if layer in self.layer_masks:
            mask = batch.masks[layer]
            return group_sums(values, mask, [int(k) for k in keys], self.n_groups[layer])
        return unit_sums(values, keys, self.settings.channel_dim)

    def scoring_job(
        self,
        inputs: tuple[Tensor, ...],
        layer_masks: Sequence[Tensor | None] | None = None,
        target: Any = None,
    ) -> ScoringJob:
        """The engine's job for one batch: the model on ``inputs``, every scored layer.

        Args:
            inputs: The batch's inputs.
            layer_masks: One engine mask per scored layer (``"group"`` granularity).
            target: The batch's Captum target of the run's output (``None``: the whole output).

        Returns:
            The job.
        """
        names = self.layer_names
        return ScoringJob(
            run=make_runner(self.model, inputs, None, target),
            layers=[self.named[n] for n in names],
            labels=names,
            baselines=[self.baselines[n] for n in names],
            channel_dim=self.settings.channel_dim,
            layer_masks=layer_masks,
        )

    def engine_masks(self, batch: CriterionBatch) -> tuple[list[Tensor], list[Tensor | None]]:
        """The batch's masks as the engine wants them (every group id present).

        Args:
            batch: The batch.

        Returns:
            ``(masks, present)`` per scored layer: the (renumbered) mask, and the group ids it
            holds (``None`` when all are there; see
            :func:`~captum_gndi.criteria.groups.compact_mask`).
        """
        compacted = [compact_mask(batch.masks[n], self.n_groups[n]) for n in self.layer_names]
        return [m for m, _ in compacted], [p for _, p in compacted]

    def activations(self, inputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
        """Layer name -> its detached activation on ``inputs`` (one forward pass)."""
        return dict(zip(self.layer_names, capture_activations(self.scoring_job(inputs))[1]))

    def modules(self, criterion: str) -> list[nn.Module]:
        """The layers as plain modules (Captum's layer methods take no LayerCall)."""
        specs = [self.named[n] for n in self.layer_names]
        if any(isinstance(s, LayerCall) for s in specs):
            raise UndefinedCriterion(
                f"{criterion} uses Captum layer methods, which hook every call of a module; it "
                "is undefined for LayerCall points (a module that runs several times)."
            )
        return specs  # type: ignore[return-value]

    def resolved_target(
        self, inputs: tuple[Tensor, ...], labels: Tensor | None, criterion: str, what: str
    ) -> Tensor | int:
        """The batch's target classes, or :class:`UndefinedCriterion` when there are none."""
        target = self.settings.target
        if target is None or (target == "label" and labels is None):
            raise UndefinedCriterion(
                f"{criterion} {what}, so it needs labelled data and target='label' (or "
                "'predicted' / a class index); it is undefined for embedding models."
            )
        return batch_target(self.model, inputs, labels, target)

    def loss_labels(
        self, inputs: tuple[Tensor, ...], labels: Tensor | None, criterion: str
    ) -> Tensor:
        """Class labels of a cross-entropy loss on this batch (one per example)."""
        target = self.resolved_target(inputs, labels, criterion, "needs a cross-entropy loss")
        if isinstance(target, int):
            return torch.full((inputs[0].shape[0],), target, device=inputs[0].device)
        return target

    def captum_target(
        self, inputs: tuple[Tensor, ...], labels: Tensor | None, criterion: str
    ) -> Tensor | int:
        """The target of a Captum attribution on this batch (one scalar output per example)."""
        what = "attributes one scalar output (a target class) per example"
        return self.resolved_target(inputs, labels, criterion, what)


class Criterion(Protocol):
    """An importance criterion: scores every unit of the context, higher meaning more important.

    The first line of its docstring is its description in
    :func:`~captum_gndi.criteria.available_criteria`.
    """

    __name__: str

    def __call__(self, ctx: CriterionContext) -> CriterionResult:
        """Score ``ctx.units``: ``(U,)`` (or ``(S, U)``) scores and ``(N, U)`` or ``None``."""
        ...


def build_context(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    *,
    settings: CriterionSettings | None = None,
    units: Sequence[Unit] | None = None,
    **options: Any,
) -> CriterionContext:
    """Resolve layers, units and baselines and check the settings, once for all criteria.

    Args:
        model: The model (in eval mode: a warning otherwise).
        data: A DataLoader (or re-iterable) of ``(inputs, labels)`` or unlabelled inputs.
        layers: Dict name -> module or dotted names.
        settings: The options (default: :class:`CriterionSettings` defaults).
        units: Precomputed units (default:
            :func:`~captum_gndi.interventions.selection.select_units` with the settings'
            ``granularity``, ``n_channels``, ``seed``, ``channel_dim`` and ``layer_mask``).
        **options: Fields of :class:`CriterionSettings` (``granularity``, ``baseline``,
            ``target``, ``gndi_target``, ``norm``, ``n_probes``, ``n_channels``, ``seed``,
            ``n_random``, ``n_steps``, ``method``,
            ``channel_dim``, ``device``, ``progress``, ``max_batches``, ``layer_mask``), replacing
            those of ``settings``.

    Returns:
        The :class:`CriterionContext`.

    Raises:
        ValueError: For ``n_steps`` or ``n_random`` below 1, an unknown target, ``gndi_target``,
            norm or integration rule, ``n_probes`` the norm cannot take, layers that are not in
            the model, group units without a ``layer_mask``, or a mask the engine rejects.
        TypeError: For an unknown option.

    Examples:
        >>> ctx = build_context(model, loader, ["0", "2"], granularity="channel")
        >>> [u.name for u in ctx.units][:2]
        ['0[0]', '0[1]']
    """
    s = CriterionSettings.from_options(settings, **options)
    warn_if_training(model)
    named = resolve_layers(model, layers)
    device = resolve_device(model, s.device)
    if units is None:
        units = select_units(
            model, data, named, s.granularity, s.n_channels, s.seed, s.channel_dim, device,
            s.layer_mask,
        )  # fmt: skip
    units = list(units)
    masks, n_groups = group_masks(model, data, named, units, s.layer_mask, device)
    baselines = layer_baselines(model, data, named, s.baseline, device, s.progress, s.max_batches)
    return CriterionContext(
        model=model,
        data=data,
        named=named,
        units=units,
        baselines=baselines,
        settings=dataclasses.replace(s, device=device),
        layer_masks=masks,
        n_groups=n_groups,
    )


# ----------------------------------------------------------------------------------------------
# helpers of the per-example criteria


PerLayer = Callable[[str, list[Union[int, None]]], Tensor]
"""``(layer name, channels of its units) -> (n, len(channels))`` per-example scores."""


def unit_sums(values: Tensor, channels: Sequence[int | None], channel_dim: int) -> Tensor:
    """Sum ``values`` ``(N, *shape)`` over each unit: the whole layer or one channel.

    Args:
        values: Per-example values shaped like the layer's activation.
        channels: One entry per unit: a channel index, or ``None`` for the whole layer.
        channel_dim: Dimension of ``values`` holding channels.

    Returns:
        ``(N, len(channels))`` sums.

    Examples:
        >>> unit_sums(torch.ones(2, 3, 4), [None, 0], channel_dim=1)
        tensor([[12., 4.],
                [12., 4.]])
    """
    out = []
    per_channel = None
    for channel in channels:
        if channel is None:
            out.append(values.flatten(1).sum(1))
            continue
        if per_channel is None:
            moved = values.movedim(channel_dim, -1)
            per_channel = moved.reshape(moved.shape[0], -1, moved.shape[-1]).sum(1)
        out.append(per_channel[:, channel])
    return torch.stack(out, 1)


def first_tensor(value: Any) -> Tensor:
    """``value`` if it is a tensor, else the first tensor it holds (Captum returns tuples).

    Args:
        value: A tensor, or a tuple / list holding tensors.

    Returns:
        The tensor.

    Examples:
        >>> first_tensor((torch.zeros(2), "extra")).shape
        torch.Size([2])
    """
    return value if isinstance(value, Tensor) else next(v for v in value if isinstance(v, Tensor))


def check_float_inputs(inputs: tuple[Tensor, ...], criterion: str) -> None:
    """Raise :class:`UndefinedCriterion` unless every input is floating-point.

    Criteria that interpolate the inputs (or feed them an all-ones tensor) cannot run on
    integer inputs such as token ids.

    Args:
        inputs: The batch's input tensors.
        criterion: The criterion's name, for the message.

    Raises:
        UndefinedCriterion: For an integer input.

    Examples:
        >>> check_float_inputs((torch.zeros(2, 3),), "synflow")  # passes silently
    """
    if not all(t.is_floating_point() for t in inputs):
        raise UndefinedCriterion(
            f"{criterion} interpolates the inputs from a zero baseline; it is undefined for "
            "integer inputs such as token ids."
        )


def per_example_scores(
    ctx: CriterionContext,
    what: str,
    batch_fn: Callable[[CriterionBatch], PerLayer],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example scores ``(N, U)`` over all batches, and their mean over examples.

    Args:
        ctx: The context.
        what: The progress bar's label.
        batch_fn: ``batch_fn(batch)`` does the batch's shared work and returns the function
            that scores the units of one layer.

    Returns:
        ``(mean over examples (U,), per-example scores (N, U))``, float64.

    Examples:
        >>> def batch_fn(batch):
        ...     return lambda name, channels: torch.ones(len(batch.inputs[0]), len(channels))
        >>> mean, rows = per_example_scores(ctx, "ones", batch_fn)
    """
    rows = []
    for batch in ctx.batches(what):
        per_layer = batch_fn(batch)
        out = torch.zeros(batch.inputs[0].shape[0], len(ctx.units), dtype=torch.float64)
        for name in ctx.layer_names:
            columns, channels = ctx.columns(name)
            out[:, columns] = per_layer(name, channels).detach().double().cpu()
        rows.append(out)
    stacked = torch.cat(rows).numpy()
    return stacked.mean(0), stacked
