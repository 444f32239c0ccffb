"""The only module that imports Captum's private helpers.

Captum's argument conventions (tuples of inputs, additional forward args, target selection,
integral approximation rules) live in private modules. Wrapping them here keeps one place to
change if Captum moves them.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from captum._utils.common import (
    _format_additional_forward_args,
    _format_tensor_into_tuples,
    _run_forward,
    _select_targets,
)
from captum._utils.typing import TargetType
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS, approximation_parameters
from torch import Tensor

__all__ = [
    "SUPPORTED_METHODS",
    "TargetType",
    "as_input_tuple",
    "as_forward_args",
    "integration_points",
    "path_points",
    "run_forward",
    "select_targets",
]


def as_input_tuple(inputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Captum's inputs convention: a tensor or a tuple of tensors, returned as a tuple."""
    return _format_tensor_into_tuples(inputs)


def as_forward_args(additional_forward_args: Any) -> tuple[Any, ...] | None:
    """Captum's ``additional_forward_args`` convention, returned as a tuple or None."""
    return _format_additional_forward_args(additional_forward_args)


def run_forward(
    forward_func: Callable[..., Any], inputs: tuple[Tensor, ...], forward_args: Any
) -> Any:
    """Call ``forward_func(*inputs, *forward_args)`` without target selection."""
    return _run_forward(forward_func, inputs, None, forward_args)


def select_targets(output: Tensor, target: TargetType) -> Tensor:
    """Captum's ``TargetType`` semantics (int, tuple, tensor, list per example)."""
    return _select_targets(output, target)


def integration_points(n_steps: int, method: str) -> tuple[list[float], list[float]]:
    """Alphas and weights of Captum's approximation ``method`` with ``n_steps`` points on [0, 1].

    Raises:
        TypeError: For an ``n_steps`` that is not an integer (``True``, ``2.5``).
        ValueError: For ``n_steps < 1`` or an unknown ``method``.
    """
    _check_rule(n_steps, method)
    step_sizes, alphas = approximation_parameters(method)
    return list(alphas(int(n_steps))), list(step_sizes(int(n_steps)))


def path_points(n_steps: int, method: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The integration points of G-NDI: ``((1.0,), (1.0,))`` (first order) for ``n_steps=1``,
    else Captum's rule; ``n_steps`` and ``method`` are checked in both cases (an unknown
    ``method`` is an error even where ``n_steps=1`` does not use it)."""
    _check_rule(n_steps, method)
    if n_steps == 1:
        return (1.0,), (1.0,)
    alphas, weights = integration_points(n_steps, method)
    return tuple(alphas), tuple(weights)


def _check_rule(n_steps: int, method: str) -> None:
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral):
        raise TypeError(
            f"n_steps must be an integer >= 1 (the number of integration points), got "
            f"{n_steps!r} of type {type(n_steps).__name__}."
        )
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"Unknown integration method {method!r}; use one of {SUPPORTED_METHODS}.")
