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
from ..engine import compute_effects, effect_norms
from ..interventions import intervene
from .context import (
    CriterionContext,
    CriterionResult,
    PerLayer,
    UndefinedCriterion,
    per_example_scores,
    unit_sums,
)

__all__ = ["activation_change", "gndi", "gndi_path", "hrank", "taylor"]


def _gndi_scores(
    ctx: CriterionContext, alphas: Sequence[float], weights: Sequence[float], what: str
) -> CriterionResult:
    granularity = "channel" if ctx.channel_level else "layer"

    def batch_fn(inputs: tuple[Tensor, ...], _labels: Tensor | None) -> PerLayer:
        job = ctx.scoring_job(inputs)
        effects, _ = compute_effects(job, "auto", granularity, alphas, weights)
        norms = dict(zip(ctx.layer_names, (effect_norms(e, 2.0) for e in effects)))

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            score = norms[name]
            return score[:, None] if score.dim() == 1 else score[:, channels]

        return per_layer

    return per_example_scores(ctx, what, batch_fn)


def gndi(ctx: CriterionContext) -> CriterionResult:
    """First-order G-NDI ``|| J_{>L}(x) (h - b) ||_2`` over the whole output, per example.

    Layer units use the whole layer's ``h - b``; channel units keep ``h - b`` on that channel only
    (``granularity="channel"`` of :func:`captum_gndi.engine.compute_effects`).

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

    Uses ``n_steps`` points of Captum's ``integration`` rule; converges to the exact intervention
    effect ``|| f(x) - f(x; do(h := b)) ||_2`` as ``n_steps`` grows (for a layer unit).

    Args:
        ctx: The context; ``ctx.n_steps`` and ``ctx.integration`` give the path points.

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Examples:
        >>> scores, _ = gndi_path(build_context(model, loader, ["0"], n_steps=32))
    """
    alphas, weights = integration_points(ctx.n_steps, ctx.integration)
    return _gndi_scores(ctx, alphas, weights, f"G-NDI path ({ctx.n_steps} steps)")


def activation_change(ctx: CriterionContext) -> CriterionResult:
    """Control: ``||h - b||_2`` over the unit's elements, per example.

    Args:
        ctx: The context.

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Examples:
        >>> scores, _ = activation_change(build_context(model, loader, ["0"], baseline="mean"))
    """

    def batch_fn(inputs: tuple[Tensor, ...], _labels: Tensor | None) -> PerLayer:
        acts = ctx.activations(inputs)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            h = acts[name]
            delta = h - resolve_layer_baseline(ctx.baselines[name], h, name)
            return unit_sums(delta.double().pow(2), channels, ctx.channel_dim).sqrt()

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

    def batch_fn(inputs: tuple[Tensor, ...], _labels: Tensor | None) -> PerLayer:
        acts = ctx.activations(inputs)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            h = acts[name]
            if h.dim() != 4 or ctx.channel_dim not in (1, -3):
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

    def batch_fn(inputs: tuple[Tensor, ...], labels: Tensor | None) -> PerLayer:
        acts, grads = _activation_gradients(ctx, inputs, ctx.loss_labels(inputs, labels, "taylor"))
        return lambda name, ch: unit_sums(acts[name] * grads[name], ch, ctx.channel_dim).abs()

    return per_example_scores(ctx, "Taylor", batch_fn)
