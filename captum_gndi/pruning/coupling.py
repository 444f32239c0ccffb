"""What Torch-Pruning's dependency graph says about a prunable layer (when it is installed).

Removing output channel ``c`` of a conv/linear also removes channel ``c`` of every tensor coupled
to it: its normalisation layer, a depthwise convolution that follows (whose output channel ``c``
*is* input channel ``c``), a squeeze-excitation gate's last linear, and, through a residual
addition, the whole residual stream. :func:`layer_coupling` reads these couplings from
Torch-Pruning's ``DependencyGraph`` so that the masks zero the same channels that the physical
model loses; :func:`remove_channels` builds that physical model for a given keep mask, and
:func:`physical_counts` counts its parameters and MACs with ``tp.utils.count_ops_and_params``.
Without Torch-Pruning, :func:`dependency_graph` returns ``None`` and the callers fall back to
their own rules.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..runs import eval_mode

__all__ = [
    "COUPLED_TYPES",
    "dependency_graph",
    "has_torch_pruning",
    "layer_coupling",
    "physical_counts",
    "remove_channels",
]

COUPLED_TYPES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
)
"""Modules whose output channels a mask can zero (weight rows and bias, or scale and shift)."""

_RESIDUAL_OPS = ("AddBackward0", "SubBackward0")


def _tp() -> Any:
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    return tp


def has_torch_pruning() -> bool:
    """Whether Torch-Pruning can be imported."""
    return _tp() is not None


def dependency_graph(model: nn.Module, inputs: tuple[Tensor, ...]) -> Any:
    """Torch-Pruning's dependency graph of ``model`` (``None`` without Torch-Pruning)."""
    tp = _tp()
    if tp is None:
        return None
    example = inputs if len(inputs) > 1 else inputs[0]
    try:
        with eval_mode(model), torch.enable_grad():  # Torch-Pruning leaves the model in eval
            return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as error:  # noqa: BLE001 - any tracing failure means "no graph"
        warnings.warn(
            f"Torch-Pruning could not trace {type(model).__name__} ({error}); coupled channels "
            "are not masked and counts use captum_gndi's own rules.",
            stacklevel=3,
        )
        return None


def _out_group(graph: Any, module: nn.Module, idxs: Sequence[int]) -> Any:
    tp = _tp()
    pruner = graph.get_pruner_of_module(module)
    fn = pruner.prune_out_channels if pruner is not None else tp.prune_conv_out_channels
    return graph.get_pruning_group(module, fn, list(idxs))


def layer_coupling(
    graph: Any, model: nn.Module, name: str, skip: Sequence[str]
) -> tuple[tuple[str, ...], bool]:
    """The modules whose output channel ``c`` goes with channel ``c`` of layer ``name``.

    Args:
        graph: Torch-Pruning's dependency graph of ``model``.
        model: The model.
        name: Dotted name of the conv/linear layer.
        skip: Names already accounted for (the layer itself and its BatchNorm).

    Returns:
        ``(names, residual)``: the coupled modules (conv, linear or normalisation layers whose
        output channels map one-to-one onto the layer's), and whether the coupling goes through
        a residual addition (the layer's channels are those of a residual stream).
    """
    module = model.get_submodule(name)
    group = _out_group(graph, module, range(module.weight.shape[0]))
    names = {id(m): n for n, m in model.named_modules()}
    coupled, residual = [], False
    for item in group:
        target = item.dep.target.module
        node = graph.module2node.get(target)
        grad_fn = getattr(node, "grad_fn", None)
        if type(grad_fn).__name__ in _RESIDUAL_OPS and len(node.inputs) >= 2:
            residual = True
        label = names.get(id(target))
        if (
            label is None
            or label in skip
            or label in coupled
            or not isinstance(target, COUPLED_TYPES)
            or not graph.is_out_channel_pruning_fn(item.dep.handler)
            or [int(i) for i in item.idxs] != list(range(len(item.idxs)))
            or list(item.root_idxs) != list(range(len(item.idxs)))
        ):
            continue
        coupled.append(label)
    return tuple(coupled), residual


def remove_channels(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    names: Sequence[str],
    keep: Mapping[str, Tensor],
) -> nn.Module:
    """A deep copy of ``model`` with the channels ``keep`` marks as pruned physically removed.

    Args:
        model: The model (left unchanged).
        inputs: One batch of inputs, for the dependency graph.
        names: The layers, in order.
        keep: Layer name -> bool keep mask (layers without an entry keep every channel).

    Returns:
        The smaller copy, in eval mode.

    Raises:
        ImportError: Without Torch-Pruning.
        ValueError: If Torch-Pruning refuses a removal (it would empty a layer), or two of the
            layers are coupled (the same channels removed twice).
    """
    if _tp() is None:
        raise ImportError(
            "Physical pruning needs Torch-Pruning: pip install captum_gndi[pruning] "
            "(or pip install torch-pruning)."
        )
    pruned = copy.deepcopy(model).eval()
    graph = dependency_graph(pruned, inputs)
    if graph is None:
        raise ValueError(f"Torch-Pruning cannot trace {type(model).__name__}.")
    sizes = {name: pruned.get_submodule(name).weight.shape[0] for name in names}
    for name in names:
        if name not in keep or bool(keep[name].all()):
            continue
        module = pruned.get_submodule(name)
        if module.weight.shape[0] != sizes[name]:
            raise ValueError(
                f"Layer '{name}' lost channels when another layer was pruned: they are coupled "
                "(e.g. through a residual addition); prune only one of them."
            )
        idxs = torch.nonzero(~keep[name].cpu()).flatten().tolist()
        group = _out_group(graph, module, idxs)
        if not graph.check_pruning_group(group):
            raise ValueError(
                f"Torch-Pruning refuses to remove {len(idxs)} of the {sizes[name]} channels of "
                f"'{name}' (it would leave a coupled layer without channels); keep at least one "
                "channel per layer (select_channels(min_keep=1))."
            )
        group.prune()
    pruned.zero_grad(set_to_none=True)
    return pruned.eval()


def physical_counts(model: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[int, int]:
    """``(parameters, MACs per example)`` of ``model`` by ``tp.utils.count_ops_and_params``."""
    macs, params = _tp().utils.count_ops_and_params(model, tuple(t[:1] for t in inputs))
    return int(params), int(macs)
