"""``LayerGNDI``: G-NDI as a Captum layer attribution method."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from captum.attr import GradientAttribution, LayerAttribution
from torch import Tensor, nn

from ._captum_compat import TargetType, as_forward_args, as_input_tuple, integration_points
from .baselines import LayerBaseline, per_layer
from .engine import (
    Granularity,
    Mode,
    ScoringJob,
    capture_activations,
    compute_effects,
    effect_norms,
    true_effects,
)
from .interventions import LayerCall, LayerSpec, check_layers_in_model, layer_label
from .runs import check_inputs, check_norm, make_runner, warn_if_training

__all__ = ["LayerGNDI"]

InputBaselines = Any  # Captum's BaselineType: None, a number, a tensor, or a tuple of them


class LayerGNDI(LayerAttribution, GradientAttribution):
    r"""General Neuro-Dynamic Importance of one or more layers.

    For each example x, G-NDI scores a layer L by

    .. math::
        \mathrm{G\text{-}NDI}_L(x) = \| J_{>L}(x)\,(h_L(x) - b_L) \|_p,

    the first-order estimate of how far the model output moves under the intervention
    do(h_L := b_L), where ``h_L`` is the layer's activation, ``b_L`` a baseline activation and
    ``J_{>L}`` the Jacobian of everything after the layer. With ``n_steps > 1`` the Jacobian is
    integrated along the straight path from ``b_L`` to ``h_L``, which converges to the exact
    intervention effect ``f(x) - f(x; do(h_L := b_L))``.

    Unlike most Captum layer methods, :meth:`attribute` returns one score per example (shape
    ``(N,)``) rather than a layer-shaped tensor, because G-NDI scores a whole layer (compare
    ``LayerGradCam``, which also sums over the layer). ``granularity="channel"`` and ``"unit"``
    give per-channel ``(N, C)`` and layer-shaped scores.

    Args:
        forward_func: The model (or any function of the inputs) returning a tensor whose first
            dimension indexes examples.
        layer: A module, a :class:`~captum_gndi.LayerCall` (one call of a module that runs
            several times per forward pass), or a list of them.
        device_ids: Captum's ``device_ids`` for ``DataParallel`` forward functions (unused by
            the hook-based engine; kept for signature compatibility).

    Examples:
        >>> from captum.attr import IntegratedGradients
        >>> from captum_gndi import LayerGNDI
        >>> gndi = LayerGNDI(model, model.layer3)
        >>> scores = gndi.attribute(images, target=labels)  # (N,)
        >>> scores = LayerGNDI(model, [model.layer1, model.layer2]).attribute(images)  # list
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: LayerSpec | Sequence[LayerSpec],
        device_ids: list[int] | None = None,
    ) -> None:
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self._layers: list[LayerSpec] = (
            list(layer) if isinstance(layer, (list, tuple)) else [layer]  # type: ignore[list-item]
        )
        if not self._layers:
            raise ValueError("LayerGNDI needs at least one layer.")
        for item in self._layers:
            if not isinstance(item, (nn.Module, LayerCall)):
                raise TypeError(
                    f"layer must be an nn.Module, a LayerCall or a list of them, got "
                    f"{type(item).__name__}. Resolve names with captum_gndi.get_layer."
                )
        check_layers_in_model(forward_func, self._layers)
        model = forward_func if isinstance(forward_func, nn.Module) else None
        self._labels = [layer_label(item, model) for item in self._layers]

    @classmethod
    def get_name(cls) -> str:
        """The method's display name."""
        return "Layer G-NDI"

    def has_convergence_delta(self) -> bool:
        """G-NDI reports the Taylor remainder against a real intervention as its delta."""
        return True

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: InputBaselines = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        layer_baselines: LayerBaseline | Sequence[LayerBaseline] = None,
        norm: float | str = 2,
        attribute_to_layer_input: bool = False,
        return_convergence_delta: bool = False,
        mode: Mode = "auto",
        granularity: Granularity = "layer",
        n_steps: int = 1,
        method: str = "gausslegendre",
        channel_dim: int = 1,
        p: float | str | None = None,
    ) -> Tensor | list[Tensor] | tuple[Tensor | list[Tensor], Tensor | list[Tensor]]:
        r"""Compute G-NDI scores for each example.

        Args:
            inputs: Input tensor or tuple of tensors; dimension 0 indexes examples.
            baselines: Input-space baselines in Captum's convention (a number, a tensor
                broadcastable to the input, or a tuple of them). The layer baseline is then the
                layer's activation at these inputs. Give either this or ``layer_baselines``.
            target: Output indices in Captum's ``TargetType`` semantics. ``None`` takes the
                p-norm over each example's whole flattened output; a scalar target gives
                ``|J (h - b)|``.
            additional_forward_args: Extra arguments passed to ``forward_func`` after inputs.
            layer_baselines: Layer-space baseline: ``None``/``"zero"``, a number, a tensor
                broadcastable to the activation, or a callable ``h -> b``; a list gives one per
                layer.
            norm: Norm over the output: any order ``p >= 1``, ``math.inf``, or ``"l1"``,
                ``"l2"``, ``"linf"``.
            attribute_to_layer_input: Intervene on the layer's input instead of its output.
            return_convergence_delta: Also return, per example, the Taylor remainder
                ``|| (f(x) - f_do(x)) - J_{>L}(x)(h - b) ||_p`` against a real intervention
                (layer granularity only).
            mode: ``"forward"`` (forward-mode AD, one pass per layer), ``"reverse"``
                (vector-Jacobian products, all layers from one forward pass) or ``"auto"``
                (the cheaper one; falls back to reverse with a warning where an operator has no
                forward-AD formula, e.g. CPU SDPA attention).
            granularity: ``"layer"`` (N,), ``"channel"`` (N, C): the G-NDI of intervening on
                each channel alone, or ``"unit"``: layer-shaped, one score per neuron.
            n_steps: Integration points for path-integrated G-NDI; 1 is the paper's
                first-order G-NDI (the Jacobian at the actual activation).
            method: Captum approximation method for ``n_steps > 1`` (``"gausslegendre"``,
                ``"riemann_trapezoid"``, ...).
            channel_dim: Activation dimension holding channels (1 for CNNs, -1 for
                ``(N, T, D)`` transformer states).
            p: Deprecated spelling of ``norm`` (kept for one release).

        Returns:
            Scores of shape ``(N,)`` per layer (a list for a list of layers; ``(N, C)`` or
            layer-shaped for other granularities), and with ``return_convergence_delta`` a
            second value of the same structure holding the per-example remainders.

        Examples:
            >>> gndi = LayerGNDI(model, [model.layer1, model.layer2])
            >>> scores, delta = gndi.attribute(x, target=0, return_convergence_delta=True)
        """
        if p is not None:
            warnings.warn(
                "LayerGNDI.attribute(p=...) is deprecated; use norm=... (same values).",
                DeprecationWarning,
                stacklevel=2,
            )
            norm = p
        order = check_norm(norm)
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
        if return_convergence_delta and granularity != "layer":
            raise ValueError("return_convergence_delta needs granularity='layer'.")
        if baselines is not None and layer_baselines is not None:
            raise ValueError(
                "Give either input-space `baselines` or `layer_baselines`, not both: the layer "
                "baseline is the activation at the input baselines."
            )
        input_tuple = as_input_tuple(inputs)
        check_inputs(input_tuple)
        forward_args = as_forward_args(additional_forward_args)
        warn_if_training(self.forward_func)

        if baselines is not None:
            layer_specs = self._activations_at(
                input_tuple, baselines, forward_args, attribute_to_layer_input
            )
        else:
            layer_specs = per_layer(layer_baselines, len(self._layers))
        job = ScoringJob(
            run=make_runner(self.forward_func, input_tuple, forward_args, target),
            layers=self._layers,
            labels=self._labels,
            baselines=layer_specs,
            attribute_to_layer_input=attribute_to_layer_input,
            channel_dim=channel_dim,
        )
        alphas, weights = (1.0,), (1.0,)
        if n_steps > 1:
            alphas, weights = integration_points(n_steps, method)
        effects, _ = compute_effects(job, mode, granularity, alphas, weights)
        scores = [effect_norms(effect, order) for effect in effects]
        if not return_convergence_delta:
            return self._format(scores)
        exact = true_effects(job)
        deltas = [effect_norms(e - pred, order) for e, pred in zip(exact, effects)]
        return self._format(scores), self._format(deltas)

    def _activations_at(
        self,
        inputs: tuple[Tensor, ...],
        baselines: InputBaselines,
        forward_args: Any,
        attribute_to_layer_input: bool,
    ) -> list[Tensor]:
        """Layer activations at Captum-style input baselines (one per example)."""
        baseline_tuple = baselines if isinstance(baselines, tuple) else (baselines,)
        if len(baseline_tuple) != len(inputs):
            raise ValueError(
                f"Got {len(baseline_tuple)} input baselines for {len(inputs)} inputs; give one "
                "per input tensor."
            )
        expanded = []
        for index, (value, tensor) in enumerate(zip(baseline_tuple, inputs)):
            value = torch.as_tensor(value, dtype=tensor.dtype, device=tensor.device)
            try:
                expanded.append(value.expand_as(tensor).contiguous())
            except RuntimeError as error:
                raise ValueError(
                    f"Input baseline {index} of shape {tuple(value.shape)} does not broadcast "
                    f"to input of shape {tuple(tensor.shape)}."
                ) from error
        check_inputs(tuple(expanded))
        job = ScoringJob(
            run=make_runner(self.forward_func, tuple(expanded), forward_args, None),
            layers=self._layers,
            labels=self._labels,
            baselines=[None] * len(self._layers),
            attribute_to_layer_input=attribute_to_layer_input,
        )
        return capture_activations(job)[1]

    def _format(self, values: list[Tensor]) -> Tensor | list[Tensor]:
        return values if isinstance(self.layer, (list, tuple)) else values[0]
