"""Group units (``layer_mask``) in the validation harness and the criteria.

A ``layer_mask`` follows Captum's ``LayerFeatureAblation`` convention, as in
:meth:`captum_gndi.LayerGNDI.attribute` and :func:`captum_gndi.compute_gndi`: an integer tensor
that broadcasts to the layer's activation ``(N, *shape)`` and holds a group id ``0..G-1`` per
element; one mask for every layer, or a dict layer name -> mask. Over a data set (several
batches) the batch dimension of a mask is either 1 (the same groups for every example) or the
number of examples of the data set, in the order the data yields them: the harness then gives
every batch its own rows (:func:`batch_mask`). A mask with fewer dimensions than the activation
is shared by every example (it broadcasts from the right).

Within one batch of a per-example mask some group ids may be absent (no example of the batch has
an element in that group). Those groups' intervention is empty there: their damage is the clean
damage and their G-NDI is 0. :func:`compact_mask` renumbers a batch's groups to ``0..k-1`` for the
engine, which wants every id present, and :func:`expand_columns` puts the scores back in the
columns of the full ``0..G-1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

import torch
from torch import Tensor

from ..units import check_layer_mask

__all__ = [
    "LayerMask",
    "batch_mask",
    "check_mask_rows",
    "compact_mask",
    "expand_columns",
    "full_dims",
    "group_count",
    "group_sums",
    "resolve_layer_masks",
]

LayerMask = Union[Tensor, Mapping[str, Tensor]]
"""One integer mask for every layer, or a dict layer name -> mask."""


def resolve_layer_masks(
    layer_mask: LayerMask | None, names: Sequence[str]
) -> dict[str, Tensor] | None:
    """One mask per layer name (``None`` when no mask is given).

    Args:
        layer_mask: One tensor for every layer, or a dict name -> tensor (entries for other
            layers are ignored, as in :func:`captum_gndi.compute_gndi`).
        names: The layers' names.

    Returns:
        Dict name -> mask, or ``None``.

    Raises:
        TypeError: For something that is neither a tensor nor a mapping.
        ValueError: For a dict without an entry for one of the layers.

    Examples:
        >>> resolve_layer_masks(torch.zeros(1, 4, dtype=torch.long), ["0", "2"]).keys()
        dict_keys(['0', '2'])
    """
    if layer_mask is None:
        return None
    if isinstance(layer_mask, Tensor):
        return {name: layer_mask for name in names}
    if not isinstance(layer_mask, Mapping):
        raise TypeError(
            "layer_mask must be an integer tensor (one mask for every layer) or a dict layer "
            f"name -> tensor, got {type(layer_mask).__name__}."
        )
    missing = [n for n in names if n not in layer_mask]
    if missing:
        raise ValueError(f"layer_mask dict has no entry for layers {missing}.")
    return {name: layer_mask[name] for name in names}


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


def compact_mask(mask: Tensor, n_groups: int) -> tuple[Tensor, Tensor | None]:
    """Renumber a batch's mask so that its groups are exactly ``0..k-1`` (the engine's rule).

    Args:
        mask: The batch's mask (group ids in ``0..n_groups-1``, some possibly absent).
        n_groups: G of the whole data-set mask.

    Returns:
        ``(mask, None)`` when every id is present, else ``(renumbered mask, present ids)``;
        the present ids (ascending) are the columns of the full ``0..G-1``.

    Examples:
        >>> compact_mask(torch.tensor([[0, 2, 2]]), 3)
        (tensor([[0, 1, 1]]), tensor([0, 2]))
    """
    ids = torch.unique(mask)
    if ids.numel() == n_groups:
        return mask, None
    remap = torch.full((n_groups,), -1, dtype=torch.long, device=mask.device)
    remap[ids.long()] = torch.arange(ids.numel(), device=mask.device)
    return remap[mask.long()], ids.long()


def expand_columns(scores: Tensor, present: Tensor | None, n_groups: int) -> Tensor:
    """Per-group scores ``(n, k)`` of a compacted mask as ``(n, G)`` (absent groups: 0).

    Args:
        scores: Scores of the compacted groups.
        present: The ids :func:`compact_mask` returned (``None``: nothing to expand).
        n_groups: G.

    Returns:
        ``(n, G)`` scores.

    Examples:
        >>> expand_columns(torch.ones(1, 2), torch.tensor([0, 2]), 3)
        tensor([[1., 0., 1.]])
    """
    if present is None:
        return scores
    out = scores.new_zeros(scores.shape[0], n_groups)
    out[:, present.to(scores.device)] = scores
    return out


def group_sums(values: Tensor, mask: Tensor, groups: Sequence[int], n_groups: int) -> Tensor:
    """Sum ``values`` ``(n, *shape)`` over the elements of each group in ``groups``.

    Args:
        values: Per-example values shaped like the layer's activation.
        mask: The batch's mask (broadcastable to ``values``).
        groups: The group ids to return, one column each.
        n_groups: G.

    Returns:
        ``(n, len(groups))`` sums (0 for a group with no element in an example).

    Examples:
        >>> group_sums(torch.ones(2, 3), torch.tensor([[0, 1, 1]]), [1, 0], 2)
        tensor([[2., 1.],
                [2., 1.]])
    """
    n = values.shape[0]
    full = full_dims(mask, values.dim()).to(values.device).long()
    index = torch.broadcast_to(full, values.shape).reshape(n, -1)
    out = values.new_zeros(n, n_groups)
    out.scatter_add_(1, index, values.reshape(n, -1))
    return out[:, list(groups)]
