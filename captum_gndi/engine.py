"""Pure computations of J_{>L}(x) (h_L - b_L) for one batch of examples.

Everything here works on a :class:`ScoringJob`: a zero-argument ``run`` that evaluates the model
on a fixed batch and returns its (target-selected) output flattened to ``(N, K)``, plus the
intervention points, their baselines and how each layer splits into units
(:mod:`captum_gndi.units`). The results are *effects* with the output dimension first:
``(K, N, *unit_shape)`` per layer, where ``unit_shape`` is ``()`` for the whole layer, the
channel sizes, ``(G,)`` for a ``layer_mask`` or the activation's shape per unit. Scores are
norms of effects over ``K`` (:func:`effect_norms`).

A layer whose output is a tuple of several floating-point tensors (or, with
``attribute_to_layer_input``, a module with several tensor inputs) is intervened on *jointly*:
every such tensor is set to its baseline together, and the effect is the sum of the tensors'
first-order contributions.

Two engines compute the same numbers:

- forward mode (:func:`forward_effects`): every *cell* (a unit of a layer at an integration
  point ``a``) gets a scalar ``s``, and the activation becomes
  ``h + (a - 1 + s) 1[unit] (h - b)``: the unit on its own path ``b + a (h - b)`` with the rest
  of the layer left at ``h``. The Jacobian-vector product with respect to ``s`` at ``s = 0`` is
  ``J_{>L}(...) 1[unit] (h - b)``. ``torch.func.vmap`` over ``torch.func.jvp`` pushes many cells
  through one pass: first-order cells (``a = 1``) share one primal pass, so first-order G-NDI of
  L layers takes about sqrt(L) passes over groups of consecutive layers (at most
  ``tangent_chunk`` tangents each); path-integrated cells each carry their own primal (batched by
  vmap after the layer, sharing the prefix before it). Models that ``torch.func`` cannot
  transform fall back to one ``torch.autograd.forward_ad`` pass per cell.
- reverse mode (:func:`reverse_effects`): one forward pass that adds a zero leaf ``eps`` to every
  layer's activation, and one vector-Jacobian product per output dimension (built one row at a
  time: memory is linear in K) gives dy_k/dh for all layers at once; ``J(h - b)`` is summed into
  units one output dimension (one chunk) at a time. Path-integrated G-NDI needs one recorded pass
  per cell.

:func:`true_effects` computes the exact intervention effect ``f(x) - f(x; do(h_L := b_L))``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .baselines import LayerBaseline, resolve_layer_baseline
from .interventions import LayerSpec, intervene
from .readouts import Readout
from .runs import channel_count
from .units import GRANULARITIES, ChannelDim, Granularity, UnitIndex, unit_index

__all__ = [
    "Granularity",
    "Mode",
    "ScoringJob",
    "capture_activations",
    "choose_mode",
    "compute_effects",
    "effect_norms",
    "forward_effects",
    "reverse_effects",
    "signed_effect",
    "true_effects",
]

logger = logging.getLogger(__name__)

Mode = Literal["auto", "forward", "reverse"]
MODES = ("auto", "forward", "reverse")
VJP_CHUNK = 1
"""Output dimensions per vector-Jacobian product. 1: one plain backward pass per output
dimension, which measured faster on CPU than batching them with ``is_grads_batched`` (vmap over
the backward falls back to per-sample loops for convolution and ReLU backward; see
docs/benchmarks.md). Larger values batch that many VJPs (and hold that many gradients)."""
TANGENT_CHUNK = 32
"""Tangents per vectorised forward pass (memory: this many copies of the activations)."""

Activation = Any  # a tensor, or a tuple of tensors for a jointly intervened multi-tensor layer


def parts(h: Activation) -> tuple[Tensor, ...]:
    """The tensors of an activation (one for an ordinary layer)."""
    return tuple(h) if isinstance(h, tuple) else (h,)


def _rebuild(h: Activation, new: Sequence[Tensor]) -> Activation:
    return tuple(new) if isinstance(h, tuple) else new[0]


@dataclass
class ScoringJob:
    """One scoring job: a fixed batch of examples, the model run on it, and where to intervene.

    Not a data batch: ``run`` closes over the batch's inputs and targets, so both engines, the
    true-effect computation and the validation harness share one object and resolve targets and
    baselines once.

    Attributes:
        run: Runs the model on the batch and returns the selected output as ``(N, K)``.
        layers: Intervention points.
        labels: One readable name per layer (used in errors).
        baselines: One layer-baseline specification per layer (see :mod:`captum_gndi.baselines`;
            a tuple gives one per tensor of a multi-tensor layer).
        attribute_to_layer_input: Intervene on each layer's input instead of its output.
        channel_dim: Dimension(s) of the activation that hold the units of ``"channel"``
            granularity (1 for ``(N, C, H, W)``, -1 for ``(N, T, D)``, ``(1, 2)`` for position x
            head on ``(N, T, H, d)``).
        layer_masks: One ``layer_mask`` (or ``None``) per layer for ``"group"`` granularity.
        grad_kwargs: Extra keyword arguments for every ``torch.autograd.grad`` call.
    """

    run: Callable[[], Tensor]
    layers: Sequence[LayerSpec]
    labels: Sequence[str]
    baselines: Sequence[LayerBaseline]
    attribute_to_layer_input: bool = False
    channel_dim: ChannelDim = 1
    layer_masks: Sequence[Tensor | None] | None = None
    grad_kwargs: dict[str, Any] | None = None

    def check_activation(self, position: int, h: Activation) -> None:
        """Raise a clear error for a non-float or non-finite activation."""
        label = self.labels[position]
        for part in parts(h):
            if not part.is_floating_point():
                raise TypeError(
                    f"Layer '{label}' produces a {part.dtype} tensor, which cannot be "
                    "differentiated. Pick a layer with a floating-point activation (e.g. an "
                    "embedding's output rather than token ids)."
                )
            if not torch.isfinite(part).all():
                raise ValueError(
                    f"Layer '{label}' produced NaN or inf activations; G-NDI is undefined there. "
                    "Check the inputs and the model's numerics (e.g. float16 overflow)."
                )

    def delta(self, position: int, h: Activation) -> tuple[Activation, Activation]:
        """``(b, h - b)`` for the activation ``h`` of layer ``position`` (tuples part-wise)."""
        self.check_activation(position, h)
        spec, label = self.baselines[position], self.labels[position]
        tensors = parts(h)
        specs = spec if isinstance(spec, tuple) else (spec,) * len(tensors)
        if len(specs) != len(tensors):
            raise ValueError(
                f"Layer '{label}' has {len(tensors)} tensor(s) to intervene on but got a tuple of "
                f"{len(specs)} layer baselines; give one baseline per tensor (or one for all)."
            )
        bs = [resolve_layer_baseline(s, t, label) for s, t in zip(specs, tensors)]
        return _rebuild(h, bs), _rebuild(h, [t.detach() - b for t, b in zip(tensors, bs)])

    def n_channels(self, h: Tensor) -> int:
        """The size of the channel dimension of an activation, with a clear error if absent."""
        return channel_count(h.shape, self.channel_dim)

    def units(self, position: int, h: Activation, granularity: str) -> UnitIndex:
        """How layer ``position`` splits into units at ``granularity``."""
        tensors = parts(h)
        if granularity != "layer" and len(tensors) > 1:
            raise ValueError(
                f"Layer '{self.labels[position]}' has {len(tensors)} tensors that are "
                f"intervened on jointly; granularity={granularity!r} needs a layer with one "
                "tensor. Use granularity='layer', or pick the submodule that produces the "
                "tensor you want to split."
            )
        mask = None if self.layer_masks is None else self.layer_masks[position]
        return unit_index(
            granularity,
            tensors[0].shape,
            self.labels[position],
            self.channel_dim,
            mask,
            tensors[0].device,
        )


def _hooks(job: ScoringJob, positions: Sequence[int], edit):
    """Hook the layers at ``positions``; ``edit`` receives positions into ``job.layers``."""
    return intervene(
        [job.layers[p] for p in positions],
        lambda i, h: edit(positions[i], h),
        attribute_to_layer_input=job.attribute_to_layer_input,
        labels=[job.labels[p] for p in positions],
    )


def capture_activations(job: ScoringJob) -> tuple[Tensor, list[Activation]]:
    """Run the batch once (no gradients) and return its output and detached activations."""
    activations: list[Activation | None] = [None] * len(job.layers)

    def edit(position: int, h: Activation) -> None:
        job.check_activation(position, h)
        activations[position] = _rebuild(h, [t.detach().clone() for t in parts(h)])

    with torch.no_grad(), _hooks(job, range(len(job.layers)), edit):
        output = job.run()
    return output.detach(), activations  # type: ignore[return-value]


def true_effects(job: ScoringJob) -> list[Tensor]:
    """Exact intervention effects ``f(x) - f(x; do(h_L := b_L))``, each of shape ``(K, N)``."""
    with torch.no_grad():
        reference = job.run()
        effects = []
        for position in range(len(job.layers)):

            def edit(position: int, h: Activation) -> Activation:
                b, _delta = job.delta(position, h)
                return _rebuild(h, [t.clone() for t in parts(b)])

            with _hooks(job, [position], edit):
                intervened = job.run()
            effects.append((reference - intervened).T)
    return effects


def _first_order(alphas: Sequence[float]) -> bool:
    return tuple(alphas) == (1.0,)


@dataclass(frozen=True)
class _Cell:
    """One tangent direction: group ``group`` of layer ``position`` at integration point
    ``alpha``, with integration weight ``weight``."""

    position: int
    group: int
    alpha: float
    weight: float


def _cells(
    units: Sequence[UnitIndex], alphas: Sequence[float], weights: Sequence[float]
) -> list[_Cell]:
    return [
        _Cell(p, g, a, w)
        for p, index in enumerate(units)
        for g in range(index.n_groups)
        for a, w in zip(alphas, weights)
    ]


def _assemble(units: Sequence[UnitIndex], cells: Sequence[_Cell], columns: Tensor) -> list[Tensor]:
    """Effects ``(K, N, *unit_shape)`` per layer from per-cell output tangents ``(C, N, K)``."""
    n, k = columns.shape[1:]
    effects = [columns.new_zeros(k, n, index.n_groups) for index in units]
    for cell, column in zip(cells, columns):
        effects[cell.position][:, :, cell.group] += cell.weight * column.T
    return [e.reshape(k, n, *index.shape) for e, index in zip(effects, units)]


# ---------------------------------------------------------------------------------------------
# Forward mode
# ---------------------------------------------------------------------------------------------


def forward_effects(
    job: ScoringJob,
    granularity: Granularity = "layer",
    alphas: Sequence[float] = (1.0,),
    weights: Sequence[float] = (1.0,),
    tangent_chunk: int = TANGENT_CHUNK,
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

    Returns:
        One tensor per layer, ``(K, N, *unit_shape)``.

    Raises:
        NotImplementedError: When an operator after the layer has no forward-AD formula
            (for example CPU scaled-dot-product attention); use reverse mode then.
        ValueError: For first-order ``granularity="unit"``.

    Examples:
        >>> effects = forward_effects(job)  # one (K, N) tensor per layer
    """
    if granularity == "unit" and _first_order(alphas):
        raise ValueError(
            "granularity='unit' needs one forward pass per unit; use mode='reverse' or 'auto'."
        )
    _, activations = capture_activations(job)
    units = [job.units(p, h, granularity) for p, h in enumerate(activations)]
    cells = _cells(units, alphas, weights)
    shared = _first_order(alphas)
    size = math.ceil(len(cells) / _tangent_groups(len(job.layers), len(cells), tangent_chunk))
    if not shared:
        size = min(size, tangent_chunk)
    columns = torch.cat(
        [_group_jvps(job, units, cells[i : i + size], shared) for i in range(0, len(cells), size)]
    )
    return _assemble(units, cells, columns)


def _tangent_groups(n_layers: int, n_tangents: int, chunk: int) -> int:
    """Vectorised forward passes (one primal pass each) for ``n_tangents`` tangents over
    ``n_layers`` layers: about ``sqrt(n_layers)``, and at least enough for ``chunk`` per pass."""
    return max(round(math.sqrt(n_layers)), math.ceil(n_tangents / chunk))


def _group_jvps(
    job: ScoringJob, units: Sequence[UnitIndex], cells: Sequence[_Cell], shared: bool
) -> Tensor:
    """Output tangents ``(len(cells), N, K)`` of one group, vectorised where torch.func can."""
    try:
        return _vectorised_jvps(job, units, cells, shared)
    except (NotImplementedError, RuntimeError) as error:
        if _is_missing_forward_ad(error):
            raise
        logger.debug("torch.func could not vectorise the JVPs (%s); one pass per tangent", error)
    return torch.stack([_one_jvp(job, units, cell) for cell in cells])


def _vectorised_jvps(
    job: ScoringJob, units: Sequence[UnitIndex], cells: Sequence[_Cell], shared: bool
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
            return _rebuild(h, new)

        with _hooks(job, list(entries), edit):
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


def _one_jvp(job: ScoringJob, units: Sequence[UnitIndex], cell: _Cell) -> Tensor:
    """One forward pass with a dual activation; returns the output tangent ``(N, K)``."""

    def edit(position: int, h: Activation) -> Activation:
        _b, delta = job.delta(position, h)
        new = []
        for part, d in zip(parts(h), parts(delta)):
            tangent = units[position].indicator(cell.group, d) * d
            primal = part.detach() + (cell.alpha - 1.0) * tangent
            new.append(fwAD.make_dual(primal, tangent.expand_as(primal).contiguous()))
        return _rebuild(h, new)

    with torch.no_grad(), fwAD.dual_level(), _hooks(job, [cell.position], edit):
        output = job.run()
        tangent = fwAD.unpack_dual(output).tangent
    return torch.zeros_like(output) if tangent is None else tangent.detach()


# ---------------------------------------------------------------------------------------------
# Reverse mode
# ---------------------------------------------------------------------------------------------


@dataclass
class _Graph:
    """A forward pass recorded for reverse mode: zero leaves added to the layers' activations."""

    output: Tensor
    leaves: list[tuple[Tensor, ...]]
    deltas: list[tuple[Tensor, ...]]


def _record(
    job: ScoringJob,
    positions: Sequence[int],
    cell: _Cell | None = None,
    units: Sequence[UnitIndex] | None = None,
) -> _Graph:
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
        return _rebuild(h, [t + eps for t, eps in zip(tensors, leaves[position])])

    with torch.enable_grad(), _hooks(job, positions, edit):
        output = job.run()
    return _Graph(output, [leaves[p] for p in positions], [deltas[p] for p in positions])


EXACT = Readout()
"""Unit rows: one VJP per output dimension."""

MAX_EFFECT_BYTES = 8 * 2**30
"""Largest effect tensor reverse mode allocates (see :func:`_vjp_effects`)."""


def _vjp_effects(
    graph: _Graph,
    job: ScoringJob,
    units: Sequence[UnitIndex],
    chunk: int,
    readout: Readout = EXACT,
) -> list[Tensor]:
    """``sum <v_k . dy/dh, h - b>`` per unit, for every row ``v_k`` of the readout.

    Exact readouts use the unit rows (row k gives output column k); random probes use their
    ``n_probes`` rows (:mod:`captum_gndi.readouts`). The rows are processed ``chunk`` at a time;
    each chunk's gradients are reduced to units and written into a result allocated once,
    before the next chunk is computed, so memory holds ``chunk`` gradients. (Keeping one small
    tensor per chunk instead pins the allocator's heap between the large gradient buffers:
    +3.5 GiB over 384 output dimensions of MiniLM, see
    docs/benchmarks.md.)
    """
    output = graph.output
    readout = replace(readout, output_shape=getattr(job.run, "output_shape", None))
    k_total = readout.rows_count(output)
    _check_effect_memory(graph, units, k_total, job)
    flat_leaves = [leaf for group in graph.leaves for leaf in group]
    effects: list[Tensor | None] = [None] * len(graph.leaves)
    for start in range(0, k_total, chunk):
        stop = min(start + chunk, k_total)
        grad_outputs = readout.rows(start, stop, output.detach())
        grads = iter(
            _batched_grad(output, flat_leaves, grad_outputs, stop < k_total, job.grad_kwargs)
        )
        for i, (index, deltas) in enumerate(zip(units, graph.deltas)):
            part = None
            for delta in deltas:
                grad = next(grads)
                if grad is None:  # the output does not depend on this tensor
                    grad = delta.new_zeros(()).expand(stop - start, *delta.shape)
                reduced = index.reduce(grad * delta)
                part = reduced if part is None else part + reduced
            if effects[i] is None:
                effects[i] = part.new_empty((k_total, *part.shape[1:]))
            effects[i][start:stop] = part  # type: ignore[index]
    return effects  # type: ignore[return-value]


def _check_effect_memory(
    graph: _Graph, units: Sequence[UnitIndex], rows: int, job: ScoringJob
) -> None:
    """A clear error, before anything is allocated, for effects that cannot fit in memory."""
    for index, deltas, label in zip(units, graph.deltas, job.labels):
        per_row = deltas[0].shape[0] * max(math.prod(index.shape), 1)
        size = rows * per_row * deltas[0].element_size()
        if size > MAX_EFFECT_BYTES:
            raise MemoryError(
                f"The effects of layer '{label}' would take {size / 2**30:.1f} GiB ({rows} rows "
                f"x {per_row} units x examples); split the batch (internal_batch_size= in "
                "compute_gndi, or fewer examples per attribute call), use fewer n_probes, or a "
                "coarser granularity (channel_dim, layer_mask) than 'unit'."
            )


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

    Returns:
        One tensor per layer, ``(K, N, *unit_shape)`` (``K = n_probes`` with probes).

    Examples:
        >>> effects = reverse_effects(job, granularity="channel")  # (K, N, C) per layer
    """
    graph = _record(job, range(len(job.layers)))
    units = [job.units(p, h, granularity) for p, h in enumerate(_graph_activations(graph))]
    if _first_order(alphas):
        return [e * weights[0] for e in _vjp_effects(graph, job, units, vjp_chunk, readout)]
    del graph
    cells = _cells(units, alphas, weights)
    columns = []
    layer = UnitIndex("layer", None, 1, ())
    for cell in cells:
        recorded = _record(job, [cell.position], cell, units)
        columns.append(_vjp_effects(recorded, job, [layer], vjp_chunk, readout)[0].T)  # (N, K)
    return _assemble(units, cells, torch.stack(columns))


def _graph_activations(graph: _Graph) -> list[Activation]:
    """Stand-ins with the recorded activations' shapes (all the unit index needs)."""
    return [group if len(group) > 1 else group[0] for group in graph.deltas]


# ---------------------------------------------------------------------------------------------
# Choosing and dispatching
# ---------------------------------------------------------------------------------------------


def choose_mode(
    mode: Mode,
    n_layers: int,
    n_outputs: int,
    granularity: Granularity,
    n_tangents: int | None = None,
    path: bool = False,
) -> str:
    """Pick the engine that needs fewer passes.

    First order: reverse mode costs one forward pass plus one backward pass per output
    dimension, ``1 + n_outputs``; forward mode one primal pass per group of tangents plus one
    tangent per unit, ``n_groups + n_tangents``, with ``n_groups`` as the forward engine forms
    them (about ``sqrt(n_layers)``, at least ``n_tangents / TANGENT_CHUNK``). A backward pass and
    a tangent each cost about one forward pass (measured 0.9 to 1.3 on ResNet-18/56 and MiniLM,
    docs/benchmarks.md), so reverse is chosen when ``1 + n_outputs < n_groups + n_tangents``, and
    always for first-order unit granularity; a tie goes to forward mode, whose passes need no
    stored graph (ResNet-18 with 10 logits and 8 branches: forward 9.3, reverse 10.8
    forward-pass equivalents). Path integration (``path=True``, ``n_tangents`` cells: units x
    steps): each cell needs its own pass in either engine, plus ``n_outputs`` VJPs in reverse
    mode, so forward mode wins unless forward AD is missing. The choice is logged at debug
    level.

    Args:
        mode: ``"auto"``, ``"forward"`` or ``"reverse"`` (returned unchanged unless auto).
        n_layers: Intervention points.
        n_outputs: Output dimensions K.
        granularity: ``"layer"``, ``"channel"``, ``"group"`` or ``"unit"``.
        n_tangents: Tangents (cells) in total (default: ``n_layers``).
        path: Path-integrated G-NDI.

    Returns:
        ``"forward"`` or ``"reverse"``.

    Examples:
        >>> choose_mode("auto", n_layers=27, n_outputs=10, granularity="layer")
        'reverse'
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode != "auto":
        return mode
    n_tangents = n_layers if n_tangents is None else n_tangents
    n_groups = _tangent_groups(n_layers, n_tangents, TANGENT_CHUNK)
    forward_cost = n_groups + n_tangents
    reverse_cost = n_tangents * (1 + n_outputs) if path else 1 + n_outputs
    unit_first_order = granularity == "unit" and not path
    chosen = "reverse" if unit_first_order or reverse_cost < forward_cost else "forward"
    logger.debug(
        "mode='auto' chose %s (%d layers, %d output dims, %d tangents, granularity=%s; "
        "passes: forward ~%d, reverse ~%d)",
        chosen,
        n_layers,
        n_outputs,
        n_tangents,
        granularity,
        forward_cost,
        reverse_cost,
    )
    return chosen


def _probe(
    job: ScoringJob, granularity: Granularity, alphas: Sequence[float], n_outputs: int | None
) -> tuple[_Graph | None, list[UnitIndex] | None, int, int]:
    """What ``auto`` needs to choose: ``(graph, units, n_outputs, tangents)``.

    First-order G-NDI probes with the reverse engine's own forward pass (returned as ``graph``
    with the layers' units, so choosing reverse costs nothing extra); path-integrated G-NDI with
    a plain forward pass.
    """
    steps = len(alphas)
    if granularity == "layer" and n_outputs is not None:
        return None, None, n_outputs, len(job.layers) * steps
    if _first_order(alphas):
        graph = _record(job, range(len(job.layers)))
        output, activations = graph.output, _graph_activations(graph)
    else:
        graph = None
        output, activations = capture_activations(job)
    units = [job.units(p, h, granularity) for p, h in enumerate(activations)]
    return graph, units, output.shape[1], sum(u.n_groups for u in units) * steps


def _is_missing_forward_ad(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, NotImplementedError) or "forward ad" in text or "forward-mode" in text


def compute_effects(
    job: ScoringJob,
    mode: Mode = "auto",
    granularity: Granularity = "layer",
    alphas: Sequence[float] = (1.0,),
    weights: Sequence[float] = (1.0,),
    n_outputs: int | None = None,
    readout: Readout = EXACT,
) -> tuple[list[Tensor], str]:
    """Dispatch to the forward or reverse engine.

    With ``mode="auto"`` and first-order G-NDI, the reverse engine's forward pass doubles as the
    probe that finds K and the channel counts, so choosing costs nothing when reverse wins.

    Args:
        job: The job and its intervention points.
        mode: ``"forward"``, ``"reverse"`` or ``"auto"`` (the cheaper of the two; forward AD
            falls back to reverse with a warning when an operator has no forward-AD formula).
        granularity: ``"layer"``, ``"channel"``, ``"group"`` or ``"unit"``.
        alphas: Integration points on [0, 1] (``(1.0,)``: first-order G-NDI).
        weights: Integration weights, one per point.
        n_outputs: The number of output dimensions K, if known (``auto`` runs a forward pass
            to find it otherwise).
        readout: With random probes (``readout.n_probes``) only reverse mode applies: the
            effects are the ``n_probes`` projections.

    Returns:
        The effects (one tensor per layer, K first) and the mode that was used.

    Examples:
        >>> effects, used = compute_effects(job, mode="auto", granularity="channel")
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    graph, units, chosen = None, None, mode
    if readout.n_probes is not None:
        if mode == "forward":
            raise ValueError(
                "n_probes are random vector-Jacobian products (reverse mode); use mode='reverse' "
                "or 'auto', or drop n_probes for exact forward-mode effects."
            )
        mode = chosen = "reverse"
    if mode == "auto":
        graph, units, n_outputs, n_tangents = _probe(job, granularity, alphas, n_outputs)
        path = not _first_order(alphas)
        chosen = choose_mode(mode, len(job.layers), n_outputs, granularity, n_tangents, path)
    if chosen == "reverse":
        if graph is not None and units is not None:
            effects = _vjp_effects(graph, job, units, VJP_CHUNK, readout)
            return [e * weights[0] for e in effects], "reverse"
        return reverse_effects(job, granularity, alphas, weights, readout=readout), "reverse"
    graph = None  # free the probe's autograd graph before running forward mode
    try:
        return forward_effects(job, granularity, alphas, weights), "forward"
    except (NotImplementedError, RuntimeError) as error:
        if mode == "forward" or not _is_missing_forward_ad(error):
            raise
        warnings.warn(
            f"Forward-mode AD is not supported by an operator in this model ({error}); "
            "falling back to reverse mode (same scores). To keep forward mode, run inside "
            "`with captum_gndi.eager_attention(model):` (SDPA math backend, no "
            "nn.MultiheadAttention fast path) or load Hugging Face models with "
            "attn_implementation='eager'.",
            stacklevel=3,
        )
        return reverse_effects(job, granularity, alphas, weights), "reverse"


def signed_effect(effect: Tensor, label: str = "layer") -> Tensor:
    """The signed effect ``J (h - b)`` of a scalar output per example: ``effect[0]``.

    Raises:
        ValueError: For a vector output (``K > 1``), where a sign is undefined.
    """
    if effect.shape[0] != 1:
        raise ValueError(
            f"signed=True needs one output per example, but the output of '{label}' has "
            f"{effect.shape[0]} entries per example; select one with `target` (e.g. a class "
            "index, or a metric such as a logit difference as forward_func)."
        )
    return effect[0]


def effect_norms(effect: Tensor, p: float) -> Tensor:
    """The p-norm over the output dimension K (dim 0): the G-NDI score."""
    return torch.linalg.vector_norm(effect, ord=p, dim=0)
