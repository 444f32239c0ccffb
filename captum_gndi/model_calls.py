"""How the model is called: positional or keyword inputs, and the runner the engine uses.

:class:`KeywordInputs` carries the tensors of a dict batch (a tokenizer's ``BatchEncoding``)
with their names, so everything that handles input tuples works on it and :func:`call_model` /
:func:`make_runner` pass it by keyword. :func:`make_runner` builds the :class:`Runner`, the
zero-argument function both engines differentiate, which checks what the model returns. The
checks of what goes in (finite inputs, dict keys, the model's mode) live here too.
:mod:`captum_gndi.runs` re-exports every public name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ._captum_compat import TargetType, run_forward, select_targets
from .interventions.model_state import report_training

__all__ = [
    "KeywordInputs",
    "Runner",
    "attention_mask_of",
    "call_model",
    "check_devices",
    "check_inputs",
    "check_keywords",
    "eval_mode",
    "keyword_forward",
    "make_runner",
    "map_inputs",
    "unwrap_model",
    "warn_if_training",
]


def check_inputs(inputs: tuple[Tensor, ...]) -> None:
    """Raise a clear error for non-tensor inputs and for NaN / inf values."""
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"inputs[{index}] is a {type(tensor).__name__}, not a tensor.")
        if tensor.dim() == 0 or tensor.shape[0] == 0:
            raise ValueError(
                f"inputs[{index}] has shape {tuple(tensor.shape)}: no examples along dimension "
                "0. Pass at least one example (a batch of shape (N, ...) with N >= 1)."
            )
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"inputs[{index}] contains NaN or inf values; G-NDI would be NaN. "
                "Clean or mask the inputs first."
            )


_DEVICE_ERRORS = ("same device", "expected device", "device type", "on the meta device")
"""Parts of PyTorch's messages for a forward pass that mixes devices."""


def check_devices(error: RuntimeError, model: Any, inputs: tuple[Tensor, ...]) -> None:
    """Turn PyTorch's error for a forward pass that mixed devices into one naming the fix.

    Inputs are not moved behind the user's back (Captum's convention: ``attribute`` runs the
    inputs where they are); :func:`captum_gndi.compute_gndi`, ``validate`` and
    ``verify_top_k`` move each batch to :func:`captum_gndi.runs.model_device` themselves.

    Raises:
        RuntimeError: When ``error`` says tensors on different devices met; otherwise returns.
    """
    if not any(part in str(error) for part in _DEVICE_ERRORS):
        return
    found = {str(t.device) for t in inputs if isinstance(t, Tensor)}
    module = unwrap_model(model)
    weights = ""
    if isinstance(module, nn.Module):
        devices = sorted({str(p.device) for p in module.parameters()})
        weights = f"; the model's parameters are on {', '.join(devices)}"
    raise RuntimeError(
        f"The model's forward pass met tensors on different devices ({error}). The inputs are "
        f"on {', '.join(sorted(found))}{weights}. Move the inputs to the device of the model's "
        "first layer (captum_gndi.runs.model_device(model); compute_gndi, validate and "
        "verify_top_k do this themselves), keep the model on one device, or load it with "
        "accelerate's device_map, whose hooks move activations between the layers' devices "
        "(weights left on the meta device must be loaded first, e.g. with "
        "load_checkpoint_and_dispatch)."
    ) from error


def unwrap_model(model: Any) -> Any:
    """The module inside ``DataParallel`` / ``DistributedDataParallel``, else ``model``."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def warn_if_training(model: Any, stacklevel: int = 3) -> None:
    """Warn when submodules of ``model`` (or of the module a data-parallel wrapper holds) are in
    training mode and their output depends on it: one warning naming them, given at the end of
    the running entry point (:mod:`captum_gndi.interventions.model_state`)."""
    report_training(unwrap_model(model), stacklevel)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the block and restore each one's own mode after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _check_target_type(target: TargetType) -> None:
    """A clear error for a target that Captum would silently reinterpret: a bool (``True``
    would select nothing, as ``None``) or a floating-point number or tensor (not an index)."""
    bad = isinstance(target, (bool, float)) or (
        isinstance(target, Tensor) and (target.dtype == torch.bool or target.is_floating_point())
    )
    if isinstance(target, list) and target:
        bad = bad or any(isinstance(t, (bool, float)) for t in target)
    if bad:
        raise TypeError(
            f"target must be Captum's TargetType (None, an int, a tuple of ints, an integer "
            f"tensor, or a list of them, one per example), got {target!r}; booleans and floats "
            "are not output indices."
        )


def _check_target(output: Tensor, target: TargetType) -> None:
    if target is None:
        return
    if output.dim() < 2:
        raise ValueError(
            f"A target was given but the model output has shape {tuple(output.shape)}; targets "
            "index dimension 1 of an (N, C, ...) output. Use target=None for this model."
        )
    if isinstance(target, Tensor):
        indices = target.flatten().tolist()
    elif isinstance(target, list) and target and isinstance(target[0], int):
        indices = target
    elif isinstance(target, int):
        indices = [target]
    else:
        return  # tuples / lists of tuples: Captum's own checks apply
    bad = [i for i in indices if not -output.shape[1] <= i < output.shape[1]]
    if bad:
        raise ValueError(
            f"target {bad[0]} is out of range for an output with {output.shape[1]} entries "
            f"along dimension 1 (valid: 0..{output.shape[1] - 1})."
        )


def make_runner(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    forward_args: Any,
    target: TargetType,
) -> Runner:
    """A zero-argument function running the model and returning the selected output as (N, K).

    Args:
        forward_func: The model or forward function.
        inputs: The input tensors, dimension 0 indexing examples.
        forward_args: Captum's additional forward arguments (a tuple or ``None``).
        target: Captum's ``TargetType``.

    Returns:
        ``run()``, which checks the output (a floating-point tensor with one row per example,
        targets in range) and returns the target-selected output flattened to ``(N, K)``.

    Examples:
        >>> run = make_runner(model, (images,), None, labels)
        >>> run().shape  # (N, 1)
    """

    _check_target_type(target)
    if isinstance(inputs, KeywordInputs):
        check_keywords(forward_func, inputs.keys)
        forward_func = keyword_forward(forward_func, inputs.keys)
    return Runner(forward_func, inputs, forward_args, target)


class Runner:
    """The zero-argument runner :func:`make_runner` returns (a class, not a closure that names
    itself, so that it holds no reference cycle and a batch is freed as soon as it is dropped).

    Attributes:
        output_shape: The per-example shape of the selected output at the last call.
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        inputs: tuple[Tensor, ...],
        forward_args: Any,
        target: TargetType,
    ) -> None:
        self.forward_func, self.inputs = forward_func, inputs
        self.forward_args, self.target = forward_args, target
        self.output_shape: tuple[int, ...] | None = None

    def __call__(self) -> Tensor:
        """Run the model; return the target-selected output as ``(N, K)``."""
        inputs, target = self.inputs, self.target
        try:
            output = run_forward(self.forward_func, inputs, self.forward_args)
        except RuntimeError as error:
            check_devices(error, self.forward_func, inputs)
            raise
        if not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
            output = output.logits  # a Hugging Face ModelOutput: its logits are the output
        if not isinstance(output, Tensor):
            raise TypeError(
                f"forward_func returned a {type(output).__name__}; G-NDI needs a tensor of "
                "per-example outputs. Wrap the model, e.g. lambda *a: model(*a).logits, or use "
                "captum_gndi.adapters.sentence_embedding for Hugging Face encoders."
            )
        if not output.is_floating_point():
            raise TypeError(
                f"forward_func returned a {output.dtype} tensor; G-NDI needs a floating-point "
                "output (logits or embeddings, not predicted labels)."
            )
        if output.dim() == 0 or output.shape[0] != inputs[0].shape[0]:
            raise ValueError(
                f"forward_func returned shape {tuple(output.shape)} for {inputs[0].shape[0]} "
                "examples; G-NDI needs one output row per example (N, ...), not a reduced loss."
            )
        _check_target(output, target)
        selected = select_targets(output, target)
        self.output_shape = tuple(selected.shape[1:])
        return selected.reshape(selected.shape[0], -1)


class KeywordInputs(tuple):
    """Model inputs read from a dict batch (a tokenizer's ``BatchEncoding``, a collator's dict):
    a tuple of tensors that remembers their keyword names, so the model is called as
    ``model(**dict(zip(keys, tensors)))``.

    Everything that handles input tuples (moving to a device, chunking, the batch size from
    ``inputs[0]``) works on it unchanged; :func:`call_model` and :func:`make_runner` pass it by
    keyword.

    Examples:
        >>> inputs = KeywordInputs(("input_ids", "attention_mask"), (ids, mask))
        >>> call_model(model, inputs)  # model(input_ids=ids, attention_mask=mask)
    """

    keys: tuple[str, ...]

    def __new__(cls, keys: Sequence[str], values: Iterable[Tensor]) -> KeywordInputs:
        obj = super().__new__(cls, tuple(values))
        obj.keys = tuple(keys)
        return obj

    def map(self, fn: Callable[[Tensor], Tensor]) -> KeywordInputs:
        """The same keys with ``fn`` applied to every tensor."""
        return KeywordInputs(self.keys, (fn(t) for t in self))

    def as_kwargs(self) -> dict[str, Tensor]:
        """The inputs as a keyword dict."""
        return dict(zip(self.keys, self))

    def get(self, key: str) -> Tensor | None:
        """The tensor named ``key``, if present."""
        return self.as_kwargs().get(key)


def attention_mask_of(inputs: tuple[Tensor, ...]) -> Tensor | None:
    """The ``attention_mask`` of keyword inputs (``None`` for positional inputs)."""
    return inputs.get("attention_mask") if isinstance(inputs, KeywordInputs) else None


def map_inputs(inputs: tuple[Tensor, ...], fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, ...]:
    """``fn`` applied to every input tensor, keeping keyword names."""
    return inputs.map(fn) if isinstance(inputs, KeywordInputs) else tuple(fn(t) for t in inputs)


def call_model(model: Callable[..., Any], inputs: tuple[Tensor, ...]) -> Any:
    """``model(*inputs)``, or ``model(**inputs)`` for :class:`KeywordInputs`."""
    if isinstance(inputs, KeywordInputs):
        return model(**inputs.as_kwargs())
    return model(*inputs)


def keyword_forward(forward_func: Callable[..., Any], keys: Sequence[str]) -> Callable[..., Any]:
    """``forward_func`` taking the tensors of ``keys`` positionally, for Captum's calling
    convention ``f(*inputs, *additional_forward_args)``."""
    keys = tuple(keys)

    def forward(*args: Any) -> Any:
        tensors, extra = args[: len(keys)], args[len(keys) :]
        return forward_func(*extra, **dict(zip(keys, tensors)))

    return forward


def check_keywords(model: Any, keys: Sequence[str]) -> None:
    """A clear error when a dict batch lacks keys the model needs, or has keys it does not take.

    Only checked where ``model.forward`` (or the callable) has an inspectable signature.
    """
    target = getattr(model, "forward", model)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        accepted = None
    else:
        accepted = {p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    required = [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    missing = [name for name in required if name not in keys]
    unknown = [] if accepted is None else [k for k in keys if k not in accepted]
    if missing or unknown:
        raise ValueError(
            f"The dict batch has keys {list(keys)}, but {type(model).__name__}.forward "
            + (f"needs {missing}" if missing else "")
            + (" and " if missing and unknown else "")
            + (f"does not take {unknown}" if unknown else "")
            + ". Yield batches with the model's input names (a 'labels' key is read as the "
            "labels and not passed to the model), or rename keys in the collator."
        )
