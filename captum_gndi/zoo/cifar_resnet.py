"""CIFAR-10 ResNet-20/32/44/56 (He et al. 2016), compatible with akamaster's checkpoints.

The trained weights are Yerlan Idelbayev's ``pytorch_resnet_cifar10`` checkpoints (BSD-2-Clause;
keep his notice and credit him when you use them). The architecture below is written from the
paper's description so that the checkpoints load with ``strict=True``.

Every :class:`BasicBlock` exposes its residual branch as the output of ``bn2`` and adds the
shortcut with a non-inplace op, so a hook on ``bn2`` sees the branch alone and a hook on the block
sees the block output.
"""

from __future__ import annotations

import re

import torch.nn.functional as F
from torch import Tensor, nn

from captum_gndi.adapters.torchvision import register_residual_block
from captum_gndi.zoo.weights import WeightsSource, load_weights, read_state_dict

__all__ = [
    "CIFAR_RESNET_DEPTHS",
    "CIFAR_RESNET_MEAN",
    "CIFAR_RESNET_STD",
    "CIFAR_RESNET_URLS",
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "cifar_resnet",
]

CIFAR_RESNET_DEPTHS = (20, 32, 44, 56)
CIFAR_RESNET_MEAN = (0.485, 0.456, 0.406)
CIFAR_RESNET_STD = (0.229, 0.224, 0.225)
"""Input normalisation the checkpoints were trained with, on pixels scaled to [0, 1]."""

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
CIFAR_RESNET_URLS = {
    20: _AKAMASTER + "resnet20-12fca82f.th",
    32: _AKAMASTER + "resnet32-d509ac18.th",
    44: _AKAMASTER + "resnet44-014dd654.th",
    56: _AKAMASTER + "resnet56-4bfd9763.th",
}
"""Public download addresses of akamaster's checkpoints, usable as ``weights=`` when online."""


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample by 2 and zero-pad the channels.

    Args:
        planes: Number of output channels of the block; ``planes // 4`` zero channels are added on
            each side of the input's channels.
    """

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm plus a shortcut, then ReLU.

    ``forward`` computes ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with
    non-inplace ops, so ``bn2``'s output is the residual branch and the block's output is the
    post-addition activation.

    Args:
        in_planes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv1`` (and of the shortcut).
        shortcut: Module mapping the input to the output's shape; defaults to
            :class:`PadShortcut` when the shape changes and ``nn.Identity`` otherwise.
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if shortcut is None:
            changes_shape = stride != 1 or in_planes != planes
            shortcut = PadShortcut(planes) if changes_shape else nn.Identity()
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs with three stages of 16, 32 and 64 planes.

    Args:
        blocks_per_stage: Number of :class:`BasicBlock` per stage (``(depth - 2) / 6``).
        num_classes: Size of the output layer.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for index, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _checkpoint_depth(state: dict[str, Tensor]) -> int | None:
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer1\.(\d+)\.", k))}
    return 6 * len(blocks) + 2 if blocks else None


def cifar_resnet(
    depth: int, weights: WeightsSource | None = None, num_classes: int = 10
) -> CifarResNet:
    """Build a CIFAR ResNet of the given depth, optionally with trained weights.

    Args:
        depth: 20, 32, 44 or 56 (any ``6n + 2`` works without weights).
        weights: ``None`` (random initialisation), a path to an akamaster ``.th`` checkpoint, a URL
            (for example ``CIFAR_RESNET_URLS[20]``) or a state dict; ``module.`` prefixes are
            stripped. Inputs must be normalised with ``CIFAR_RESNET_MEAN`` / ``CIFAR_RESNET_STD``.
        num_classes: Size of the output layer.

    Returns:
        The model in eval mode.

    Raises:
        ValueError: For a depth that is not ``6n + 2`` or a checkpoint of another architecture
            (the message names the depth the checkpoint was made for).
        FileNotFoundError: If ``weights`` is a path that does not exist.

    Examples:
        >>> model = cifar_resnet(20, "../shared/data/cifar_resnets/resnet20-12fca82f.th")
        >>> model(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
    model = CifarResNet((depth - 2) // 6, num_classes=num_classes)
    if weights is not None:
        state = read_state_dict(weights)
        found = _checkpoint_depth(state)
        if found is not None and found != depth:
            raise ValueError(
                f"checkpoint looks like a resnet{found} (layer1 has {(found - 2) // 6} blocks) "
                f"but depth={depth} was asked; call cifar_resnet({found}, ...) instead"
            )
        load_weights(model, state, f"cifar resnet{depth}")
    return model.eval()


# find_layers handles these ResNets (and the digits ResNet) through the torchvision adapter
register_residual_block(BasicBlock, "bn2", ("shortcut",))
