"""Forward-mode G-NDI: Jacobian-vector products, vectorised over cells.

Every cell (a unit of a layer at an integration point ``a``) gets a scalar ``s``, and the
activation becomes ``h + (a - 1 + s) 1[unit] (h - b)``: the unit on its own path
``b + a (h - b)`` with the rest of the layer left at ``h``. The Jacobian-vector product with
respect to ``s`` at ``s = 0`` is ``J_{>L}(...) 1[unit] (h - b)``. ``torch.func.vmap`` over
``torch.func.jvp`` pushes many cells through one pass: first-order cells (``a = 1``) share one
primal pass, so first-order G-NDI of L layers takes about sqrt(L) passes over groups of
consecutive layers (at most ``tangent_chunk`` tangents each); path-integrated cells each carry
their own primal (batched by vmap after the layer, sharing the prefix before it). Models that
``torch.func`` cannot transform fall back to one ``torch.autograd.forward_ad`` pass per cell.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .job import (
    Activation,
    Cell,
    ScoringJob,
    assemble,
    capture_activations,
    check_effect_memory,
    first_order,
    job_hooks,
    make_cells,
    parts,
    rebuild,
)
from .units import Granularity, UnitIndex

__all__ = [
    "FORWARD_AD_LOCK",
    "TANGENT_CHUNK",
    "forward_effects",
    "is_missing_forward_ad",
    "tangent_groups",
]

logger = logging.getLogger("captum_gndi.engine")  # one debug log for the whole engine

FORWARD_AD_LOCK = threading.RLock()
"""Held during every forward-mode pass: PyTorch's forward-AD levels (which ``torch.func.jvp``
uses) are process-wide, so two threads scoring at once take turns here instead of closing each
other's level."""

TANGENT_CHUNK = 32
"""Tangents per vectorised forward pass (memory: this many copies of the activations)."""


def forward_effects(
    job: ScoringJob,
    granularity: Granularity = "layer",
    alphas: Sequence[float] = (1.0,),
    weights: Sequence[float] = (1.0,),
    tangent_chunk: int = TANGENT_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> list[Tensor]:
    """G-NDI effects by forward-mode AD: ``sum_i w_i J(path_u(a_i)) 1[u] (h - b)`` per unit u.

    First-order G-NDI (``alphas == (1.0,)``) pushes one tangent per unit through about
    ``sqrt(L)`` vectorised forward passes over groups of consecutive layers (list the layers in
    execution order for the best grouping). Path-integrated G-NDI integrates every unit along
    its own path ``b_u + a (h - b)_u`` with the rest of the layer at ``h``, so it converges to
    the effect of intervening on that unit alone; ``units x steps`` cells, vectorised
    ``tangent_chunk`` at a time.

    Args:
        job: The batch and its intervention points.
        granularity: ``"layer"``, ``"channel"``, ``"group"``; ``"unit"`` only with path
            integration (first-order unit scores need one tangent per neuron: use reverse).
        alphas: Integration points on [0, 1].
        weights: Integration weights, one per point.
        tangent_chunk: Tangents per vectorised pass; memory grows with it.
        progress: Called with the passes done (one primal pass plus one per tangent) after
            each vectorised pass.

    Returns:
        One tensor per layer, ``(K, N, *unit_shape)``.

    Raises:
        NotImplementedError: When an operator after the layer has no forward-AD formula
            (for example CPU scaled-dot-product attention); use reverse mode then.
        ValueError: For first-order ``granularity="unit"``.

    Examples:
        >>> effects = forward_effects(job)  # one (K, N) tensor per layer
    """
    if granularity == "unit" and first_order(alphas):
        raise ValueError(
            "granularity='unit' needs one forward pass per unit; use mode='reverse' or 'auto'."
        )
    output, activations = capture_activations(job)
    units = [job.units(p, h, granularity) for p, h in enumerate(activations)]
    cells = make_cells(units, alphas, weights)
    n, k = output.shape
    check_effect_memory(job, units, k, n, output.element_size(), "forward", len(cells))
    shared = first_order(alphas)
    size = math.ceil(len(cells) / tangent_groups(len(job.layers), len(cells), tangent_chunk))
    if not shared:
        size = min(size, tangent_chunk)
    columns = []
    for start in range(0, len(cells), size):
        group = cells[start : start + size]
        with FORWARD_AD_LOCK:
            columns.append(_group_jvps(job, units, group, shared))
        if progress is not None:
            progress(1 + len(group))
    return assemble(units, cells, torch.cat(columns))


def tangent_groups(n_layers: int, n_tangents: int, chunk: int) -> int:
    """Vectorised forward passes (one primal pass each) for ``n_tangents`` tangents over
    ``n_layers`` layers: about ``sqrt(n_layers)``, and at least enough for ``chunk`` per pass."""
    return max(round(math.sqrt(n_layers)), math.ceil(n_tangents / chunk))


def _group_jvps(
    job: ScoringJob, units: Sequence[UnitIndex], cells: Sequence[Cell], shared: bool
) -> Tensor:
    """Output tangents ``(len(cells), N, K)`` of one group, vectorised where torch.func can."""
    try:
        return _vectorised_jvps(job, units, cells, shared)
    except (NotImplementedError, RuntimeError) as error:
        if is_missing_forward_ad(error):
            raise
        logger.debug("torch.func could not vectorise the JVPs (%s); one pass per tangent", error)
    return torch.stack([_one_jvp(job, units, cell) for cell in cells])


def _vectorised_jvps(
    job: ScoringJob, units: Sequence[UnitIndex], cells: Sequence[Cell], shared: bool
) -> Tensor:
    """``d run / d s`` for every unit vector of ``s`` (one entry per cell), in one pass.

    With ``shared`` (first order) every cell sits at ``a = 1`` and all share one primal pass;
    otherwise row ``i`` of the vmap also moves cell ``i``'s unit to ``a_i`` on its own primal.
    """
    entries: dict[int, list[int]] = {}  # position -> indices into cells
    for index, cell in enumerate(cells):
        entries.setdefault(cell.position, []).append(index)
    layout = {}  # position -> (cell indices, first group, cell -> group one-hot matrix)
    for position, indices in entries.items():
        groups = [cells[i].group for i in indices]
        first, span = min(groups), max(groups) - min(groups) + 1
        onehot = torch.zeros(len(indices), span)
        onehot[torch.arange(len(indices)), torch.tensor(groups) - first] = 1.0
        layout[position] = (torch.tensor(indices), first, onehot)

    def scaled(s: Tensor, offset: Tensor) -> Tensor:
        def edit(position: int, h: Activation) -> Activation:
            _b, delta = job.delta(position, h)
            indices, first, onehot = layout[position]
            coefficients = (s + offset)[indices] @ onehot.to(s)  # per group of the span
            new = []
            for part, d in zip(parts(h), parts(delta)):
                scale = units[position].expand(coefficients, first, part)
                new.append(part + scale.to(device=d.device, dtype=d.dtype) * d)
            return rebuild(h, new)

        with job_hooks(job, list(entries), edit):
            return job.run()

    origin = torch.zeros(len(cells))  # 0/1 entries: exact in any dtype
    eye = torch.eye(len(cells))

    def tangent_of(direction: Tensor, offset: Tensor) -> Tensor:
        return torch.func.jvp(lambda s: scaled(s, offset), (origin,), (direction,))[1]

    with torch.no_grad():
        if shared:
            return torch.func.vmap(lambda d: tangent_of(d, origin))(eye)
        offsets = torch.diag(torch.tensor([cell.alpha - 1.0 for cell in cells]))
        return torch.func.vmap(tangent_of)(eye, offsets)


def _one_jvp(job: ScoringJob, units: Sequence[UnitIndex], cell: Cell) -> Tensor:
    """One forward pass with a dual activation; returns the output tangent ``(N, K)``."""

    def edit(position: int, h: Activation) -> Activation:
        _b, delta = job.delta(position, h)
        new = []
        for part, d in zip(parts(h), parts(delta)):
            tangent = units[position].indicator(cell.group, d) * d
            primal = part.detach() + (cell.alpha - 1.0) * tangent
            new.append(fwAD.make_dual(primal, tangent.expand_as(primal).contiguous()))
        return rebuild(h, new)

    with torch.no_grad(), fwAD.dual_level(), job_hooks(job, [cell.position], edit):
        output = job.run()
        tangent = fwAD.unpack_dual(output).tangent
    return torch.zeros_like(output) if tangent is None else tangent.detach()


def is_missing_forward_ad(error: BaseException) -> bool:
    """Whether ``error`` says an operator has no forward-mode AD formula."""
    text = str(error).lower()
    return isinstance(error, NotImplementedError) or "forward ad" in text or "forward-mode" in text
