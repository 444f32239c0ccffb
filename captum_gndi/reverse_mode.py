"""Reverse-mode G-NDI: vector-Jacobian products from one recorded forward pass.

One forward pass adds a zero leaf ``eps`` to every layer's activation, and one vector-Jacobian
product per row of the readout (one per output dimension, built one row at a time so memory is
linear in K; or ``n_probes`` random rows, :mod:`captum_gndi.readouts`) gives ``v . dy/dh`` for
all layers at once; ``J(h - b)`` is summed into units one row (one chunk) at a time.
Path-integrated G-NDI needs one recorded pass per cell; the input path (``path="input"``,
:func:`input_path_effects`) one recorded pass per integration point for all units.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
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
from .readouts import Readout, accumulation_dtype, check_precision
from .units import Granularity, UnitIndex

__all__ = [
    "EXACT",
    "VJP_CHUNK",
    "Graph",
    "graph_activations",
    "input_path_effects",
    "record",
    "reverse_effects",
    "vjp_effects",
]

logger = logging.getLogger("captum_gndi.engine")  # one debug log for the whole engine

VJP_CHUNK = 1
"""Output dimensions per vector-Jacobian product. 1: one plain backward pass per output
dimension, which measured faster on CPU than batching them with ``is_grads_batched`` (vmap over
the backward falls back to per-sample loops for convolution and ReLU backward; see
docs/benchmarks.md). Larger values batch that many VJPs (and hold that many gradients)."""


@dataclass
class Graph:
    """A forward pass recorded for reverse mode: zero leaves added to the layers' activations."""

    output: Tensor
    leaves: list[tuple[Tensor, ...]]
    deltas: list[tuple[Tensor, ...]]


def record(
    job: ScoringJob,
    positions: Sequence[int],
    cell: Cell | None = None,
    units: Sequence[UnitIndex] | None = None,
) -> Graph:
    """One forward pass in which the layers at ``positions`` output ``h + eps``.

    With a ``cell`` (path integration), its unit is moved to ``b + a (h - b)`` first and its
    ``deltas`` are restricted to the unit: ``1[unit] (h - b)``.
    """
    deltas: dict[int, tuple[Tensor, ...]] = {}
    leaves: dict[int, tuple[Tensor, ...]] = {}

    def edit(position: int, h: Activation) -> Activation:
        _b, delta = job.delta(position, h)
        tensors, ds = parts(h), parts(delta)
        if cell is not None and units is not None:
            ds = tuple(units[position].indicator(cell.group, d) * d for d in ds)
            tensors = tuple(t + (cell.alpha - 1.0) * d for t, d in zip(tensors, ds))
        deltas[position] = ds
        leaves[position] = tuple(torch.zeros_like(t, requires_grad=True) for t in tensors)
        return rebuild(h, [t + eps for t, eps in zip(tensors, leaves[position])])

    with torch.enable_grad(), job_hooks(job, positions, edit):
        output = job.run()
    job.check_output(output)
    return Graph(output, [leaves[p] for p in positions], [deltas[p] for p in positions])


EXACT = Readout()
"""Unit rows: one VJP per output dimension."""


def vjp_effects(
    graph: Graph,
    job: ScoringJob,
    units: Sequence[UnitIndex],
    chunk: int,
    readout: Readout = EXACT,
    reference: Tensor | None = None,
) -> list[Tensor]:
    """``sum <v_k . dy/dh, h - b>`` per unit, for every row ``v_k`` of the readout.

    ``reference`` is the output the readout's rows are drawn from (the Fisher probes' softmax;
    default: the graph's own output; the input path passes the clean output, so every point
    of the path is projected on the same rows).

    Exact readouts use the unit rows (row k gives output column k); random probes use their
    ``n_probes`` rows (:mod:`captum_gndi.readouts`). The rows are processed ``chunk`` at a time;
    each chunk's gradients are reduced to units and written into a result allocated once,
    before the next chunk is computed, so memory holds ``chunk`` gradients. (Keeping one small
    tensor per chunk instead pins the allocator's heap between the large gradient buffers:
    +3.5 GiB over 384 output dimensions of MiniLM, see
    docs/benchmarks.md.)
    """
    output = graph.output
    reference = output.detach() if reference is None else reference
    readout = replace(readout, output_shape=getattr(job.run, "output_shape", None))
    k_total = readout.rows_count(output)
    delta = graph.deltas[0][0]
    check_effect_memory(job, units, k_total, delta.shape[0], delta.element_size(), "reverse")
    flat_leaves = [leaf for group in graph.leaves for leaf in group]
    effects: list[Tensor | None] = [None] * len(graph.leaves)
    for start in range(0, k_total, chunk):
        stop = min(start + chunk, k_total)
        grad_outputs = readout.rows(start, stop, reference)
        grads = iter(
            _batched_grad(output, flat_leaves, grad_outputs, stop < k_total, job.grad_kwargs)
        )
        for i, (index, deltas) in enumerate(zip(units, graph.deltas)):
            part = None
            for delta in deltas:
                grad = next(grads)
                if grad is None:  # the output does not depend on this tensor
                    grad = delta.new_zeros(()).expand(stop - start, *delta.shape)
                dtype = accumulation_dtype(delta.dtype)  # float32 products for half precision
                reduced = index.reduce(grad.to(dtype) * delta.to(dtype))
                part = reduced if part is None else part + reduced
            if effects[i] is None:  # on the output's device, where the readout reads them
                shape = (k_total, *part.shape[1:])
                effects[i] = torch.empty(shape, dtype=part.dtype, device=output.device)
            effects[i][start:stop] = part  # type: ignore[index]
    labels = list(job.labels) if len(job.labels) == len(effects) else None
    check_precision(effects, output.dtype, labels)  # type: ignore[arg-type]
    return effects  # type: ignore[return-value]


def _batched_grad(
    output: Tensor,
    leaves: list[Tensor],
    grad_outputs: Tensor,
    retain: bool,
    grad_kwargs: dict[str, Any] | None = None,
) -> Sequence[Tensor | None]:
    """``autograd.grad`` for each of a ``(k, N, K)`` stack of ``grad_outputs``.

    One backward pass per row for ``k == 1``; for ``k > 1`` one batched pass
    (``is_grads_batched``, i.e. vmap over the backward), with a loop where an op cannot batch.
    ``grad_kwargs`` (Captum's argument, e.g. ``{"materialize_grads": True}``) go to every call.
    """
    kwargs = {"allow_unused": True, **(grad_kwargs or {})}
    if grad_outputs.shape[0] > 1:
        try:
            return torch.autograd.grad(
                output,
                leaves,
                grad_outputs=grad_outputs,
                retain_graph=retain,
                is_grads_batched=True,
                **kwargs,
            )
        except RuntimeError as error:  # an operator without a batching rule: loop instead
            logger.debug("batched VJP failed (%s); looping over output columns", error)
    last = len(grad_outputs) - 1
    rows = [
        torch.autograd.grad(
            output, leaves, grad_outputs=g, retain_graph=retain or i < last, **kwargs
        )
        for i, g in enumerate(grad_outputs)
    ]
    per_leaf = ([row[i] for row in rows] for i in range(len(leaves)))
    return [None if grads[0] is None else torch.stack(grads) for grads in per_leaf]


def reverse_effects(
    job: ScoringJob,
    granularity: Granularity = "layer",
    alphas: Sequence[float] = (1.0,),
    weights: Sequence[float] = (1.0,),
    vjp_chunk: int = VJP_CHUNK,
    readout: Readout = EXACT,
    progress: Callable[[int], None] | None = None,
) -> list[Tensor]:
    """G-NDI effects by reverse-mode AD (vector-Jacobian products).

    With ``alphas == (1.0,)`` (first-order G-NDI) all layers share one forward pass and ``K``
    VJPs (one backward pass each, or batched ``vjp_chunk`` at a time). Path-integrated G-NDI
    needs one recorded pass (and ``K`` VJPs) per unit and integration point, because each unit
    moves along its own path; forward mode is cheaper there.

    Args:
        job: The batch and its intervention points.
        granularity: ``"layer"``, ``"channel"``, ``"group"`` or ``"unit"``.
        alphas: Integration points on [0, 1].
        weights: Integration weights, one per point.
        vjp_chunk: Output dimensions per VJP (see :data:`VJP_CHUNK`); memory grows with it.
        readout: The rows to project on (exact unit rows, or random probes).
        progress: Called with the passes done (forward + backward) after each cell of path
            integration.

    Returns:
        One tensor per layer, ``(K, N, *unit_shape)`` (``K = n_probes`` with probes).

    Examples:
        >>> effects = reverse_effects(job, granularity="channel")  # (K, N, C) per layer
    """
    graph = record(job, range(len(job.layers)))
    units = [job.units(p, h, granularity) for p, h in enumerate(graph_activations(graph))]
    if first_order(alphas):
        return [e * weights[0] for e in vjp_effects(graph, job, units, vjp_chunk, readout)]
    del graph
    cells = make_cells(units, alphas, weights)
    columns = []
    layer = UnitIndex("layer", None, 1, ())
    for cell in cells:
        recorded = record(job, [cell.position], cell, units)
        columns.append(vjp_effects(recorded, job, [layer], vjp_chunk, readout)[0].T)  # (N, K)
        if progress is not None:
            progress(1 + columns[-1].shape[1])
    return assemble(units, cells, torch.stack(columns))


def input_path_effects(
    job: ScoringJob,
    granularity: Granularity = "layer",
    alphas: Sequence[float] = (1.0,),
    weights: Sequence[float] = (1.0,),
    vjp_chunk: int = VJP_CHUNK,
    readout: Readout = EXACT,
    progress: Callable[[int], None] | None = None,
    captured: tuple[Tensor, list[Activation]] | None = None,
) -> list[Tensor]:
    """Effects along the input-space path (``path="input"``, EAP-IG): ``sum_i w_i J(x_{a_i})
    1[u] (h(x) - b)`` per unit u, where ``x_a`` runs from the input baselines to the inputs.

    Unlike :func:`reverse_effects`, the gradient at every point is taken with respect to every
    unit of every layer at once and multiplied by the *clean* ``h(x) - b`` (one capture pass),
    so the cost is one recorded pass and ``K`` VJPs per integration point, whatever the number
    of units. With ``b`` the activation at the input baselines, the signed effects of a
    complete cut of the model sum to the integrated-gradients decomposition of
    ``f(x) - f(x_0)`` (they are not single-unit patching effects).

    Args:
        job: The batch, its intervention points and ``job.input_path`` (the run at each point).
        granularity: ``"layer"``, ``"channel"``, ``"group"`` or ``"unit"``.
        alphas: Integration points on [0, 1].
        weights: Integration weights, one per point.
        vjp_chunk: Output dimensions per VJP (see :data:`VJP_CHUNK`).
        readout: The rows to project on, the same at every point (drawn from the clean
            output).
        progress: Called with the passes done after the capture and after each point.
        captured: The clean output and activations (:func:`captum_gndi.job.capture_activations`)
            if already captured.

    Returns:
        One tensor per layer, ``(K, N, *unit_shape)``.

    Raises:
        ValueError: If the job has no input path.

    Examples:
        >>> effects = input_path_effects(job, "channel", alphas, weights)  # (K, N, C) per layer
    """
    if job.input_path is None:
        raise ValueError("path='input' needs a job with an input path (Captum's baselines).")
    clean_output, activations = capture_activations(job) if captured is None else captured
    deltas = [parts(job.delta(p, h)[1]) for p, h in enumerate(activations)]
    units = [job.units(p, h, granularity) for p, h in enumerate(activations)]
    if progress is not None:
        progress(1)
    total: list[Tensor] | None = None
    for alpha, weight in zip(alphas, weights):
        point = replace(job, run=job.input_path(alpha))
        recorded = record(point, range(len(job.layers)))
        graph = Graph(recorded.output, recorded.leaves, deltas)
        effects = vjp_effects(graph, point, units, vjp_chunk, readout, clean_output)
        del recorded, graph
        weighted = [weight * e for e in effects]
        total = weighted if total is None else [t + e for t, e in zip(total, weighted)]
        if progress is not None:
            progress(1 + effects[0].shape[0])
    return total  # type: ignore[return-value]


def graph_activations(graph: Graph) -> list[Activation]:
    """Stand-ins with the recorded activations' shapes (all the unit index needs)."""
    return [group if len(group) > 1 else group[0] for group in graph.deltas]
