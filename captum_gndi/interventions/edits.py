"""The edit functions: what an intervention does to a layer's activation.

Both back ends (hooks on the full forward pass, :mod:`~captum_gndi.interventions.hooks`; the
traced suffix, :mod:`~captum_gndi.interventions.suffix`) hand the clean activation ``h`` to the
same function, :func:`set_units`, which returns ``U`` edited copies stacked on the example
dimension: copy ``j`` with unit ``ids[j]`` set to the baseline ``b``, everything else left at
``h``. A unit is the whole layer (``mask=None``), or the elements where an integer ``mask``
(broadcastable to ``h``: the channel index of :func:`captum_gndi.units.unit_index`, or a
``layer_mask``'s group ids) equals its id.

``b`` is any tensor shaped like ``h``: a constant, the data-set mean, or a per-example value
(the activation of a corrupted input, for patching), so the edit itself does not care where the
baseline came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["set_units"]


def set_units(h: Tensor, b: Tensor, mask: Tensor | None, ids: Sequence[int | None]) -> Tensor:
    """``len(ids)`` copies of ``h`` stacked on dim 0, copy j with unit ``ids[j]`` set to ``b``.

    Args:
        h: The clean activation ``(N, ...)`` (no gradient flows back into it).
        b: The baseline, shaped like ``h`` (a broadcast view is fine).
        mask: Integer unit ids broadcastable to ``h``, or ``None`` for the whole layer (one
            unit: every copy is ``b``).
        ids: The unit id of each copy (``None`` entries with ``mask=None``).

    Returns:
        ``(len(ids) * N, ...)``: the edited copies, copy-major.

    Examples:
        >>> h, b = torch.ones(2, 3), torch.zeros(2, 3)
        >>> set_units(h, b, torch.tensor([[0, 1, 1]]), [1]).tolist()
        [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    """
    h = h.detach()
    if mask is None:  # whole layer: one unit
        return b.to(h.dtype).clone().repeat(len(ids), *([1] * (h.dim() - 1)))
    full = torch.broadcast_to(mask.to(h.device), h.shape)
    index = torch.tensor(list(ids), device=h.device).view(-1, *([1] * h.dim()))
    out = torch.where(full.unsqueeze(0) == index, b.to(h.dtype).unsqueeze(0), h.unsqueeze(0))
    return out.reshape(len(ids) * h.shape[0], *h.shape[1:])
