"""Captum's metrics (``captum.metrics``) on layer attributions: two small adapters.

Captum's :func:`~captum.metrics.sensitivity_max` calls the explanation function with the inputs
as a tuple and reads the first explanation as a sequence of per-input tensors, so an
explanation function must return a tuple; Captum's attribution methods for inputs do, its layer
methods (``LayerGradCam``, ``LayerGradientXActivation``, :class:`~captum_gndi.LayerGNDI`) return
a tensor and fail with a size mismatch. :func:`explanation_func` returns the tuple.

Captum's :func:`~captum.metrics.infidelity` perturbs the inputs of ``forward_func`` and asserts
that the attributions have their shape; layer attributions (``granularity="unit"``) are shaped
like the layer's activation, so ``forward_func`` must be the model as a function of that
activation. :func:`layer_forward_func` is that function: the model run on its own inputs (which
``infidelity`` repeats with the perturbations when given as ``additional_forward_args``) with
the layer's activation replaced by the perturbed one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from .interventions import intervene
from .runs import resolve_layers

__all__ = ["explanation_func", "layer_forward_func"]


def _tensors(value: Any) -> tuple[Tensor, ...]:
    """The tensors of an attribution: one tensor, or a (nested) list or tuple of them."""
    if isinstance(value, Tensor):
        return (value,)
    return tuple(t for item in value for t in _tensors(item))


def explanation_func(attribute: Callable[..., Any]) -> Callable[..., tuple[Tensor, ...]]:
    """An ``attribute`` method as Captum's ``sensitivity_max`` wants it: returning a tuple.

    Args:
        attribute: An attribution method's ``attribute`` (e.g. ``LayerGNDI(...).attribute``,
            or a Captum layer method's).

    Returns:
        A function with ``attribute``'s arguments that returns the attribution as a tuple of
        tensors (a list of layers, or a layer with several tensors, flattened in order), so
        that every tensor counts in the metric's norm.

    Raises:
        ValueError: (when called) For ``return_convergence_delta=True``: the metric compares
            attributions, not ``(attributions, delta)`` pairs.

    Examples:
        >>> from captum.metrics import sensitivity_max
        >>> gndi = LayerGNDI(model, model.conv2)
        >>> sens = sensitivity_max(explanation_func(gndi.attribute), x, target=1,
        ...                        granularity="unit")
    """

    @functools.wraps(attribute)
    def explain(inputs: Any, *args: Any, **kwargs: Any) -> tuple[Tensor, ...]:
        if kwargs.get("return_convergence_delta"):
            raise ValueError(
                "return_convergence_delta=True returns (attributions, delta); a metric compares "
                "the attributions only. Drop return_convergence_delta."
            )
        return _tensors(attribute(inputs, *args, **kwargs))

    return explain


def layer_forward_func(
    model: nn.Module, layer: nn.Module | str, attribute_to_layer_input: bool = False
) -> Callable[..., Tensor]:
    """The model as a function of one layer's activation, for Captum's ``infidelity``.

    ``forward(activation, *model_inputs)`` runs ``model(*model_inputs)`` with the layer's output
    (its input with ``attribute_to_layer_input=True``) replaced by ``activation``. Give
    ``infidelity`` the layer's activation as ``inputs`` (e.g. from Captum's
    ``LayerActivation``), the unit attributions as ``attributions`` and the model's inputs as
    ``additional_forward_args``: ``infidelity`` repeats them together with the perturbed
    activations. The hook is removed after every call.

    Args:
        model: The model.
        layer: The layer (a module of ``model`` or its dotted name) whose activation is the
            function's argument; one tensor.
        attribute_to_layer_input: Replace the layer's input instead of its output.

    Returns:
        ``forward(activation, *model_inputs) -> output``.

    Raises:
        ValueError: (when called) Without model inputs, for an activation whose shape is not
            the layer's on those inputs, or for a layer with several tensors.

    Examples:
        >>> from captum.attr import LayerActivation
        >>> from captum.metrics import infidelity
        >>> h = LayerActivation(model, model.conv2).attribute(x)
        >>> units = LayerGNDI(model, model.conv2).attribute(
        ...     x, target=1, granularity="unit", signed=True)
        >>> infid = infidelity(layer_forward_func(model, model.conv2), perturb, h, units,
        ...                    additional_forward_args=x, target=1)
    """
    ((name, spec),) = resolve_layers(model, [layer]).items()

    def forward(activation: Tensor, *model_inputs: Any) -> Tensor:
        if not model_inputs:
            raise ValueError(
                f"The function of layer '{name}' runs the model on its own inputs with the "
                "layer's activation replaced; pass them to infidelity as "
                "additional_forward_args=inputs (a tuple for several)."
            )

        def edit(_: int, h: Any) -> Tensor:
            if not isinstance(h, Tensor) or h.shape != activation.shape:
                shape = tuple(h.shape) if isinstance(h, Tensor) else f"{len(h)} tensors"
                raise ValueError(
                    f"Layer '{name}' gives {shape} on these inputs, but the activation passed "
                    f"in has shape {tuple(activation.shape)}; give infidelity the layer's "
                    "activation on the same inputs (LayerActivation(model, layer).attribute) "
                    "and the inputs as additional_forward_args."
                )
            return activation.to(h.dtype)

        with intervene(
            [spec], edit, attribute_to_layer_input=attribute_to_layer_input, labels=[name]
        ):
            return model(*model_inputs)

    return forward
