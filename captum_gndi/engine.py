"""The engine's entry point: choose forward or reverse mode and compute J_{>L}(x) (h_L - b_L).

:func:`compute_effects` (and :func:`choose_mode`, its cost model) is what LayerGNDI, compute_gndi
and the criteria call; the pieces live in :mod:`captum_gndi.job`, :mod:`captum_gndi.forward_mode`
and :mod:`captum_gndi.reverse_mode`. Everything works on a :class:`ScoringJob`: a zero-argument
``run`` that evaluates the model on a fixed batch and returns its (target-selected) output
flattened to ``(N, K)``, plus the intervention points, their baselines and how each layer splits
into units (:mod:`captum_gndi.units`). The results are *effects* with the output dimension first:
``(K, N, *unit_shape)`` per layer, where ``unit_shape`` is ``()`` for the whole layer, the
channel sizes, ``(G,)`` for a ``layer_mask`` or the activation's shape per unit. Scores are
norms of effects over ``K`` (:func:`effect_norms`).

A layer whose output is a tuple of several floating-point tensors of one shape (or, with
``attribute_to_layer_input``, a module with several such inputs) is intervened on *jointly*:
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
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .forward_mode import TANGENT_CHUNK, forward_effects, is_missing_forward_ad, tangent_groups
from .job import ScoringJob, capture_activations, first_order, true_effects
from .readouts import Readout
from .reverse_mode import (
    EXACT,
    VJP_CHUNK,
    Graph,
    graph_activations,
    record,
    reverse_effects,
    vjp_effects,
)
from .units import GRANULARITIES, Granularity, UnitIndex

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
    n_groups = tangent_groups(n_layers, n_tangents, TANGENT_CHUNK)
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
) -> tuple[Graph | None, list[UnitIndex] | None, int, int]:
    """What ``auto`` needs to choose: ``(graph, units, n_outputs, tangents)``.

    First-order G-NDI probes with the reverse engine's own forward pass (returned as ``graph``
    with the layers' units, so choosing reverse costs nothing extra); path-integrated G-NDI with
    a plain forward pass.
    """
    steps = len(alphas)
    if granularity == "layer" and n_outputs is not None:
        return None, None, n_outputs, len(job.layers) * steps
    if first_order(alphas):
        graph = record(job, range(len(job.layers)))
        output, activations = graph.output, graph_activations(graph)
    else:
        graph = None
        output, activations = capture_activations(job)
    units = [job.units(p, h, granularity) for p, h in enumerate(activations)]
    return graph, units, output.shape[1], sum(u.n_groups for u in units) * steps


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
        path = not first_order(alphas)
        chosen = choose_mode(mode, len(job.layers), n_outputs, granularity, n_tangents, path)
    if chosen == "reverse":
        if graph is not None and units is not None:
            effects = vjp_effects(graph, job, units, VJP_CHUNK, readout)
            return [e * weights[0] for e in effects], "reverse"
        return reverse_effects(job, granularity, alphas, weights, readout=readout), "reverse"
    graph = None  # free the probe's autograd graph before running forward mode
    try:
        return forward_effects(job, granularity, alphas, weights), "forward"
    except (NotImplementedError, RuntimeError) as error:
        if mode == "forward" or not is_missing_forward_ad(error):
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
