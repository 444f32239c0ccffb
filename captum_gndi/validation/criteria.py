"""Importance criteria to validate against true ablations, one score per unit.

Every criterion scores the same units as :func:`captum_gndi.validation.ablation.ablate` (whole
layers, or single channels of them) and returns a score per unit ``(U,)``, higher meaning "more
important"; criteria defined per example also return ``(N, U)`` per-example scores (their mean
over examples is the score). The reductions to one number per unit are:

==========================  ================================================================
name                        score of a unit (a layer, or one channel of it)
==========================  ================================================================
gndi *                      ``|| J_{>L} (h - b) ||_2`` over the whole output, ``h - b`` kept
                            on the unit: the first-order change of the output (G-NDI)
gndi_path *                 same, Jacobian integrated from ``b`` to ``h`` (``n_steps``)
snip                        ``sum |w * dL/dw|`` over the unit's weights (Lee et al. 2019)
grasp                       ``sum -(w * Hg)`` over the unit's weights (Wang et al. 2020)
synflow                     ``sum |w * dR/dw|``, R = summed output of the network with ``|w|``
                            on an all-ones input (Tanaka et al. 2020)
magnitude                   mean ``|w|`` over the unit's weight matrices / kernels
hrank *                     mean matrix rank of the unit's (H, W) maps (Lin et al. 2020)
taylor *                    ``|sum_unit h * dL/dh|`` (Molchanov et al. 2017)
grad_x_activation *         ``|sum_unit dy_t/dh * (h - b)|`` (Captum LayerGradientXActivation)
layer_conductance *         ``|sum_unit conductance|`` (Captum LayerConductance)
layer_integrated_gradients  ``|sum_unit attribution|`` (Captum LayerIntegratedGradients); *
activation_change *         ``||h - b||_2`` over the unit
depth                       ``(last depth) - depth``: earlier layers score higher
param_count                 number of parameters feeding the unit
random                      uniform random numbers, one row per seed ``(S, U)``
==========================  ================================================================

Criteria marked * are defined per example.

``L`` is the cross-entropy with the labels, ``y_t`` the target logit (``target="label"``), ``h``
the unit's activation and ``b`` its baseline. The controls ``depth``, ``param_count``,
``activation_change``, ``random`` and ``grad_x_activation`` are ordinary criteria whose names
the statistics treat as controls.

*The unit's weights* are the parameters of the layer's module and all its submodules; for a
normalisation layer (BatchNorm, LayerNorm, GroupNorm) they also include the parametrised
module registered just before it in the same parent (``conv2`` for a ResNet ``bn2``, ``dense``
for a BERT ``LayerNorm``), because that module produces what the norm rescales. A channel's
weights are the slices ``[c]`` (dimension 0) of those parameters; channels of a composite module
(a whole block) have no weights of their own and weight-based criteria raise
:class:`UndefinedCriterion` there.

SynFlow's layer sums are nearly equal by its conservation law (exactly equal for a bias-free
network without normalisation): the raw values are returned unchanged, and the statistics report
"constant score, no rank correlation" for them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import LayerConductance, LayerGradientXActivation, LayerIntegratedGradients
from torch import Tensor, nn

from .._captum_compat import integration_points
from ..attr import _warn_if_training, make_runner
from ..baselines import LayerBaseline, resolve_layer_baseline
from ..engine import Batch, capture_activations, compute_effects, effect_norms
from ..interventions import LayerCall, LayerSpec, intervene
from ..scoring import DataTarget, Layers, _batch_target, _batches, _model_device, resolve_layers
from .ablation import Unit, layer_baselines, select_units

__all__ = [
    "CONTROL_METHODS",
    "UndefinedCriterion",
    "available_methods",
    "channel_scores",
    "score_methods",
    "unit_parameters",
]

CONTROL_METHODS = ("depth", "param_count", "activation_change", "random", "grad_x_activation")
"""Criteria that serve as controls: a real method should beat them."""

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


class UndefinedCriterion(ValueError):
    """A criterion that is undefined for this model, layer or data (the message says why)."""


# ----------------------------------------------------------------------------------------------
# context shared by the criteria


@dataclass
class _Context:
    model: nn.Module
    data: Iterable[Any]
    named: dict[str, LayerSpec]
    units: list[Unit]
    baselines: dict[str, LayerBaseline]
    target: DataTarget
    n_steps: int
    integration: str
    seed: int
    n_random: int
    channel_dim: int
    device: torch.device
    progress: bool
    max_batches: int | None

    @property
    def channel_level(self) -> bool:
        return any(unit.channel is not None for unit in self.units)

    @property
    def layer_names(self) -> list[str]:
        """Layers that hold at least one unit, in forward order."""
        return list(dict.fromkeys(unit.layer for unit in self.units))

    def columns(self, layer: str) -> tuple[list[int], list[int | None]]:
        """Column indices and channels of the units of one layer."""
        picked = [(i, u.channel) for i, u in enumerate(self.units) if u.layer == layer]
        return [i for i, _ in picked], [c for _, c in picked]

    def batches(self, what: str) -> Iterator[tuple[tuple[Tensor, ...], Tensor | None]]:
        return _batches(self.data, self.device, self.max_batches, self.progress, what)

    def gndi_batch(self, inputs: tuple[Tensor, ...]) -> Batch:
        names = self.layer_names
        return Batch(
            run=make_runner(self.model, inputs, None, None),
            layers=[self.named[n] for n in names],
            labels=names,
            baselines=[self.baselines[n] for n in names],
            channel_dim=self.channel_dim,
        )

    def modules(self, method: str) -> list[nn.Module]:
        """The layers as plain modules (Captum's layer methods take no LayerCall)."""
        specs = [self.named[n] for n in self.layer_names]
        if any(isinstance(s, LayerCall) for s in specs):
            raise UndefinedCriterion(
                f"{method} uses Captum layer methods, which hook every call of a module; it is "
                "undefined for LayerCall points (a module that runs several times)."
            )
        return specs  # type: ignore[return-value]

    def resolved_target(
        self, inputs: tuple[Tensor, ...], labels: Tensor | None, method: str, what: str
    ) -> Tensor | int:
        """The batch's target classes, or :class:`UndefinedCriterion` when there are none."""
        if self.target is None or (self.target == "label" and labels is None):
            raise UndefinedCriterion(
                f"{method} {what}, so it needs labelled data and target='label' (or "
                "'predicted' / a class index); it is undefined for embedding models."
            )
        return _batch_target(self.model, inputs, labels, self.target)

    def loss_labels(self, inputs: tuple[Tensor, ...], labels: Tensor | None, method: str) -> Tensor:
        target = self.resolved_target(inputs, labels, method, "needs a cross-entropy loss")
        if isinstance(target, int):
            return torch.full((inputs[0].shape[0],), target, device=inputs[0].device)
        return target

    def captum_target(self, inputs: tuple[Tensor, ...], labels: Tensor | None, method: str):
        what = "attributes one scalar output (a target class) per example"
        return self.resolved_target(inputs, labels, method, what)


def _unit_sums(values: Tensor, channels: Sequence[int | None], channel_dim: int) -> Tensor:
    """Sum ``values`` ``(N, *shape)`` over each unit: the whole layer or one channel."""
    out = []
    per_channel = None
    for channel in channels:
        if channel is None:
            out.append(values.flatten(1).sum(1))
            continue
        if per_channel is None:
            moved = values.movedim(channel_dim, -1)
            per_channel = moved.reshape(moved.shape[0], -1, moved.shape[-1]).sum(1)
        out.append(per_channel[:, channel])
    return torch.stack(out, 1)


def _first_tensor(value: Any) -> Tensor:
    return value if isinstance(value, Tensor) else next(v for v in value if isinstance(v, Tensor))


PerLayer = Callable[[str, list[Union[int, None]]], Tensor]
"""``(layer name, channels of its units) -> (n, len(channels))`` per-example scores."""


def _per_example(
    ctx: _Context, what: str, batch_fn: Callable[[tuple[Tensor, ...], Tensor | None], PerLayer]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example scores ``(N, U)`` over all batches, and their mean over examples.

    ``batch_fn(inputs, labels)`` does the batch's shared work and returns the function that
    scores the units of one layer.
    """
    rows = []
    for inputs, labels in ctx.batches(what):
        per_layer = batch_fn(inputs, labels)
        out = torch.zeros(inputs[0].shape[0], len(ctx.units), dtype=torch.float64)
        for name in ctx.layer_names:
            columns, channels = ctx.columns(name)
            out[:, columns] = per_layer(name, channels).detach().double().cpu()
        rows.append(out)
    stacked = torch.cat(rows).numpy()
    return stacked.mean(0), stacked


# ----------------------------------------------------------------------------------------------
# G-NDI and activation-based criteria


def _gndi_scores(ctx: _Context, alphas: Sequence[float], weights: Sequence[float], what: str):
    granularity = "channel" if ctx.channel_level else "layer"

    def batch_fn(inputs: tuple[Tensor, ...], _labels: Tensor | None) -> PerLayer:
        effects, _ = compute_effects(ctx.gndi_batch(inputs), "auto", granularity, alphas, weights)
        norms = dict(zip(ctx.layer_names, (effect_norms(e, 2.0) for e in effects)))

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            score = norms[name]
            return score[:, None] if score.dim() == 1 else score[:, channels]

        return per_layer

    return _per_example(ctx, what, batch_fn)


def gndi(ctx: _Context):
    """First-order G-NDI ``|| J_{>L}(x) (h - b) ||_2`` over the whole output, per example.

    Layer units use the whole layer's ``h - b``; channel units keep ``h - b`` on that channel only
    (``granularity="channel"`` of :func:`captum_gndi.engine.compute_effects`).
    """
    return _gndi_scores(ctx, (1.0,), (1.0,), "G-NDI")


def gndi_path(ctx: _Context):
    """Path-integrated G-NDI: the Jacobian averaged over ``b + a (h - b)``, ``a`` in [0, 1].

    Uses ``n_steps`` points of Captum's ``integration`` rule; converges to the exact intervention
    effect ``|| f(x) - f(x; do(h := b)) ||_2`` as ``n_steps`` grows (for a layer unit).
    """
    alphas, weights = integration_points(ctx.n_steps, ctx.integration)
    return _gndi_scores(ctx, alphas, weights, f"G-NDI path ({ctx.n_steps} steps)")


def _activations(ctx: _Context, inputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
    batch = ctx.gndi_batch(inputs)
    return dict(zip(ctx.layer_names, capture_activations(batch)[1]))


def activation_change(ctx: _Context):
    """Control: ``||h - b||_2`` over the unit's elements, per example."""

    def batch_fn(inputs: tuple[Tensor, ...], _labels: Tensor | None) -> PerLayer:
        acts = _activations(ctx, inputs)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            h = acts[name]
            delta = h - resolve_layer_baseline(ctx.baselines[name], h, name)
            return _unit_sums(delta.double().pow(2), channels, ctx.channel_dim).sqrt()

        return per_layer

    return _per_example(ctx, "activation change", batch_fn)


def hrank(ctx: _Context):
    """HRank: the average matrix rank of the unit's ``(H, W)`` feature maps.

    ``torch.linalg.matrix_rank`` (default tolerance) of every ``(H, W)`` map; a channel unit's
    per-example score is the rank of its map, a layer unit's the mean over its channels. Only
    defined for ``(N, C, H, W)`` activations with ``channel_dim=1``.
    """

    def batch_fn(inputs: tuple[Tensor, ...], _labels: Tensor | None) -> PerLayer:
        acts = _activations(ctx, inputs)

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

    return _per_example(ctx, "HRank", batch_fn)


def _activation_gradients(
    ctx: _Context, inputs: tuple[Tensor, ...], labels: Tensor
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


def taylor(ctx: _Context):
    """Taylor (Molchanov et al. 2017): ``|sum_unit h * dL/dh|`` per example.

    ``L`` is the example's cross-entropy; the sum runs over the unit's elements (all positions
    of a channel, or the whole layer); the score is the mean over examples.
    """

    def batch_fn(inputs: tuple[Tensor, ...], labels: Tensor | None) -> PerLayer:
        acts, grads = _activation_gradients(ctx, inputs, ctx.loss_labels(inputs, labels, "taylor"))
        return lambda name, ch: _unit_sums(acts[name] * grads[name], ch, ctx.channel_dim).abs()

    return _per_example(ctx, "Taylor", batch_fn)


# ----------------------------------------------------------------------------------------------
# Captum layer attributions


def _check_float_inputs(inputs: tuple[Tensor, ...], method: str) -> None:
    if not all(t.is_floating_point() for t in inputs):
        raise UndefinedCriterion(
            f"{method} interpolates the inputs from a zero baseline; it is undefined for "
            "integer inputs such as token ids."
        )


def grad_x_activation(ctx: _Context):
    """Control: ``|sum_unit dy_t/dh * (h - b)|`` per example (Captum LayerGradientXActivation).

    Captum's ``LayerGradientXActivation(multiply_by_inputs=False)`` gives ``dy_t/dh`` for the
    target logit ``y_t``; multiplying by ``h - b`` instead of ``h`` makes it the first-order
    change of ``y_t`` under ``do(h := b)``, i.e. G-NDI for one scalar output.
    """
    modules = ctx.modules("grad_x_activation")
    method = LayerGradientXActivation(ctx.model, modules, multiply_by_inputs=False)

    def batch_fn(inputs: tuple[Tensor, ...], labels: Tensor | None) -> PerLayer:
        target = ctx.captum_target(inputs, labels, "grad_x_activation")
        grads = method.attribute(inputs, target=target)
        acts = _activations(ctx, inputs)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            h = acts[name]
            delta = h - resolve_layer_baseline(ctx.baselines[name], h, name)
            grad = _first_tensor(grads[ctx.layer_names.index(name)])
            return _unit_sums(grad.detach() * delta, channels, ctx.channel_dim).abs()

        return per_layer

    return _per_example(ctx, "gradient x activation", batch_fn)


def _captum_path(ctx: _Context, method_cls: type, label: str, rule: str | None = None):
    modules = ctx.modules(label)

    def batch_fn(inputs: tuple[Tensor, ...], labels: Tensor | None) -> PerLayer:
        _check_float_inputs(inputs, label)
        target = ctx.captum_target(inputs, labels, label)

        def per_layer(name: str, channels: list[int | None]) -> Tensor:
            module = modules[ctx.layer_names.index(name)]
            attribution = method_cls(ctx.model, module).attribute(
                inputs,
                target=target,
                n_steps=ctx.n_steps,
                method=rule or ctx.integration,
                internal_batch_size=inputs[0].shape[0],  # one path point per pass
            )
            attribution = _first_tensor(attribution).detach()
            return _unit_sums(attribution, channels, ctx.channel_dim).abs()

        return per_layer

    return _per_example(ctx, label, batch_fn)


def layer_conductance(ctx: _Context):
    """``|sum_unit conductance|`` per example (Captum ``LayerConductance``, zero input baseline).

    Conductance is defined against an *input* baseline (zeros), not the layer baseline. Summed
    over a layer that every path crosses it equals ``y_t(x) - y_t(0)`` (completeness), the same
    for every such layer: expect a nearly constant score on plain feed-forward stacks. Captum
    sums the changes of the activation between consecutive path points, so the points are
    always ``n_steps + 1`` evenly spaced ones from 0 to 1 (``riemann_trapezoid``), which makes
    the completeness exact; Gauss-Legendre points would leave out the path's two ends.
    """
    return _captum_path(ctx, LayerConductance, "layer_conductance", "riemann_trapezoid")


def layer_integrated_gradients(ctx: _Context):
    """``|sum_unit attribution|`` per example (Captum ``LayerIntegratedGradients``).

    The path runs from the layer's activation at the zero *input* to its actual activation, with
    ``n_steps`` points; over a layer every path crosses, the sum is ``y_t(x) - y_t(0)``.
    """
    return _captum_path(ctx, LayerIntegratedGradients, "layer_integrated_gradients")


# ----------------------------------------------------------------------------------------------
# weight-based criteria


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
    module = layer.module if isinstance(layer, LayerCall) else layer
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


def _unit_param_names(ctx: _Context) -> list[list[tuple[str, int | None]]]:
    """Per unit: the parameter names and channel slices feeding it."""
    out = []
    for unit in ctx.units:
        params = unit_parameters(ctx.model, ctx.named[unit.layer], unit.channel)
        out.append([(n.split("[")[0], unit.channel) for n, _ in params])
    return out


def _reduce_params(
    ctx: _Context, values: Mapping[str, Tensor], reduce: Callable[[list[Tensor]], Tensor]
) -> np.ndarray:
    scores = []
    for slices in _unit_param_names(ctx):
        parts = [values[n] if c is None else values[n][c] for n, c in slices]
        scores.append(float(reduce(parts)))
    return np.asarray(scores, dtype=np.float64)


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
    ctx: _Context, params: dict[str, Tensor], method: str, create_graph_with: Mapping | None = None
) -> dict[str, Tensor]:
    """Mean cross-entropy gradient over the data (or Hessian-gradient product ``H g``)."""
    names = list(params)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    count = 0
    with _grad_enabled(list(params.values())), torch.enable_grad():
        for inputs, labels in ctx.batches(method):
            target = ctx.loss_labels(inputs, labels, method)
            loss = F.cross_entropy(ctx.model(*inputs), target, reduction="sum")
            grads = _grads(loss, [params[n] for n in names], create_graph_with is not None)
            if create_graph_with is not None:
                dot = sum((g * create_graph_with[n]).sum() for g, n in zip(grads, names))
                grads = _grads(dot, [params[n] for n in names], False)
            for n, g in zip(names, grads):
                total[n] += g.detach()
            count += inputs[0].shape[0]
    return {n: t / count for n, t in total.items()}


def _feeding_params(ctx: _Context) -> dict[str, Tensor]:
    wanted = {n for slices in _unit_param_names(ctx) for n, _ in slices}
    return {n: p for n, p in ctx.model.named_parameters() if n in wanted}


def snip(ctx: _Context):
    """SNIP (Lee et al. 2019): ``sum |w * dL/dw|`` over the unit's weights.

    ``dL/dw`` is the gradient of the mean cross-entropy over the data; channel units sum over the
    slices ``[c]`` of their weights. A data-set score (no per-example version).
    """
    params = _feeding_params(ctx)
    grads = _loss_gradient(ctx, params, "SNIP")
    values = {n: (params[n].detach() * grads[n]).abs() for n in params}
    return _reduce_params(ctx, values, lambda parts: sum(p.sum() for p in parts)), None


def grasp(ctx: _Context):
    """GraSP (Wang et al. 2020): ``sum -(w * Hg)`` over the unit's weights, signed.

    ``g`` is the mean cross-entropy gradient and ``H`` the Hessian, both over every convolution
    and linear weight of the model (as in GraSP) plus the units' own parameters; ``Hg`` comes from
    a second backward pass through ``g . stop_grad(g)``. GraSP removes the weights with the
    *largest* score first, so by its own logic a high score means "least needed".
    """
    params = {
        n: p
        for n, p in ctx.model.named_parameters()
        if n.endswith("weight") and isinstance(_owner(ctx.model, n), (nn.Conv2d, nn.Linear))
    }
    params.update(_feeding_params(ctx))
    g = _loss_gradient(ctx, params, "GraSP gradient")
    hg = _loss_gradient(ctx, params, "GraSP Hessian-gradient", create_graph_with=g)
    values = {n: -(params[n].detach() * hg[n]) for n in params}
    return _reduce_params(ctx, values, lambda parts: sum(p.sum() for p in parts)), None


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    owner, _, _ = param_name.rpartition(".")
    return model.get_submodule(owner) if owner else model


def synflow(ctx: _Context):
    """SynFlow (Tanaka et al. 2020), single shot: ``sum |w * dR/dw|`` over the unit's weights.

    On a float64 copy of the model in eval mode with every parameter and buffer replaced by its
    absolute value, ``R`` is the sum of the output for one all-ones input. By SynFlow's
    conservation law the per-layer sums are (nearly) equal: the values are returned as they are.
    """
    inputs, _ = next(iter(_batches(ctx.data, ctx.device, 1, False, "SynFlow")))
    _check_float_inputs(inputs, "synflow")
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
    return _reduce_params(ctx, values, lambda parts: sum(p.sum() for p in parts)), None


def magnitude(ctx: _Context):
    """Magnitude: mean ``|w|`` over the unit's weight matrices and kernels.

    Only ``weight`` parameters with at least 2 dimensions count (convolution kernels, linear
    matrices; not biases or normalisation scales): for a ResNet ``bn2`` unit this is ``conv2``'s
    kernel, for a channel its filter ``W[c]`` (the L1 filter criterion of Li et al. 2017 divided
    by the filter size).
    """
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


def param_count(ctx: _Context):
    """Control: the number of parameters feeding the unit (its weights' slices for a channel)."""
    counts = [
        sum(p.numel() for _, p in unit_parameters(ctx.model, ctx.named[u.layer], u.channel))
        for u in ctx.units
    ]
    return np.asarray(counts, dtype=np.float64), None


def depth(ctx: _Context):
    """Control: ``max depth - depth`` (forward order), so that earlier layers score higher."""
    depths = np.asarray([u.depth for u in ctx.units], dtype=np.float64)
    return depths.max() - depths, None


def random(ctx: _Context):
    """Control: uniform random scores, ``n_random`` rows (seeds ``seed``, ``seed + 1``, ...)."""
    rows = [np.random.default_rng(ctx.seed + s).random(len(ctx.units)) for s in range(ctx.n_random)]
    return np.stack(rows), None


_METHODS: dict[str, Callable[[_Context], tuple[np.ndarray, np.ndarray | None]]] = {
    "gndi": gndi,
    "gndi_path": gndi_path,
    "snip": snip,
    "grasp": grasp,
    "synflow": synflow,
    "magnitude": magnitude,
    "hrank": hrank,
    "taylor": taylor,
    "grad_x_activation": grad_x_activation,
    "layer_conductance": layer_conductance,
    "layer_integrated_gradients": layer_integrated_gradients,
    "activation_change": activation_change,
    "depth": depth,
    "param_count": param_count,
    "random": random,
}


def available_methods() -> dict[str, str]:
    """The criteria :func:`score_methods` knows, with a one-line description each.

    Returns:
        Dict name -> first line of the criterion's docstring, in a stable order.

    Examples:
        >>> list(available_methods())[:3]
        ['gndi', 'gndi_path', 'snip']
    """
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in _METHODS.items()}


def _context(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    granularity: str,
    baseline: str | float | Mapping[str, LayerBaseline],
    target: DataTarget,
    units: Sequence[Unit] | None,
    n_channels: int | None,
    seed: int,
    n_random: int,
    n_steps: int,
    integration: str,
    channel_dim: int,
    device: torch.device | str | None,
    progress: bool,
    max_batches: int | None,
) -> _Context:
    _warn_if_training(model)
    named = resolve_layers(model, layers)
    device = torch.device(device) if device is not None else _model_device(model)
    if units is None:
        units = select_units(model, data, named, granularity, n_channels, seed, channel_dim, device)
    if n_steps < 1 or n_random < 1:
        raise ValueError(f"n_steps and n_random must be >= 1, got {n_steps} and {n_random}.")
    if target not in (None, "label", "predicted") and not isinstance(target, int):
        raise ValueError(f"target must be None, an int, 'label' or 'predicted', got {target!r}.")
    integration_points(n_steps, integration)  # validates the rule's name
    return _Context(
        model=model,
        data=data,
        named=named,
        units=list(units),
        baselines=layer_baselines(model, data, named, baseline, device, progress, max_batches),
        target=target,
        n_steps=n_steps,
        integration=integration,
        seed=seed,
        n_random=n_random,
        channel_dim=channel_dim,
        device=device,
        progress=progress,
        max_batches=max_batches,
    )


def _check_methods(methods: Sequence[str] | str | None) -> list[str]:
    if methods is None:
        return list(_METHODS)
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in _METHODS]
    if unknown or not methods:
        raise ValueError(f"Unknown method(s) {unknown}; choose from {list(_METHODS)}.")
    return methods


def _score_each(
    ctx: _Context, methods: Sequence[str]
) -> Iterator[tuple[str, tuple[np.ndarray, np.ndarray | None] | UndefinedCriterion]]:
    """Run each criterion; yield its scores, or the reason why it is undefined here."""
    for name in methods:
        try:
            yield name, _METHODS[name](ctx)
        except UndefinedCriterion as reason:
            yield name, reason


def score_methods(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    methods: Sequence[str] | str | None = None,
    granularity: str = "layer",
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    target: DataTarget = "label",
    units: Sequence[Unit] | None = None,
    n_channels: int | None = None,
    seed: int = 0,
    n_random: int = 10,
    n_steps: int = 16,
    integration: str = "gausslegendre",
    channel_dim: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    skip_undefined: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score every unit of ``layers`` with several importance criteria.

    Args:
        model: The model (in eval mode); left unchanged.
        data: A DataLoader (or re-iterable) of ``(inputs, labels)`` or unlabelled inputs.
        layers: Dict name -> module (e.g. ``captum_gndi.adapters.find_layers``) or dotted names.
        methods: Names among :func:`available_methods` (``None``: all).
        granularity: ``"layer"`` or ``"channel"`` (ignored when ``units`` is given).
        baseline: ``"zero"``, ``"mean"``, a number, or a dict name -> layer baseline; used by
            G-NDI, gradient x activation and activation change.
        target: Output used by loss- and logit-based criteria: ``"label"``, ``"predicted"``, a
            class index, or ``None`` (embedding models: those criteria are then undefined).
            G-NDI always takes the norm over the whole output.
        units: Precomputed units (e.g. the ones :func:`ablate` used).
        n_channels: Random sample size of channels (see :func:`select_units`).
        seed: Seed of the channel sample and of ``random``.
        n_random: Seeds of the ``random`` control (one row each).
        n_steps: Integration points of ``gndi_path``, ``layer_conductance`` and
            ``layer_integrated_gradients``.
        integration: Captum integration rule for those (``"gausslegendre"``, ...).
        channel_dim: Activation dimension holding channels.
        device: Where to run (default: the model's device).
        progress: Show progress bars.
        max_batches: Use at most this many batches.
        skip_undefined: Skip criteria undefined for this model (warning with the reason)
            instead of raising :class:`UndefinedCriterion`.

    Returns:
        ``(scores, scores_per_example)``: method -> ``(U,)`` scores (``random``: ``(S, U)``),
        and method -> ``(N, U)`` for the criteria defined per example.

    Raises:
        UndefinedCriterion: For a criterion undefined here (unless ``skip_undefined``).

    Examples:
        >>> scores, per_example = score_methods(model, loader, find_layers(model, "branch"),
        ...                                     methods=["gndi", "snip", "depth"])
        >>> scores["gndi"].shape, per_example["gndi"].shape
        ((8,), (512, 8))
    """
    names = _check_methods(methods)
    ctx = _context(
        model,
        data,
        layers,
        granularity,
        baseline,
        target,
        units,
        n_channels,
        seed,
        n_random,
        n_steps,
        integration,
        channel_dim,
        device,
        progress,
        max_batches,
    )
    scores: dict[str, np.ndarray] = {}
    per_example: dict[str, np.ndarray] = {}
    for name, result in _score_each(ctx, names):
        if isinstance(result, UndefinedCriterion):
            if not skip_undefined:
                raise result
            warnings.warn(f"Skipping {name}: {result}", stacklevel=2)
            continue
        scores[name], rows = result
        if rows is not None:
            per_example[name] = rows
    return scores, per_example


def channel_scores(
    method: str,
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    target: DataTarget = "label",
    seed: int = 0,
    n_steps: int = 16,
    channel_dim: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
) -> dict[str, np.ndarray]:
    """One criterion's score for every channel of every layer (e.g. to rank filters to prune).

    Args:
        method: A name among :func:`available_methods` (``random`` uses one seed).
        model: The model (in eval mode); left unchanged.
        data: A DataLoader of ``(inputs, labels)`` (or unlabelled inputs for label-free criteria).
        layers: Dict name -> module or dotted names: conv, linear or normalisation layers.
        baseline: ``"zero"``, ``"mean"``, a number or a dict (see :func:`score_methods`).
        target: See :func:`score_methods`.
        seed: Seed of ``random``.
        n_steps: Integration points of the path methods.
        channel_dim: Activation dimension holding channels.
        device: Where to run.
        progress: Show progress bars.
        max_batches: Use at most this many batches.

    Returns:
        Dict layer name -> scores of shape ``(C,)`` (higher: more important).

    Raises:
        UndefinedCriterion: When the criterion is undefined for these layers.

    Examples:
        >>> scores = channel_scores("gndi", model, loader, ["layer1.0.conv1", "layer1.0.conv2"])
        >>> scores["layer1.0.conv1"].shape
        (16,)
    """
    (name,) = _check_methods([method])
    ctx = _context(
        model,
        data,
        layers,
        "channel",
        baseline,
        target,
        None,
        None,
        seed,
        1,
        n_steps,
        "gausslegendre",
        channel_dim,
        device,
        progress,
        max_batches,
    )
    scores, _ = _METHODS[name](ctx)
    scores = scores[0] if scores.ndim == 2 else scores
    return {layer: scores[ctx.columns(layer)[0]] for layer in ctx.layer_names}
