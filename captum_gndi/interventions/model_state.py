"""The user's model is left exactly as it was: buffers kept, training-mode submodules named.

:func:`preserve_model` wraps every entry point that runs the model (``LayerGNDI.attribute``,
``compute_gndi``, ``mean_activations``, ``validate``, ``verify_top_k``, the pruning scorers).
While it runs, a module-global forward pre-hook (acting on the calling thread only) sees every
module the computation calls, however the model is wrapped (a lambda, a wrapper module, a
Captum forward function): it copies each module's buffers before the module first runs, and
notes the modules in training mode whose output depends on that flag. On exit the buffers get
their values back (a BatchNorm in training mode updates its running statistics on every pass),
and one warning names the training-mode submodules.

Which modules the flag matters for (:func:`trains_differently`): normalisations that keep
running statistics (BatchNorm, InstanceNorm with ``track_running_stats``), dropout with
``p > 0``, ``RReLU``, ``MultiheadAttention`` with dropout, and any other class that overrides
``train()`` or whose ``forward`` reads ``self.training`` (Hugging Face attention and dropout
modules, user modules). Containers and wrappers whose own ``forward`` ignores the flag
(``nn.Sequential``, ``DataParallel``, Captum's ``LLMGradientAttribution`` wrapper, which starts
in training mode around a model in eval mode) are not reported.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "preserve_model",
    "report_training",
    "training_message",
    "training_submodules",
    "trains_differently",
]

F = TypeVar("F", bound=Callable[..., Any])

_DROPOUTS = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


def trains_differently(module: nn.Module) -> bool:
    """Whether ``module``'s own output can depend on its ``training`` flag (module docstring)."""
    if isinstance(module, _DROPOUTS):
        return module.p > 0
    if hasattr(module, "track_running_stats") and hasattr(module, "running_mean"):
        return bool(module.track_running_stats)  # batch statistics in both modes otherwise
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    if isinstance(module, nn.RReLU):
        return True
    return _reads_training_flag(type(module))


@functools.cache
def _reads_training_flag(cls: type) -> bool:
    if cls.train is not nn.Module.train:
        return True
    if cls.__module__.startswith("torch.nn."):
        return False  # torch's own modules: the cases above are the ones that use the flag
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return "self.training" in source


def training_submodules(model: Any) -> list[str]:
    """Dotted names of the submodules of ``model`` in training mode whose flag matters."""
    if not isinstance(model, nn.Module):
        return []
    return [
        name or type(model).__name__
        for name, module in model.named_modules()
        if module.training and trains_differently(module)
    ]


class _Guard:
    """What one outermost :func:`preserve_model` call has seen on its thread."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.root: nn.Module | None = None
        self.buffers: dict[int, tuple[nn.Module, dict[str, Tensor]]] = {}
        self.training: dict[int, str] = {}  # module id -> name

    def name_of(self, module: nn.Module, root: nn.Module | None) -> str:
        if root is not None:
            for name, candidate in root.named_modules():
                if candidate is module:
                    return name or type(module).__name__
        return type(module).__name__

    def note_training(self, module: nn.Module, name: str | None = None) -> None:
        if id(module) not in self.training:
            self.training[id(module)] = name or self.name_of(module, self.root)

    def pre_hook(self, module: nn.Module, _args: Any) -> None:
        if threading.get_ident() != self.thread or id(module) in self.buffers:
            return
        if self.root is None:
            self.root = module  # the outermost module of the first forward pass
        saved = {
            name: buffer.detach().clone()
            for name, buffer in module._buffers.items()
            if buffer is not None
        }
        self.buffers[id(module)] = (module, saved)
        if module.training and trains_differently(module):
            self.note_training(module)

    def restore(self) -> None:
        with torch.no_grad():
            for module, saved in self.buffers.values():
                for name, value in saved.items():
                    current = module._buffers.get(name)
                    if isinstance(current, Tensor) and current.shape == value.shape:
                        current.copy_(value)
                    else:
                        module._buffers[name] = value


_local = threading.local()


def _active_guard() -> _Guard | None:
    return getattr(_local, "guard", None)


def report_training(model: Any, stacklevel: int = 2) -> None:
    """Name the submodules of ``model`` in training mode whose flag matters: in the one warning
    of the running :func:`preserve_model` call, or in a warning now outside one."""
    names = training_submodules(model)
    guard = _active_guard()
    if not names:
        return
    if guard is None:
        warnings.warn(training_message(names), stacklevel=stacklevel + 1)
        return
    modules = dict(model.named_modules())
    for name in names:
        guard.note_training(modules.get(name, model), name)


@contextmanager
def _guarded() -> Iterator[None]:
    if _active_guard() is not None:  # nested entry points: the outermost one does the work
        yield
        return
    guard = _Guard()
    _local.guard = guard
    # torch.compile runs the hook as plain Python (a graph break), not as traced code
    hook = torch.compiler.disable(guard.pre_hook)
    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
        _local.guard = None
        guard.restore()
        if guard.training:
            warnings.warn(training_message(list(guard.training.values())), stacklevel=_outside())


def preserve_model(function: F) -> F:
    """Decorate an entry point: buffers restored after it, one warning for training mode.

    Re-entrant: entry points that call each other (``validate`` -> ``compute_gndi``) share the
    outermost call's guard, so buffers are copied once and one warning is given.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _guarded():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def training_message(names: list[str]) -> str:
    """The warning for submodules in training mode whose flag matters."""
    return (
        f"Submodules in training mode: {', '.join(names)}. Their outputs depend on the batch "
        "or are random (batch statistics, dropout), so G-NDI couples the examples of a batch "
        "and forward and reverse mode can disagree. Call model.eval() first (their buffers, "
        "e.g. running statistics, are restored after scoring either way)."
    )


def _outside() -> int:
    """The ``stacklevel`` of the first frame outside captum_gndi, Captum, torch and the
    standard library's context helpers (so the warning names the user's line)."""
    frame, level = inspect.currentframe(), 0
    skip = ("captum_gndi", "captum", "torch", "contextlib", "functools")
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in skip:
        frame, level = frame.f_back, level + 1
    return max(level, 1)
