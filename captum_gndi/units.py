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

A ``layer_mask`` is resolved to one mask per layer by the one resolver :func:`layer_masks`, and
checked here (:func:`check_layer_mask` against one batch's activation; :func:`group_count`,
:func:`batch_mask` and :func:`check_mask_rows` for a data-set mask with one row per example).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor

__all__ = [
    "ChannelDim",
    "GRANULARITIES",
    "Granularity",
    "LayerMask",
    "UnitIndex",
    "batch_mask",
    "channel_dims",
    "check_layer_mask",
    "check_mask_rows",
    "full_dims",
    "group_count",
    "layer_masks",
    "resolve_layer_masks",
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


LayerMask = Union[Tensor, Mapping[str, Tensor], Sequence[Tensor]]
"""One integer mask for every layer, a dict layer name -> mask, or one mask per layer."""


def layer_masks(layer_mask: LayerMask | None, names: Sequence[str]) -> list[Tensor] | None:
    """The one ``layer_mask`` resolver: one mask per layer, in the order of ``names``.

    Every entry point that takes ``layer_mask`` (:meth:`captum_gndi.LayerGNDI.attribute`,
    :func:`captum_gndi.compute_gndi`, :func:`captum_gndi.verify_top_k`, the validation harness,
    the criteria) resolves it here, so they accept the same forms.

    Args:
        layer_mask: One integer tensor for every layer, a dict name -> tensor (entries for
            other layers are ignored), or a list / tuple with one tensor per layer.
        names: The layers' names (duplicates allowed).

    Returns:
        One mask per name, or ``None`` when no mask is given.

    Raises:
        TypeError: For something that is neither a tensor, a mapping nor a list of tensors.
        ValueError: For a dict without an entry for one of the layers, or a list whose length
            is not the number of layers.

    Examples:
        >>> len(layer_masks(torch.zeros(1, 4, dtype=torch.long), ["0", "2"]))
        2
    """
    if layer_mask is None:
        return None
    if isinstance(layer_mask, Tensor):
        return [layer_mask] * len(names)
    if isinstance(layer_mask, Mapping):
        missing = [n for n in names if n not in layer_mask]
        if missing:
            raise ValueError(f"layer_mask dict has no entry for layers {missing}.")
        return [layer_mask[n] for n in names]
    if isinstance(layer_mask, (list, tuple)) and all(isinstance(m, Tensor) for m in layer_mask):
        if len(layer_mask) != len(names):
            raise ValueError(
                f"Got {len(layer_mask)} layer masks for {len(names)} layers; give one mask "
                "per layer, or one tensor for all."
            )
        return list(layer_mask)
    raise TypeError(
        "layer_mask must be an integer tensor (one mask for every layer), a dict layer name -> "
        f"tensor or a list with one tensor per layer, got {type(layer_mask).__name__}."
    )


def resolve_layer_masks(
    layer_mask: LayerMask | None, names: Sequence[str]
) -> dict[str, Tensor] | None:
    """:func:`layer_masks` as a dict name -> mask (``None`` when no mask is given).

    Examples:
        >>> resolve_layer_masks(torch.zeros(1, 4, dtype=torch.long), ["0", "2"]).keys()
        dict_keys(['0', '2'])
    """
    masks = layer_masks(layer_mask, names)
    return None if masks is None else dict(zip(names, masks))


def full_dims(mask: Tensor, ndim: int) -> Tensor:
    """``mask`` with leading singleton dimensions up to ``ndim`` (a shared mask gets batch 1).

    Args:
        mask: A layer mask.
        ndim: The activation's number of dimensions (examples first).

    Returns:
        The same mask, viewed with ``ndim`` dimensions when it had fewer.

    Examples:
        >>> full_dims(torch.zeros(4, 1, 1, dtype=torch.long), 4).shape
        torch.Size([1, 4, 1, 1])
    """
    if isinstance(mask, Tensor) and mask.dim() < ndim:
        return mask.reshape((1,) * (ndim - mask.dim()) + tuple(mask.shape))
    return mask


def group_count(mask: Tensor, shape: Sequence[int], label: str) -> int:
    """Check a data-set ``layer_mask`` against an activation of ``shape``; return G.

    The mask's batch dimension may be 1 or any number of rows (one per example of the data
    set; :func:`batch_mask` checks the row count against the data). Everything else is the
    engine's check (:func:`captum_gndi.units.check_layer_mask`): an integer tensor that
    broadcasts to the activation, with every group id ``0..G-1`` used.

    Args:
        mask: The mask.
        shape: The activation's shape on one batch ``(n, *shape)``.
        label: The layer's name, for errors.

    Returns:
        The number of groups G.

    Examples:
        >>> group_count(torch.tensor([[0, 0, 1]]), (8, 3), "fc")
        2
    """
    full = full_dims(mask, len(shape))
    rows = full.shape[0] if isinstance(full, Tensor) and full.dim() == len(shape) else 1
    if rows == 1:  # shared: checked against the batch's activation itself
        return check_layer_mask(full, tuple(shape), label)
    return check_layer_mask(full, (rows, *tuple(shape)[1:]), label)


def batch_mask(mask: Tensor, offset: int, n: int, label: str) -> Tensor:
    """The rows of a data-set mask for the batch of examples ``offset .. offset + n - 1``.

    Args:
        mask: A checked data-set mask (see :func:`group_count`).
        offset: Index of the batch's first example in the data set.
        n: The batch size.
        label: The layer's name, for errors.

    Returns:
        The mask itself when it is shared (batch dimension 1, or fewer dimensions than the
        activation), else its rows ``offset : offset + n``.

    Raises:
        ValueError: When the data has more examples than the mask has rows.

    Examples:
        >>> batch_mask(torch.arange(6).reshape(3, 2), 1, 2, "fc").tolist()
        [[2, 3], [4, 5]]
    """
    if mask.dim() == 0 or mask.shape[0] == 1:
        return mask
    rows = mask.shape[0]
    if offset + n > rows:
        raise ValueError(
            f"layer_mask for '{label}' has {rows} rows (one per example), but the data has more "
            f"examples (a batch covers examples {offset}..{offset + n - 1}); give a mask with "
            "batch dimension 1 (the same groups for every example) or one row per example of "
            "the data, in the order it is read (with max_batches: of the batches used)."
        )
    return mask[offset : offset + n]


def check_mask_rows(masks: Mapping[str, Tensor] | None, n_examples: int) -> None:
    """Raise when a per-example mask's row count is not the data's number of examples.

    Args:
        masks: Layer name -> data-set mask, with as many dimensions as the activation
            (:func:`full_dims`).
        n_examples: Examples read from the data.

    Raises:
        ValueError: For a per-example mask whose row count is not ``n_examples``.

    Examples:
        >>> check_mask_rows({"fc": torch.zeros(1, 3, dtype=torch.long)}, 10)  # shared: passes
    """
    for name, mask in (masks or {}).items():
        if mask.shape[0] > 1 and mask.shape[0] != n_examples:
            raise ValueError(
                f"layer_mask for '{name}' has {mask.shape[0]} rows (one per example), but the "
                f"data has {n_examples} examples; give one row per example, or batch dimension 1."
            )
