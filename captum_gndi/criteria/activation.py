"""G-NDI and the activation-based criteria: ``gndi``, ``gndi_path``, ``activation_change``,
``hrank`` and ``taylor``.

All of them are defined per example: each returns ``(mean over examples (U,), (N, U))``. G-NDI
comes from the engine (:func:`captum_gndi.engine.compute_effects`); the others read the
activations (and, for Taylor, the loss gradients) of the scored layers with one forward pass per
batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._captum_compat import integration_points
from ..baselines import resolve_layer_baseline
from ..engine import compute_effects
from ..interventions import intervene
from ..readouts import make_readout
from ..runs import batch_target
from ..units import unit_index
from .context import (
    CriterionBatch,
    CriterionContext,
    CriterionResult,
    PerLayer,
    UndefinedCriterion,
    per_example_scores,
)
from .groups import expand_columns

__all__ = ["activation_change", "gndi", "gndi_path", "hrank", "taylor"]


def _gndi_scores(
    ctx: CriterionContext,
    alphas: Sequence[float],
    weights: Sequence[float],
    what: str,
    only_scored: bool = False,
) -> CriterionResult:
    """G-NDI of every unit from the engine, one batch at a time.

    The settings' ``gndi_target``, ``norm`` and ``n_probes`` (with ``seed + i`` as the probe
    seed of batch ``i``) read the output as :func:`captum_gndi.compute_gndi` does, so the
    scores equal its per-example scores. The engine's pass-count warning (path integration
    that costs more than exact ablation) is given once, on the first batch.

    With ``only_scored`` (path integration, whose cost grows with the number of units), a
    sample of channels is scored as groups: each scored channel its own group, the layer's other
    channels one extra group, so that the engine integrates the scored channels only (each
    channel on its own path, the same numbers as ``granularity="channel"``).
    """
    s = ctx.settings
    granularity = "group" if ctx.group_level else "channel" if ctx.channel_level else "layer"
    channel_masks: list[Tensor] | None = None
    positions: dict[str, dict[int, int]] = {}
    readout = make_readout(s.norm, s.n_probes, s.seed)
    index = 0

    def batch_fn(batch: CriterionBatch) -> PerLayer:
        nonlocal channel_masks, index
        present: list[Tensor | None] = [None] * len(ctx.layer_names)
        masks: list[Tensor] | None = None
        if granularity == "group":
            masks, present = ctx.engine_masks(batch)
        elif granularity == "channel" and only_scored:
            if channel_masks is None:
                channel_masks = _scored_channel_masks(ctx, batch.inputs, positions)
            masks = channel_masks or None
        if s.gndi_target == "label" and batch.labels is None:
            raise ValueError(
                "gndi_target='label' measures each example's labelled output, but the batches "
                "have no labels; pass batches of (inputs, labels), a class index, 'predicted', "
                "or gndi_target=None (the whole output)."
            )
        target = batch_target(ctx.model, batch.inputs, batch.labels, s.gndi_target)
        job = ctx.scoring_job(batch.inputs, masks, target)
        readout.seed = s.seed + index
        effects, _ = compute_effects(
            job,
            "auto",
            "group" if masks else granularity,
            alphas,
            weights,
            readout=readout,
            progress=s.progress,
            warn_cost=index == 0,
        )
        index += 1
        reference = readout.clean_output(job.run)
        norms = {}
        for name, effect, ids in zip(ctx.layer_names, effects, present):
            score = readout.scores(effect, reference)
            norms[name] = expand_columns(score, ids, ctx.n_groups.get(name, 0))

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            score = norms[name]
            if score.dim() == 1:
                return score[:, None]
            if name in positions:
                return score[:, [positions[name][int(c)] for c in channels]]  # type: ignore[arg-type]
            return score[:, channels]

        return per_layer

    return per_example_scores(ctx, what, batch_fn)


def _scored_channel_masks(
    ctx: CriterionContext, inputs: tuple[Tensor, ...], positions: dict[str, dict[int, int]]
) -> list[Tensor]:
    """Group masks that keep only the scored channels (empty when every channel is scored).

    Fills ``positions``: layer -> channel -> its group id.
    """
    acts = ctx.activations(inputs)
    masks, partial = [], False
    for name in ctx.layer_names:
        h = acts[name]
        index = unit_index("channel", h.shape, name, ctx.settings.channel_dim, device=h.device)
        scored = sorted({int(c) for c in ctx.columns(name)[1]})  # type: ignore[arg-type]
        remap = torch.full((index.n_groups,), len(scored), dtype=torch.long, device=h.device)
        remap[torch.as_tensor(scored, device=h.device)] = torch.arange(len(scored), device=h.device)
        partial = partial or len(scored) < index.n_groups
        assert index.mask is not None
        masks.append(remap[index.mask])
        positions[name] = {c: i for i, c in enumerate(scored)}
    if not partial:
        positions.clear()
        return []
    return masks


def gndi(ctx: CriterionContext) -> CriterionResult:
    """First-order G-NDI ``|| J_{>L}(x) (h - b) ||_2`` over the whole output, per example.

    Layer units use the whole layer's ``h - b``; channel units keep ``h - b`` on that channel only
    (``granularity="channel"`` of :func:`captum_gndi.engine.compute_effects`). The settings'
    ``gndi_target``, ``norm`` and ``n_probes`` choose the output and the norm (default: L2 over
    the whole output), as ``compute_gndi``'s ``target``, ``norm`` and ``n_probes`` do.

    Args:
        ctx: The context (see :func:`~captum_gndi.criteria.build_context`).

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Examples:
        >>> scores, per_example = gndi(build_context(model, loader, ["0", "2"]))
    """
    return _gndi_scores(ctx, (1.0,), (1.0,), "G-NDI")


def gndi_path(ctx: CriterionContext) -> CriterionResult:
    """Path-integrated G-NDI: the Jacobian averaged over ``b + a (h - b)``, ``a`` in [0, 1].

    Uses ``n_steps`` points of Captum's integration rule ``method``; converges to the exact
    intervention effect ``|| f(x) - f(x; do(h := b)) ||_2`` as ``n_steps`` grows (for a unit).

    Args:
        ctx: The context; ``ctx.settings.n_steps`` and ``ctx.settings.method`` give the path points.

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Examples:
        >>> scores, _ = gndi_path(build_context(model, loader, ["0"], n_steps=32))
    """
    alphas, weights = integration_points(ctx.settings.n_steps, ctx.settings.method)
    return _gndi_scores(ctx, alphas, weights, f"G-NDI path ({ctx.settings.n_steps} steps)", True)


def activation_change(ctx: CriterionContext) -> CriterionResult:
    """Control: ``||h - b||_2`` over the unit's elements, per example.

    Args:
        ctx: The context.

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Examples:
        >>> scores, _ = activation_change(build_context(model, loader, ["0"], baseline="mean"))
    """

    def batch_fn(batch: CriterionBatch) -> PerLayer:
        acts = ctx.activations(batch.inputs)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            h = acts[name]
            delta = h - resolve_layer_baseline(ctx.baselines[name], h, name)
            return ctx.sums(batch, name, delta.double().pow(2), channels).sqrt()

        return per_layer

    return per_example_scores(ctx, "activation change", batch_fn)


def hrank(ctx: CriterionContext) -> CriterionResult:
    """HRank: the average matrix rank of the unit's ``(H, W)`` feature maps.

    ``torch.linalg.matrix_rank`` (default tolerance) of every ``(H, W)`` map; a channel unit's
    per-example score is the rank of its map, a layer unit's the mean over its channels. Only
    defined for ``(N, C, H, W)`` activations with ``channel_dim=1``.

    Args:
        ctx: The context.

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Raises:
        UndefinedCriterion: For activations that are not ``(N, C, H, W)`` feature maps.

    Examples:
        >>> scores, _ = hrank(build_context(model, loader, ["conv1"], granularity="channel"))
    """
    ctx.no_groups("hrank", "the rank of a group of elements is not that of (H, W) feature maps")

    def batch_fn(batch: CriterionBatch) -> PerLayer:
        acts = ctx.activations(batch.inputs)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            h = acts[name]
            if h.dim() != 4 or ctx.settings.channel_dim not in (1, -3):
                raise UndefinedCriterion(
                    f"hrank needs (N, C, H, W) feature maps; layer '{name}' gives shape "
                    f"{tuple(h.shape)}, whose rank is undefined (HRank is a CNN criterion)."
                )
            ranks = torch.linalg.matrix_rank(h.float()).double()  # (N, C)
            return torch.stack([ranks.mean(1) if c is None else ranks[:, c] for c in channels], 1)

        return per_layer

    return per_example_scores(ctx, "HRank", batch_fn)


def _activation_gradients(
    ctx: CriterionContext, inputs: tuple[Tensor, ...], labels: Tensor
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Activations and gradients of the summed cross-entropy with respect to them."""
    names = ctx.layer_names
    leaves: dict[str, Tensor] = {}
    acts: dict[str, Tensor] = {}

    def edit(position: int, h: Tensor) -> Tensor:
        name = names[position]
        acts[name] = h.detach()
        leaves[name] = torch.zeros_like(h, requires_grad=True)
        return h + leaves[name]

    with torch.enable_grad(), intervene([ctx.named[n] for n in names], edit, labels=names):
        loss = F.cross_entropy(ctx.model(*inputs), labels, reduction="sum")
    grads = torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)
    return acts, {
        n: (g if g is not None else torch.zeros_like(leaves[n])) for n, g in zip(names, grads)
    }


def taylor(ctx: CriterionContext) -> CriterionResult:
    """Taylor (Molchanov et al. 2017): ``|sum_unit h * dL/dh|`` per example.

    ``L`` is the example's cross-entropy; the sum runs over the unit's elements (all positions
    of a channel, or the whole layer); the score is the mean over examples.

    Args:
        ctx: The context (needs labels or a class target).

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Raises:
        UndefinedCriterion: Without labels or a class target.

    Examples:
        >>> scores, _ = taylor(build_context(model, loader, ["conv1"], granularity="channel"))
    """

    def batch_fn(batch: CriterionBatch) -> PerLayer:
        labels = ctx.loss_labels(batch.inputs, batch.labels, "taylor")
        acts, grads = _activation_gradients(ctx, batch.inputs, labels)
        return lambda name, ch: ctx.sums(batch, name, acts[name] * grads[name], ch).abs()

    return per_example_scores(ctx, "Taylor", batch_fn)
