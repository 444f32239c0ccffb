"""True interventions of captum_gndi.validation.ablation against independent computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerFeatureAblation
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.validation.ablation import ablate, intervened_output, select_units
from captum_gndi.zoo import cifar_resnet


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(h.mean((2, 3)))


class TargetLogit(nn.Module):
    def __init__(self, model: nn.Module, target: int) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.target : self.target + 1]


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, 6, 6, generator=generator), torch.arange(12) % 3


def test_channel_ablation_matches_captum_layer_feature_ablation(cnn, images):
    x, labels = images
    target = 2
    mask = torch.arange(4).view(1, 4, 1, 1)  # one feature group per channel of conv1
    captum = LayerFeatureAblation(cnn, cnn.conv1).attribute(
        x, layer_baselines=0.0, target=target, layer_mask=mask
    )
    clean = cnn(x)[:, target]
    for channel in range(4):
        ours = clean - intervened_output(cnn, x, cnn.conv1, channel=channel)[:, target]
        torch.testing.assert_close(ours, captum[:, channel, 0, 0], rtol=1e-5, atol=1e-6)

    # ablate() on the target logit alone: output_delta is |change of the logit|
    target_logit = TargetLogit(cnn, target).eval()
    loader = DataLoader(TensorDataset(x, labels), batch_size=5)
    result = ablate(target_logit, loader, {"conv1": cnn.conv1}, ["output_delta"],
                    granularity="channel", progress=False)  # fmt: skip
    assert [u.name for u in result.units] == [f"conv1[{c}]" for c in range(4)]
    expected = captum[:, :, 0, 0].abs().double().numpy()
    assert result.damage_per_example["output_delta"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_mean_baseline_matches_captum_with_the_mean_activation(cnn, images):
    x, labels = images
    with torch.no_grad():
        mean, clean = cnn.conv1(x).mean(0), cnn(x)  # conv1 mean activation, clean output
    mask = torch.arange(4).view(1, 4, 1, 1)
    captum = LayerFeatureAblation(cnn, cnn.conv1).attribute(
        x, layer_baselines=mean[None], target=labels, layer_mask=mask
    )
    loader = DataLoader(TensorDataset(x, labels), batch_size=4)
    result = ablate(cnn, loader, {"conv1": cnn.conv1}, ["output_delta"], baseline="mean",
                    granularity="channel", progress=False)  # fmt: skip
    for channel in range(4):
        changed = intervened_output(cnn, x, cnn.conv1, mean, channel=channel)
        picked = (clean - changed).gather(1, labels[:, None])[:, 0]
        torch.testing.assert_close(picked, captum[:, channel, 0, 0], rtol=1e-5, atol=1e-6)
        norms = (clean - changed).norm(dim=1).double().numpy()
        assert result.damage_per_example["output_delta"][:, channel] == pytest.approx(norms, 1e-5)


def test_branch_ablation_equals_the_model_without_that_block():
    torch.manual_seed(0)
    model = cifar_resnet(14).eval()  # two blocks per stage
    x = torch.randn(6, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])

    def without_layer2_block0(inp: torch.Tensor) -> torch.Tensor:
        out = F.relu(model.bn1(model.conv1(inp)))
        out = model.layer1(out)
        out = F.relu(model.layer2[0].shortcut(out))  # the block minus its residual branch
        out = model.layer3(model.layer2[1](out))
        return model.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    with torch.no_grad():
        clean, skipped = model(x), without_layer2_block0(x)
    torch.testing.assert_close(intervened_output(model, x, model.layer2[0].bn2), skipped)

    loader = DataLoader(TensorDataset(x, labels), batch_size=4)
    metrics = ["accuracy_drop", "loss_increase", "output_delta", "kl"]
    result = ablate(model, loader, ["layer2.0.bn2"], metrics, progress=False)
    per_example = {m: v[:, 0] for m, v in result.damage_per_example.items()}
    correct = (clean.argmax(1) == labels).double() - (skipped.argmax(1) == labels).double()
    loss = F.cross_entropy(skipped, labels, reduction="none") - F.cross_entropy(
        clean, labels, reduction="none"
    )
    kl = F.kl_div(F.log_softmax(skipped, 1), F.log_softmax(clean, 1), log_target=True,
                  reduction="none").sum(1)  # fmt: skip
    assert per_example["accuracy_drop"] == pytest.approx(correct.numpy())
    assert per_example["loss_increase"] == pytest.approx(loss.double().numpy(), abs=1e-5)
    assert per_example["output_delta"] == pytest.approx(
        (clean - skipped).norm(dim=1).double().numpy(), rel=1e-5
    )
    assert per_example["kl"] == pytest.approx(kl.double().numpy(), rel=1e-4, abs=1e-6)
    assert result.damage["accuracy_drop"][0] == pytest.approx(float(correct.mean()))
    assert result.clean["accuracy"] == pytest.approx(
        float((clean.argmax(1) == labels).float().mean())
    )


def test_accuracy_drop_by_hand():
    # identity "model" on 2-class logits; the layer is the identity module
    model = nn.Sequential(nn.Identity()).eval()
    logits = torch.tensor([[2.0, 1.0], [0.5, 1.0], [3.0, -1.0]])
    labels = torch.tensor([0, 0, 1])  # correct, wrong, wrong
    loader = DataLoader(TensorDataset(logits, labels), batch_size=3)
    # baseline 1.0 makes both logits equal: argmax -> class 0 for every example
    result = ablate(model, loader, ["0"], ["accuracy_drop"], baseline=1.0, progress=False)
    # example 0 stays correct (0), example 1 becomes correct (-1), example 2 stays wrong (0)
    assert result.damage_per_example["accuracy_drop"][:, 0].tolist() == [0.0, -1.0, 0.0]
    assert result.damage["accuracy_drop"][0] == pytest.approx(-1 / 3)


def test_embedding_model_without_labels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    x = torch.randn(5, 4)
    loader = DataLoader(x, batch_size=5)  # unlabelled batches
    with pytest.raises(ValueError, match="need labelled data"):
        ablate(model, loader, ["0"], ["accuracy_drop", "output_delta"], progress=False)
    with pytest.raises(ValueError, match="Unknown damage metric"):
        ablate(model, loader, ["0"], ["accuracy"], progress=False)
    result = ablate(model, loader, ["0", "2"], ["embedding_cosine", "output_delta"], progress=False)
    with torch.no_grad():
        clean = model(x)
        zeroed_first = model[2](model[1](torch.zeros(5, 6)))
    expected = 1 - F.cosine_similarity(clean, zeroed_first, dim=1)
    assert result.damage_per_example["embedding_cosine"][:, 0] == pytest.approx(
        expected.double().numpy(), abs=1e-6
    )
    assert result.damage_per_example["output_delta"][:, 1] == pytest.approx(
        clean.norm(dim=1).double().numpy(), rel=1e-5
    )
    assert result.clean == {}


def test_select_units_forward_order_and_seeded_sample(cnn, images):
    x, labels = images
    loader = DataLoader(TensorDataset(x, labels), batch_size=6)
    layers = {"late": cnn.conv2, "early": cnn.conv1}  # given in reverse order
    units = select_units(cnn, loader, layers)
    assert [(u.layer, u.depth) for u in units] == [("early", 0), ("late", 1)]
    every = select_units(cnn, loader, layers, "channel")
    assert [u.name for u in every] == [f"early[{c}]" for c in range(4)] + [
        f"late[{c}]" for c in range(5)
    ]
    sample = select_units(cnn, loader, layers, "channel", n_channels=4, seed=3)
    assert sample == select_units(cnn, loader, layers, "channel", n_channels=4, seed=3)
    assert len(set(sample)) == 4 and set(sample) <= set(every)
    assert sample == sorted(sample, key=every.index)
    with pytest.raises(ValueError, match="granularity='channel'"):
        select_units(cnn, loader, layers, "layer", n_channels=3)
