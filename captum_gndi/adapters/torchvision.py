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

``kind="head"`` gives one :class:`~captum_gndi.Heads` point per attention layer: the input of the
output projection (ViT: ``self_attention.out_proj``, Swin V1/V2: ``attn.proj``), named
``"<block>.<attention>.heads"``. torchvision applies both projections *functionally*
(``F.multi_head_attention_forward`` and ``shifted_window_attention`` read the weights), so those
modules never run and no hook can see their input. :func:`expose_heads` (written in
:mod:`.tv_attention`, re-exported here) is the exact way around it: inside ``with
expose_heads(model):`` each ``nn.MultiheadAttention`` and Swin attention computes its concatenated
head outputs with torchvision's own function (output projection set to the identity, an exact matrix
product) and then *calls* its projection module on them, as ``(N, T, H * d_head)`` (Swin: ``T =
height x width`` of the stage, row-major, after the windows are merged back and the shift undone).
The output is the same up to the rounding of that one matrix product (the tests check float64
agreement to 1e-12); everything is restored on exit.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..interventions import Heads
from .generic import (
    KILLS_DOWNSTREAM,
    Point,
    UnsupportedKind,
    branch_contexts,
    kind_argument,
    leaf_points,
)
from .tv_attention import expose_heads

__all__ = [
    "expose_heads",
    "is_torchvision_model",
    "register_plain_model",
    "register_residual_block",
    "torchvision_points",
]

_PLAIN_FAMILIES = ("VGG", "AlexNet")

_RESIDUAL_BLOCKS: dict[type[nn.Module], tuple[str, tuple[str, ...]]] = {}
"""Residual block classes registered by other packages: class -> (branch, shortcut names)."""

_PLAIN_MODELS: list[type[nn.Module]] = []
"""Plain stacks (no blocks) registered by other packages, handled like VGG and AlexNet."""


def register_residual_block(
    block: type[nn.Module], branch: str, shortcuts: tuple[str, ...] = ("downsample",)
) -> None:
    """Handle a torchvision-style residual block class like torchvision's ``BasicBlock``.

    A model holding such a block is handled by this adapter: ``"block"`` gives the block,
    ``"branch"`` the output of its child ``branch`` (the module whose output is added to the
    shortcut). The project's zoo registers its CIFAR ResNet blocks this way, so this adapter
    knows nothing of the zoo.

    Args:
        block: The block's class (subclasses count too).
        branch: Relative name of the branch output, e.g. ``"bn2"``.
        shortcuts: Child names that may hold a projection shortcut (an ``nn.Identity`` or a
            missing child is no projection).

    Examples:
        >>> register_residual_block(MyBlock, "bn2", ("shortcut",))
    """
    _RESIDUAL_BLOCKS[block] = (branch, tuple(shortcuts))


def register_plain_model(model: type[nn.Module]) -> None:
    """Handle a plain stack of convolutions and linear layers like VGG and AlexNet.

    Args:
        model: The model's class.

    Examples:
        >>> register_plain_model(CaptumCifarNet)
    """
    if model not in _PLAIN_MODELS:
        _PLAIN_MODELS.append(model)


def _is_plain(module: nn.Module) -> bool:
    return type(module).__name__ in _PLAIN_FAMILIES or isinstance(module, tuple(_PLAIN_MODELS))


@dataclass(frozen=True)
class _Block:
    name: str
    module: nn.Module
    kind: str  # "residual", "dense" or "transformer"
    branch: str | None = None  # relative name of the branch output (residual blocks)
    shortcuts: tuple[str, ...] = ()  # child names of projection shortcuts
    attention: str | None = None
    mlp: str | None = None
    heads: str | None = None  # relative name of the output projection whose input holds heads


def is_torchvision_model(model: nn.Module) -> bool:
    """Whether ``model`` contains a module of ``torchvision.models``, or a block or model class
    registered with :func:`register_residual_block` / :func:`register_plain_model`."""
    registered = (*_RESIDUAL_BLOCKS, *_PLAIN_MODELS)
    return any(
        type(m).__module__.startswith("torchvision.models.") or isinstance(m, registered)
        for m in model.modules()
    )


def _shortcuts(module: nn.Module, *names: str) -> tuple[str, ...]:
    return tuple(
        n
        for n in names
        if isinstance(getattr(module, n, None), nn.Module)
        and not isinstance(getattr(module, n), nn.Identity)
    )


def _classify(name: str, module: nn.Module) -> _Block | None:
    for block, (branch, shortcuts) in _RESIDUAL_BLOCKS.items():
        if isinstance(module, block):
            return _Block(name, module, "residual", branch, _shortcuts(module, *shortcuts))
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
        return _Block(
            name,
            module,
            "transformer",
            attention="self_attention",
            mlp="mlp",
            heads="self_attention.out_proj",
        )
    if isinstance(module, swin_transformer.SwinTransformerBlockV2):
        return _Block(
            name, module, "transformer", attention="norm1", mlp="norm2", heads="attn.proj"
        )
    if isinstance(module, swin_transformer.SwinTransformerBlock):
        return _Block(name, module, "transformer", attention="attn", mlp="mlp", heads="attn.proj")
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


def _head_point(block: _Block) -> Point:
    assert block.heads is not None
    attention, _, _ = block.heads.rpartition(".")
    module = block.module.get_submodule(attention)
    n_heads = getattr(module, "num_heads", None)
    if not isinstance(n_heads, int) or n_heads < 1:
        raise UnsupportedKind(f"the attention of {block.name} has no num_heads attribute")
    name = f"{block.name}.{attention}.heads"
    heads = Heads(block.module.get_submodule(block.heads), n_heads, name=name)
    meaning = (
        f"setting head h of {block.name} to its baseline changes that head's output only "
        f"(heads: the input of {block.name}.{block.heads} as (N, T, H, d_head); run inside "
        "expose_heads(model))"
    )
    return Point(name, heads, "head", meaning)


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
    if not blocks and not any(_is_plain(m) for m in model.modules()):
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
        what = "attention heads" if kind == "head" else "attention or MLP sublayers"
        raise UnsupportedKind(f"{family} has no {what}")
    if kind == "head":
        return [_head_point(b) for b in transformers]
    return [p for b in transformers for p in _sublayer_points(b) if p.kind == kind]
