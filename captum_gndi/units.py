"""How a layer's activation is split into the units G-NDI scores.

Every granularity is a *grouping* of the activation's elements, given by an integer index tensor
``M`` that broadcasts to the activation ``(N, *shape)`` and holds a group id ``0..G-1`` per
element; the G-NDI of group ``g`` is ``|| J (1[M = g] * (h - b)) ||``, the first-order effect of
intervening on that group alone:

- ``"layer"``: one group (the whole layer);
- ``"channel"``: one group per index of the dimension(s) ``channel_dim`` (an int, or a tuple such
  as ``(1, 2)`` for position x head on ``(N, T, H, d)``), scores shaped ``(N, *sizes)``;
- ``"group"``: the user's ``layer_mask`` with Captum's ``LayerFeatureAblation`` semantics (batch
  dimension 1 or N), scores ``(N, G)``;
- ``"unit"``: every element its own group, scores shaped like the activation.

Both engines use the same :class:`UnitIndex`: reverse mode sums per-element contributions
``dy/dh * (h - b)`` into groups (:meth:`UnitIndex.reduce`), forward mode pushes one tangent per
group (:meth:`UnitIndex.indicator`, :meth:`UnitIndex.expand`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor

__all__ = [
    "ChannelDim",
    "GRANULARITIES",
    "Granularity",
    "UnitIndex",
    "channel_dims",
    "check_layer_mask",
    "unit_index",
]

Granularity = Literal["layer", "channel", "group", "unit"]
GRANULARITIES = ("layer", "channel", "group", "unit")
ChannelDim = Union[int, Sequence[int]]


@dataclass
class UnitIndex:
    """The units of one layer.

    Attributes:
        granularity: Which grouping this is.
        mask: Group id per element, broadcastable to the activation (``None`` for one group).
        n_groups: The number of groups G.
        shape: Per-example shape of the scores (``()``, ``sizes``, ``(G,)`` or the activation's).
    """

    granularity: str
    mask: Tensor | None
    n_groups: int
    shape: tuple[int, ...]

    def reduce(self, contribution: Tensor) -> Tensor:
        """Sum per-element contributions ``(k, N, *activation)`` into ``(k, N, *self.shape)``."""
        if self.granularity == "layer":
            return contribution.flatten(2).sum(-1)
        if self.granularity == "unit":
            return contribution
        k, n = contribution.shape[:2]
        index = torch.broadcast_to(self.mask, contribution.shape[1:]).reshape(1, n, -1)
        out = contribution.new_zeros(k, n, self.n_groups)
        out.scatter_add_(2, index.expand(k, n, -1), contribution.reshape(k, n, -1))
        return out.reshape(k, n, *self.shape)

    def indicator(self, group: int, like: Tensor) -> Tensor:
        """``1[M = group]`` as a float tensor broadcastable to ``like`` (ones for one group)."""
        if self.mask is None:
            return torch.ones((), dtype=like.dtype, device=like.device)
        return (self.mask == group).to(dtype=like.dtype, device=like.device)

    def expand(self, values: Tensor, first: int, like: Tensor) -> Tensor:
        """Per-element coefficients from per-group ``values`` for groups ``first, first+1, ...``.

        Elements of groups outside that range get 0. Differentiable in ``values`` and safe under
        ``torch.func.vmap`` (a gather from a padded vector).
        """
        if self.mask is None:
            return values.sum()
        count = values.shape[0]
        padded = torch.cat([values, values.new_zeros(1)])
        local = self.mask.to(like.device) - first
        local = torch.where((local >= 0) & (local < count), local, torch.full_like(local, count))
        return padded[local]


def channel_dims(shape: Sequence[int], channel_dim: ChannelDim, label: str) -> tuple[int, ...]:
    """``channel_dim`` as positive dimensions of an activation of ``shape``, with clear errors."""
    if isinstance(channel_dim, int):
        dims: tuple = (channel_dim,)
    elif isinstance(channel_dim, (tuple, list)):
        dims = tuple(channel_dim)
    else:
        dims = ()
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise TypeError(
            f"channel_dim must be an int or a tuple of ints, got {channel_dim!r}; e.g. 1 for "
            "(N, C, H, W), -1 for (N, T, D), (1, 2) for position x head on (N, T, H, d)."
        )
    positive = []
    for d in dims:
        if d == 0 or not -len(shape) < d < len(shape):
            raise ValueError(
                f"channel_dim={d} is not a channel dimension of the activation of '{label}' "
                f"(shape {tuple(shape)}; dimension 0 indexes examples); use 1 for (N, C, ...) "
                "or -1 for (N, T, D) activations, or granularity='layer'."
            )
        positive.append(d % len(shape))
    if len(set(positive)) != len(positive):
        raise ValueError(
            f"channel_dim={channel_dim!r} names the same dimension twice for the activation of "
            f"'{label}' (shape {tuple(shape)}); give each dimension once."
        )
    return tuple(positive)


def check_layer_mask(mask: Tensor, shape: Sequence[int], label: str) -> int:
    """Validate a ``layer_mask`` against an activation of ``shape``; return the group count G.

    Raises:
        TypeError: For a non-tensor or non-integer mask.
        ValueError: For a mask that does not broadcast (batch dimension 1 or N), or group ids
            that are not exactly ``0..G-1`` (negative ids, or empty groups).
    """
    if not isinstance(mask, Tensor):
        raise TypeError(
            f"layer_mask for '{label}' must be an integer tensor, got {type(mask).__name__}."
        )
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise TypeError(
            f"layer_mask for '{label}' has dtype {mask.dtype}; give integer group ids "
            "(e.g. mask.long()) with values 0..G-1."
        )
    try:
        broadcasts = torch.broadcast_shapes(tuple(mask.shape), tuple(shape)) == tuple(shape)
    except RuntimeError:
        broadcasts = False
    if not broadcasts:
        raise ValueError(
            f"layer_mask of shape {tuple(mask.shape)} does not broadcast to the activation of "
            f"'{label}' with shape {tuple(shape)}; give a mask of shape "
            f"(1, {', '.join(map(str, shape[1:]))}) or {tuple(shape)} (batch dimension 1 or N)."
        )
    ids = torch.unique(mask)
    n_groups = int(ids.max().item()) + 1 if ids.numel() else 0
    if ids.numel() == 0 or int(ids.min().item()) < 0 or ids.numel() != n_groups:
        missing = sorted(set(range(n_groups)) - set(ids.tolist()))[:5]
        raise ValueError(
            f"layer_mask for '{label}' must use every group id 0..G-1 exactly (Captum's "
            f"LayerFeatureAblation convention); found ids {ids.tolist()[:10]}"
            + (f", missing {missing}" if missing else "")
            + ". Renumber the groups, e.g. with torch.unique(mask, return_inverse=True)[1]."
        )
    return n_groups


def unit_index(
    granularity: str,
    shape: Sequence[int],
    label: str,
    channel_dim: ChannelDim = 1,
    layer_mask: Tensor | None = None,
    device: torch.device | None = None,
) -> UnitIndex:
    """The :class:`UnitIndex` of an activation of ``shape`` (examples first).

    Args:
        granularity: ``"layer"``, ``"channel"``, ``"group"`` or ``"unit"``.
        shape: The activation's shape ``(N, ...)``.
        label: The layer's name (for errors).
        channel_dim: The unit dimension(s) for ``"channel"``.
        layer_mask: The group ids for ``"group"``.
        device: Where the index lives.

    Returns:
        The grouping.

    Examples:
        >>> unit_index("channel", (4, 7, 12, 16), "attn", channel_dim=(1, 2)).shape
        (7, 12)
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    shape = tuple(shape)
    if granularity == "layer":
        return UnitIndex("layer", None, 1, ())
    if granularity == "unit":
        count = math.prod(shape[1:])
        ids = torch.arange(count, device=device).reshape(1, *shape[1:])
        return UnitIndex("unit", ids, count, shape[1:])
    if granularity == "group":
        if layer_mask is None:
            raise ValueError("granularity='group' needs a layer_mask.")
        n_groups = check_layer_mask(layer_mask, shape, label)
        ids = layer_mask.to(device=device, dtype=torch.long)
        return UnitIndex("group", ids, n_groups, (n_groups,))
    dims = channel_dims(shape, channel_dim, label)
    sizes = tuple(shape[d] for d in dims)
    view = [1] * len(shape)
    mask = torch.zeros(view, dtype=torch.long, device=device)
    stride = 1
    for d, size in reversed(list(zip(dims, sizes))):
        view_d = [1] * len(shape)
        view_d[d] = size
        mask = mask + torch.arange(size, device=device).reshape(view_d) * stride
        stride *= size
    return UnitIndex("channel", mask, math.prod(sizes), sizes)
