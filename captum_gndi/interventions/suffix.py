"""The traced-suffix back end: run only the part of the network after a layer.

:class:`TracedModel` traces the model with :mod:`torch.fx` (keeping the intervention points as
single ``call_module`` nodes) and splits the graph at each layer into a *prefix* (everything the
part after the layer reads) and a *suffix*. :meth:`TracedModel.frontier` runs the prefix once
and returns the values the suffix reads; :meth:`TracedModel.suffix` runs the suffix with the
layer's output replaced by ``copies`` stacked edited activations (the other input-dependent
values are repeated to match), so ``U`` interventions cost one suffix pass on a ``U``-times
larger batch and no prefix pass. :class:`~captum_gndi.interventions.backends.SuffixBackend`
caches the frontier per layer and batch, checks the trace against the model's clean output and
falls back to hooks where it differs; this module is the only one that uses :mod:`torch.fx`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.fx as fx
from torch import Tensor, nn

from .hooks import LayerCall, LayerSpec, module_of

__all__ = ["TracedModel"]


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps the target layers as single ``call_module`` nodes."""

    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, module_qualified_name)


def _fetch_attr(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


@dataclass
class _Split:
    """One layer's place in the traced graph."""

    node: fx.Node
    suffix: list[fx.Node]  # nodes after the layer, in execution order (output last)
    prefix: list[fx.Node]  # nodes needed to compute the frontier, in execution order
    frontier: list[fx.Node]  # values the suffix reads from the prefix (the layer node included)
    batched: dict[fx.Node, bool]  # frontier node -> depends on the inputs


class TracedModel:
    """A :mod:`torch.fx` trace of the model, split at each layer into a prefix and a suffix.

    Args:
        model: The model.
        named: Layer name -> intervention point (each a module that appears as one
            ``call_module`` node, or a :class:`~captum_gndi.LayerCall` of one).

    Raises:
        Exception: Whatever :mod:`torch.fx` raises for a model it cannot trace, and
            ``torch.fx.proxy.TraceError`` for a layer that is not one ``call_module`` node.
    """

    def __init__(self, model: nn.Module, named: Mapping[str, LayerSpec]) -> None:
        self.model = model
        leaves = {id(module_of(spec)) for spec in named.values()}
        self.graph = _LeafTracer(leaves).trace(model)
        self.modules = dict(model.named_modules())
        paths = {id(m): n for n, m in self.modules.items()}
        self.nodes = list(self.graph.nodes)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        input_dependent: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder" or any(a in input_dependent for a in node.all_input_nodes):
                input_dependent.add(node)
        self.splits: dict[str, _Split] = {}
        for name, spec in named.items():
            path = paths.get(id(module_of(spec)))
            calls = [n for n in self.nodes if n.op == "call_module" and n.target == path]
            wanted = spec.call_index if isinstance(spec, LayerCall) else 0
            if (
                path is None
                or len(calls) <= wanted
                or (not isinstance(spec, LayerCall) and len(calls) != 1)
            ):
                raise fx.proxy.TraceError(f"layer {name!r} is not one call_module node")
            self.splits[name] = self._split(calls[wanted], input_dependent)

    def _split(self, node: fx.Node, input_dependent: set[fx.Node]) -> _Split:
        after: set[fx.Node] = {node}
        for n in self.nodes:
            if any(a in after for a in n.all_input_nodes):
                after.add(n)
        suffix = [n for n in self.nodes if n in after and n is not node]
        frontier = {a for n in suffix for a in n.all_input_nodes if a not in after}
        frontier.add(node)
        needed: set[fx.Node] = set()
        stack = list(frontier)
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(n.all_input_nodes)
        prefix = [n for n in self.nodes if n in needed]
        ordered = [n for n in self.nodes if n in frontier]
        return _Split(node, suffix, prefix, ordered, {n: n in input_dependent for n in ordered})

    def _run(self, node: fx.Node, env: dict[fx.Node, Any], inputs: tuple[Tensor, ...]) -> Any:
        if node.op == "placeholder":
            position = self.placeholders.index(node)
            if position < len(inputs):
                return inputs[position]
            if node.args:
                return node.args[0]  # the forward's default value
            raise TypeError(f"The model's input {node.target!r} was not given.")
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "get_attr":
            return _fetch_attr(self.model, node.target)  # type: ignore[arg-type]
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)  # type: ignore[arg-type]
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)  # type: ignore[index]
        if node.op == "output":
            return args[0]
        raise RuntimeError(f"Unknown fx node op {node.op!r}.")

    def frontier(self, name: str, inputs: tuple[Tensor, ...]) -> dict[fx.Node, Any]:
        """Run the prefix of layer ``name`` once; return the values its suffix reads."""
        split = self.splits[name]
        env: dict[fx.Node, Any] = {}
        for node in split.prefix:
            env[node] = self._run(node, env, inputs)
        return {n: env[n] for n in split.frontier}

    def stackable(self, name: str, values: Mapping[fx.Node, Any], n: int) -> bool:
        """Whether every input-dependent frontier value is a tensor with ``n`` rows."""
        split = self.splits[name]
        return all(
            isinstance(values[f], Tensor) and values[f].dim() > 0 and values[f].shape[0] == n
            for f in split.frontier
            if split.batched[f] and f is not split.node
        )

    def suffix(self, name: str, values: Mapping[fx.Node, Any], h: Tensor, copies: int) -> Any:
        """The model output with the layer's output replaced by ``h`` (``copies`` stacked)."""
        split = self.splits[name]
        env: dict[fx.Node, Any] = {}
        for f in split.frontier:
            value = values[f]
            if copies > 1 and split.batched[f] and isinstance(value, Tensor):
                value = value.repeat(copies, *([1] * (value.dim() - 1)))
            env[f] = value
        env[split.node] = h
        out = None
        for node in split.suffix:
            out = env[node] = self._run(node, env, ())
        return out
