"""GradDrop (AtP*, Kramár et al. 2024): first-order estimates with one block's gradient dropped.

First-order G-NDI (minus attribution patching) estimates a unit's patching effect ``f(x) - f(x;
do(h_u := b_u))`` as ``J (h - b)``, with the gradient ``J`` of every path from the unit to the
output. When paths cancel (an effect that one later block adds and another removes) the sum
can be near zero although the unit matters. GradDrop runs one forward pass and ``1 + B``
backward passes: the first with every gradient (row 0, first-order G-NDI itself), then one per
residual block ``l`` with the gradient through that block's residual branches (a transformer
layer's attention and MLP outputs, before the addition) set to zero (row ``1 + l``). A unit whose
paths cancel gets a large estimate in some row. The screen ``"graddrop"`` of
:func:`captum_gndi.verify_top_k` is the largest ``|mean over examples|`` over the ``1 + B`` rows
(every row estimates the effect on the metric's scale, so the stopping rule's true / predicted
ratios keep their meaning); AtP*'s own form, ``sum_l |estimate_l| / (B - 1)``, is not offered,
since it measured worse on SmolLM2 (``docs/results.md``, "A real LLM: screen and verify").

The blocks and their branches come from the adapters: ``find_points(model, "branch")``, each
branch grouped with the ``find_points(model, "block")`` block that contains it (a block-less
family drops each branch alone). A unit inside block ``l`` (a head, a neuron of its MLP) loses
every gradient in row ``1 + l``, as in AtP*.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..adapters import find_points
from ..interventions import LayerCall, LayerSpec, intervene, module_of
from ..job import Activation, ScoringJob, job_hooks, parts, rebuild
from ..patching import metric_model_and_layers, patching_job, patching_runs
from ..runs import Layers, all_reduce, resolve_device, resolve_layers
from ..units import ChannelDim, LayerMask, layer_masks

__all__ = ["graddrop_effects", "residual_branches"]


def residual_branches(model: nn.Module) -> list[list[LayerSpec]]:
    """The residual branches of ``model``, one list per block, in forward order.

    Args:
        model: The model (or a wrapper holding it, such as a metric model).

    Returns:
        Per block, its branch points (e.g. ``self_attn.o_proj`` and ``mlp.down_proj`` of a
        Llama layer; ``attn.c_proj`` and ``mlp.c_proj`` of GPT-2).

    Raises:
        ValueError: When the adapters find no residual branches (the message names the fix).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generic walk's warning: the error below says more
        try:
            branches = find_points(model, "branch")
        except ValueError as error:
            reason = str(error)
            branches = []
        else:
            reason = "it found none"
        try:
            blocks = [p.layer for p in find_points(model, "block")]
        except ValueError:
            blocks = []
    if not branches:
        raise ValueError(
            f"screen='graddrop' drops the gradient through each block's residual branches, but "
            f"find_layers(model, 'branch') cannot find them for {type(model).__name__} "
            f"({reason}). Register an adapter that gives kinds 'branch' and 'block' "
            "(captum_gndi.register_adapter), or use another screen (screen='combined')."
        )
    groups: dict[Any, list[LayerSpec]] = {}
    for point in branches:
        module = module_of(point.layer)
        call = point.layer.call_index if isinstance(point.layer, LayerCall) else None
        block = next(
            (i for i, b in enumerate(blocks) if any(m is module for m in module_of(b).modules())),
            None,
        )
        key = (block, call) if block is not None else ("branch", point.name)
        groups.setdefault(key, []).append(point.layer)
    return list(groups.values())


def _record(
    job: ScoringJob, branches: list[LayerSpec], branch_group: list[int], state: dict[str, Any]
) -> tuple[Tensor, list[tuple[Tensor, ...]], list[tuple[Tensor, ...]]]:
    """One forward pass of ``job`` with a zero leaf added to every layer's activation and every
    branch output behind a :class:`_DropGradient` of its block: the output, the leaves and the
    deltas ``h - b`` per layer."""
    leaves: dict[int, tuple[Tensor, ...]] = {}
    deltas: dict[int, tuple[Tensor, ...]] = {}

    def add_leaf(position: int, h: Activation) -> Activation:
        _b, delta = job.delta(position, h)
        deltas[position] = parts(delta)
        leaves[position] = tuple(torch.zeros_like(t, requires_grad=True) for t in parts(h))
        return rebuild(h, [t + e for t, e in zip(parts(h), leaves[position])])

    def gate(position: int, h: Activation) -> Activation:
        group = branch_group[position]
        return rebuild(h, [_DropGradient.apply(t, state, group) for t in parts(h)])

    positions = range(len(job.layers))
    with (
        torch.enable_grad(),
        job_hooks(job, positions, add_leaf),  # before the gates: a branch unit is dropped too
        intervene(branches, gate),
    ):
        output = job.run()
    return output, [leaves[p] for p in positions], [deltas[p] for p in positions]


class _DropGradient(torch.autograd.Function):
    """The identity, whose backward pass returns zero while ``state["drop"] == group``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, state: dict[str, Any], group: int) -> Tensor:
        ctx.state, ctx.group = state, group
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return (grad * 0 if ctx.state["drop"] == ctx.group else grad), None, None


def graddrop_effects(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    *,
    granularity: str = "channel",
    channel_dim: ChannelDim = 1,
    layer_mask: LayerMask | Mapping[str, Tensor] | None = None,
    direction: str = "noising",
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    progress: bool = False,
    metric: Any = None,
) -> dict[str, Tensor]:
    """GradDrop's mean signed estimates of every unit's patching effect, one row per drop.

    Args:
        model: A metric model ``f(input_ids, answers) -> (N, 1)`` (or the model with
            ``metric``).
        data: Patching data: a :class:`~captum_gndi.tasks.PatchingTask` or a loader of
            ``(clean, corrupted, answers)`` batches.
        layers: Dict name -> layer, or dotted names (e.g. ``find_layers(model, "head")``).
        granularity: ``"channel"``, ``"layer"`` or ``"unit"`` (``"group"`` with
            ``layer_mask``).
        channel_dim: The unit dimension(s) of ``"channel"`` granularity.
        layer_mask: Groups, as in :func:`captum_gndi.compute_gndi`.
        direction: ``"noising"`` or ``"denoising"``.
        device: Where to run.
        max_batches: Use at most this many batches.
        progress: Show a progress bar.
        metric: ``metric(output, answers)`` with a plain model.

    Returns:
        Name -> ``(1 + B, *units)`` float64: row 0 is first-order G-NDI's mean signed estimate
        (``compute_gndi(...).mean``), row ``1 + l`` the same with the gradient through block
        ``l``'s residual branches dropped.

    Raises:
        ValueError: When the model's residual branches cannot be found.

    Examples:
        >>> rows = graddrop_effects(tasks.logit_diff(lm), task, find_layers(lm, "head"),
        ...                         channel_dim=2)
        >>> screen = {name: r.abs().amax(0) for name, r in rows.items()}
    """
    model, layers = metric_model_and_layers(model, layers, metric)
    named = resolve_layers(model, layers)
    names, specs = list(named), list(named.values())
    groups = residual_branches(model)
    branches = [b for group in groups for b in group]
    branch_group = [g for g, group in enumerate(groups) for _ in group]
    masks = layer_masks(layer_mask, names)
    granularity = "group" if masks is not None else granularity
    device = resolve_device(model, device)
    sums: list[Tensor | None] = [None] * len(names)
    count = 0
    state: dict[str, Any] = {"drop": None}
    for run in patching_runs(data, direction, device, max_batches, progress, "GradDrop"):
        job = patching_job(model, run, specs, names, False, channel_dim, masks)
        output, leaves, deltas = _record(job, branches, branch_group, state)
        job.check_output(output)
        total = output.sum()
        flat = [leaf for group in leaves for leaf in group]
        rows: list[list[Tensor]] = [[] for _ in specs]
        for drop in (None, *range(len(groups))):
            state["drop"] = drop
            grads = iter(torch.autograd.grad(total, flat, retain_graph=True, allow_unused=True))
            for p in range(len(specs)):
                ds = deltas[p]
                units = job.units(p, ds if len(ds) > 1 else ds[0], granularity)
                part = None
                for d in ds:
                    g = next(grads)
                    if g is None:  # the output does not depend on this tensor
                        g = torch.zeros_like(d)
                    reduced = units.reduce((g.double() * d.double())[None])[0].sum(0)
                    part = reduced if part is None else part + reduced
                rows[p].append(part)
        state["drop"] = None
        for p, row in enumerate(rows):
            stacked = torch.stack(row).detach()
            sums[p] = stacked if sums[p] is None else sums[p] + stacked
        count += run.inputs.shape[0]
    *sums, total_count = all_reduce(
        [*sums, torch.tensor(float(count), dtype=torch.float64, device=device)], device
    )
    return {name: s / total_count for name, s in zip(names, sums)}
