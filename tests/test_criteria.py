"""Importance criteria of captum_gndi.validation.criteria on tiny fixed models, against values
computed by hand or by an independent route."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi import LayerGNDI
from captum_gndi.validation.ablation import ablate
from captum_gndi.validation.criteria import (
    UndefinedCriterion,
    available_methods,
    channel_scores,
    score_methods,
    unit_parameters,
)


def _mlp(bias: bool = True, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3, bias=bias)).eval()


@pytest.fixture
def tabular() -> tuple[torch.Tensor, torch.Tensor, DataLoader]:
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(10, 4, generator=generator)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])
    return x, y, DataLoader(TensorDataset(x, y), batch_size=4)


def _conv_bn_net() -> tuple[torch.Tensor, DataLoader, nn.Sequential]:
    """Six labelled 2x5x5 images and a conv -> BatchNorm -> ReLU -> linear classifier."""
    torch.manual_seed(0)
    x = torch.randn(6, 2, 5, 5)
    loader = DataLoader(TensorDataset(x, torch.arange(6) % 3), batch_size=3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3)
    ).eval()
    return x, loader, model


def _score(model, loader, layers, method, **kwargs):
    scores, per_example = score_methods(
        model, loader, layers, methods=[method], progress=False, **kwargs
    )
    return scores[method], per_example.get(method)


def test_available_methods_lists_every_criterion():
    assert list(available_methods()) == [
        "gndi", "gndi_path", "snip", "grasp", "synflow", "magnitude", "hrank", "taylor",
        "grad_x_activation", "layer_conductance", "layer_integrated_gradients",
        "activation_change", "depth", "param_count", "random",
    ]  # fmt: skip
    assert all(available_methods().values())


def test_snip_equals_weight_times_gradient_by_hand(tabular):
    x, y, loader = tabular
    model = _mlp()
    loss = F.cross_entropy(model(x), y)  # mean over the 10 examples
    grads = torch.autograd.grad(loss, list(model.parameters()))
    by_hand = [(p * g).abs().sum().item() for p, g in zip(model.parameters(), grads)]
    expected = [by_hand[0] + by_hand[1], by_hand[2] + by_hand[3]]
    scores, per_example = _score(model, loader, ["0", "2"], "snip")
    assert scores == pytest.approx(expected, rel=1e-5)
    assert per_example is None
    channels = channel_scores("snip", model, loader, ["2"], progress=False)["2"]
    w, b = model[2].weight, model[2].bias
    manual = ((w * grads[2]).abs().sum(1) + (b * grads[3]).abs()).detach().numpy()
    assert channels == pytest.approx(manual, rel=1e-5)


def test_grasp_matches_forward_over_reverse_hessian_product(tabular):
    x, y, loader = tabular
    model = _mlp()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    g = grad(loss)(params)
    _, hg = jvp(grad(loss), (params,), (g,))  # H g, by forward-over-reverse
    expected = [
        float(-(params[f"{i}.weight"] * hg[f"{i}.weight"]).sum()
              - (params[f"{i}.bias"] * hg[f"{i}.bias"]).sum())
        for i in (0, 2)
    ]  # fmt: skip
    scores, _ = _score(model, loader, ["0", "2"], "grasp")
    assert scores == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_synflow_conservation_law_on_a_bias_free_network():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 6, bias=False), nn.ReLU(),
        nn.Linear(6, 3, bias=False),
    ).eval()  # fmt: skip
    loader = DataLoader(TensorDataset(torch.randn(4, 5), torch.zeros(4, dtype=torch.long)))
    w = [m.weight.detach().double().abs() for m in (model[0], model[2], model[4])]
    total = float((torch.ones(1, 5, dtype=torch.float64) @ w[0].T @ w[1].T @ w[2].T).sum())
    scores, _ = _score(model, loader, ["0", "2", "4"], "synflow")
    # every layer carries the whole synaptic flow R: the scores are constant, faithfully
    assert scores == pytest.approx([total] * 3, rel=1e-10)
    assert [p.requires_grad for p in model.parameters()] == [True] * 3
    assert model[0].weight.min() < 0  # the model's signs are untouched


class FeatureMaps(nn.Module):
    """Returns fixed feature maps (N, 3, 4, 4) of rank 1, 2 and 0, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.maps = nn.Identity()
        self.head = nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.maps(x).flatten(1))


def test_hrank_of_known_low_rank_feature_maps():
    u, v = torch.arange(1.0, 5.0), torch.tensor([1.0, -1.0, 2.0, 0.5])
    rank1 = torch.outer(u, v)
    rank2 = rank1 + torch.outer(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 1.0, 0, 0]))
    maps = torch.stack([rank1, rank2, torch.zeros(4, 4)])
    x = torch.stack([maps, maps * 2])  # (2, 3, 4, 4)
    loader = DataLoader(TensorDataset(x, torch.tensor([0, 1])), batch_size=2)
    model = FeatureMaps().eval()
    channels = channel_scores("hrank", model, loader, ["maps"], progress=False)["maps"]
    assert channels.tolist() == [1.0, 2.0, 0.0]
    scores, per_example = _score(model, loader, ["maps"], "hrank")
    assert scores.tolist() == [1.0] and per_example.tolist() == [[1.0], [1.0]]
    with pytest.raises(UndefinedCriterion, match=r"\(N, C, H, W\)"):
        _score(model, loader, ["head"], "hrank")


def test_gndi_per_example_equals_layer_gndi_and_exact_ablation_after_linear_layers(tabular):
    x, y, loader = tabular
    torch.manual_seed(0)
    # everything after layer "1" is linear: the first-order prediction is exact
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.Linear(6, 3)).eval()
    scores, per_example = _score(model, loader, ["1", "2"], "gndi")
    reference = LayerGNDI(model, [model[1], model[2]]).attribute(x)
    expected = torch.stack(reference, 1).double().numpy()
    assert per_example == pytest.approx(expected, rel=1e-5)
    assert scores == pytest.approx(expected.mean(0), rel=1e-5)
    exact = ablate(model, loader, ["1", "2"], ["output_delta"], progress=False)
    assert per_example == pytest.approx(exact.damage_per_example["output_delta"], rel=1e-5)
    path, _ = _score(model, loader, ["1"], "gndi_path", n_steps=4, baseline="mean")
    exact_mean = ablate(model, loader, ["1"], ["output_delta"], baseline="mean", progress=False)
    assert path == pytest.approx(exact_mean.damage["output_delta"], rel=1e-5)


def _activation_and_logit_grad(model, x, y):
    h = model[1](model[0](x)).detach().requires_grad_(True)
    chosen = model[2](h).gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(chosen, h)
    return h.detach(), g


def test_grad_x_activation_and_taylor_by_hand(tabular):
    x, y, loader = tabular
    model = _mlp()
    h, g_logit = _activation_and_logit_grad(model, x, y)
    b = h.mean(0)
    _, per_example = _score(model, loader, ["1"], "grad_x_activation", baseline="mean")
    expected = (g_logit * (h - b)).sum(1).abs().double().numpy()
    assert per_example[:, 0] == pytest.approx(expected, rel=1e-5, abs=1e-7)

    h_leaf = h.clone().requires_grad_(True)
    loss = F.cross_entropy(model[2](h_leaf), y, reduction="sum")
    (g_loss,) = torch.autograd.grad(loss, h_leaf)
    _, per_example = _score(model, loader, ["1"], "taylor")
    assert per_example[:, 0] == pytest.approx((h * g_loss).sum(1).abs().numpy(), rel=1e-5, abs=1e-7)
    channels = channel_scores("taylor", model, loader, ["1"], progress=False)["1"]
    assert channels == pytest.approx((h * g_loss).abs().mean(0).numpy(), rel=1e-5, abs=1e-7)

    # scoring an earlier layer together with a later one: gradients still flow through both
    pre = model[0](x).detach().requires_grad_(True)
    loss = F.cross_entropy(model[2](model[1](pre)), y, reduction="sum")
    (g_pre,) = torch.autograd.grad(loss, pre)
    _, per_example = _score(model, loader, ["0", "1"], "taylor")
    expected = (pre * g_pre).sum(1).abs().detach().numpy()
    assert per_example[:, 0] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_captum_path_methods_are_complete_on_a_linear_network(tabular):
    x, y, loader = tabular
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(5, 3, bias=False)).eval()
    target_logit = model(x).gather(1, y[:, None])[:, 0].detach()  # y_t(x) - y_t(0), no biases
    for method in ("layer_conductance", "layer_integrated_gradients"):
        _, per_example = _score(model, loader, ["0"], method, n_steps=3)
        assert per_example[:, 0] == pytest.approx(target_logit.abs().numpy(), rel=1e-4), method


def test_weight_criteria_and_controls_by_hand():
    x, loader, model = _conv_bn_net()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    names = [n for n, _ in unit_parameters(model, model[1])]
    assert names == ["1.weight", "1.bias", "0.weight", "0.bias"]  # bn and the conv feeding it
    assert [n for n, _ in unit_parameters(model, model[1], 2)][0] == "1.weight[2]"
    with pytest.raises(UndefinedCriterion, match="no parameters"):
        unit_parameters(model, model[2])

    scores, _ = _score(model, loader, ["4", "1"], "magnitude")
    expected = [model[0].weight.abs().mean(), model[4].weight.abs().mean()]  # forward order
    assert scores == pytest.approx([e.item() for e in expected], rel=1e-6)
    channels = channel_scores("magnitude", model, loader, ["1"], progress=False)["1"]
    expected_channels = model[0].weight.abs().flatten(1).mean(1).detach().numpy()
    assert channels == pytest.approx(expected_channels, rel=1e-6)

    scores, _ = _score(model, loader, ["4", "1"], "param_count")
    assert scores.tolist() == [4 + 4 + 2 * 4 * 9 + 4, 36 * 3 + 3]
    channels = channel_scores("param_count", model, loader, ["1"], progress=False)["1"]
    assert channels.tolist() == [1 + 1 + 18 + 1] * 4

    scores, _ = _score(model, loader, ["4", "0", "1"], "depth")
    assert scores.tolist() == [2.0, 1.0, 0.0]  # earlier layers score higher

    scores, per_example = _score(model, loader, ["1"], "activation_change", baseline="mean")
    with torch.no_grad():
        h = model[1](model[0](x))
    expected = (h - h.mean(0)).flatten(1).norm(dim=1).double().numpy()
    assert per_example[:, 0] == pytest.approx(expected, rel=1e-5)

    random_a, _ = _score(model, loader, ["0", "1", "4"], "random", seed=4, n_random=3)
    random_b, _ = _score(model, loader, ["0", "1", "4"], "random", seed=4, n_random=3)
    assert random_a.shape == (3, 3) and np.array_equal(random_a, random_b)
    assert not np.array_equal(random_a[0], random_a[1])


def test_channel_criteria_of_a_block_are_undefined_and_can_be_skipped(tabular):
    x, y, loader = tabular
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 5), nn.Tanh()), nn.Linear(5, 3)).eval()
    with pytest.raises(UndefinedCriterion, match="composite module"):
        channel_scores("magnitude", model, loader, ["0"], progress=False)
    with pytest.warns(UserWarning, match="Skipping hrank"):
        scores, per_example = score_methods(
            model, loader, ["0"], ["hrank", "gndi", "depth"], progress=False, skip_undefined=True
        )
    assert set(scores) == {"gndi", "depth"} and set(per_example) == {"gndi"}
    unlabelled = DataLoader(x, batch_size=5)
    with pytest.raises(UndefinedCriterion, match="labelled data"):
        score_methods(model, unlabelled, ["0"], ["snip"], progress=False)
    with pytest.raises(ValueError, match="Unknown method"):
        score_methods(model, loader, ["0"], ["gndi", "shapley"], progress=False)


def test_every_criterion_leaves_the_model_as_it_was():
    _x, loader, model = _conv_bn_net()
    model[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    scores, _ = score_methods(model, loader, ["0", "1"], n_steps=2, progress=False)
    assert set(scores) == set(available_methods())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
