"""Intervention points of torchvision classification models.

torchvision is imported only when a model built from it is passed in (its classes are recognised
by module path first). Residual blocks are recognised by class (``isinstance``, so torchvision's
quantizable subclasses count too), and each family's residual branch ends at the module whose
output is added to the shortcut:

=======================  ==========================  =====================================
family                   block                       branch output (before the addition)
=======================  ==========================  =====================================
ResNet, Wide-ResNet,     ``BasicBlock``              ``bn2``
ResNeXt                  ``Bottleneck``              ``bn3``
MobileNetV2              ``InvertedResidual``        last module of ``conv`` (a BatchNorm)
MobileNetV3              ``InvertedResidual``        ``block``
EfficientNet (V1, V2)    ``MBConv``/``FusedMBConv``  ``block``
ConvNeXt                 ``CNBlock``                 ``stochastic_depth`` (= layer_scale *
                                                     block(x); identity in eval mode)
RegNet                   ``ResBottleneckBlock``      ``f``
=======================  ==========================  =====================================

Only blocks with a residual connection have a branch (MobileNet/EfficientNet blocks that change
the shape or stride have none). Transformers (ViT ``EncoderBlock``: ``self_attention``/``mlp``;
Swin ``SwinTransformerBlock``: ``attn``/``mlp``; Swin V2, post-norm: ``norm1``/``norm2``) have
two branches per block. DenseNet's ``_DenseLayer`` output is concatenated, not added, so it has
no branch. VGG and AlexNet are plain stacks of convolutions and linear layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .generic import (
    KILLS_DOWNSTREAM,
    Point,
    UnsupportedKind,
    branch_contexts,
    kind_argument,
    leaf_points,
)

__all__ = ["is_torchvision_model", "torchvision_points"]

_PLAIN_FAMILIES = ("VGG", "AlexNet", "CaptumCifarNet")


@dataclass(frozen=True)
class _Block:
    name: str
    module: nn.Module
    kind: str  # "residual", "dense" or "transformer"
    branch: str | None = None  # relative name of the branch output (residual blocks)
    shortcuts: tuple[str, ...] = ()  # child names of projection shortcuts
    attention: str | None = None
    mlp: str | None = None


_MODULE_PREFIXES = ("torchvision.models.", "captum_gndi.zoo.")


def is_torchvision_model(model: nn.Module) -> bool:
    """Whether ``model`` contains a module of ``torchvision.models`` or of the project's zoo
    (whose CIFAR/digits ResNets use torchvision-style residual blocks)."""
    return any(type(m).__module__.startswith(_MODULE_PREFIXES) for m in model.modules())


def _shortcuts(module: nn.Module, *names: str) -> tuple[str, ...]:
    return tuple(
        n
        for n in names
        if isinstance(getattr(module, n, None), nn.Module)
        and not isinstance(getattr(module, n), nn.Identity)
    )


def _classify(name: str, module: nn.Module) -> _Block | None:
    from ..zoo.cifar_resnet import BasicBlock as ZooBasicBlock
    from ..zoo.resnet18_cifar import TorchvisionBasicBlock

    if isinstance(module, (ZooBasicBlock, TorchvisionBasicBlock)):
        return _Block(name, module, "residual", "bn2", _shortcuts(module, "shortcut", "downsample"))
    if not type(module).__module__.startswith("torchvision."):
        return None
    from torchvision.models import (
        convnext,
        densenet,
        efficientnet,
        mobilenetv2,
        mobilenetv3,
        regnet,
        resnet,
        swin_transformer,
        vision_transformer,
    )

    def residual(branch: str | None, *shortcuts: str) -> _Block:
        return _Block(name, module, "residual", branch, _shortcuts(module, *shortcuts))

    if isinstance(module, resnet.BasicBlock):
        return residual("bn2", "downsample")
    if isinstance(module, resnet.Bottleneck):
        return residual("bn3", "downsample")
    if isinstance(module, mobilenetv2.InvertedResidual):
        return residual(f"conv.{len(module.conv) - 1}" if module.use_res_connect else None)
    if isinstance(
        module, (mobilenetv3.InvertedResidual, efficientnet.MBConv, efficientnet.FusedMBConv)
    ):
        return residual("block" if module.use_res_connect else None)
    if isinstance(module, convnext.CNBlock):
        return residual("stochastic_depth")
    if isinstance(module, regnet.ResBottleneckBlock):
        return residual("f", "proj")
    if isinstance(module, densenet._DenseLayer):
        return _Block(name, module, "dense")
    if isinstance(module, vision_transformer.EncoderBlock):
        return _Block(name, module, "transformer", attention="self_attention", mlp="mlp")
    if isinstance(module, swin_transformer.SwinTransformerBlockV2):
        return _Block(name, module, "transformer", attention="norm1", mlp="norm2")
    if isinstance(module, swin_transformer.SwinTransformerBlock):
        return _Block(name, module, "transformer", attention="attn", mlp="mlp")
    return None


def _blocks(model: nn.Module) -> list[_Block]:
    blocks: list[_Block] = []
    for name, module in model.named_modules():
        if any(name.startswith(b.name + ".") for b in blocks):
            continue
        block = _classify(name, module)
        if block is not None:
            blocks.append(block)
    return blocks


def _block_point(block: _Block) -> Point:
    if block.kind == "dense":
        meaning = (
            f"zeroing this removes the new feature maps of dense layer {block.name}; the "
            "features before it still pass through the concatenation"
        )
    else:
        meaning = (
            f"zeroing this kills everything downstream (the output of {block.name} is the "
            "whole residual stream there)"
        )
    return Point(block.name, block.module, "block", meaning)


def _branch_point(block: _Block) -> Point:
    assert block.branch is not None
    shortcut = (
        f"its {block.shortcuts[0]} projection of the input" if block.shortcuts else "its input"
    )
    return Point(
        f"{block.name}.{block.branch}",
        block.module.get_submodule(block.branch),
        "branch",
        f"zeroing this skips block {block.name} (its output becomes {shortcut})",
    )


def _sublayer_points(block: _Block) -> list[Point]:
    points = []
    for kind, rel in (("attention", block.attention), ("mlp", block.mlp)):
        assert rel is not None
        what = "attention" if kind == "attention" else "MLP"
        points.append(
            Point(
                f"{block.name}.{rel}",
                block.module.get_submodule(rel),
                kind,
                f"zeroing this removes the {what} sublayer of {block.name} (the residual "
                "stream skips it)",
            )
        )
    return points


def _leaf_contexts(blocks: list[_Block]) -> dict[str, str]:
    contexts = branch_contexts((b.name, b.shortcuts) for b in blocks if b.branch is not None)
    for b in blocks:
        if b.kind == "dense":
            contexts[b.name] = (
                f"zeroing this changes only the new feature maps of dense layer {b.name}"
            )
        elif b.kind == "transformer":
            contexts[b.name] = (
                f"zeroing this changes only a sublayer of {b.name}; the residual stream still "
                "carries the signal past it"
            )
        elif b.branch is None:
            contexts[b.name] = KILLS_DOWNSTREAM
    return contexts


def torchvision_points(
    model: nn.Module, kind: str = "auto", *, granularity: str | None = None
) -> list[Point] | None:
    """Intervention points of a torchvision model, or ``None`` for a family not known here.

    Args:
        model: A torchvision model (or a module containing one).
        kind: One of ``captum_gndi.adapters.KINDS``.
        granularity: Deprecated name of ``kind`` (kept for one release; warns).

    Returns:
        The points in forward order, or ``None`` when the model has no block this adapter
        recognises and is not a plain VGG/AlexNet stack (the caller falls back to the generic
        walk).

    Raises:
        UnsupportedKind: For a kind of layer the family does not have.

    Examples:
        >>> import torchvision
        >>> points = torchvision_points(torchvision.models.resnet18(), "branch")
        >>> points[0].name
        'layer1.0.bn2'
    """
    kind = kind_argument(kind, granularity, "torchvision_points")
    blocks = _blocks(model)
    family = type(model).__name__
    if not blocks and not any(type(m).__name__ in _PLAIN_FAMILIES for m in model.modules()):
        return None
    residual = [b for b in blocks if b.branch is not None]
    transformers = [b for b in blocks if b.kind == "transformer"]
    if kind == "auto":
        if residual:
            kind = "branch"
        elif transformers:
            return [p for b in transformers for p in _sublayer_points(b)]
        elif blocks:
            kind = "block"
        else:
            points = leaf_points(model, "conv") + leaf_points(model, "linear")
            order = {name: i for i, (name, _) in enumerate(model.named_modules())}
            return sorted(points, key=lambda p: order[p.name])
    if kind in ("conv", "linear"):
        points = leaf_points(model, kind, _leaf_contexts(blocks))
        if not points:
            raise UnsupportedKind(f"{family} has no {kind} layers")
        return points
    if kind == "block":
        if not blocks:
            raise UnsupportedKind(
                f"{family} has no blocks: it is a plain stack of convolutions and linear layers"
            )
        return [_block_point(b) for b in blocks]
    if kind == "branch":
        if any(b.kind == "dense" for b in blocks):
            raise UnsupportedKind(
                f"{family}'s dense layers concatenate their output to their input instead of "
                "adding it, so there is no residual branch; 'block' gives the dense layers"
            )
        if not residual and not transformers:
            raise UnsupportedKind(f"{family} has no residual connections")
        points = []
        for b in blocks:
            if b.branch is not None:
                points.append(_branch_point(b))
            elif b.kind == "transformer":
                points.extend(_sublayer_points(b))
        return points
    if not transformers:
        raise UnsupportedKind(f"{family} has no attention or MLP sublayers")
    return [p for b in transformers for p in _sublayer_points(b) if p.kind == kind]
