"""Structured channel masks through ``torch.nn.utils.prune``, and their exact undo.

A pruned output channel of a conv/linear layer is zeroed by masks on the layer's ``weight`` rows
and ``bias`` entries and, when a BatchNorm normalises the layer's output, on the BatchNorm's
``weight`` **and** ``bias`` (a BatchNorm after a zeroed channel would otherwise output its bias).
The channel is then exactly zero after the BatchNorm, in eval and in train mode, and the model
keeps its shape. Modules coupled to the layer (:attr:`PrunableLayer.coupled`, from
Torch-Pruning's dependency graph) lose the same channels, as in the physical model. The masks
are ordinary ``torch.nn.utils.prune`` reparametrisations (``weight_orig`` * ``weight_mask``),
so ``prune.remove(module, "weight")`` makes them permanent, while :func:`undo_pruning` restores
the original parameters exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from .layers import PrunableLayer

__all__ = ["ChannelMask", "apply_channel_masks", "channel_masks", "undo_pruning"]


class ChannelMask(prune.CustomFromMask):
    """``prune.CustomFromMask`` tagged as a captum_gndi channel mask, so that
    :func:`undo_pruning` reverts exactly these masks and no other pruning of the model.

    Attributes:
        param_order: The module's parameter names, in order, before this mask was applied.
    """

    param_order: list[str]


def _mask_parameter(module: nn.Module, name: str, mask: Tensor) -> ChannelMask:
    order = list(module._parameters)
    hook = ChannelMask.apply(module, name, mask=mask)
    hook.param_order = order
    return hook


def _unmask(module: nn.Module, hook: ChannelMask) -> None:
    """Remove one channel mask and give back the original parameter in its original place."""
    name = hook._tensor_name
    with torch.no_grad():
        getattr(module, name + "_mask").fill_(1)
    prune.remove(module, name)  # writes orig * 1 == orig back into the same Parameter
    params = module._parameters  # restore the parameter order (prune re-registers last)
    params.update([(k, params.pop(k)) for k in hook.param_order])


def _check_keep(layer: PrunableLayer, keep: Tensor) -> Tensor:
    if (
        not isinstance(keep, Tensor)
        or keep.dtype != torch.bool
        or keep.shape != (layer.n_channels,)
    ):
        got = tuple(keep.shape) if isinstance(keep, Tensor) else type(keep).__name__
        raise ValueError(
            f"keep['{layer.name}'] must be a bool tensor of shape ({layer.n_channels},) "
            f"(True = keep the channel), got {got}; select_channels(...) builds one."
        )
    return keep


def apply_channel_masks(
    model: nn.Module, layers: Sequence[PrunableLayer], keep: Mapping[str, Tensor]
) -> None:
    """Zero the pruned output channels of ``layers`` in place with ``torch.nn.utils.prune``.

    Layers whose channels are all kept get no mask, so a sparsity of 0 leaves the model
    untouched. The same channels of the layer's :attr:`~captum_gndi.pruning.PrunableLayer.coupled`
    modules (a depthwise conv and its norm, a squeeze-excitation gate: what Torch-Pruning removes
    with them) are masked too. Atomic: after an error no mask of this call is left.

    Args:
        model: The model (modified in place; :func:`undo_pruning` restores it).
        layers: Prunable layers from :func:`~captum_gndi.pruning.find_prunable`.
        keep: Layer name -> bool tensor ``(n_channels,)``, ``True`` for channels to keep
            (from :func:`~captum_gndi.pruning.select_channels`). Layers without an entry are
            left unpruned.

    Raises:
        ValueError: If a mask has the wrong shape or dtype, names an unknown layer, or a
            parameter is already pruned.

    Examples:
        >>> keep = select_channels(scores, sparsity=0.5)
        >>> apply_channel_masks(model, layers, keep)
        >>> undo_pruning(model)
    """
    known = {layer.name for layer in layers}
    unknown = sorted(set(keep) - known)
    if unknown:
        raise ValueError(f"keep has entries for {unknown}, which are not among the given layers.")
    plan: dict[str, Tensor] = {}  # module name -> kept channels (AND over the layers using it)
    for layer in layers:
        if layer.name not in keep:
            continue
        kept = _check_keep(layer, keep[layer.name])
        if bool(kept.all()):
            continue
        for name in (layer.name, layer.norm_name, *layer.coupled):
            if name is not None:
                plan[name] = plan[name] & kept if name in plan else kept
    for name in plan:
        module = model.get_submodule(name)
        for tensor in ("weight", "bias"):
            if hasattr(module, tensor + "_orig"):
                raise ValueError(
                    f"'{name}.{tensor}' is already pruned (torch.nn.utils.prune); call "
                    "captum_gndi.pruning.undo_pruning(model) or prune.remove(module, name) first."
                )
    applied: list[tuple[nn.Module, ChannelMask]] = []
    try:
        for name, kept in plan.items():
            module = model.get_submodule(name)
            for tensor in ("weight", "bias"):
                param = getattr(module, tensor, None)
                if param is None:
                    continue
                channel = kept.to(device=param.device, dtype=param.dtype)
                if isinstance(module, nn.LayerNorm) or param.dim() == 1:
                    mask = channel.expand_as(param)  # (C,) scale/shift, or LayerNorm's last dim
                else:
                    mask = channel.view((-1,) + (1,) * (param.dim() - 1)).expand_as(param)
                applied.append((module, _mask_parameter(module, tensor, mask)))
    except BaseException:
        for module, hook in reversed(applied):  # atomic: no mask stays after an error
            _unmask(module, hook)
        raise


def undo_pruning(model: nn.Module) -> None:
    """Remove every channel mask that :func:`apply_channel_masks` put on ``model``.

    The original parameter objects come back with their original values, ``requires_grad`` and
    order in ``model.parameters()``; masks put by other ``torch.nn.utils.prune`` calls stay.

    Args:
        model: A model with channel masks (a model without any is left unchanged).

    Examples:
        >>> apply_channel_masks(model, layers, keep)
        >>> undo_pruning(model)  # model is exactly as before
    """
    for module in model.modules():
        hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, ChannelMask)]
        for hook in reversed(hooks):
            _unmask(module, hook)


@contextmanager
def channel_masks(
    model: nn.Module, layers: Sequence[PrunableLayer], keep: Mapping[str, Tensor]
) -> Iterator[nn.Module]:
    """Context manager: :func:`apply_channel_masks` on entry, :func:`undo_pruning` on exit.

    Args:
        model: The model.
        layers: Prunable layers.
        keep: Layer name -> bool keep mask.

    Yields:
        The masked model.

    Examples:
        >>> with channel_masks(model, layers, keep) as pruned:
        ...     accuracy = evaluate_accuracy(pruned, test_loader)
    """
    try:
        apply_channel_masks(model, layers, keep)
        yield model
    finally:
        undo_pruning(model)
