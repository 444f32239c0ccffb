"""Units and their selection: what one intervention neutralises.

A :class:`Unit` is a whole layer (``Unit("layer3.1.bn2")``), one channel of a layer's activation
(``Unit("layer3.1.bn2", channel=7)``) or one group of a ``layer_mask``
(``Unit("layer3.1.bn2", group=3)``, named ``"layer3.1.bn2[g3]"``; Captum's
``LayerFeatureAblation`` semantics, see :mod:`captum_gndi.criteria.groups`). It is the one unit
type of the package: the validation harness, the criteria and :func:`captum_gndi.verify_top_k`
(which names a unit by :attr:`Unit.key`, ``(layer, index)``) all use it. How the units of one
layer split its activation, for the engines, is :class:`captum_gndi.units.UnitIndex`.

:func:`select_units` lists the units of a set of layers in forward order (all channels or
groups, or a seeded random sample of them); :func:`group_masks` checks the masks of group units
against the data; :func:`probe_layers` finds the forward order and the activation shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..model_calls import call_model
from ..runs import Layers, channel_count, first_batch, resolve_device, resolve_layers
from ..units import LayerMask, full_dims, group_count, resolve_layer_masks
from .hooks import LayerSpec, intervene

__all__ = ["Unit", "group_masks", "probe_layers", "select_units"]


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
    def index(self) -> int | None:
        """The channel or the group id (``None`` for a whole layer)."""
        return self.group if self.group is not None else self.channel

    @property
    def key(self) -> tuple[str, int | None]:
        """``(layer, index)``: how :func:`captum_gndi.verify_top_k` names the unit."""
        return (self.layer, self.index)

    @property
    def name(self) -> str:
        """``"layer"``, ``"layer[channel]"`` or ``"layer[g<group>]"``."""
        if self.group is not None:
            return f"{self.layer}[g{self.group}]"
        return self.layer if self.channel is None else f"{self.layer}[{self.channel}]"


def probe_layers(
    model: nn.Module, inputs: tuple[Tensor, ...], named: Mapping[str, LayerSpec]
) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """Forward-order position and activation shape of every layer, from one forward pass.

    Args:
        model: The model.
        inputs: One batch of inputs.
        named: Layer name -> intervention point.

    Returns:
        ``(depth, shapes)``: layer name -> position in execution order (from 0), and layer
        name -> the activation's shape as an edit sees it (a :class:`~captum_gndi.Heads`
        point's input split into heads).

    Raises:
        ValueError: For a layer with several tensors intervened on jointly.
    """
    names, specs = list(named), list(named.values())
    order: list[int] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def edit(position: int, h: Tensor) -> None:
        if isinstance(h, tuple):
            raise ValueError(
                f"Layer '{names[position]}' has {len(h)} output tensors that are intervened on "
                "jointly; ablation needs one tensor per layer. Pick the submodule that produces "
                "the tensor you want."
            )
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
    depth, shapes = probe_layers(model, inputs, named)
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
    _, shapes = probe_layers(model, first_batch(data, device)[0], {n: named[n] for n in grouped})
    counts = {name: group_count(masks[name], shapes[name], name) for name in grouped}
    too_high = [u.name for u in units if u.group is not None and u.group >= counts[u.layer]]
    if too_high:
        raise ValueError(f"Units {too_high[:5]} name groups that the layer_mask does not have.")
    full = {name: full_dims(masks[name], len(shapes[name])).to(device) for name in grouped}
    return full, counts
