"""Parameter and FLOP counts of a model with pruned channels.

FLOPs are counted as multiply-accumulates (MACs) of the convolutions and linear layers, the
convention of the ResNet papers (ResNet-56: 125M). The counting pass hooks every conv/linear
through :func:`captum_gndi.interventions.intervene` and reads its input and output shapes. A
pruned output channel also removes the next layer's input channel (and its weights) when it
reaches that layer through single-input operations only (BatchNorm, ReLU, pooling, flattening:
followed in the autograd graph of the pass) and is zero there; a channel that meets a residual
addition first is not removed downstream. With Torch-Pruning installed, :func:`pruning_report`
instead removes the channels (and every coupled channel) with Torch-Pruning and counts the
physical model with ``tp.utils.count_ops_and_params`` (which also counts normalisation and
pooling: ResNet-56 126.6M MACs against 125.5M for its convs/linears).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..adapters.generic import is_conv
from ..interventions import intervene
from ..runs import eval_mode
from .coupling import has_torch_pruning, physical_counts, remove_channels
from .layers import PRUNABLE_TYPES, PrunableLayer, as_inputs, attention_internals
from .masks import channel_masks

__all__ = ["PruningReport", "count_flops", "pruning_report"]


@dataclass
class _LayerProfile:
    in_zero: Tensor  # (C_in,) bool: the input channel/feature is zero over the whole batch
    source: str | None  # point whose channels reach the input through channel-wise ops only
    out_channels: int
    kernel: int  # weights per (output, input) channel pair
    positions: int  # output positions per example (spatial size, or tokens for a linear)
    groups: int
    has_bias: bool


def _zero(h: Tensor, channel_dim: int) -> Tensor:
    return h.detach().movedim(channel_dim, 0).reshape(h.shape[channel_dim], -1).eq(0).all(1).cpu()


def _source(node: Any, points: Mapping[Any, str], barriers: set[Any]) -> str | None:
    """Follow single-input autograd nodes back from ``node`` to a point in ``points``."""
    while node is not None:
        if node in points:
            return points[node]
        if node in barriers:
            return None
        inputs = [child for child, _ in node.next_functions if child is not None]
        if len(inputs) != 1:
            return None
        node = inputs[0]
    return None


def _profile(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    points: Mapping[str, str],
    exclude: Iterable[str] = (),
) -> dict[str, _LayerProfile]:
    """Shapes of every conv/linear (but ``exclude`` and attention internals) and, for each, the
    point (from ``points``: output module name -> layer name) whose channels feed its input
    through single-input operations."""
    skip = set(exclude) | attention_internals(model)
    named = [
        (n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n not in skip
    ]
    point_modules = [model.get_submodule(n) for n in points]
    seen_in: dict[int, tuple[Tensor, Any]] = {}
    seen_out: dict[int, tuple[Any, int]] = {}
    point_nodes: dict[Any, str] = {}

    def on_input(position: int, h: Tensor) -> None:
        seen_in[position] = (_zero(h, 1 if is_conv(named[position][1]) else -1), h.grad_fn)

    def on_output(position: int, h: Tensor) -> None:
        conv = is_conv(named[position][1])
        seen_out[position] = (
            h.grad_fn,
            math.prod(h.shape[2:]) if conv else h[..., 0].numel() // h.shape[0],
        )

    def on_point(position: int, h: Tensor) -> None:
        point_nodes[h.grad_fn] = list(points.values())[position]

    traced = tuple(t.detach().requires_grad_(True) if t.is_floating_point() else t for t in inputs)
    modules, labels = [m for _, m in named], [n for n, _ in named]
    with (
        eval_mode(model),
        torch.enable_grad(),
        intervene(modules, on_input, attribute_to_layer_input=True, labels=labels),
        intervene(modules, on_output, labels=labels),
        intervene(point_modules, on_point, labels=list(points)),
    ):
        model(*traced)
    barriers = {node for node, _ in seen_out.values()}
    profiles = {}
    for position, (name, module) in enumerate(named):
        in_zero, in_node = seen_in[position]
        profiles[name] = _LayerProfile(
            in_zero=in_zero,
            source=_source(in_node, point_nodes, barriers),
            out_channels=module.out_channels if is_conv(module) else module.out_features,
            kernel=math.prod(module.kernel_size) if is_conv(module) else 1,
            positions=seen_out[position][1],
            groups=module.groups if is_conv(module) else 1,
            has_bias=getattr(module, "bias", None) is not None,
        )
    return profiles


def _weights(profile: _LayerProfile, in_kept: Tensor, out_kept: Tensor) -> int:
    """Weights connecting kept inputs to kept outputs, group by group."""
    ins = in_kept.view(profile.groups, -1).sum(1)
    outs = out_kept.view(profile.groups, -1).sum(1)
    return int((ins * outs).sum()) * profile.kernel


def _in_kept(profile: _LayerProfile, keep: Mapping[str, Tensor]) -> Tensor:
    """Input channels that stay: all but those fed only by a pruned channel (and zero)."""
    n_in = len(profile.in_zero)
    source = keep.get(profile.source) if profile.source is not None else None
    if source is None or n_in % len(source):
        return torch.ones(n_in, dtype=torch.bool)
    fed_by_pruned = ~source.repeat_interleave(n_in // len(source))  # flattening keeps channel order
    return ~(fed_by_pruned & profile.in_zero)


@dataclass
class PruningReport:
    """Actual parameter, FLOP and channel reduction of a pruned model.

    Attributes:
        params_before: Parameters of the dense model.
        params_after: Parameters left if the pruned channels were physically removed (weights of
            pruned output channels, of the next layers' input channels they fed, pruned biases
            and BatchNorm weights/biases are not counted).
        flops_before: Multiply-accumulates per example of the dense model: Torch-Pruning's
            ``count_ops_and_params`` when it is installed, else those of the convs/linears.
        flops_after: The same for the pruned model (pruned input and output channels removed).
        channels_total: Output channels of the prunable layers.
        channels_pruned: Pruned output channels among them.
    """

    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    channels_total: int
    channels_pruned: int

    @property
    def param_reduction(self) -> float:
        """Fraction of parameters removed."""
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def flop_reduction(self) -> float:
        """Fraction of FLOPs removed."""
        return 1 - self.flops_after / self.flops_before if self.flops_before else 0.0

    @property
    def channel_sparsity(self) -> float:
        """Fraction of the prunable channels that are pruned."""
        return self.channels_pruned / self.channels_total if self.channels_total else 0.0

    def to_dict(self) -> dict[str, float]:
        """A JSON-serialisable dictionary, reductions included."""
        return {
            **asdict(self),
            "param_reduction": self.param_reduction,
            "flop_reduction": self.flop_reduction,
            "channel_sparsity": self.channel_sparsity,
        }

    def __str__(self) -> str:
        return (
            f"channels {self.channels_pruned}/{self.channels_total} pruned "
            f"({self.channel_sparsity:.1%}); parameters {self.params_before:,} -> "
            f"{self.params_after:,} (-{self.param_reduction:.1%}); FLOPs (MACs) "
            f"{self.flops_before:,} -> {self.flops_after:,} (-{self.flop_reduction:.1%})"
        )


def count_flops(model: nn.Module, example_inputs: Tensor | Sequence[Tensor]) -> int:
    """Multiply-accumulates per example of a model's convolutions and linear layers.

    Args:
        model: The model; every conv/linear must run exactly once per forward pass.
        example_inputs: One batch of inputs (the count is per example).

    Returns:
        MACs per example (bias additions, normalisation and activations are not counted).

    Examples:
        >>> count_flops(cifar_resnet(56), torch.zeros(1, 3, 32, 32))
        125485696
    """
    total = 0
    for p in _profile(model, as_inputs(example_inputs), {}).values():
        ones_in = torch.ones_like(p.in_zero)
        total += _weights(p, ones_in, torch.ones(p.out_channels, dtype=torch.bool)) * p.positions
    return total


def pruning_report(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    keep: Mapping[str, Tensor],
    example_inputs: Tensor | Sequence[Tensor],
    exclude: Iterable[str] = (),
) -> PruningReport:
    """Measure the parameters and FLOPs that pruning the channels ``keep`` marks would remove.

    With Torch-Pruning installed, the channels are removed from a copy of the model by
    Torch-Pruning (with every coupled channel, as
    :func:`~captum_gndi.pruning.prune_physically` does) and both models are counted by
    ``tp.utils.count_ops_and_params``: the numbers are those of the physical model. Without
    it, the masked model is run once on ``example_inputs`` (the masks are undone afterwards): a
    layer's input channel counts as removed when it is fed, through single-input operations
    only (BatchNorm, ReLU, pooling, flattening, ...), by a pruned output channel and is zero over
    the whole batch; a channel that meets a residual addition or another layer first is kept.

    Args:
        model: The unpruned model (left unchanged).
        layers: The prunable layers.
        keep: Layer name -> bool keep mask.
        example_inputs: One batch of inputs.
        exclude: Names of conv/linear modules the count skips (without Torch-Pruning), e.g.
            ones the forward pass never calls; attention internals are skipped anyway.

    Returns:
        A :class:`PruningReport`.

    Examples:
        >>> print(pruning_report(model, layers, select_channels(scores, 0.5), images[:8]))
        channels 504/1008 pruned (50.0%); parameters 853,018 -> ...
    """
    inputs = as_inputs(example_inputs)
    channels_pruned = sum(int((~keep[layer.name]).sum()) for layer in layers if layer.name in keep)
    channels_total = sum(layer.n_channels for layer in layers)
    if has_torch_pruning():
        small = remove_channels(model, inputs, [layer.name for layer in layers], keep)
        params_before, flops_before = physical_counts(model, inputs)
        params_after, flops_after = physical_counts(small, inputs)
        return PruningReport(
            params_before, params_after, flops_before, flops_after, channels_total, channels_pruned
        )
    points = {layer.output_name: layer.name for layer in layers}
    with channel_masks(model, layers, keep):
        profiles = _profile(model, inputs, points, exclude)
    params_before = sum(p.numel() for p in model.parameters())
    removed_params, flops_before, flops_after = 0, 0, 0
    for name, profile in profiles.items():
        in_kept = _in_kept(profile, keep)
        out_kept = keep.get(name, torch.ones(profile.out_channels, dtype=torch.bool))
        full = _weights(profile, torch.ones_like(in_kept), torch.ones_like(out_kept))
        kept = _weights(profile, in_kept, out_kept)
        removed_params += full - kept + (int((~out_kept).sum()) if profile.has_bias else 0)
        flops_before += full * profile.positions
        flops_after += kept * profile.positions
    for layer in layers:
        if layer.norm_name is not None and layer.name in keep:
            removed_params += 2 * int((~keep[layer.name]).sum())
    return PruningReport(
        params_before=params_before,
        params_after=params_before - removed_params,
        flops_before=flops_before,
        flops_after=flops_after,
        channels_total=channels_total,
        channels_pruned=channels_pruned,
    )
