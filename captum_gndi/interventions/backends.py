"""The two back ends that run a model with one layer's activation edited: hooks and suffix.

Both have the same interface, :meth:`HookBackend.outputs`: given a batch, a layer and an
``edit(h) -> copies`` function (``h`` is the clean activation; the result is ``U`` edited copies
stacked on the example dimension, :func:`~captum_gndi.interventions.edits.set_units`), return
the model's outputs ``(U * N, K)``, one block of ``N`` rows per copy.

- :class:`HookBackend` runs the full forward pass on ``U`` stacked copies of the inputs, with
  :func:`~captum_gndi.interventions.hooks.intervene` replacing the layer's activation.
- :class:`SuffixBackend` runs only the network after the layer
  (:class:`~captum_gndi.interventions.suffix.TracedModel`): the prefix runs once per layer and
  batch and its values are kept (up to ``max_cache_bytes``). Before a layer's first use the
  trace must reproduce the model's clean output; where it does not (data-dependent control
  flow) that layer uses hooks, with a warning. A suffix whose input-dependent values do not
  all have ``N`` rows takes one copy per pass (:meth:`SuffixBackend.max_copies`).

:func:`make_backend` picks one from ``engine`` (:data:`ENGINES`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..model_calls import KeywordInputs, make_runner
from .hooks import LayerSpec, intervene
from .suffix import TracedModel

__all__ = ["ENGINES", "CleanBatch", "HookBackend", "SuffixBackend", "make_backend"]

ENGINES = ("auto", "suffix", "hooks")
"""How interventions run: traced suffix (prefix reused), full forward with hooks, or the first
that works."""

Edit = Callable[[Tensor], Tensor]
"""``edit(h) -> (U * N, ...)``: the edited copies of the clean activation ``h``."""


@dataclass
class CleanBatch:
    """One batch of examples and the model's clean output on it.

    Attributes:
        inputs: The model inputs (a tuple, or :class:`~captum_gndi.runs.KeywordInputs`).
        labels: The labels, or ``None``.
        clean: The clean output ``(N, K)``.
    """

    inputs: tuple[Tensor, ...]
    labels: Tensor | None
    clean: Tensor


def _repeat(inputs: tuple[Tensor, ...], copies: int) -> tuple[Tensor, ...]:
    if copies == 1:
        return inputs

    def repeat(t: Tensor) -> Tensor:
        return t.repeat(copies, *([1] * (t.dim() - 1)))

    if isinstance(inputs, KeywordInputs):
        return inputs.map(repeat)
    return tuple(repeat(t) for t in inputs)


class HookBackend:
    """Interventions on the full forward pass, through the one hook helper.

    Args:
        model: The model (its output is read as ``(N, K)``).
        named: Layer name -> intervention point.
    """

    name = "hooks"

    def __init__(self, model: nn.Module, named: Mapping[str, LayerSpec]) -> None:
        self.model, self.named = model, named

    def max_copies(self, name: str, index: int, batch: CleanBatch) -> int | None:
        """The most copies one pass may stack (``None``: no limit)."""
        return None

    def outputs(self, name: str, index: int, batch: CleanBatch, edit: Edit, copies: int) -> Tensor:
        """The outputs ``(copies * N, K)`` with layer ``name``'s activation set to ``edit(h)``.

        Args:
            name: The layer.
            index: The batch's position in the data (the suffix back end's cache key).
            batch: The batch.
            edit: The edit of the clean activation ``h`` into ``copies`` stacked copies.
            copies: How many copies ``edit`` returns.
        """
        n = batch.inputs[0].shape[0]

        def hook_edit(_: int, h: Tensor) -> Tensor:
            return edit(h[:n])

        with torch.no_grad(), intervene([self.named[name]], hook_edit, labels=[name]):
            return make_runner(self.model, _repeat(batch.inputs, copies), None, None)()


class SuffixBackend(HookBackend):
    """Interventions on the traced suffix after the layer, hooks where the trace is wrong.

    Args:
        model: The model.
        named: Layer name -> intervention point.
        traced: The model's trace.
        max_cache_bytes: Memory for cached prefix values (beyond it prefixes are recomputed).
    """

    name = "suffix"

    def __init__(
        self,
        model: nn.Module,
        named: Mapping[str, LayerSpec],
        traced: TracedModel,
        max_cache_bytes: int,
    ) -> None:
        super().__init__(model, named)
        self.traced = traced
        self.max_cache_bytes = max_cache_bytes
        self.cache: dict[tuple[str, int], dict[Any, Any]] = {}
        self.cache_bytes = 0
        self.last: tuple[tuple[str, int], dict[Any, Any]] | None = None
        self.checked: set[str] = set()
        self.unstackable: set[str] = set()
        self.hooks_only: set[str] = set()

    def _frontier(self, name: str, index: int, batch: CleanBatch) -> dict[Any, Any]:
        key = (name, index)
        if key in self.cache:
            return self.cache[key]
        if self.last is not None and self.last[0] == key:  # beyond the cache: the latest only
            return self.last[1]
        with torch.no_grad():
            values = self.traced.frontier(name, batch.inputs)
        size = sum(v.numel() * v.element_size() for v in values.values() if isinstance(v, Tensor))
        if self.cache_bytes + size <= self.max_cache_bytes:
            self.cache[key] = values
            self.cache_bytes += size
        else:
            self.last = (key, values)
        return values

    def _check(self, name: str, values: Mapping[Any, Any], batch: CleanBatch) -> bool:
        """The traced suffix must reproduce the model's clean output; else use hooks."""
        h = values[self.traced.splits[name].node]
        with torch.no_grad():
            out = self.traced.suffix(name, values, h, 1)
        ok = isinstance(out, Tensor) and out.shape[0] == batch.clean.shape[0]
        if ok:
            out = out.reshape(out.shape[0], -1)
            ok = out.shape == batch.clean.shape and torch.allclose(
                out, batch.clean, rtol=1e-4, atol=1e-5 * float(batch.clean.abs().max()) + 1e-12
            )
        if not ok:
            warnings.warn(
                f"The torch.fx trace of the model does not reproduce its output after layer "
                f"{name!r} (data-dependent control flow?); full forward passes with hooks are "
                "used there instead.",
                RuntimeWarning,
                stacklevel=5,
            )
        return ok

    def _values(self, name: str, index: int, batch: CleanBatch) -> dict[Any, Any] | None:
        """The prefix values of layer ``name`` on this batch, or ``None`` to use hooks."""
        if name in self.hooks_only:
            return None
        values = self._frontier(name, index, batch)
        if name not in self.checked:
            self.checked.add(name)
            if not self._check(name, values, batch):
                self.hooks_only.add(name)
                return None
            if not self.traced.stackable(name, values, batch.clean.shape[0]):
                self.unstackable.add(name)
        return values

    def max_copies(self, name: str, index: int, batch: CleanBatch) -> int | None:
        """1 where the suffix cannot stack copies, else no limit."""
        self._values(name, index, batch)
        return 1 if name in self.unstackable else None

    def outputs(self, name: str, index: int, batch: CleanBatch, edit: Edit, copies: int) -> Tensor:
        """As :meth:`HookBackend.outputs`, running only the suffix after the layer."""
        values = self._values(name, index, batch)
        if values is None:
            return super().outputs(name, index, batch, edit, copies)
        h = values[self.traced.splits[name].node]
        with torch.no_grad():
            return self.traced.suffix(name, values, edit(h), copies)


def make_backend(
    model: nn.Module,
    named: Mapping[str, LayerSpec],
    engine: str = "auto",
    max_cache_bytes: int = 2**31,
) -> HookBackend:
    """The back end ``engine`` asks for.

    Args:
        model: The model.
        named: Layer name -> intervention point.
        engine: ``"auto"`` (the traced suffix when :mod:`torch.fx` can trace the model, hooks
            otherwise), ``"suffix"`` or ``"hooks"``.
        max_cache_bytes: Memory for the suffix back end's cached prefix values.

    Returns:
        A :class:`SuffixBackend` or a :class:`HookBackend` (``.name`` says which).

    Raises:
        ValueError: For an unknown engine, or ``engine="suffix"`` on a model that cannot be
            traced.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    if engine == "hooks":
        return HookBackend(model, named)
    try:
        traced = TracedModel(model, named)
    except Exception as error:  # tracing is best effort: any failure means hooks
        if engine == "suffix":
            raise ValueError(
                f"engine='suffix' needs a model that torch.fx can trace: {error}. Use "
                "engine='hooks' (full forward passes) instead."
            ) from error
        return HookBackend(model, named)
    return SuffixBackend(model, named, traced, max_cache_bytes)
