"""The zoo's own models have named intervention points (no generic fallback)."""

from __future__ import annotations

import warnings

import torch

from captum_gndi import LayerGNDI, find_layers, zoo
from captum_gndi.interventions import intervene


def test_cifar_resnet_points_and_branch_skips_the_block():
    torch.manual_seed(0)
    model = zoo.cifar_resnet(20).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "generic walk" warning
        branches = find_layers(model, "branch")
        blocks = find_layers(model, "block")
    assert list(branches) == [f"layer{s}.{i}.bn2" for s in (1, 2, 3) for i in range(3)]
    assert list(blocks) == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    x = torch.randn(2, 3, 32, 32)
    block = model.layer2[0]  # the downsampling block, with an option-A shortcut
    with torch.no_grad(), intervene([branches["layer2.0.bn2"]], lambda i, h: torch.zeros_like(h)):
        zeroed = model(x)
        original_forward = block.forward
        block.forward = lambda t: torch.relu(block.shortcut(t))  # the block without its branch
        try:
            skipped = model(x)
        finally:
            block.forward = original_forward
    torch.testing.assert_close(zeroed, skipped)
    scores = LayerGNDI(model, list(branches.values())).attribute(x)
    assert len(scores) == 9 and all(torch.isfinite(s).all() and (s > 0).all() for s in scores)


def test_digits_resnet18_and_captum_cnn_points():
    assert len(find_layers(zoo.digits_resnet(), "branch")) == 8
    assert list(find_layers(zoo.resnet18_cifar(), "auto"))[0] == "layer1.0.bn2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        points = find_layers(zoo.captum_cifar_cnn())
    assert list(points) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
