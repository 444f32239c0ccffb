"""Specifications of the Torch-Pruning integration: GNDIImportance, ScoreImportance, channel
dimensions of every criterion."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from captum_gndi import compute_gndi
from captum_gndi.pruning import (
    PRUNABLE_TYPES,
    ChannelMask,
    apply_channel_masks,
    channel_importance,
    channel_masks,
    find_prunable,
    pruning_report,
    select_channels,
)

tp = pytest.importorskip("torch_pruning")

from captum_gndi.pruning import GNDIImportance, ScoreImportance, prune_physically  # noqa: E402


def _chain() -> nn.Sequential:
    """Three conv+BN+ReLU stages, global pool, linear head (bn stats randomised)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _data(n: int = 32, classes: int = 5, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


class _Residual(nn.Module):
    """stem conv+BN, one block whose bn2 is added to the stem's output (a coupled group)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.stem, self.bn0 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv1, self.bn1 = nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)
        for bn in (self.bn0, self.bn1, self.bn2):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(h + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h))))))
        return self.fc(h.mean((2, 3)))


def _group_of(model: nn.Module, x: torch.Tensor, root: nn.Module):
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    return graph.get_pruning_group(root, tp.prune_conv_out_channels, list(range(root.out_channels)))


def test_iterative_metapruner_prunes_the_lowest_gndi_of_the_current_model():
    model, data = _chain(), _data()
    importance = GNDIImportance(data, target="label")
    pruner = tp.pruner.MetaPruner(
        model,
        data[0][0][:2],
        importance=importance,
        iterative_steps=3,
        pruning_ratio=0.5,
        global_pruning=False,
        ignored_layers=[model[11]],
    )
    for step in range(3):
        points = {str(i): model[i] for i in (1, 4, 7)}  # the BN outputs the pruning zeroes
        direct = compute_gndi(model, data, points, target="label", granularity="channel")
        seen = 0
        for group in pruner.step(interactive=True):
            conv = [i for i in (0, 3, 6) if model[i] is group[0].dep.target.module][0]
            pruned = sorted(int(i) for i in group[0].idxs)
            lowest = direct.mean[str(conv + 1)].argsort()[: len(pruned)]
            assert pruned == sorted(lowest.tolist())
            group.prune()
            seen += 1
        assert seen == 3
        assert importance.passes == step + 1  # one scoring pass per step, on the pruned model
    assert [model[i].out_channels for i in (0, 3, 6)] == [4, 4, 6]


def test_group_scores_equal_compute_gndi_for_every_norm():
    model, data = _chain(), _data()
    x = data[0][0]
    group = _group_of(model, x, model[3])
    for options in ({"norm": "l2"}, {"norm": "l1"}, {"norm": "fisher"}, {"target": 2}):
        scores = GNDIImportance(data, **options)(group)
        direct = compute_gndi(model, data, {"bn": model[4]}, granularity="channel", **options)
        torch.testing.assert_close(scores, direct.mean["bn"].double(), rtol=1e-4, atol=1e-7)
    mean = GNDIImportance(data, target="label", baseline="mean")(group)
    direct = compute_gndi(
        model, data, {"bn": model[4]}, target="label", baseline="mean", granularity="channel"
    )
    torch.testing.assert_close(mean, direct.mean["bn"].double(), rtol=1e-4, atol=1e-7)


def test_probes_estimate_the_exact_group_scores():
    model, data = _chain(), _data()
    group = _group_of(model, data[0][0], model[3])
    exact = GNDIImportance(data)(group)
    probed = GNDIImportance(data, n_probes=32)(group)
    assert torch.allclose(probed, exact, rtol=0.2)


def test_a_coupled_group_is_one_joint_intervention():
    """Stem channel i and the block's bn2 channel i are removed together: the score is
    |sum of their first-order effects on the label logit|, computed here with autograd."""
    model = _Residual().eval()
    data = _data(size=6)
    group = _group_of(model, data[0][0], model.stem)
    scores = GNDIImportance(data, target="label")(group)
    total = torch.zeros(6, dtype=torch.float64)
    for x, y in data:
        stored = {}
        hooks = [
            bn.register_forward_hook(lambda m, i, o, stored=stored: stored.__setitem__(m, o))
            for bn in (model.bn0, model.bn2)
        ]
        logits = model(x)
        for hook in hooks:
            hook.remove()
        grads = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), list(stored.values()))
        effect = sum((g * h).sum((2, 3)) for g, h in zip(grads, stored.values()))
        total += effect.abs().sum(0).double()
    torch.testing.assert_close(scores, total / 32, rtol=1e-4, atol=1e-7)
    separate = GNDIImportance(data, target="label", group_reduction="sum")(group)
    assert not torch.allclose(separate, scores)  # the joint effect is not the sum of |effects|


def test_normalizer_follows_torch_pruning():
    model, data = _chain(), _data()
    group = _group_of(model, data[0][0], model[3])
    raw = GNDIImportance(data, target="label")(group)
    normalized = GNDIImportance(data, target="label", normalizer="mean")(group)
    torch.testing.assert_close(normalized, raw / raw.mean())
    with pytest.raises(ValueError, match="normalizer"):
        GNDIImportance(data, normalizer="lampp")


def test_zero_initialised_head_warns():
    model, data = _chain(), _data()
    nn.init.zeros_(model[11].weight)
    group = _group_of(model, data[0][0], model[3])
    with pytest.warns(UserWarning, match="exactly 0"):
        GNDIImportance(data, target="label")(group)


def test_precomputed_scores_raise_after_the_model_was_pruned():
    """Issue #25 item 1: ScoreImportance with iterative_steps > 1 used to re-index silently."""
    model, data = _chain(), _data()
    x = data[0][0][:2]
    layers = find_prunable(model, x)
    scores = channel_importance(model, data, layers, "gndi")
    importance = ScoreImportance({model.get_submodule(la.name): scores[la.name] for la in layers})
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance,
        iterative_steps=2,
        pruning_ratio=0.5,
        ignored_layers=[model[0], model[11]],
    )
    pruner.step()
    with pytest.raises(RuntimeError, match="GNDIImportance"):
        pruner.step()


def test_precomputed_scores_raise_for_an_unscored_group():
    """Issue #25 item 4: groups without scores were skipped, missing the pruning ratio."""
    model, data = _chain(), _data()
    x = data[0][0][:2]
    importance = ScoreImportance({model[3]: torch.rand(8)})
    pruner = tp.pruner.MetaPruner(model, x, importance, pruning_ratio=0.5)
    with pytest.raises(RuntimeError, match=r"no scores for the pruning group of \['11'\]"):
        pruner.step()


class _Tokens(nn.Module):
    """(N, T, D) states through a Linear MLP and a channels-last conv block."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Linear(4, 8)
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.fc2(torch.relu(self.fc1(h))).mean(1))


@pytest.mark.parametrize("criterion", ["gndi", "taylor", "magnitude"])
def test_linear_layers_on_token_states_are_scored_per_feature(criterion):
    """Issue #25 item 2: a Linear on (N, T, D) was scored per position (T), not per feature."""
    model = _Tokens().eval()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(16, 7, 4, generator=generator)  # 7 positions, 6 features of fc1
    data = [(x, torch.randint(0, 3, (16,), generator=generator))]
    layers = find_prunable(model, x)
    assert [(la.name, la.channel_dim) for la in layers] == [("fc1", 2), ("fc2", 2)]
    scores = channel_importance(model, data, layers, criterion, n_steps=2)
    assert {name: s.shape for name, s in scores.items()} == {
        "fc1": torch.Size([6]),
        "fc2": torch.Size([8]),
    }
    if criterion == "gndi":
        direct = compute_gndi(
            model, data, {"fc1": model.fc1}, granularity="channel", channel_dim=-1
        )
        torch.testing.assert_close(scores["fc1"], direct.mean["fc1"].double())
    keep = select_channels(scores, 0.5)
    small = prune_physically(model, x, layers, scores, 0.5)
    assert small.fc1.out_features == int(keep["fc1"].sum())


# ------------------------------------------------------------------------------------------------
# torchvision families: masks and physical model keep the same channels, counts are TP's


def _vit() -> nn.Module:
    import torchvision

    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    )
    nn.init.normal_(model.heads.head.weight, std=0.1)  # torchvision initialises it to zero
    return model


def _convnext() -> nn.Module:
    """ConvNeXt-Tiny's blocks (depthwise conv, channels-last LayerNorm and MLP, layer scale)
    at two stages of one block each, to keep the test fast."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    model = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
    for name, param in model.named_parameters():
        if name.endswith("layer_scale"):
            param.data.fill_(0.5)  # 1e-6 at initialisation would hide every block
    return model


def _family(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    builders = {
        # ResNet-50's bottleneck blocks, one per stage (the full model: experiments/)
        "resnet50": lambda: torchvision.models.resnet.ResNet(
            torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], num_classes=10
        ),
        "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
        "efficientnet_b0": torchvision.models.efficientnet_b0,
        "convnext_tiny": _convnext,
        "vit": _vit,
    }
    return builders[name]().eval()


# family -> (prunable layers, their channel dimension, coupled modules masked with them)
FAMILIES = {
    "resnet50": (8, 1, 0),
    "mobilenet_v3_large": (24, 1, 36),
    "efficientnet_b0": (34, 1, 45),
    "convnext_tiny": (2, 3, 0),
    "vit": (2, 2, 0),
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_torchvision_family_masks_equal_the_physical_model_and_tp_counts(name):
    """Issue #25 items 2, 3, 4: zero glue; masks and physical model keep the same channels
    (depthwise and squeeze-excitation couplings included); counts equal Torch-Pruning's."""
    model = _family(name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    layers = find_prunable(model, x)  # ViT's attention projections are left out by itself
    n_layers, dim, n_coupled = FAMILIES[name]
    assert len(layers) == n_layers
    assert {la.channel_dim for la in layers} == {dim}
    assert sum(len(la.coupled) for la in layers) == n_coupled
    assert {la.role for la in layers} == {"internal"}
    generator = torch.Generator().manual_seed(1)
    scores = {la.name: torch.rand(la.n_channels, generator=generator) for la in layers}
    keep = select_channels(scores, 0.5)
    small = prune_physically(model, x, layers, scores, 0.5)
    assert [small.get_submodule(la.name).weight.shape[0] for la in layers] == [
        int(keep[la.name].sum()) for la in layers
    ]
    report = pruning_report(model, layers, keep, x)
    macs, params = tp.utils.count_ops_and_params(small, x[:1])
    assert (report.params_after, report.flops_after) == (params, macs)
    assert report.params_after < report.params_before
    with torch.no_grad(), channel_masks(model, layers, keep):
        masked = model(x)
        scale = masked.abs().max()
        assert scale > 0
        torch.testing.assert_close(small(x), masked, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "vit"])
def test_gndi_importance_drives_metapruner_on_torchvision_models(name):
    model = _family(name)
    generator = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 10, (4,)))]
    x = data[0][0][:2]
    names = {la.name for la in find_prunable(model, x)}
    ignored = [
        m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n not in names
    ]
    importance = GNDIImportance(data, target="label")
    pruner = tp.pruner.MetaPruner(
        model, x, importance, pruning_ratio=0.5, iterative_steps=2, ignored_layers=ignored
    )
    before = tp.utils.count_ops_and_params(model, x[:1])
    pruner.step()
    pruner.step()
    after = tp.utils.count_ops_and_params(model, x[:1])
    assert importance.passes == 2
    assert after[0] < before[0] and after[1] < before[1]
    assert model(x).shape[0] == 2


def test_zero_initialised_vit_head_warns_for_every_criterion_path():
    """Issue #25 item 6: a fresh torchvision ViT scores every unit exactly 0."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    ).eval()
    x = torch.randn(4, 3, 32, 32)
    layers = find_prunable(model, x)
    with pytest.warns(UserWarning, match="exactly 0"):
        channel_importance(model, [(x, torch.zeros(4, dtype=torch.long))], layers, "gndi")


def test_apply_channel_masks_is_atomic():
    """Issue #25 item 5: after an error, no mask stays and physical pruning still works."""
    model, data = _chain(), _data()
    x = data[0][0][:2]
    layers = find_prunable(model, x)
    before = {n: p.clone() for n, p in model.state_dict().items()}
    keep = {layers[0].name: torch.tensor([True] * 7 + [False]), layers[1].name: torch.ones(3)}
    with pytest.raises(ValueError, match="bool tensor"):
        apply_channel_masks(model, layers, keep)
    assert not any(
        isinstance(h, ChannelMask) for m in model.modules() for h in m._forward_pre_hooks.values()
    )
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    prune.l1_unstructured(model[7], "weight", amount=0.5)  # someone else's pruning on a norm
    keep[layers[1].name] = torch.ones(12, dtype=torch.bool)
    keep[layers[1].name][0] = False
    with pytest.raises(ValueError, match="already pruned"):
        apply_channel_masks(model, layers, keep)
    assert not any(
        isinstance(h, ChannelMask) for m in model.modules() for h in m._forward_pre_hooks.values()
    )
    prune.remove(model[7], "weight")
    small = prune_physically(
        model, x, layers, {la.name: torch.rand(la.n_channels) for la in layers}, 0.5
    )
    assert small(x).shape == (2, 5)


def test_find_prunable_names_every_layer_that_does_not_run_once():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.a(self.a(x)))

    with pytest.raises(ValueError, match=r"'a' \(2 calls\), 'b' \(0 calls\), 'c' \(0 calls\)"):
        find_prunable(Unused(), torch.randn(2, 3))
