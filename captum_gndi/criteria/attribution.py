"""Captum-based criteria: ``grad_x_activation``, ``layer_conductance`` and
``layer_integrated_gradients``.

Each runs one of Captum's layer attribution methods on the target logit ``y_t`` and sums the
attribution over every unit (a whole layer or one channel), per example. Captum hooks every call
of a module, so these criteria are undefined for :class:`~captum_gndi.LayerCall` points.
"""

from __future__ import annotations

from captum.attr import LayerConductance, LayerGradientXActivation, LayerIntegratedGradients
from torch import Tensor

from ..baselines import resolve_layer_baseline
from .context import (
    CriterionBatch,
    CriterionContext,
    CriterionResult,
    PerLayer,
    check_float_inputs,
    first_tensor,
    per_example_scores,
)

__all__ = ["grad_x_activation", "layer_conductance", "layer_integrated_gradients"]


def grad_x_activation(ctx: CriterionContext) -> CriterionResult:
    """Control: ``|sum_unit dy_t/dh * (h - b)|`` per example (Captum LayerGradientXActivation).

    Captum's ``LayerGradientXActivation(multiply_by_inputs=False)`` gives ``dy_t/dh`` for the
    target logit ``y_t``; multiplying by ``h - b`` instead of ``h`` makes it the first-order
    change of ``y_t`` under ``do(h := b)``, i.e. G-NDI for one scalar output.

    Args:
        ctx: The context (needs a target).

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Raises:
        UndefinedCriterion: Without a target, or for LayerCall points.

    Examples:
        >>> scores, _ = grad_x_activation(build_context(model, loader, ["0", "2"]))
    """
    modules = ctx.modules("grad_x_activation")
    method = LayerGradientXActivation(ctx.model, modules, multiply_by_inputs=False)

    def batch_fn(batch: CriterionBatch) -> PerLayer:
        target = ctx.captum_target(batch.inputs, batch.labels, "grad_x_activation")
        grads = method.attribute(batch.inputs, target=target)
        acts = ctx.activations(batch.inputs)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            h = acts[name]
            delta = h - resolve_layer_baseline(ctx.baselines[name], h, name)
            grad = first_tensor(grads[ctx.layer_names.index(name)])
            return ctx.sums(batch, name, grad.detach() * delta, channels).abs()

        return per_layer

    return per_example_scores(ctx, "gradient x activation", batch_fn)


def _captum_path(
    ctx: CriterionContext, method_cls: type, label: str, rule: str | None = None
) -> CriterionResult:
    modules = ctx.modules(label)

    def batch_fn(batch: CriterionBatch) -> PerLayer:
        inputs = batch.inputs
        check_float_inputs(inputs, label)
        target = ctx.captum_target(inputs, batch.labels, label)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            module = modules[ctx.layer_names.index(name)]
            attribution = method_cls(ctx.model, module).attribute(
                inputs,
                target=target,
                n_steps=ctx.settings.n_steps,
                method=rule or ctx.settings.method,
                internal_batch_size=inputs[0].shape[0],  # one path point per pass
            )
            attribution = first_tensor(attribution).detach()
            return ctx.sums(batch, name, attribution, channels).abs()

        return per_layer

    return per_example_scores(ctx, label, batch_fn)


def layer_conductance(ctx: CriterionContext) -> CriterionResult:
    """``|sum_unit conductance|`` per example (Captum ``LayerConductance``, zero input baseline).

    Conductance is defined against an *input* baseline (zeros), not the layer baseline. Summed
    over a layer that every path crosses it equals ``y_t(x) - y_t(0)`` (completeness), the same
    for every such layer: expect a nearly constant score on plain feed-forward stacks. Captum
    sums the changes of the activation between consecutive path points, so the points are
    always ``n_steps + 1`` evenly spaced ones from 0 to 1 (``riemann_trapezoid``), which makes
    the completeness exact; Gauss-Legendre points would leave out the path's two ends.

    Args:
        ctx: The context (needs a target and floating-point inputs).

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Examples:
        >>> scores, _ = layer_conductance(build_context(model, loader, ["0"], n_steps=8))
    """
    return _captum_path(ctx, LayerConductance, "layer_conductance", "riemann_trapezoid")


def layer_integrated_gradients(ctx: CriterionContext) -> CriterionResult:
    """``|sum_unit attribution|`` per example (Captum ``LayerIntegratedGradients``).

    The path runs from the layer's activation at the zero *input* to its actual activation, with
    ``n_steps`` points; over a layer every path crosses, the sum is ``y_t(x) - y_t(0)``.

    Args:
        ctx: The context (needs a target and floating-point inputs).

    Returns:
        ``(scores (U,), per-example scores (N, U))``.

    Examples:
        >>> scores, _ = layer_integrated_gradients(build_context(model, loader, ["0"]))
    """
    return _captum_path(ctx, LayerIntegratedGradients, "layer_integrated_gradients")
