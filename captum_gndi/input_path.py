"""The input-space path of ``path="input"`` (EAP-IG): the model run at ``b + a (x - b)``.

``LayerGNDI.attribute(..., path="input", n_steps=m)`` averages the gradient with respect to
every unit along one straight path in *input* space, from Captum's ``baselines`` (e.g. the
corrupted prompt) to the ``inputs``, and multiplies it by ``h(x) - h(b)`` (EAP-IG, Hanna et al.
2024): ``m`` forward+backward passes score every unit of every layer at once. This module
builds that path:

- float inputs are interpolated directly, ``b + a (x - b)`` per input tensor;
- integer inputs (token ids) cannot be interpolated, so, as Captum's
  ``LayerIntegratedGradients`` on the embedding layer does, the model runs on ``inputs`` with
  the output of its input-embedding layer replaced by ``e(b) + a (e(x) - e(b))``. The layer is
  ``input_layer`` if given, else ``get_input_embeddings()`` of the model or of its first
  submodule that has one (a Hugging Face model inside a metric wrapper). The same rule applies
  to float inputs when ``input_layer`` is given.

The engine (:func:`captum_gndi.reverse_mode.input_path_effects`) records one pass per point and
takes vector-Jacobian products there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ._captum_compat import TargetType
from .interventions import intervene
from .job import ScoringJob, capture_activations
from .runs import KeywordInputs, Runner, make_runner

__all__ = [
    "PATHS",
    "InputPath",
    "Path",
    "check_path",
    "expand_input_baselines",
    "find_input_layer",
    "input_path",
]

Path = Literal["unit", "input"]
PATHS = ("unit", "input")


def check_path(path: str) -> None:
    """A clear error for an unknown ``path``."""
    if path not in PATHS:
        raise ValueError(
            f"path must be 'unit' (each unit integrated on its own path b_u + a (h - b)_u) or "
            f"'input' (one input-space path from Captum's baselines to the inputs, EAP-IG), got "
            f"{path!r}."
        )


def expand_input_baselines(inputs: tuple[Tensor, ...], baselines: Any) -> tuple[Tensor, ...]:
    """Captum's input ``baselines`` (a number, a tensor or a tuple of them) expanded to the
    shape, dtype and device of each input tensor."""
    baseline_tuple = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(baseline_tuple) != len(inputs):
        raise ValueError(
            f"Got {len(baseline_tuple)} input baselines for {len(inputs)} inputs; give one "
            "per input tensor."
        )
    expanded = []
    for index, (value, tensor) in enumerate(zip(baseline_tuple, inputs)):
        floating = isinstance(value, float) or (
            isinstance(value, Tensor) and value.is_floating_point()
        )
        if floating and not tensor.is_floating_point():
            raise TypeError(
                f"Input baseline {index} is floating point but input {index} holds "
                f"{tensor.dtype} values (token ids?), so it would be truncated to an integer id "
                "(0.5 becomes token 0). Give an integer baseline (e.g. the tokenizer's "
                "pad_token_id, or a tensor of token ids), or a layer baseline in the embedding "
                "space with layer_baselines=."
            )
        value = torch.as_tensor(value, dtype=tensor.dtype, device=tensor.device)
        try:
            expanded.append(value.expand_as(tensor).contiguous())
        except RuntimeError as error:
            raise ValueError(
                f"Input baseline {index} of shape {tuple(value.shape)} does not broadcast "
                f"to input of shape {tuple(tensor.shape)}."
            ) from error
    return tuple(expanded)


def find_input_layer(
    forward_func: Callable[..., Any], input_layer: nn.Module | str | None = None
) -> nn.Module | None:
    """The module whose output the input path interpolates, or ``None`` if there is none.

    Args:
        forward_func: The model or forward function.
        input_layer: A module, or a dotted submodule name of ``forward_func``; ``None`` looks
            for ``get_input_embeddings()`` on ``forward_func`` and then on its submodules, in
            order.

    Returns:
        The module, or ``None`` when ``input_layer`` is ``None`` and no embedding is found.
    """
    if isinstance(input_layer, nn.Module):
        return input_layer
    if isinstance(input_layer, str):
        if not isinstance(forward_func, nn.Module):
            raise ValueError(
                f"input_layer={input_layer!r} names a submodule, but forward_func is not an "
                "nn.Module; pass the module itself (e.g. input_layer=model.embed_tokens)."
            )
        return forward_func.get_submodule(input_layer)
    if input_layer is not None:
        raise TypeError(
            f"input_layer must be an nn.Module, a submodule name or None, got "
            f"{type(input_layer).__name__}."
        )
    candidates = forward_func.modules() if isinstance(forward_func, nn.Module) else ()
    for module in candidates:
        getter = getattr(module, "get_input_embeddings", None)
        if not callable(getter):
            continue
        try:
            embedding = getter()
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(embedding, nn.Module):
            return embedding
    return None


@dataclass
class InputPath:
    """The model run at the points ``a`` of the input-space path.

    Attributes:
        forward_func: The model or forward function.
        inputs: The inputs ``x``.
        starts: Where the path starts: the input baselines, or the layer's output at them.
        ends: Where it ends: the inputs, or the layer's output at them.
        layer: The interpolated module (``None``: the inputs themselves are interpolated).
        forward_args: Captum's additional forward arguments.
        target: Captum's ``TargetType``.
    """

    forward_func: Callable[..., Any]
    inputs: tuple[Tensor, ...]
    starts: tuple[Tensor, ...]
    ends: tuple[Tensor, ...]
    layer: nn.Module | None
    forward_args: Any
    target: TargetType

    def __call__(self, alpha: float) -> Callable[[], Tensor]:
        """A zero-argument run of the model at ``b + alpha (x - b)``, returning ``(N, K)``."""
        points = tuple(s + alpha * (e - s) for s, e in zip(self.starts, self.ends))
        if self.layer is None:
            points = _like(self.inputs, points)
            return make_runner(self.forward_func, points, self.forward_args, self.target)
        return _LayerPointRun(
            make_runner(self.forward_func, self.inputs, self.forward_args, self.target),
            self.layer,
            points,
        )


class _LayerPointRun:
    """Runs the model on its inputs with ``layer``'s output replaced by a path point."""

    def __init__(self, run: Runner, layer: nn.Module, point: tuple[Tensor, ...]) -> None:
        self.run, self.layer, self.point = run, layer, point

    @property
    def output_shape(self) -> tuple[int, ...] | None:
        """The per-example shape of the selected output at the last call."""
        return self.run.output_shape

    def __call__(self) -> Tensor:
        point = self.point[0] if len(self.point) == 1 else self.point
        with intervene([self.layer], lambda _i, _h: point, labels=["input_layer"]):
            return self.run()


def input_path(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    baselines: tuple[Tensor, ...],
    forward_args: Any,
    target: TargetType,
    input_layer: nn.Module | str | None = None,
    model: Callable[..., Any] | None = None,
) -> InputPath:
    """The input-space path from ``baselines`` to ``inputs`` (see the module docstring).

    Args:
        forward_func: The model or forward function.
        inputs: The inputs ``x`` (dimension 0 indexes examples).
        baselines: Input baselines expanded to the inputs (:func:`expand_input_baselines`).
        forward_args: Captum's additional forward arguments.
        target: Captum's ``TargetType``.
        input_layer: The module to interpolate at (default: the model's input embeddings
            for integer inputs, the inputs themselves for float inputs).
        model: Where to look for the input embeddings and submodule names (default:
            ``forward_func``; give the model when ``forward_func`` wraps it, e.g. a partial).

    Returns:
        The path; ``path(a)`` is a run of the model at point ``a``.

    Raises:
        ValueError: For integer inputs when no embedding layer is found.

    Examples:
        >>> path = input_path(model, (clean_ids,), (corrupted_ids,), None, None)
        >>> path(0.5)()  # the model's output halfway between the embeddings, (N, K)
    """
    integer = [i for i, t in enumerate(inputs) if not t.is_floating_point()]
    if input_layer is None and not integer:
        starts = _like(inputs, baselines)
        return InputPath(forward_func, inputs, starts, inputs, None, forward_args, target)
    layer = find_input_layer(forward_func if model is None else model, input_layer)
    if layer is None:
        raise ValueError(
            f"path='input' interpolates from the baselines to the inputs, but input(s) "
            f"{integer} hold integers (token ids), which cannot be interpolated, and no input "
            "embedding was found (no get_input_embeddings() on the model or its submodules). "
            "Pass the module whose output to interpolate, e.g. input_layer=model.embedding "
            "(as Captum's LayerIntegratedGradients on the embedding layer)."
        )
    starts = _layer_output(forward_func, _like(inputs, baselines), forward_args, layer)
    ends = _layer_output(forward_func, inputs, forward_args, layer)
    return InputPath(forward_func, inputs, starts, ends, layer, forward_args, target)


def _layer_output(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    forward_args: Any,
    layer: nn.Module,
) -> tuple[Tensor, ...]:
    """The output of ``layer`` (its floating-point tensors) when the model runs on ``inputs``."""
    job = ScoringJob(
        run=make_runner(forward_func, inputs, forward_args, None),
        layers=[layer],
        labels=["input_layer"],
        baselines=[None],
    )
    output = capture_activations(job)[1][0]
    return tuple(output) if isinstance(output, tuple) else (output,)


def _like(inputs: tuple[Tensor, ...], tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``tensors`` as inputs of the same kind as ``inputs`` (keyword names kept)."""
    if isinstance(inputs, KeywordInputs):
        return KeywordInputs(inputs.keys, tensors)
    return tuple(tensors)
