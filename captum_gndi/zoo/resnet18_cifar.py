"""torchvision's ResNet-18 adapted to 32x32 inputs (3x3 stem, no max pooling)."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from captum_gndi.adapters.torchvision import register_residual_block
from captum_gndi.zoo.weights import WeightsSource, load_weights

__all__ = ["TorchvisionBasicBlock", "resnet18_cifar"]


class TorchvisionBasicBlock(nn.Module):
    """Drop-in for torchvision's ``BasicBlock`` (same names and state dict) without inplace ops.

    torchvision's block adds the shortcut in place onto ``bn2``'s output and calls one inplace
    ``relu`` module twice, which would corrupt activations captured by hooks. Here ``bn2``'s output
    is the residual branch, the sum is a new tensor and the ReLUs are functional.

    Args:
        inplanes: Input channels.
        planes: Output channels.
        stride: Stride of ``conv1``.
        downsample: Projection shortcut (``None`` for identity), as torchvision builds it.
        groups: Must be 1 (accepted for torchvision's constructor).
        base_width: Must be 64 (accepted for torchvision's constructor).
        dilation: Must be 1 (accepted for torchvision's constructor).
        norm_layer: Normalisation layer factory; ``nn.BatchNorm2d`` by default.
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64 or dilation != 1:
            raise ValueError("BasicBlock supports only groups=1, base_width=64 and dilation=1")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        out = out + identity
        return F.relu(out)


def resnet18_cifar(num_classes: int = 10, weights: WeightsSource | None = None) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no max pooling, for 32x32 images.

    The state dict has exactly the keys of ``torchvision.models.resnet18``, so weights trained
    with the usual CIFAR modification of torchvision's model load strictly.

    Args:
        num_classes: Size of the output layer.
        weights: Optional path, URL or state dict (``module.`` prefixes are stripped).

    Returns:
        The model in eval mode.

    Raises:
        ImportError: If torchvision is not installed.

    Examples:
        >>> model = resnet18_cifar()
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    try:
        from torchvision.models.resnet import ResNet
    except ImportError as err:
        raise ImportError(
            "resnet18_cifar needs torchvision: pip install captum_gndi[vision]"
        ) from err
    model = ResNet(TorchvisionBasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.relu = nn.ReLU(inplace=False)
    model.maxpool = nn.Identity()
    if weights is not None:
        load_weights(model, weights, "resnet18_cifar")
    return model.eval()


# find_layers handles this ResNet-18 through the torchvision adapter, like torchvision's own
register_residual_block(TorchvisionBasicBlock, "bn2", ("downsample",))
