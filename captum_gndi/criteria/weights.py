"""Weight-based criteria: ``snip``, ``grasp``, ``synflow`` and ``magnitude``, and the weights that
feed a unit (:func:`unit_parameters`).

*The unit's weights* are the parameters of the layer's module and all its submodules; for a
normalisation layer (BatchNorm, LayerNorm, GroupNorm) they also include the parametrised module
registered just before it in the same parent (``conv2`` for a ResNet ``bn2``, ``dense`` for a
BERT ``LayerNorm``), because that module produces what the norm rescales. A channel's weights
are the slices ``[c]`` (dimension 0) of those parameters; channels of a composite module (a whole
block) have no weights of their own and these criteria raise
:class:`~captum_gndi.criteria.UndefinedCriterion` there.

These criteria score the whole data set (no per-example version): each returns
``(scores (U,), None)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..interventions import LayerSpec, module_of
from ..runs import iterate_batches
from .context import CriterionContext, CriterionResult, UndefinedCriterion, check_float_inputs

__all__ = ["grasp", "magnitude", "snip", "synflow", "unit_parameters"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _named_modules(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


def _producer(model: nn.Module, norm_name: str) -> str | None:
    """The parametrised sibling registered just before a normalisation layer."""
    parent_name, _, child = norm_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    previous = None
    for name, module in parent.named_children():
        if name == child:
            break
        if any(True for _ in module.parameters()) and not isinstance(module, _NORMS):
            previous = name
    if previous is None:
        return None
    return f"{parent_name}.{previous}" if parent_name else previous


def unit_parameters(
    model: nn.Module, layer: LayerSpec, channel: int | None = None
) -> list[tuple[str, Tensor]]:
    """The weights that feed a unit: parameters (or their channel slices) with their names.

    Args:
        model: The model holding the layer.
        layer: The unit's module (or :class:`~captum_gndi.LayerCall`).
        channel: A channel index, or ``None`` for the whole layer.

    Returns:
        ``(name, tensor)`` pairs: whole parameters for a layer; for a channel, the slice ``[c]``
        (named ``"name[c]"``) of every parameter whose first dimension is the channel count.
        A normalisation layer also gets the parameters of the parametrised module registered
        just before it in its parent (the convolution or linear layer it normalises).

    Raises:
        UndefinedCriterion: For channels of a composite module, or a layer without parameters.

    Examples:
        >>> [n for n, _ in unit_parameters(model, model.layer1[0].bn2)]
        ['layer1.0.bn2.weight', 'layer1.0.bn2.bias', 'layer1.0.conv2.weight']
    """
    module = module_of(layer)
    names = _named_modules(model)
    if id(module) not in names:
        raise ValueError(f"{type(module).__name__} is not a submodule of the model.")
    prefix = names[id(module)]
    owners = [prefix]
    if isinstance(module, _NORMS):
        producer = _producer(model, prefix) if prefix else None
        if producer is not None:
            owners.append(producer)
    params = [
        (f"{owner}.{n}" if owner else n, p)
        for owner in owners
        for n, p in model.get_submodule(owner).named_parameters()
    ]
    if not params:
        raise UndefinedCriterion(
            f"Layer '{prefix}' ({type(module).__name__}) has no parameters feeding it; "
            "weight-based criteria are undefined there."
        )
    if channel is None:
        return params
    if any(any(True for _ in model.get_submodule(o).children()) for o in owners):
        raise UndefinedCriterion(
            f"Channel {channel} of the composite module '{prefix}' has no weights of its own; "
            "weight-based channel criteria need a conv, linear or normalisation layer."
        )
    sizes = {p.shape[0] for _, p in params}
    if len(sizes) != 1:
        raise UndefinedCriterion(
            f"The parameters feeding '{prefix}' disagree on the channel count ({sorted(sizes)})."
        )
    return [(f"{n}[{channel}]", p[channel]) for n, p in params]


_NO_WEIGHTS = "a group of activation elements has no weights of its own"


def _unit_param_names(ctx: CriterionContext) -> list[list[tuple[str, int | None]]]:
    """Per unit: the parameter names and channel slices feeding it."""
    ctx.no_groups("weight-based criteria", _NO_WEIGHTS)
    out = []
    for unit in ctx.units:
        params = unit_parameters(ctx.model, ctx.named[unit.layer], unit.channel)
        out.append([(n.split("[")[0], unit.channel) for n, _ in params])
    return out


def _reduce_params(
    ctx: CriterionContext, values: Mapping[str, Tensor], reduce: Callable[[list[Tensor]], Tensor]
) -> np.ndarray:
    scores = []
    for slices in _unit_param_names(ctx):
        parts = [values[n] if c is None else values[n][c] for n, c in slices]
        scores.append(float(reduce(parts)))
    return np.asarray(scores, dtype=np.float64)


def _summed(parts: list[Tensor]) -> Tensor:
    return sum(p.sum() for p in parts)  # type: ignore[return-value]


@contextmanager
def _grad_enabled(params: Sequence[Tensor]) -> Iterator[None]:
    """Temporarily make ``params`` require gradients (restored afterwards)."""
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)


def _grads(output: Tensor, params: list[Tensor], create_graph: bool) -> list[Tensor]:
    """``d output / d params``, zeros for parameters the output does not depend on."""
    grads = torch.autograd.grad(output, params, create_graph=create_graph, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


def _loss_gradient(
    ctx: CriterionContext,
    params: dict[str, Tensor],
    criterion: str,
    create_graph_with: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Mean cross-entropy gradient over the data (or Hessian-gradient product ``H g``)."""
    names = list(params)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    with _grad_enabled(list(params.values())), torch.enable_grad():
        for batch in ctx.batches(criterion):
            inputs = batch.inputs
            target = ctx.loss_labels(inputs, batch.labels, criterion)
            loss = F.cross_entropy(ctx.model(*inputs), target, reduction="sum")
            grads = _grads(loss, [params[n] for n in names], create_graph_with is not None)
            if create_graph_with is not None:
                dot = sum((g * create_graph_with[n]).sum() for g, n in zip(grads, names))
                grads = _grads(dot, [params[n] for n in names], False)  # type: ignore[arg-type]
            for n, g in zip(names, grads):
                total[n] += g.detach()
            count += inputs[0].shape[0]
    return {n: t / count for n, t in total.items()}


def _feeding_params(ctx: CriterionContext) -> dict[str, Tensor]:
    wanted = {n for slices in _unit_param_names(ctx) for n, _ in slices}
    return {n: p for n, p in ctx.model.named_parameters() if n in wanted}


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    owner, _, _ = param_name.rpartition(".")
    return model.get_submodule(owner) if owner else model


def snip(ctx: CriterionContext) -> CriterionResult:
    """SNIP (Lee et al. 2019): ``sum |w * dL/dw|`` over the unit's weights.

    ``dL/dw`` is the gradient of the mean cross-entropy over the data; channel units sum over the
    slices ``[c]`` of their weights. A data-set score (no per-example version).

    Args:
        ctx: The context (needs labels or a class target).

    Returns:
        ``(scores (U,), None)``.

    Examples:
        >>> scores, _ = snip(build_context(model, loader, ["0", "2"]))
    """
    ctx.no_groups("snip", _NO_WEIGHTS)
    params = _feeding_params(ctx)
    grads = _loss_gradient(ctx, params, "SNIP")
    values = {n: (params[n].detach() * grads[n]).abs() for n in params}
    return _reduce_params(ctx, values, _summed), None


def grasp(ctx: CriterionContext) -> CriterionResult:
    """GraSP (Wang et al. 2020): ``sum -(w * Hg)`` over the unit's weights, signed.

    ``g`` is the mean cross-entropy gradient and ``H`` the Hessian, both over every convolution
    and linear weight of the model (as in GraSP) plus the units' own parameters; ``Hg`` comes from
    a second backward pass through ``g . stop_grad(g)``. GraSP removes the weights with the
    *largest* score first, so by its own logic a high score means "least needed".

    Args:
        ctx: The context (needs labels or a class target).

    Returns:
        ``(scores (U,), None)``.

    Examples:
        >>> scores, _ = grasp(build_context(model, loader, ["0", "2"]))
    """
    ctx.no_groups("grasp", _NO_WEIGHTS)
    params = {
        n: p
        for n, p in ctx.model.named_parameters()
        if n.endswith("weight") and isinstance(_owner(ctx.model, n), (nn.Conv2d, nn.Linear))
    }
    params.update(_feeding_params(ctx))
    g = _loss_gradient(ctx, params, "GraSP gradient")
    hg = _loss_gradient(ctx, params, "GraSP Hessian-gradient", create_graph_with=g)
    values = {n: -(params[n].detach() * hg[n]) for n in params}
    return _reduce_params(ctx, values, _summed), None


def synflow(ctx: CriterionContext) -> CriterionResult:
    """SynFlow (Tanaka et al. 2020), single shot: ``sum |w * dR/dw|`` over the unit's weights.

    On a float64 copy of the model in eval mode with every parameter and buffer replaced by its
    absolute value, ``R`` is the sum of the output for one all-ones input. By SynFlow's
    conservation law the per-layer sums are (nearly) equal: the values are returned as they are.

    Args:
        ctx: The context (needs floating-point inputs; the first batch gives their shapes).

    Returns:
        ``(scores (U,), None)``.

    Examples:
        >>> scores, _ = synflow(build_context(model, loader, ["0", "2"], target=None))
    """
    ctx.no_groups("synflow", _NO_WEIGHTS)
    inputs, _ = next(iter(iterate_batches(ctx.data, ctx.settings.device, 1, False, "SynFlow")))
    check_float_inputs(inputs, "synflow")
    model = copy.deepcopy(ctx.model).double().eval()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    params = dict(model.named_parameters())
    with _grad_enabled(list(params.values())), torch.enable_grad():
        ones = tuple(torch.ones_like(t[:1], dtype=torch.float64) for t in inputs)
        total = model(*ones).sum()
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
    values = {
        n: (p.detach() * g).abs() if g is not None else torch.zeros_like(p)
        for (n, p), g in zip(params.items(), grads)
    }
    return _reduce_params(ctx, values, _summed), None


def magnitude(ctx: CriterionContext) -> CriterionResult:
    """Magnitude: mean ``|w|`` over the unit's weight matrices and kernels.

    Only ``weight`` parameters with at least 2 dimensions count (convolution kernels, linear
    matrices; not biases or normalisation scales): for a ResNet ``bn2`` unit this is ``conv2``'s
    kernel, for a channel its filter ``W[c]`` (the L1 filter criterion of Li et al. 2017 divided
    by the filter size).

    Args:
        ctx: The context.

    Returns:
        ``(scores (U,), None)``.

    Raises:
        UndefinedCriterion: For a unit without a weight matrix or kernel.

    Examples:
        >>> scores, _ = magnitude(build_context(model, loader, ["0"], granularity="channel"))
    """
    ctx.no_groups("magnitude", _NO_WEIGHTS)
    scores = []
    for unit in ctx.units:
        params = unit_parameters(ctx.model, ctx.named[unit.layer], unit.channel)
        sliced = unit.channel is not None
        kept = [
            p.detach().abs().flatten()
            for n, p in params
            if n.split("[")[0].endswith("weight") and p.dim() + sliced >= 2
        ]
        if not kept:
            raise UndefinedCriterion(
                f"Layer '{unit.layer}' has no weight matrix or kernel feeding it; magnitude is "
                "undefined there."
            )
        scores.append(float(torch.cat(kept).double().mean()))
    return np.asarray(scores), None
