"""Which channels of a model can be pruned: conv/linear outputs, their BatchNorm, their role.

:func:`find_prunable` runs the model once on an example batch (through the single hook helper
:func:`captum_gndi.interventions.intervene`) and reads, for every ``Conv1d/2d/3d`` and ``Linear``:

- its execution order (the first one is the *stem*, the last one the *classifier*);
- the ``BatchNorm`` that directly normalises its output (the norm's input *is* the layer's
  output tensor), whose weight and bias must be masked too, because a BatchNorm after a zeroed
  channel outputs its bias;
- whether the channel's output (after that BatchNorm) is added directly to another tensor, i.e.
  it ends a residual branch (found in the autograd graph of the forward pass, so it works for any
  naming of blocks). Zeroing such a channel removes only the branch's contribution: the shortcut
  still carries the channel, so no computation after the add is saved. These *block outputs*
  (``conv2``/``bn2`` of a CIFAR ResNet ``BasicBlock``, projection shortcuts) are therefore left
  out by default; the block-internal channels (``conv1``'s outputs) are pruned;
- the activation dimension of its channels (:func:`channel_dim`: 1 for a conv, the last one for
  a linear layer).

With Torch-Pruning installed it also reads Torch-Pruning's dependency graph
(:mod:`captum_gndi.pruning.coupling`): the modules whose channels are removed with the layer's
(:attr:`PrunableLayer.coupled`: a depthwise conv and its norm, a squeeze-excitation gate, which
the masks zero too), and residual couplings that go through other operations first (ConvNeXt's
layer scale), which make a layer a block output. A layer whose channels are an earlier layer's
(a depthwise conv after an expansion) is not listed on its own. The linear layers inside
``nn.MultiheadAttention`` are never listed (:func:`attention_internals`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..interventions import InterventionError, count_calls, intervene
from ..runs import eval_mode
from .coupling import dependency_graph, layer_coupling

__all__ = [
    "PRUNABLE_TYPES",
    "PrunableLayer",
    "Role",
    "as_inputs",
    "attention_internals",
    "channel_dim",
    "find_prunable",
    "layer_modules",
]

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Module types whose output channels (dimension 0 of the weight) can be masked."""

Role = Literal["stem", "classifier", "block_output", "internal"]
_RESIDUAL_OPS = ("AddBackward0", "SubBackward0")


@dataclass(frozen=True)
class PrunableLayer:
    """A conv/linear layer whose output channels can be pruned.

    Layers are identified by dotted names, so the same description applies to a copy of the
    model (``copy.deepcopy``), e.g. for fine-tuning.

    Attributes:
        name: Dotted name of the conv/linear module.
        n_channels: Number of output channels (``out_channels`` / ``out_features``).
        norm_name: Dotted name of the BatchNorm that directly normalises the output, or ``None``.
        role: ``"internal"``, ``"block_output"`` (output added to a residual shortcut),
            ``"stem"`` (first conv/linear executed) or ``"classifier"`` (last one executed).
        position: Execution order among the model's conv/linear layers.
        channel_dim: The activation dimension that holds the output channels (1 for a conv,
            the last one for a linear layer: ``(N, T, D)`` tokens, ``(N, H, W, C)``
            channels-last maps); see :func:`channel_dim`.
        coupled: Further modules (conv, linear, normalisation) whose output channel ``c`` is
            removed with the layer's channel ``c`` (a depthwise conv and its norm, a
            squeeze-excitation gate), from Torch-Pruning's dependency graph when it is
            installed; the masks zero them too.
    """

    name: str
    n_channels: int
    norm_name: str | None
    role: Role
    position: int
    channel_dim: int = 1
    coupled: tuple[str, ...] = ()

    @property
    def output_name(self) -> str:
        """The module whose output channel the mask sets to zero (and where scores are measured):
        the BatchNorm if there is one, else the conv/linear itself."""
        return self.norm_name or self.name


def channel_dim(module: nn.Module, shape: Sequence[int]) -> int:
    """The dimension of ``module``'s output activation (of ``shape``) that holds its channels.

    The layer's type decides: a convolution, BatchNorm, GroupNorm or InstanceNorm puts them in
    dimension 1 (``(N, C, ...)``); a linear layer in the last dimension whatever the rank
    (``(N, D)``, ``(N, T, D)``, channels-last ``(N, H, W, C)``); a LayerNorm in the last one
    unless its normalised size is not last (a ``LayerNorm2d`` on ``(N, C, H, W)``).

    Args:
        module: A conv, linear or normalisation module.
        shape: The shape of its output activation (dimension 0 indexes examples).

    Returns:
        A non-negative dimension index.

    Raises:
        ValueError: For another module type, or an activation without that dimension.

    Examples:
        >>> channel_dim(nn.Linear(8, 4), (2, 7, 7, 4))
        3
    """
    rank = len(shape)
    if isinstance(module, nn.Linear):
        dim = rank - 1
    elif isinstance(module, nn.LayerNorm):
        dim = rank - 1 if shape[-1] == module.normalized_shape[-1] else 1
    elif isinstance(
        module,
        (nn.modules.conv._ConvNd, _BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm),
    ):
        dim = 1
    else:
        raise ValueError(
            f"{type(module).__name__} is not a conv, linear or normalisation layer; its "
            "channel dimension is unknown."
        )
    if rank < 2:
        raise ValueError(
            f"The output of {type(module).__name__} has shape {tuple(shape)}: no channel "
            "dimension besides the batch."
        )
    return dim


def layer_modules(model: nn.Module, layer: PrunableLayer) -> tuple[nn.Module, _BatchNorm | None]:
    """The conv/linear module of ``layer`` in ``model`` and its BatchNorm (or ``None``)."""
    module = model.get_submodule(layer.name)
    norm = model.get_submodule(layer.norm_name) if layer.norm_name else None
    return module, norm  # type: ignore[return-value]


def as_inputs(example_inputs: Tensor | Sequence[Tensor]) -> tuple[Tensor, ...]:
    """One batch of example inputs as a tuple of tensors, with a clear error otherwise."""
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(t, Tensor) for t in inputs):
        raise TypeError(
            "example_inputs must be a tensor or a tuple of tensors (one batch of model inputs), "
            f"got {type(example_inputs).__name__}."
        )
    return inputs


def _consumers(output: Any) -> dict[Any, list[Any]]:
    """Map each autograd node reachable from ``output`` to the nodes that consume it."""
    roots = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
    consumers: dict[Any, list[Any]] = {}
    seen, stack = set(roots), list(roots)
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            consumers.setdefault(child, []).append(node)
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return consumers


def _tensors(value: Any) -> Iterable[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif hasattr(value, "to_tuple"):  # Hugging Face ModelOutput
        yield from _tensors(value.to_tuple())


def _feeds_residual_add(point: Any, consumers: dict[Any, list[Any]]) -> bool:
    for node in consumers.get(point, []):
        inputs = [child for child, _ in node.next_functions if child is not None]
        if type(node).__name__ in _RESIDUAL_OPS and len(inputs) >= 2:
            return True
    return False


def find_prunable(
    model: nn.Module,
    example_inputs: Tensor | Sequence[Tensor],
    *,
    prune_block_outputs: bool = False,
    keep_stem: bool = True,
    keep_classifier: bool = True,
    exclude: Iterable[str] = (),
) -> list[PrunableLayer]:
    """List the conv/linear layers whose output channels can be pruned, in execution order.

    Runs the model once on ``example_inputs`` (in eval mode, without accumulating gradients; the
    model's mode is restored), and, with Torch-Pruning installed, builds its dependency graph
    for the couplings (see the module docstring). Every conv/linear that is not excluded (and not
    inside an ``nn.MultiheadAttention``) must run exactly once.

    Args:
        model: The model.
        example_inputs: One batch of inputs (a tensor or a tuple of tensors); a few examples
            suffice.
        prune_block_outputs: Also return layers whose output is added to a residual shortcut
            (``conv2`` of a ResNet ``BasicBlock``, projection shortcuts). Off by default: zeroing
            such a channel removes only the branch's contribution and saves no later compute.
        keep_stem: Leave out the first conv/linear executed (the stem).
        keep_classifier: Leave out the last conv/linear executed (the classifier).
        exclude: Dotted names of further conv/linear (or BatchNorm) modules to leave alone; they
            are not hooked, so they may also be modules the forward pass does not use.

    Returns:
        The prunable layers, in execution order.

    Raises:
        ValueError: If the model has no conv/linear layer, or one of them runs more than once
            or never (exclude it), or an excluded name is not a module of the model.

    Examples:
        >>> layers = find_prunable(model, images[:8])
        >>> [(layer.name, layer.norm_name, layer.n_channels) for layer in layers][:2]
        [('layer1.0.conv1', 'layer1.0.bn1', 16), ('layer1.1.conv1', 'layer1.1.bn1', 16)]
    """
    inputs = as_inputs(example_inputs)
    excluded = set(exclude)
    names = {n for n, _ in model.named_modules()}
    unknown = sorted(excluded - names)
    if unknown:
        raise ValueError(
            f"exclude names {unknown} are not modules of {type(model).__name__}; "
            "model.named_modules() lists the valid dotted names."
        )
    excluded |= attention_internals(model)
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, PRUNABLE_TYPES) and n not in excluded
    ]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no Conv1d/Conv2d/Conv3d/Linear layer to prune."
        )
    norms = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.affine and n not in excluded
    ]
    order: list[int] = []
    outputs: dict[int, Tensor] = {}
    norm_inputs: dict[int, Tensor] = {}
    nodes: dict[tuple[str, int], Any] = {}  # autograd nodes, read before any in-place op

    shapes: dict[int, torch.Size] = {}

    def on_layer(position: int, h: Tensor) -> None:
        order.append(position)
        shapes[position] = h.shape
        outputs[position] = h
        nodes["layer", position] = h.grad_fn

    def on_norm_input(position: int, h: Tensor) -> None:
        norm_inputs[position] = h

    def on_norm_output(position: int, h: Tensor) -> None:
        nodes["norm", position] = h.grad_fn

    traced = tuple(
        t.detach().clone().requires_grad_(True) if t.is_floating_point() else t for t in inputs
    )
    try:
        with (
            eval_mode(model),
            torch.enable_grad(),
            intervene([m for _, m in layers], on_layer, labels=[n for n, _ in layers]),
            intervene(
                [m for _, m in norms],
                on_norm_input,
                attribute_to_layer_input=True,
                labels=[n for n, _ in norms],
            ),
            intervene([m for _, m in norms], on_norm_output, labels=[n for n, _ in norms]),
        ):
            output = model(*traced)
    except InterventionError as error:
        counts = _call_counts(model, layers, inputs)
        wrong = [f"'{n}' ({c} calls)" for n, c in counts.items() if c != 1]
        raise ValueError(
            "find_prunable needs every conv/linear layer to run exactly once per forward pass; "
            f"these do not: {', '.join(wrong) or error}. Pass exclude=[...] with their names "
            f"to leave them alone, e.g. exclude={[n for n, c in counts.items() if c != 1]}."
        ) from error
    consumers = _consumers(output)
    norm_of = {}
    for position, h in outputs.items():
        match = [i for i, x in norm_inputs.items() if x is h]
        norm_of[position] = match[0] if match else None

    graph = dependency_graph(model, inputs)
    found = []
    claimed: set[str] = set()  # layers whose channels are an earlier layer's (depthwise convs)
    for rank, position in enumerate(order):
        name, module = layers[position]
        norm = norm_of[position]
        norm_name = norms[norm][0] if norm is not None else None
        point = nodes["layer", position] if norm is None else nodes["norm", norm]
        coupled, residual = (
            layer_coupling(graph, model, name, (name, norm_name or name))
            if graph is not None
            else ((), False)
        )
        if name in claimed:
            continue
        claimed.update(coupled)
        if rank == 0:
            role: Role = "stem"
        elif rank == len(order) - 1:
            role = "classifier"
        elif residual or _feeds_residual_add(point, consumers):
            role = "block_output"
        else:
            role = "internal"
        if (
            (role == "stem" and keep_stem)
            or (role == "classifier" and keep_classifier)
            or (role == "block_output" and not prune_block_outputs)
        ):
            continue
        found.append(
            PrunableLayer(
                name=name,
                n_channels=module.weight.shape[0],
                norm_name=norm_name,
                role=role,
                position=rank,
                channel_dim=channel_dim(module, shapes[position]),
                coupled=tuple(c for c in coupled if c not in excluded),
            )
        )
    return found


def attention_internals(model: nn.Module) -> set[str]:
    """Names of the linear layers inside ``nn.MultiheadAttention`` modules: attention calls
    their weights functionally (never as modules), and Torch-Pruning prunes them only with the
    attention as a whole."""
    return {
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        for child, sub in module.named_modules()
        if child and isinstance(sub, PRUNABLE_TYPES)
    }


def _call_counts(
    model: nn.Module, layers: Sequence[tuple[str, nn.Module]], inputs: tuple[Tensor, ...]
) -> dict[str, int]:
    """How often each layer runs in one forward pass (``interventions.count_calls``)."""
    with torch.no_grad(), eval_mode(model):
        counts = count_calls([module for _, module in layers], lambda: model(*inputs))
    return {name: count for (name, _), count in zip(layers, counts)}
