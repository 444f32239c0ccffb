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

The mask checks and the one ``layer_mask`` resolver live in :mod:`captum_gndi.units`, below
the interventions and the criteria; ``LayerMask``, :func:`resolve_layer_masks`,
:func:`full_dims`, :func:`group_count`, :func:`batch_mask` and :func:`check_mask_rows` are
re-exported here under their old import path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..units import (
    LayerMask,
    batch_mask,
    check_mask_rows,
    full_dims,
    group_count,
    resolve_layer_masks,
)

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
