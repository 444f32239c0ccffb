"""Specifications of captum_gndi.pruning: layers, masks, ranking, counts, scores, curves, CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi.cli import main
from captum_gndi.interventions import intervene
from captum_gndi.pruning import (
    ChannelMask,
    apply_channel_masks,
    channel_importance,
    channel_masks,
    count_flops,
    evaluate_accuracy,
    find_prunable,
    finetune,
    normalize_scores,
    pruning_report,
    select_channels,
    sparsity_curve,
    undo_pruning,
)
from captum_gndi.zoo import cifar_resnet, digits_resnet, load_digits_dataset


class TinyNet(nn.Module):
    """stem conv 1->4 + BN, conv 4->6 (bias) + BN, global average pool, fc1 6->5, head 5->3.

    With ``relu_after_conv=False`` everything after ``bn`` is linear.
    """

    def __init__(self, relu_after_conv: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)
        self.relu_after_conv = relu_after_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(F.relu(self.bn0(self.stem(x)))))
        h = F.relu(h) if self.relu_after_conv else h
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        h = self.fc1(h)
        return self.head(F.relu(h) if self.relu_after_conv else h)


def _tiny(relu_after_conv: bool = True) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet(relu_after_conv)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        for bn in (model.bn0, model.bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(0.1, 0.5)  # positive: no channel is dead after the ReLU
    return model.eval()


def _inputs(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def _snapshot(model: nn.Module) -> dict:
    return {
        "params": [
            (n, p, p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()
        ],
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "hooks": [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()],
        "training": [m.training for m in model.modules()],
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert [n for n, *_ in after["params"]] == [n for n, *_ in before["params"]]
    for (_, p, flag, value), (_, p0, flag0, value0) in zip(after["params"], before["params"]):
        assert p is p0 and flag == flag0 and torch.equal(value, value0) and p.grad is None
    assert after["buffers"].keys() == before["buffers"].keys()
    assert all(torch.equal(after["buffers"][k], v) for k, v in before["buffers"].items())
    assert after["hooks"] == before["hooks"] and after["training"] == before["training"]
    assert not prune.is_pruned(model)


def _keep(layers, pruned: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    keep = {}
    for layer in layers:
        mask = torch.ones(layer.n_channels, dtype=torch.bool)
        mask[pruned.get(layer.name, [])] = False
        keep[layer.name] = mask
    return keep


# ------------------------------------------------------------------------------------------------
# finding prunable layers


def test_find_prunable_excludes_stem_and_classifier_and_pairs_batchnorm():
    model = _tiny()
    layers = find_prunable(model, _inputs())
    assert [(la.name, la.norm_name, la.n_channels, la.role) for la in layers] == [
        ("conv", "bn", 6, "internal"),
        ("fc1", None, 5, "internal"),
    ]
    everything = find_prunable(model, _inputs(), keep_stem=False, keep_classifier=False)
    assert [(la.name, la.role) for la in everything] == [
        ("stem", "stem"),
        ("conv", "internal"),
        ("fc1", "internal"),
        ("head", "classifier"),
    ]
    assert [la.name for la in find_prunable(model, _inputs(), exclude=["fc1"])] == ["conv"]
    with pytest.raises(ValueError, match="not modules"):
        find_prunable(model, _inputs(), exclude=["nope"])


def test_find_prunable_keeps_residual_block_outputs_unless_asked():
    model = cifar_resnet(8).eval()  # one BasicBlock per stage, option-A shortcuts
    x = torch.randn(2, 3, 32, 32)
    before = _snapshot(model)
    internal = find_prunable(model, x)
    assert [la.name for la in internal] == ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]
    assert [la.norm_name for la in internal] == ["layer1.0.bn1", "layer2.0.bn1", "layer3.0.bn1"]
    both = find_prunable(model, x, prune_block_outputs=True)
    roles = {la.name: la.role for la in both}
    assert roles["layer2.0.conv2"] == "block_output" and roles["layer2.0.conv1"] == "internal"
    assert len(both) == 6
    _assert_unchanged(model, before)


def test_counting_passes_restore_every_submodules_mode():
    model = _tiny()
    model.bn.train()  # a mixed state: top level in eval, one BatchNorm in train mode
    before = _snapshot(model)
    layers = find_prunable(model, _inputs())
    pruning_report(model, layers, _keep(layers, {"conv": [0]}), _inputs())
    evaluate_accuracy(model, [(_inputs(), torch.zeros(8, dtype=torch.long))])
    _assert_unchanged(model, before)


# ------------------------------------------------------------------------------------------------
# masks


@pytest.mark.parametrize("train_mode", [False, True])
def test_masks_zero_exactly_the_chosen_channels(train_mode):
    model = _tiny()
    layers = find_prunable(model, _inputs())
    seen = {}

    def record(position, h):
        seen[position] = h.detach().clone()

    apply_channel_masks(model, layers, _keep(layers, {"conv": [1, 4], "fc1": [0]}))
    model.train(train_mode)
    with torch.no_grad(), intervene([model.bn, model.fc1], record):
        model(_inputs())
    per_channel = seen[0].abs().sum((0, 2, 3))
    assert per_channel[[1, 4]].tolist() == [0.0, 0.0]
    assert (per_channel[[0, 2, 3, 5]] > 0).all()
    assert seen[1][:, 0].abs().sum() == 0 and (seen[1][:, 1:].abs().sum(0) > 0).all()


def test_undo_restores_the_model_exactly():
    model = _tiny()
    x = _inputs()
    reference = model(x)
    before = _snapshot(model)
    layers = find_prunable(model, x)
    apply_channel_masks(model, layers, _keep(layers, {"conv": [0, 2, 3], "fc1": [4]}))
    assert prune.is_pruned(model) and not torch.equal(model(x), reference)
    undo_pruning(model)
    assert torch.equal(model(x), reference)
    _assert_unchanged(model, before)


def test_undo_leaves_other_pruning_and_prune_remove_makes_masks_permanent():
    model = _tiny()
    layers = find_prunable(model, _inputs())
    prune.l1_unstructured(model.head, "weight", amount=0.5)  # the user's own pruning
    apply_channel_masks(model, layers, _keep(layers, {"conv": [1]}))
    undo_pruning(model)
    assert hasattr(model.head, "weight_orig") and not hasattr(model.conv, "weight_orig")
    apply_channel_masks(model, layers, _keep(layers, {"conv": [1]}))
    prune.remove(model.conv, "weight")
    assert model.conv.weight[1].abs().sum() == 0 and not hasattr(model.conv, "weight_orig")


def test_sparsity_zero_is_a_no_op():
    model = _tiny()
    x = _inputs()
    reference = model(x)
    layers = find_prunable(model, x)
    keep = select_channels({la.name: torch.rand(la.n_channels) for la in layers}, 0.0)
    assert all(k.all() for k in keep.values())
    apply_channel_masks(model, layers, keep)
    assert not any(
        isinstance(h, ChannelMask) for m in model.modules() for h in m._forward_pre_hooks.values()
    )
    assert torch.equal(model(x), reference)


def test_mask_errors_are_clear():
    model = _tiny()
    layers = find_prunable(model, _inputs())
    with pytest.raises(ValueError, match=r"bool tensor of shape \(6,\)"):
        apply_channel_masks(model, layers, {"conv": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="not among the given layers"):
        apply_channel_masks(model, layers, {"stem": torch.ones(4, dtype=torch.bool)})
    apply_channel_masks(model, layers, _keep(layers, {"conv": [0]}))
    with pytest.raises(ValueError, match="already pruned"):
        apply_channel_masks(model, layers, _keep(layers, {"conv": [1]}))


# ------------------------------------------------------------------------------------------------
# ranking


def test_global_and_per_layer_ranking_on_hand_made_scores():
    scores = {"a": torch.tensor([0.1, 0.5, 0.9, 0.3]), "b": torch.tensor([0.2, 0.05, 4.0, 3.0])}
    # global: the 4 lowest of all 8 are a0 (0.1), a3 (0.3), b1 (0.05), b0 (0.2)
    keep = select_channels(scores, 0.5)
    assert keep["a"].tolist() == [False, True, True, False]
    assert keep["b"].tolist() == [False, False, True, True]
    # per layer: two channels of each
    keep = select_channels(scores, 0.5, scope="layer")
    assert keep["a"].tolist() == [False, True, True, False]
    assert keep["b"].tolist() == [False, False, True, True]
    # max-normalised: a / 0.9, b / 4 -> b0 0.05, b1 0.0125, a0 0.111, b3 0.75, a3 0.333, ...
    keep = select_channels(scores, 0.5, normalize="max")
    assert keep["a"].tolist() == [False, True, True, False]
    assert keep["b"].tolist() == [False, False, True, True]
    keep = select_channels(scores, 0.75, normalize="max")  # 6 pruned: + a1 (0.556), b3 (0.75)
    assert keep["a"].tolist() == [False, False, True, False]
    assert keep["b"].tolist() == [False, False, True, False]
    keep = select_channels(scores, 0.75)  # raw: + a1 (0.5), a2 (0.9); b2, b3 stay
    assert keep["a"].tolist() == [False, False, True, False]  # min_keep=1 keeps a2
    assert keep["b"].tolist() == [False, False, True, False]  # ... so b3 (3.0) goes instead


def test_global_ranking_takes_whole_layers_where_per_layer_ranking_does_not():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    keep = select_channels(scores, 0.5)  # a1, a2, a3; a4 is the last of a (min_keep); then b10
    assert keep["a"].tolist() == [False, False, False, True]
    assert keep["b"].tolist() == [False, True, True, True]
    keep = select_channels(scores, 0.5, min_keep=0)
    assert keep["a"].tolist() == [False] * 4 and keep["b"].tolist() == [True] * 4
    keep = select_channels(scores, 0.5, scope="layer")
    assert keep["a"].tolist() == [False, False, True, True] == keep["b"].tolist()
    keep = select_channels(scores, 0.5, normalize="l1")  # same shape of scores: ties, a first
    assert keep["a"].tolist() == [False, False, True, True] == keep["b"].tolist()


def test_normalize_scores_by_hand():
    s = torch.tensor([3.0, 4.0])
    assert normalize_scores(s, "l1").tolist() == pytest.approx([3 / 7, 4 / 7])
    assert normalize_scores(s, "l2").tolist() == pytest.approx([0.6, 0.8])
    assert normalize_scores(s, "max").tolist() == pytest.approx([0.75, 1.0])
    assert normalize_scores(s, "none").tolist() == [3.0, 4.0]
    assert normalize_scores(torch.zeros(2), "l2").tolist() == [0.0, 0.0]


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.5", True, float("nan")])
def test_invalid_sparsity_gives_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"sparsity must be a fraction of channels in \[0, 1\)"):
        select_channels({"a": torch.ones(3)}, bad)


def test_ranking_rejects_bad_scores():
    with pytest.raises(ValueError, match="NaN or inf"):
        select_channels({"a": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ValueError, match="scope must be"):
        select_channels({"a": torch.ones(2)}, 0.5, scope="net")


# ------------------------------------------------------------------------------------------------
# parameter and FLOP counts


@pytest.fixture
def own_counts(monkeypatch):
    """The report's own counting rules (used without Torch-Pruning), with it installed too."""
    import captum_gndi.pruning.flops as flops
    import captum_gndi.pruning.layers as layers_module

    monkeypatch.setattr(flops, "has_torch_pruning", lambda: False)
    monkeypatch.setattr(layers_module, "dependency_graph", lambda model, inputs: None)


def test_flops_and_parameters_of_a_tiny_net_by_hand(own_counts):
    model = _tiny()
    x = _inputs()
    # stem 4*1*9*16 + conv 6*4*9*16 + fc1 5*6 + head 3*5
    assert count_flops(model, x) == 576 + 3456 + 30 + 15
    layers = find_prunable(model, x)
    report = pruning_report(model, layers, _keep(layers, {"conv": [1, 4], "fc1": [0]}), x)
    # stem 36 + bn0 8 + conv 216+6 + bn 12 + fc1 30+5 + head 15+3
    assert report.params_before == 331
    # removed: conv rows 2*36 + 2 biases, bn 2*2, fc1: 30+5 -> 4*4+4, head: input 0 (3 weights)
    assert report.params_after == 331 - (72 + 2) - 4 - 15 - 3
    # stem 576 + conv 4*4*9*16 + fc1 4*4 + head 3*4
    assert report.flops_after == 576 + 2304 + 16 + 12
    assert (report.channels_pruned, report.channels_total) == (3, 11)


def test_report_does_not_credit_channels_that_meet_a_residual_add(own_counts):
    model = cifar_resnet(8).eval()
    x = torch.randn(2, 3, 32, 32)
    layers = find_prunable(model, x, prune_block_outputs=True)
    block_out = next(la for la in layers if la.name == "layer1.0.conv2")
    report = pruning_report(model, layers, _keep(layers, {"layer1.0.conv2": [0, 1]}), x)
    # only conv2's two filters and bn2's two (weight, bias) pairs go: the channel lives on
    # in the shortcut, so layer2.0.conv1 keeps its inputs
    assert report.params_before - report.params_after == 2 * 16 * 9 + 2 * 2
    assert report.flops_before - report.flops_after == 2 * 16 * 9 * 32 * 32
    assert block_out.role == "block_output"


# ------------------------------------------------------------------------------------------------
# scores


def test_zero_baseline_gndi_equals_the_mask_effect_when_the_rest_is_linear():
    model = _tiny(relu_after_conv=False)  # after bn: pooling and two linear layers
    x = _inputs(6)
    layers = find_prunable(model, x, exclude=["fc1"])
    scores = channel_importance(
        model, DataLoader(TensorDataset(x, torch.zeros(6)), batch_size=3), layers
    )
    reference = model(x).detach()
    for channel in range(6):
        with torch.no_grad(), channel_masks(model, layers, _keep(layers, {"conv": [channel]})):
            effect = (reference - model(x)).norm(dim=1).mean()
        assert scores["conv"][channel].item() == pytest.approx(effect.item(), rel=1e-5)


def test_other_criteria_come_from_validation_channel_scores():
    model = _tiny()
    x = _inputs(6)
    data = DataLoader(TensorDataset(x, torch.tensor([0, 1, 2, 0, 1, 2])), batch_size=6)
    layers = find_prunable(model, x, exclude=["fc1"])
    magnitude = channel_importance(model, data, layers, "magnitude")["conv"]
    expected = model.conv.weight.detach().abs().flatten(1).mean(1).double()
    assert torch.allclose(magnitude, expected)
    with pytest.raises(ValueError, match="Unknown criterion"):
        channel_importance(model, data, layers, "l7")


# ------------------------------------------------------------------------------------------------
# evaluation


def _labelled(model: nn.Module, n: int = 40):
    x = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3)))
    return DataLoader(TensorDataset(x, y.argmax(1)), batch_size=16)


def test_sparsity_curve_matches_masked_accuracy_and_leaves_the_model_alone():
    model = _tiny()
    data = _labelled(model)
    layers = find_prunable(model, _inputs())
    scores = {
        "random": {
            la.name: torch.rand(la.n_channels, generator=torch.Generator().manual_seed(4))
            for la in layers
        }
    }
    before = _snapshot(model)
    curve = sparsity_curve(model, layers, scores, data, (0.3, 0.6), progress=False)
    _assert_unchanged(model, before)
    assert curve.dense_accuracy == evaluate_accuracy(model, data)
    keep = select_channels(scores["random"], 0.6)
    with channel_masks(model, layers, keep):
        expected = evaluate_accuracy(model, data)
    assert curve.point("random", 0.6).accuracy == expected
    assert "| random |" in curve.to_markdown()


def test_finetune_keeps_pruned_channels_zero_and_curve_fine_tunes_a_copy(tmp_path):
    model = _tiny()
    data = _labelled(model)
    layers = find_prunable(model, _inputs())
    keep = _keep(layers, {"conv": [2, 5]})
    student = _tiny()
    apply_channel_masks(student, layers, keep)
    finetune(student, data, epochs=2, lr=0.1)
    assert student.conv.weight[[2, 5]].abs().sum() == 0 and student.bn.bias[[2, 5]].abs().sum() == 0
    assert not torch.equal(student.conv.weight[0], model.conv.weight[0])
    before = _snapshot(model)
    scores = {"s": {la.name: keep[la.name].double() for la in layers}}
    curve = sparsity_curve(
        model, layers, scores, data, (0.2,), finetune_data=data, finetune_epochs=1, progress=False
    )
    _assert_unchanged(model, before)
    assert curve.points[0].finetuned_accuracy is not None
    paths = curve.save(tmp_path)
    assert json.loads(paths["json"].read_text())["points"][0]["criterion"] == "s"
    assert paths["png"].stat().st_size > 0


# ------------------------------------------------------------------------------------------------
# Torch-Pruning


def test_torch_pruning_removes_the_same_channels_as_the_masks():
    tp = pytest.importorskip("torch_pruning")
    from captum_gndi.pruning import prune_physically

    model = cifar_resnet(8).eval()
    x = torch.randn(4, 3, 32, 32)
    layers = find_prunable(model, x)
    scores = {
        la.name: torch.rand(la.n_channels, generator=torch.Generator().manual_seed(5))
        for la in layers
    }
    keep = select_channels(scores, 0.5)
    before = _snapshot(model)
    small = prune_physically(model, x, layers, scores, 0.5)
    _assert_unchanged(model, before)
    assert [small.get_submodule(la.name).out_channels for la in layers] == [
        int(keep[la.name].sum()) for la in layers
    ]
    report = pruning_report(model, layers, keep, x)
    assert sum(p.numel() for p in small.parameters()) == report.params_after < report.params_before
    assert tp.utils.count_ops_and_params(small, x[:1])[0] == report.flops_after
    with torch.no_grad(), channel_masks(model, layers, keep):
        assert torch.allclose(small(x), model(x), atol=1e-5)
    magnitude = prune_physically(model, x, layers, "tp-magnitude", 0.5)
    assert magnitude(x).shape == (4, 10)
    with pytest.raises(ValueError, match="tp-taylor"):
        prune_physically(model, x, layers, "tp-taylor", 0.5)


def test_missing_torch_pruning_gives_an_install_hint(monkeypatch):
    import captum_gndi.pruning as pruning

    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # makes "import torch_pruning" fail
    monkeypatch.delitem(sys.modules, "captum_gndi.pruning.physical", raising=False)
    monkeypatch.delattr(pruning, "physical", raising=False)
    with pytest.raises(ImportError, match=r"pip install captum_gndi\[pruning\]"):
        pruning.prune_physically  # noqa: B018
    assert pruning.select_channels is select_channels  # the rest works without it


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_prune_on_a_tiny_digits_model(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "digits.pt"
    torch.save(digits_resnet(width=16).state_dict(), weights)
    out = tmp_path / "out"
    status = main(
        ["prune", "--model", "digits-resnet", "--weights", str(weights), "--criterion",
         "gndi,random", "--curve", "0.5", "--sparsity", "0.5", "--limit", "100",
         "--score-limit", "32", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "accuracy before pruning" in printed and "gndi at 50% sparsity" in printed
    summary = json.loads((out / "summary.json").read_text())
    test = load_digits_dataset("test")
    model = digits_resnet(weights=str(weights))
    images, labels = test.tensors[0][:100], test.tensors[1][:100]
    expected = (model(images).argmax(1) == labels).float().mean().item()
    assert summary["dense_accuracy"] == pytest.approx(expected)
    assert summary["criteria"]["gndi"]["report"]["channel_sparsity"] == 0.5
    points = json.loads((out / "curve.json").read_text())["points"]
    assert [(p["criterion"], p["sparsity"]) for p in points] == [("gndi", 0.5), ("random", 0.5)]
    assert (out / "curve.png").stat().st_size > 0


def test_cli_prune_takes_a_torchvision_model_with_local_weights(tmp_path, capsys, shared_data):
    """Issue #25: --model torchvision:NAME --weights PATH, nothing downloaded."""
    torchvision = pytest.importorskip("torchvision")
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    weights = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    out = tmp_path / "out"
    status = main(
        ["prune", "--model", "torchvision:mobilenet_v3_small", "--weights", str(weights),
         "--data-dir", str(shared_data / "cifar10"), "--criterion", "magnitude", "--curve",
         "0.5", "--sparsity", "0.5", "--limit", "16", "--score-limit", "16", "--batch-size",
         "16", "--quiet", "--out", str(out)]
    )  # fmt: skip
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    report = summary["criteria"]["magnitude"]["report"]
    assert (
        report["channel_sparsity"] == 0.5 and 0 < report["params_after"] < report["params_before"]
    )
    assert main(["prune", "--model", "resnet50"]) == 2
    assert "--model torchvision:NAME" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sparsity", "1.0"], "sparsity must be a fraction"),
        (["--criterion", "l7"], "unknown criterion"),
        (["--weights", "/nonexistent/w.pt"], "checkpoint not found"),
    ],
)
def test_cli_prune_errors_are_one_line(extra, message, capsys):
    assert main(["prune", "--model", "digits-resnet", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# verify_top_k(largest=False): the k least damaging channels, the ones to prune


def test_verify_top_k_least_damaging_equals_brute_force():
    from captum_gndi import verify_top_k
    from captum_gndi.validation import ablate

    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 0.7)
    model.eval()
    x = torch.randn(24, 3, 6, 6, generator=generator, dtype=torch.float64)
    data = [
        (x[:12], torch.zeros(12, dtype=torch.long)),
        (x[12:], torch.zeros(12, dtype=torch.long)),
    ]
    layers = {"0": model[0], "2": model[2]}
    truth = ablate(
        model, data, layers, damage=("output_delta",), granularity="channel", progress=False
    )
    damage = {
        (u.layer, u.channel): float(d) for u, d in zip(truth.units, truth.damage["output_delta"])
    }
    result = verify_top_k(
        model, data, layers, k=3, largest=False, expected_misses=0.3, progress=False
    )
    least = sorted(damage, key=damage.get)[:3]
    assert result.units == least
    assert result.stopped == "rule" and result.n_ablations < result.n_units == 32
    np.testing.assert_allclose(result.damages, [damage[u] for u in least], rtol=1e-9)
    assert result.settings["largest"] is False
    assert str(result).startswith("Exact 3 least damaging units")


def test_least_damaging_rule_stops_once_no_unverified_unit_can_enter():
    from captum_gndi.verify import screen_and_verify

    damage = {("a", i): float(i + 1) for i in range(20)}  # exact scores: every ratio is 1
    result = screen_and_verify(
        dict(damage), lambda units: {u: damage[u] for u in units}, k=3, largest=False
    )
    assert result.units == [("a", 0), ("a", 1), ("a", 2)]
    assert result.stopped == "rule" and result.n_ablations <= 6  # bottom 3 + an audit of 3
