"""The only module that imports Captum's private helpers.

Captum's argument conventions (tuples of inputs, additional forward args, target selection,
integral approximation rules) live in private modules. Wrapping them here keeps one place to
change if Captum moves them.
"""

from __future__ import annotations

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
    """Alphas and weights of Captum's approximation ``method`` with ``n_steps`` points on [0, 1]."""
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"Unknown integration method {method!r}; use one of {SUPPORTED_METHODS}.")
    step_sizes, alphas = approximation_parameters(method)
    return list(alphas(n_steps)), list(step_sizes(n_steps))
