"""The small CIFAR-10 CNN of Captum's CIFAR tutorial (BSD-3-Clause, pytorch/captum)."""

from __future__ import annotations

from torch import Tensor, nn

from captum_gndi.adapters.torchvision import register_plain_model
from captum_gndi.zoo.weights import WeightsSource, load_weights

__all__ = ["CAPTUM_CIFAR_MEAN", "CAPTUM_CIFAR_STD", "CaptumCifarNet", "captum_cifar_cnn"]

CAPTUM_CIFAR_MEAN = (0.5, 0.5, 0.5)
CAPTUM_CIFAR_STD = (0.5, 0.5, 0.5)
"""Input normalisation of Captum's tutorial, on pixels scaled to [0, 1]."""


class CaptumCifarNet(nn.Module):
    """Captum tutorial ``Net``: two conv+ReLU+pool stages and three linear layers.

    Every ReLU and pooling step is its own module (``relu1`` ... ``relu4``, ``pool1``, ``pool2``),
    as in the tutorial, so each can be hooked separately.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.flatten(1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


def captum_cifar_cnn(weights: WeightsSource | None = None) -> CaptumCifarNet:
    """Build Captum's tutorial CIFAR-10 CNN, optionally with trained weights.

    Args:
        weights: ``None`` (random initialisation), or a path, URL or state dict such as Captum's
            ``tutorials/models/cifar_torchvision.pt``. Inputs must be normalised with
            ``CAPTUM_CIFAR_MEAN`` / ``CAPTUM_CIFAR_STD``.

    Returns:
        The model in eval mode.

    Examples:
        >>> model = captum_cifar_cnn("../shared/data/cifar_resnets/captum_cifar_torchvision.pt")
        >>> model(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    model = CaptumCifarNet()
    if weights is not None:
        load_weights(model, weights, "captum-cifar-cnn")
    return model.eval()


# find_layers handles this plain CNN through the torchvision adapter, like VGG and AlexNet
register_plain_model(CaptumCifarNet)
