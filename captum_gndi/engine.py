"""The engine's entry point: choose forward or reverse mode and compute J_{>L}(x) (h_L - b_L).

:func:`compute_effects` (and :func:`choose_mode`, its cost model) is what LayerGNDI, compute_gndi
and the criteria call; the pieces live in :mod:`captum_gndi.job`, :mod:`captum_gndi.forward_mode`
and :mod:`captum_gndi.reverse_mode`. Everything works on a :class:`ScoringJob`: a zero-argument
``run`` that evaluates the model on a fixed batch and returns its (target-selected) output
flattened to ``(N, K)``, plus the intervention points, their baselines and how each layer splits
into units (:mod:`captum_gndi.units`). The results are *effects* with the output dimension first:
``(K, N, *unit_shape)`` per layer, where ``unit_shape`` is ``()`` for the whole layer, the
channel sizes, ``(G,)`` for a ``layer_mask`` or the activation's shape per unit. Scores are
norms of effects over ``K`` (:meth:`captum_gndi.readouts.Readout.scores`).

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
- the input path (``path="input"``, EAP-IG, :func:`input_path_effects`): one recorded pass and
  ``K`` VJPs at each point of a path in input space (``job.input_path``), every gradient times the
  clean ``h - b``: ``n_steps`` passes for every unit of every layer.

Before path integration :func:`compute_effects` counts the passes (:func:`pass_counts`,
:func:`input_path_passes`) and warns when they exceed exact ablation of every unit.

:func:`true_effects` computes the exact intervention effect ``f(x) - f(x; do(h_L := b_L))``.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .forward_mode import TANGENT_CHUNK, forward_effects, is_missing_forward_ad, tangent_groups
from .input_path import Path, check_path
from .job import ScoringJob, capture_activations, first_order, true_effects
from .readouts import Readout
from .reverse_mode import (
    EXACT,
    VJP_CHUNK,
    Graph,
    graph_activations,
    input_path_effects,
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
    "forward_effects",
    "input_path_passes",
    "pass_counts",
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
    costs = pass_counts(n_layers, n_outputs, n_tangents, path)
    forward_cost, reverse_cost = costs["forward"], costs["reverse"]
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


def pass_counts(n_layers: int, n_rows: int, n_tangents: int, path: bool) -> dict[str, int]:
    """Forward-pass equivalents of each engine (the cost model of :func:`choose_mode`).

    Args:
        n_layers: Intervention points.
        n_rows: Vector-Jacobian products per recorded pass (output dimensions K, or
            ``n_probes``).
        n_tangents: Tangents (cells) in total: units, times integration points for ``path``.
        path: Per-unit path integration (each cell its own pass).

    Returns:
        ``{"forward": n_groups + n_tangents, "reverse": ...}``: ``1 + n_rows`` at first order,
        ``n_tangents x (1 + n_rows)`` with per-unit path integration.

    Examples:
        >>> pass_counts(n_layers=1, n_rows=1, n_tangents=64, path=True)
        {'forward': 66, 'reverse': 128}
    """
    n_groups = tangent_groups(n_layers, n_tangents, TANGENT_CHUNK)
    reverse = n_tangents * (1 + n_rows) if path else 1 + n_rows
    return {"forward": n_groups + n_tangents, "reverse": reverse}


def input_path_passes(n_steps: int, n_rows: int) -> int:
    """Passes of ``path="input"``: one capture pass, then one recorded pass and ``n_rows``
    vector-Jacobian products per integration point, whatever the number of units."""
    return 1 + n_steps * (1 + n_rows)


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
    path: Path = "unit",
    progress: bool = False,
    warn_cost: bool = True,
) -> tuple[list[Tensor], str]:
    """Dispatch to the forward or reverse engine.

    With ``mode="auto"`` and first-order G-NDI, the reverse engine's forward pass doubles as the
    probe that finds K and the channel counts, so choosing costs nothing when reverse wins.
    Path integration first counts the chosen engine's passes (:func:`pass_counts`,
    :func:`input_path_passes`); that count is the progress bar's total, and when it exceeds
    exact ablation of every unit (``units + 1`` forward passes) one ``UserWarning`` says so,
    before the work, and names the cheaper alternatives.

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
        path: ``"unit"`` (each unit on its own path ``b_u + a (h - b)_u``) or ``"input"``
            (one input-space path for all units, ``job.input_path``; reverse mode). Both are
            first-order G-NDI at ``alphas == (1.0,)``.
        progress: Show a progress bar of the passes of path integration.
        warn_cost: Warn when path integration costs more passes than exact ablation.

    Returns:
        The effects (one tensor per layer, K first) and the mode that was used.

    Raises:
        ValueError: For NaN / inf effects, naming the layers and examples
            (:meth:`ScoringJob.check_effects`): no NaN reaches a score or a ranking.

    Examples:
        >>> effects, used = compute_effects(job, mode="auto", granularity="channel")
    """
    effects, used = _dispatch(
        job, mode, granularity, alphas, weights, n_outputs, readout, path, progress, warn_cost
    )
    job.check_effects(effects)
    return effects, used


def _dispatch(
    job: ScoringJob,
    mode: Mode,
    granularity: Granularity,
    alphas: Sequence[float],
    weights: Sequence[float],
    n_outputs: int | None,
    readout: Readout,
    path: Path,
    progress: bool,
    warn_cost: bool,
) -> tuple[list[Tensor], str]:
    """:func:`compute_effects` before its check of the effects."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    check_path(path)
    integrated = not first_order(alphas)
    if path == "input" and integrated:
        return _input_path(job, mode, granularity, alphas, weights, readout, progress, warn_cost)
    graph, units, chosen = None, None, mode
    if readout.n_probes is not None:
        if mode == "forward":
            raise ValueError(
                "n_probes are random vector-Jacobian products (reverse mode); use mode='reverse' "
                "or 'auto', or drop n_probes for exact forward-mode effects."
            )
        mode = chosen = "reverse"
    if mode == "auto" or integrated:
        graph, units, n_outputs, n_tangents = _probe(job, granularity, alphas, n_outputs)
        chosen = choose_mode(mode, len(job.layers), n_outputs, granularity, n_tangents, integrated)
    if chosen == "reverse" and graph is not None and units is not None:
        effects = vjp_effects(graph, job, units, VJP_CHUNK, readout)
        return [e * weights[0] for e in effects], "reverse"
    bar = None
    if integrated:
        n_rows = _rows_count(job, readout, n_outputs)
        passes = pass_counts(len(job.layers), n_rows, n_tangents, True)[chosen]
        n_units = n_tangents // len(alphas)
        if warn_cost and passes > n_units + 1:
            _warn_cost(
                f"Per-unit path integration (path='unit', n_steps={len(alphas)}) will take "
                f"about {passes} passes in {chosen} mode ({n_units} units x {len(alphas)} "
                "steps, each unit on its own path)",
                n_units,
                "for every unit's path-integrated score in n_steps forward+backward passes, "
                "use path='input' with input-space `baselines` (e.g. the corrupted prompt; it "
                "estimates the unit's share of f(x) - f(baselines) along one input path, not "
                "the effect of patching the unit alone)",
            )
        bar = tqdm(total=passes, desc=f"G-NDI passes ({chosen})", disable=not progress)
    tick = None if bar is None else bar.update
    try:
        if chosen == "reverse":
            effects = reverse_effects(
                job, granularity, alphas, weights, readout=readout, progress=tick
            )
            return effects, "reverse"
        graph = None  # free the probe's autograd graph before running forward mode
        try:
            return forward_effects(job, granularity, alphas, weights, progress=tick), "forward"
        except (NotImplementedError, RuntimeError) as error:
            if not is_missing_forward_ad(error):
                raise
            if mode == "forward":
                raise NotImplementedError(
                    f"mode='forward' needs forward-mode AD, which an operator of this model "
                    f"lacks ({error}). Use mode='reverse' (the same scores) or mode='auto' (falls "
                    "back to reverse mode), or keep forward mode with attn_implementation='eager' "
                    "/ `with captum_gndi.eager_attention(model):`."
                ) from error
            warnings.warn(
                f"Forward-mode AD is not supported by an operator in this model ({error}); "
                "falling back to reverse mode (same scores). To keep forward mode, run inside "
                "`with captum_gndi.eager_attention(model):` (SDPA math backend, no "
                "nn.MultiheadAttention fast path) or load Hugging Face models with "
                "attn_implementation='eager'.",
                stacklevel=3,
            )
            return reverse_effects(job, granularity, alphas, weights, progress=tick), "reverse"
    finally:
        if bar is not None:
            bar.close()


def _input_path(
    job: ScoringJob,
    mode: Mode,
    granularity: Granularity,
    alphas: Sequence[float],
    weights: Sequence[float],
    readout: Readout,
    progress: bool,
    warn_cost: bool,
) -> tuple[list[Tensor], str]:
    """``path="input"`` with ``n_steps > 1``: count, warn, then run the reverse engine."""
    if mode == "forward":
        raise ValueError(
            "path='input' takes the gradient with respect to every unit at each point of the "
            "input path, which is reverse mode; use mode='reverse' or 'auto' (or path='unit' "
            "for forward mode)."
        )
    if job.input_path is None:
        raise ValueError(
            "path='input' integrates from input-space baselines to the inputs; this job has "
            "none. Pass Captum's `baselines` (e.g. the corrupted prompt) to LayerGNDI.attribute."
        )
    output, activations = capture_activations(job)
    n_units = sum(job.units(p, h, granularity).n_groups for p, h in enumerate(activations))
    n_rows = readout.rows_count(output)
    passes = input_path_passes(len(alphas), n_rows)
    if warn_cost and passes > n_units + 1:
        _warn_cost(
            f"path='input' with n_steps={len(alphas)} will take about {passes} passes (a "
            f"forward pass and {n_rows} backward passes per step, one per output row)",
            n_units,
            "to need fewer backward passes, select one output with `target` (or a metric as "
            "forward_func) or estimate the norm with n_probes",
        )
    with tqdm(total=passes, desc="G-NDI passes (input path)", disable=not progress) as bar:
        effects = input_path_effects(
            job,
            granularity,
            alphas,
            weights,
            readout=readout,
            progress=bar.update,
            captured=(output, activations),
        )
    return effects, "reverse"


def _rows_count(job: ScoringJob, readout: Readout, n_outputs: int) -> int:
    """Vector-Jacobian products per recorded pass: ``K``, or with probes the exact rows of
    ``probe_exact`` and the ``n_probes`` (:meth:`Readout.rows_count`), counted from the
    output's shape as the last run saw it."""
    if readout.n_probes is None:
        return n_outputs
    shaped = replace(readout, output_shape=getattr(job.run, "output_shape", None))
    return shaped.rows_count(torch.empty(0, n_outputs, device="meta"))


def _warn_cost(cost: str, n_units: int, alternative: str) -> None:
    """One warning: the estimate costs more than exact ablation of every unit."""
    warnings.warn(
        f"{cost}: more than exact ablation of every unit ({n_units + 1} forward passes for "
        f"{n_units} units). For exact single-unit effects use captum_gndi.verify_top_k "
        f"(exact interventions in order of a first-order screen); {alternative}.",
        UserWarning,
        stacklevel=_outside_stacklevel(),
    )


def _outside_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside captum_gndi and Captum (for the caller of
    the function that warns), so that the warning names the user's line."""
    frame, level = inspect.currentframe(), 0
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in (
        "captum_gndi",
        "captum",
    ):
        frame, level = frame.f_back, level + 1
    return max(level, 1)


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
