"""Pure computations of J_{>L}(x) (h_L - b_L) for one batch of examples.

Everything here works on a :class:`ScoringJob`: a zero-argument ``run`` that evaluates the model
on a fixed batch and returns its (target-selected) output flattened to ``(N, K)``, plus the
intervention points and their baselines. The results are *effects* with the output dimension
first: ``(K, N)`` per layer, ``(K, N, C)`` per channel, ``(K, N, *activation_shape)`` per unit.
Scores are p-norms of effects over ``K`` (:func:`effect_norms`).

Two engines compute the same numbers:

- forward mode (:func:`forward_effects`): every intervention point gets a scalar ``s_L`` (one
  per channel for channel granularity) and its activation becomes ``h_L + s_L (h_L - b_L)``;
  the Jacobian-vector product with respect to ``s_L`` at ``s = 0`` is ``J_{>L} (h_L - b_L)``.
  ``torch.func.vmap`` over ``torch.func.jvp`` pushes many tangents through one forward pass:
  first-order G-NDI of L layers takes about sqrt(L) passes over groups of consecutive layers
  (at most ``tangent_chunk`` tangents each), instead of one pass per layer. Models that
  ``torch.func`` cannot transform (e.g. a legacy ``autograd.Function`` without
  ``setup_context``) fall back to one ``torch.autograd.forward_ad`` pass per tangent.
- reverse mode (:func:`reverse_effects`): one forward pass that adds a zero leaf ``eps_L`` to
  every layer's activation, and ``K`` vector-Jacobian products (batched with
  ``is_grads_batched`` when ``vjp_chunk > 1``) give dy_k/dh_L for all layers at once;
  ``J(h - b) = <dy/dh, h - b>`` is summed to the requested granularity one output dimension (one
  chunk) at a time, so memory holds ``vjp_chunk`` gradients at a time.

:func:`true_effects` computes the exact intervention effect ``f(x) - f(x; do(h_L := b_L))``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .baselines import LayerBaseline, resolve_layer_baseline
from .interventions import LayerSpec, intervene
from .runs import channel_count

__all__ = [
    "Granularity",
    "Mode",
    "ScoringJob",
    "capture_activations",
    "choose_mode",
    "compute_effects",
    "effect_norms",
    "forward_effects",
    "reduce_granularity",
    "reverse_effects",
    "true_effects",
]

logger = logging.getLogger(__name__)

Granularity = Literal["layer", "channel", "unit"]
Mode = Literal["auto", "forward", "reverse"]
GRANULARITIES = ("layer", "channel", "unit")
MODES = ("auto", "forward", "reverse")
VJP_CHUNK = 1
"""Output dimensions per vector-Jacobian product. 1: one plain backward pass per output
dimension, which measured faster on CPU than batching them with ``is_grads_batched`` (vmap over
the backward falls back to per-sample loops for convolution and ReLU backward; see
docs/benchmarks.md). Larger values batch that many VJPs (and hold that many gradients)."""
TANGENT_CHUNK = 32
"""Tangents per vectorised forward pass (memory: this many copies of the activations)."""


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
        baselines: One layer-baseline specification per layer (see :mod:`captum_gndi.baselines`).
        attribute_to_layer_input: Intervene on each layer's input instead of its output.
        channel_dim: Dimension of the activation that holds channels (1 for ``(N, C, H, W)``,
            -1 for ``(N, T, D)`` transformer states).
    """

    run: Callable[[], Tensor]
    layers: Sequence[LayerSpec]
    labels: Sequence[str]
    baselines: Sequence[LayerBaseline]
    attribute_to_layer_input: bool = False
    channel_dim: int = 1

    def check_activation(self, position: int, h: Tensor) -> None:
        label = self.labels[position]
        if not h.is_floating_point():
            raise TypeError(
                f"Layer '{label}' produces a {h.dtype} tensor, which cannot be differentiated. "
                "Pick a layer with a floating-point activation (e.g. an embedding's output "
                "rather than token ids)."
            )
        if not torch.isfinite(h).all():
            raise ValueError(
                f"Layer '{label}' produced NaN or inf activations; G-NDI is undefined there. "
                "Check the inputs and the model's numerics (e.g. float16 overflow)."
            )

    def delta(self, position: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(b, h - b)`` for the activation ``h`` of layer ``position``."""
        self.check_activation(position, h)
        b = resolve_layer_baseline(self.baselines[position], h, self.labels[position])
        return b, h.detach() - b

    def n_channels(self, h: Tensor) -> int:
        """The size of the channel dimension of an activation, with a clear error if absent."""
        return channel_count(h.shape, self.channel_dim)


def _hooks(job: ScoringJob, positions: Sequence[int], edit):
    """Hook the layers at ``positions``; ``edit`` receives positions into ``job.layers``."""
    return intervene(
        [job.layers[p] for p in positions],
        lambda i, h: edit(positions[i], h),
        attribute_to_layer_input=job.attribute_to_layer_input,
        labels=[job.labels[p] for p in positions],
    )


def capture_activations(job: ScoringJob) -> tuple[Tensor, list[Tensor]]:
    """Run the job once (no gradients) and return its output and detached activations."""
    activations: list[Tensor | None] = [None] * len(job.layers)

    def edit(position: int, h: Tensor) -> None:
        job.check_activation(position, h)
        activations[position] = h.detach().clone()

    with torch.no_grad(), _hooks(job, range(len(job.layers)), edit):
        output = job.run()
    return output.detach(), activations  # type: ignore[return-value]


def true_effects(job: ScoringJob) -> list[Tensor]:
    """Exact intervention effects ``f(x) - f(x; do(h_L := b_L))``, each of shape ``(K, N)``."""
    with torch.no_grad():
        reference = job.run()
        effects = []
        for position in range(len(job.layers)):

            def edit(position: int, h: Tensor) -> Tensor:
                b, _delta = job.delta(position, h)
                return b.clone()

            with _hooks(job, [position], edit):
                intervened = job.run()
            effects.append((reference - intervened).T)
    return effects


def reduce_granularity(contribution: Tensor, granularity: Granularity, channel_dim: int) -> Tensor:
    """Sum a per-unit contribution ``(K, N, *shape)`` to the requested granularity."""
    if granularity == "unit":
        return contribution
    if granularity == "layer":
        return contribution.flatten(2).sum(-1)
    channel_count(contribution.shape[1:], channel_dim)  # without the leading K dimension
    dim = channel_dim if channel_dim < 0 else channel_dim + 1  # shift past the K dimension
    moved = contribution.movedim(dim, -1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1, moved.shape[-1]).sum(2)


def _first_order(alphas: Sequence[float]) -> bool:
    return tuple(alphas) == (1.0,)


def _interpolate(h: Tensor, b: Tensor, delta: Tensor, alpha: float) -> Tensor:
    """The activation on the path ``b + alpha (h - b)`` (``h`` itself at ``alpha = 1``)."""
    return h if alpha == 1.0 else b + alpha * delta


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
    """G-NDI effects by forward-mode AD: ``sum_i w_i J(b + a_i (h - b)) (h - b)`` per layer.

    First-order G-NDI (``alphas == (1.0,)``) pushes one tangent per layer (per channel for
    channel granularity) through about ``sqrt(L)`` vectorised forward passes over groups of
    consecutive layers (list the layers in execution order for the best grouping);
    path-integrated G-NDI needs one pass per layer and integration point, because the
    intervention on one layer changes every activation after it.

    Args:
        job: The job and its intervention points.
        granularity: ``"layer"`` or ``"channel"`` (``"unit"`` would need one tangent per
            neuron: use reverse mode).
        alphas: Integration points on [0, 1].
        weights: Integration weights, one per point.
        tangent_chunk: Tangents per vectorised pass; memory grows with it.

    Returns:
        One tensor per layer, ``(K, N)`` for layer and ``(K, N, C)`` for channel granularity.

    Raises:
        NotImplementedError: When an operator after the layer has no forward-AD formula
            (for example CPU scaled-dot-product attention); use reverse mode then.
        ValueError: For ``granularity="unit"``.

    Examples:
        >>> effects = forward_effects(job)  # one (K, N) tensor per layer
    """
    if granularity == "unit":
        raise ValueError(
            "granularity='unit' needs one forward pass per unit; use mode='reverse' or 'auto'."
        )
    channels = None
    if granularity == "channel":
        channels = [job.n_channels(h) for h in capture_activations(job)[1]]
    if _first_order(alphas):
        everything = range(len(job.layers))
        return [
            e * weights[0] for e in _tangent_pass(job, everything, 1.0, channels, tangent_chunk)
        ]
    effects = []
    for position in range(len(job.layers)):
        parts = [
            _tangent_pass(job, [position], alpha, channels, tangent_chunk)[0] * weight
            for alpha, weight in zip(alphas, weights)
        ]
        effects.append(sum(parts[1:], parts[0]))
    return effects


def _tangent_pass(
    job: ScoringJob,
    positions: Sequence[int],
    alpha: float,
    channels: Sequence[int] | None,
    chunk: int,
) -> list[Tensor]:
    """Effects of the layers at ``positions`` from vectorised forward passes.

    Every tangent direction (a *cell*: a layer, or one channel of a layer when ``channels``
    gives the channel counts) gets a scalar ``s_i``, and the activation becomes
    ``b + (alpha + s_i) (h - b)`` on the cell. The cells are split into about
    ``sqrt(len(positions))`` groups of consecutive cells, at most ``chunk`` per group, and each
    group is one vectorised pass. A group's tangents only flow from its first layer on, so
    grouping balances primal passes (one per group) against tangent work spent before a layer is
    reached; for layers listed in execution order ``sqrt(L)`` groups about minimise the sum (see
    docs/benchmarks.md). Any order gives the same numbers.
    """
    cells = [
        (p, c) for p in positions for c in ([None] if channels is None else range(channels[p]))
    ]
    size = math.ceil(len(cells) / _tangent_groups(len(positions), len(cells), chunk))
    columns = torch.cat(
        [_group_jvps(job, cells[i : i + size], alpha) for i in range(0, len(cells), size)]
    )
    effects, start = [], 0
    for position in positions:
        count = 1 if channels is None else channels[position]
        block = columns[start : start + count]  # (count, N, K)
        start += count
        effects.append(block[0].T if channels is None else block.permute(2, 1, 0))
    return effects


def _tangent_groups(n_layers: int, n_tangents: int, chunk: int) -> int:
    """Vectorised forward passes (one primal pass each) for ``n_tangents`` tangents over
    ``n_layers`` layers: about ``sqrt(n_layers)``, and at least enough for ``chunk`` per pass."""
    return max(round(math.sqrt(n_layers)), math.ceil(n_tangents / chunk))


def _group_jvps(job: ScoringJob, cells: Sequence[tuple[int, int | None]], alpha: float) -> Tensor:
    """Output tangents ``(len(cells), N, K)`` of one group, vectorised where torch.func can."""
    try:
        return _vectorised_jvps(job, cells, alpha)
    except (NotImplementedError, RuntimeError) as error:
        if _is_missing_forward_ad(error):
            raise
        logger.debug("torch.func could not vectorise the JVPs (%s); one pass per tangent", error)
    return torch.stack([_one_jvp(job, p, alpha, c) for p, c in cells])


def _vectorised_jvps(
    job: ScoringJob, cells: Sequence[tuple[int, int | None]], alpha: float
) -> Tensor:
    """``d run / d s`` for every unit vector of ``s`` (one entry per cell), in one pass."""
    entries: dict[int, list[tuple[int, int | None]]] = {}  # position -> [(index in s, channel)]
    for index, (position, channel) in enumerate(cells):
        entries.setdefault(position, []).append((index, channel))

    def scale_of(s: Tensor, position: int, h: Tensor) -> Tensor:
        (first_index, first), *_ = entries[position]
        if first is None:
            return s[first_index]
        count = job.n_channels(h)
        stop = first + len(entries[position])  # the group holds consecutive channels
        shape = [1] * h.dim()
        shape[job.channel_dim] = count
        values = s[first_index : first_index + stop - first]
        return torch.cat([s.new_zeros(first), values, s.new_zeros(count - stop)]).reshape(shape)

    def scaled(s: Tensor) -> Tensor:
        def edit(position: int, h: Tensor) -> Tensor:
            b, delta = job.delta(position, h)
            scale = scale_of(s, position, h).to(device=delta.device, dtype=delta.dtype)
            return _interpolate(h, b, delta, alpha) + scale * delta

        with _hooks(job, list(entries), edit):
            return job.run()

    origin = torch.zeros(len(cells))  # 0/1 entries: exact in any dtype

    def tangent_of(direction: Tensor) -> Tensor:
        return torch.func.jvp(scaled, (origin,), (direction,))[1]

    with torch.no_grad():
        return torch.func.vmap(tangent_of)(torch.eye(len(cells)))


def _one_jvp(job: ScoringJob, position: int, alpha: float, channel: int | None) -> Tensor:
    """One forward pass with a dual activation; returns the output tangent ``(N, K)``."""

    def edit(position: int, h: Tensor) -> Tensor:
        b, delta = job.delta(position, h)
        tangent = delta
        if channel is not None:
            tangent = torch.zeros_like(delta)
            tangent.select(job.channel_dim, channel).copy_(delta.select(job.channel_dim, channel))
        return fwAD.make_dual(_interpolate(h.detach(), b, delta, alpha), tangent)

    with torch.no_grad(), fwAD.dual_level(), _hooks(job, [position], edit):
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
    leaves: list[Tensor]
    deltas: list[Tensor]


def _record(job: ScoringJob, positions: Sequence[int], alpha: float = 1.0) -> _Graph:
    """One forward pass in which the layers at ``positions`` output ``b + alpha (h - b) + eps``."""
    deltas: dict[int, Tensor] = {}
    leaves: dict[int, Tensor] = {}

    def edit(position: int, h: Tensor) -> Tensor:
        b, deltas[position] = job.delta(position, h)
        leaves[position] = torch.zeros_like(h, requires_grad=True)
        return _interpolate(h, b, deltas[position], alpha) + leaves[position]

    with torch.enable_grad(), _hooks(job, positions, edit):
        output = job.run()
    return _Graph(output, [leaves[p] for p in positions], [deltas[p] for p in positions])


def _vjp_effects(
    graph: _Graph, granularity: Granularity, channel_dim: int, chunk: int
) -> list[Tensor]:
    """``sum <dy_k/dh, h - b>`` per granularity cell, for every output column ``k``.

    The output columns are processed ``chunk`` at a time; each chunk's gradients are reduced to
    the granularity and written into a result allocated once, before the next chunk is computed,
    so memory holds ``chunk`` gradients. (Keeping one small tensor per chunk instead pins the
    allocator's heap between the large gradient buffers: +3.5 GiB over 384 output dimensions of
    MiniLM, see docs/benchmarks.md.)
    """
    output = graph.output
    n, k_total = output.shape
    effects: list[Tensor | None] = [None] * len(graph.leaves)
    eye = torch.eye(k_total, device=output.device, dtype=output.dtype)
    for start in range(0, k_total, chunk):
        rows = eye[start : start + chunk]  # (k, K)
        grad_outputs = rows[:, None, :].expand(rows.shape[0], n, k_total)
        grads = _batched_grad(output, graph.leaves, grad_outputs, retain=start + chunk < k_total)
        for i, (grad, delta) in enumerate(zip(grads, graph.deltas)):
            if grad is None:  # the output does not depend on this layer
                grad = delta.new_zeros(()).expand(rows.shape[0], *delta.shape)
            part = reduce_granularity(grad * delta, granularity, channel_dim)
            if effects[i] is None:
                effects[i] = part.new_empty((k_total, *part.shape[1:]))
            effects[i][start : start + rows.shape[0]] = part  # type: ignore[index]
    return effects  # type: ignore[return-value]


def _batched_grad(
    output: Tensor, leaves: list[Tensor], grad_outputs: Tensor, retain: bool
) -> Sequence[Tensor | None]:
    """``autograd.grad`` for each of a ``(k, N, K)`` stack of ``grad_outputs``.

    One backward pass per row for ``k == 1``; for ``k > 1`` one batched pass
    (``is_grads_batched``, i.e. vmap over the backward), with a loop where an op cannot job.
    """
    if grad_outputs.shape[0] > 1:
        try:
            return torch.autograd.grad(
                output,
                leaves,
                grad_outputs=grad_outputs,
                retain_graph=retain,
                is_grads_batched=True,
                allow_unused=True,
            )
        except RuntimeError as error:  # an operator without a batching rule: loop instead
            logger.debug("batched VJP failed (%s); looping over output columns", error)
    last = len(grad_outputs) - 1
    rows = [
        torch.autograd.grad(
            output, leaves, grad_outputs=g, retain_graph=retain or i < last, allow_unused=True
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
) -> list[Tensor]:
    """G-NDI effects by reverse-mode AD (vector-Jacobian products).

    With ``alphas == (1.0,)`` (first-order G-NDI) all layers share one forward pass and ``K``
    VJPs (one backward pass each, or batched ``vjp_chunk`` at a time). Path-integrated G-NDI
    needs one forward pass per layer and integration point, because the intervention on one
    layer changes every activation after it.

    Args:
        job: The job and its intervention points.
        granularity: ``"layer"``, ``"channel"`` or ``"unit"``.
        alphas: Integration points on [0, 1].
        weights: Integration weights, one per point.
        vjp_chunk: Output dimensions per VJP (see :data:`VJP_CHUNK`); memory grows with it.

    Returns:
        One tensor per layer: ``(K, N)``, ``(K, N, C)`` or ``(K, N, *shape)`` by granularity.

    Examples:
        >>> effects = reverse_effects(job, granularity="channel")  # (K, N, C) per layer
    """
    if _first_order(alphas):
        return _reverse_from(
            _record(job, range(len(job.layers))), job, granularity, weights[0], vjp_chunk
        )
    effects = []
    for position in range(len(job.layers)):
        parts = [
            _reverse_from(_record(job, [position], alpha), job, granularity, weight, vjp_chunk)[0]
            for alpha, weight in zip(alphas, weights)
        ]
        effects.append(sum(parts[1:], parts[0]))
    return effects


def _reverse_from(
    graph: _Graph, job: ScoringJob, granularity: Granularity, weight: float, vjp_chunk: int
) -> list[Tensor]:
    return [e * weight for e in _vjp_effects(graph, granularity, job.channel_dim, vjp_chunk)]


# ---------------------------------------------------------------------------------------------
# Choosing and dispatching
# ---------------------------------------------------------------------------------------------


def choose_mode(
    mode: Mode,
    n_layers: int,
    n_outputs: int,
    granularity: Granularity,
    n_tangents: int | None = None,
) -> str:
    """Pick the engine that needs fewer passes.

    Reverse mode costs one forward pass plus one backward pass per output dimension:
    ``1 + n_outputs``. Forward mode costs one primal pass per group of tangents plus one tangent
    per intervention direction: ``n_groups + n_tangents``, with ``n_groups`` as the forward
    engine forms them (about ``sqrt(n_layers)``, at least ``n_tangents / TANGENT_CHUNK``). A
    backward pass and a tangent each cost about one forward pass (measured 0.9 to 1.3 on
    ResNet-18/56 and MiniLM, docs/benchmarks.md), so reverse is chosen when
    ``1 + n_outputs < n_groups + n_tangents``, and always for unit granularity; a tie goes to
    forward mode, whose passes need no stored graph (ResNet-18 with 10 logits and 8 branches:
    forward 9.3, reverse 10.8 forward-pass equivalents). The choice is logged at debug level.

    Args:
        mode: ``"auto"``, ``"forward"`` or ``"reverse"`` (returned unchanged unless auto).
        n_layers: Intervention points per pass (1 for path-integrated G-NDI, which needs a pass
            per layer).
        n_outputs: Output dimensions K.
        granularity: ``"layer"``, ``"channel"`` or ``"unit"``.
        n_tangents: Tangents per forward-mode pass (default: ``n_layers``).

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
    forward_cost, reverse_cost = n_groups + n_tangents, 1 + n_outputs
    chosen = "reverse" if granularity == "unit" or reverse_cost < forward_cost else "forward"
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
) -> tuple[_Graph | None, int, int, int]:
    """What ``auto`` needs to choose: ``(graph, n_outputs, layers per pass, tangents per pass)``.

    First-order G-NDI probes with the reverse engine's own forward pass (returned as ``graph``,
    so choosing reverse costs nothing extra); path-integrated G-NDI with a plain forward pass.
    """
    first_order = _first_order(alphas)
    n_layers = len(job.layers) if first_order else 1
    if granularity == "layer" and n_outputs is not None:
        return None, n_outputs, n_layers, n_layers
    graph = _record(job, range(len(job.layers))) if first_order else None
    output, activations = (
        (graph.output, graph.deltas) if graph is not None else capture_activations(job)
    )
    n_tangents = n_layers
    if granularity == "channel":
        counts = [job.n_channels(h) for h in activations]
        n_tangents = sum(counts) if first_order else max(counts)
    return graph, output.shape[1], n_layers, n_tangents


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
) -> tuple[list[Tensor], str]:
    """Dispatch to the forward or reverse engine.

    With ``mode="auto"`` and first-order G-NDI, the reverse engine's forward pass doubles as the
    probe that finds K and the channel counts, so choosing costs nothing when reverse wins.

    Args:
        job: The job and its intervention points.
        mode: ``"forward"``, ``"reverse"`` or ``"auto"`` (the cheaper of the two; forward AD
            falls back to reverse with a warning when an operator has no forward-AD formula).
        granularity: ``"layer"``, ``"channel"`` or ``"unit"``.
        alphas: Integration points on [0, 1] (``(1.0,)``: first-order G-NDI).
        weights: Integration weights, one per point.
        n_outputs: The number of output dimensions K, if known (``auto`` runs a forward pass
            to find it otherwise).

    Returns:
        The effects (one tensor per layer, K first) and the mode that was used.

    Examples:
        >>> effects, used = compute_effects(job, mode="auto", granularity="channel")
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    graph, chosen = None, mode
    if mode == "auto":
        graph, n_outputs, n_layers, n_tangents = _probe(job, granularity, alphas, n_outputs)
        chosen = choose_mode(mode, n_layers, n_outputs, granularity, n_tangents)
    if chosen == "reverse":
        if graph is not None:
            return _reverse_from(graph, job, granularity, weights[0], VJP_CHUNK), "reverse"
        return reverse_effects(job, granularity, alphas, weights), "reverse"
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


def effect_norms(effect: Tensor, p: float) -> Tensor:
    """The p-norm over the output dimension K (dim 0): the G-NDI score."""
    return torch.linalg.vector_norm(effect, ord=p, dim=0)
