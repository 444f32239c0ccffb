"""Tests of captum_gndi.verify: screen with G-NDI, verify with exact ablations, stop early."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from captum_gndi import verify_top_k
from captum_gndi.validation import ablate
from captum_gndi.verify import VerifyResult, screen_and_verify


class Saturating(nn.Module):
    """Two convolutions with tanh: first-order G-NDI misranks channels (saturation)."""

    def __init__(self, seed: int = 0, gain: float = 1.0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)
        self.gain = gain
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
            self.conv1.bias.copy_(torch.linspace(-2, 2, 8))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.gain * self.conv1(x))
        h = torch.tanh(self.gain * self.conv2(h))
        return self.head(h.mean((2, 3)))


class Linear(nn.Module):
    """A linear map after the layer: first-order G-NDI is exact (every ratio is 1)."""

    def __init__(self, width: int = 48) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.inner = nn.Linear(6, width)
        self.outer = nn.Linear(width, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
            self.inner.weight.mul_(torch.logspace(-1, 1, width).unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.outer(self.inner(x))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so hooks are used."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.inner = nn.Linear(5, 12)
        self.outer = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inner(x)
        if float(x.sum()) > -1e9:  # always true, but not traceable
            h = torch.relu(h)
        return self.outer(h)


def _image_data(n: int = 32, seed: int = 100) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (n,), generator=generator)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


def _brute_force(model: nn.Module, data, layers, damage: str = "output_delta") -> dict:
    truth = ablate(model, data, layers, damage=(damage,), granularity="channel", progress=False)
    return {(u.layer, u.channel): float(d) for u, d in zip(truth.units, truth.damage[damage])}


def _top(damage: dict, k: int) -> list:
    return sorted(damage, key=lambda u: -damage[u])[:k]


@pytest.fixture(scope="module")
def saturating() -> tuple[nn.Module, list]:
    return Saturating().double().eval(), _image_data()


@pytest.mark.parametrize("k", [3, 5])
def test_top_k_equals_brute_force_where_first_order_ranking_is_wrong(saturating, k):
    model, data = saturating
    truth = _brute_force(model, data, ["conv1", "conv2"])
    result = verify_top_k(model, data, ["conv1", "conv2"], k=k, progress=False)
    by_score = sorted(result.scores, key=lambda u: -result.scores[u])
    assert set(by_score[:k]) != set(_top(truth, k))  # G-NDI alone gets the top k wrong
    assert result.units == _top(truth, k)
    np.testing.assert_allclose(result.damages, [truth[u] for u in result.units], rtol=1e-10)
    for unit, d in result.verified.items():  # the same damage as the harness's ablate
        assert d == pytest.approx(truth[unit], rel=1e-10, abs=1e-12)
    assert result.engine == "suffix"
    assert result.n_units == 16 and 0 <= result.miss_probability <= 1


def test_hooks_engine_and_stacking_give_the_same_damage(saturating):
    model, data = saturating
    layers = ["conv1", "conv2"]
    suffix = verify_top_k(model, data, layers, k=16, progress=False, units_per_pass=3)
    hooks = verify_top_k(model, data, layers, k=16, progress=False, engine="hooks")
    single = verify_top_k(model, data, layers, k=16, progress=False, units_per_pass=1)
    assert hooks.engine == "hooks" and suffix.engine == "suffix"
    for unit, d in suffix.verified.items():
        assert hooks.verified[unit] == pytest.approx(d, rel=1e-10, abs=1e-12)
        assert single.verified[unit] == pytest.approx(d, rel=1e-10, abs=1e-12)
    assert suffix.n_ablations == suffix.n_units and suffix.stopped == "exhausted"


@pytest.mark.parametrize("damage", ["kl", "loss_increase", "accuracy_drop"])
def test_damage_metrics_match_the_harness(saturating, damage):
    model, data = saturating
    truth = _brute_force(model, data, ["conv1", "conv2"], damage)
    result = verify_top_k(model, data, ["conv1", "conv2"], k=16, damage=damage, progress=False)
    assert result.damage == damage
    for unit, d in result.verified.items():
        assert d == pytest.approx(truth[unit], rel=1e-9, abs=1e-12)


def test_mean_baseline_matches_the_harness(saturating):
    model, data = saturating
    truth = ablate(model, data, ["conv2"], damage=("output_delta",), baseline="mean",
                   granularity="channel", progress=False)  # fmt: skip
    result = verify_top_k(model, data, ["conv2"], k=8, baseline="mean", progress=False)
    for unit, d in zip(truth.units, truth.damage["output_delta"]):
        assert result.verified[(unit.layer, unit.channel)] == pytest.approx(float(d), rel=1e-10)


def test_fewer_ablations_than_units_when_gndi_is_good():
    model = Linear().double().eval()
    generator = torch.Generator().manual_seed(3)
    data = [torch.randn(20, 6, generator=generator, dtype=torch.float64) for _ in range(2)]
    result = verify_top_k(model, data, ["inner"], k=5, channel_dim=-1, progress=False)
    full = verify_top_k(model, data, ["inner"], k=48, channel_dim=-1, progress=False)
    assert result.units == _top(full.verified, 5)
    assert result.stopped == "rule"
    assert result.n_ablations < result.n_units / 2
    assert result.ratio == pytest.approx(1.0, abs=1e-6)  # first order is exact here
    assert result.miss_probability == 0.0


def test_groups_via_layer_mask(saturating):
    model, data = saturating
    # 8 channels x 6 x 6: group = (channel pair) x (top / bottom half) -> 8 groups
    channel = torch.arange(8).view(1, 8, 1, 1) // 2
    half = (torch.arange(6) >= 3).long().view(1, 1, 6, 1)
    mask = (channel * 2 + half).expand(1, 8, 6, 6).contiguous()
    result = verify_top_k(model, data, ["conv1"], k=3, layer_mask=mask, progress=False)
    truth = {}
    for g in range(8):
        total, count = 0.0, 0
        for x, _ in data:
            with torch.no_grad():
                clean = model(x)
            handle = model.conv1.register_forward_hook(
                lambda m, a, h, g=g: torch.where(mask == g, torch.zeros_like(h), h)
            )
            try:
                with torch.no_grad():
                    out = model(x)
            finally:
                handle.remove()
            total += float(torch.linalg.vector_norm(clean - out, dim=1).sum())
            count += x.shape[0]
        truth[("conv1", g)] = total / count
    assert result.n_units == 8
    assert result.settings["granularity"] == "group"
    assert result.units == _top(truth, 3)
    np.testing.assert_allclose(result.damages, [truth[u] for u in result.units], rtol=1e-10)


def test_untraceable_model_falls_back_to_hooks():
    model = Branchy().double().eval()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(24, 5, generator=generator, dtype=torch.float64)
    data = [(x, torch.randint(0, 3, (24,), generator=generator))]
    truth = _brute_force(model, data, ["inner"])
    result = verify_top_k(model, data, ["inner"], k=4, channel_dim=-1, progress=False)
    assert result.engine == "hooks"
    assert result.units == _top(truth, 4)
    with pytest.raises(ValueError, match="torch.fx"):
        verify_top_k(model, data, ["inner"], k=4, channel_dim=-1, engine="suffix", progress=False)


def test_layer_granularity(saturating):
    model, data = saturating
    result = verify_top_k(model, data, ["conv1", "conv2"], k=1, granularity="layer", progress=False)
    assert result.n_units == 2 and result.units[0][1] is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 17}, ValueError, "larger than the number of units"),
        ({"k": 0}, ValueError, "k must be an integer >= 1"),
        ({"k": 2.5}, ValueError, "k must be an integer"),
        ({"k": 2, "damage": "bogus"}, ValueError, "Unknown damage metric"),
        ({"k": 2, "damage": ["kl"]}, TypeError, "one metric name"),
        ({"k": 2, "granularity": "unit"}, ValueError, "granularity must be"),
        ({"k": 2, "engine": "fast"}, ValueError, "engine must be one of"),
        ({"k": 2, "quantile": 1.5}, ValueError, "quantile must be in"),
        ({"k": 2, "expected_misses": 0}, ValueError, "expected_misses must be > 0"),
        ({"k": 2, "units_per_pass": 0}, ValueError, "units_per_pass"),
        ({"k": 2, "audit": -1}, ValueError, "audit must be"),
    ],
)
def test_bad_input_gives_clear_errors(saturating, kwargs, error, match):
    model, data = saturating
    with pytest.raises(error, match=match):
        verify_top_k(model, data, ["conv1", "conv2"], progress=False, **kwargs)


def test_labelled_damage_on_unlabelled_data_is_refused(saturating):
    model, data = saturating
    with pytest.raises(ValueError, match="needs labelled data"):
        verify_top_k(model, [x for x, _ in data], ["conv1"], k=2, damage="kl", progress=False)


def test_model_is_left_unchanged(saturating):
    model, data = saturating
    model.conv2.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        verify_top_k(model, data, ["conv1", "conv2"], k=3, progress=False)
        assert not any(m.training for m in model.modules())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n]) and p.grad is None
    finally:
        model.conv2.weight.requires_grad_(True)


def test_result_prints_and_serialises(saturating):
    model, data = saturating
    result = verify_top_k(model, data, ["conv1", "conv2"], k=3, progress=False)
    assert isinstance(result, VerifyResult)
    text = str(result)
    assert "true damage" in text and result.names[0] in text and "ablated" in text
    assert "| rank | unit |" in result.to_markdown()
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["k"] == 3 and len(payload["top_k"]) == 3
    assert payload["n_ablations"] == result.n_ablations and payload["n_units"] == 16


def test_screen_and_verify_with_an_oracle():
    rng = np.random.default_rng(0)
    units = [("layer", i) for i in range(200)]
    true = rng.lognormal(size=200)
    # true/predicted ratios take two values, so the calibrated ratio is their maximum and no unit
    # can hide above it: the rule must return the exact top k
    ratios = rng.choice([0.8, 1.25], size=200)
    scores = {u: float(d / r) for u, d, r in zip(units, true, ratios)}
    damage = dict(zip(units, true.tolist()))
    calls = []

    def oracle(chunk):
        calls.append(len(chunk))
        return {u: damage[u] for u in chunk}

    result = screen_and_verify(scores, oracle, k=10, units_per_pass=4)
    assert result.units == _top(damage, 10)
    assert result.n_ablations == sum(calls) < 100
    assert max(calls[2:], default=0) <= 4  # after the audit and the top k: passes of <= 4
    with pytest.raises(ValueError, match=">= 0"):
        screen_and_verify({("a", 0): -1.0}, oracle, k=1)


# ------------------------------------------------------------------------------------------------
# the command line


@pytest.fixture
def digits_weights(tmp_path):
    from captum_gndi.zoo import digits_resnet

    torch.manual_seed(0)
    path = tmp_path / "digits.pt"
    torch.save(digits_resnet().state_dict(), path)
    return str(path)


def test_cli_verify_writes_markdown_and_json(digits_weights, tmp_path, capsys):
    from captum_gndi.cli import main

    out = tmp_path / "report"
    argv = ["verify", "--model", "digits-resnet", "--weights", digits_weights, "--limit", "24",
            "--kind", "branch", "--k", "3", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Exact top 3 units by output_delta" in printed and "report written to" in printed
    payload = json.loads((out / "verify.json").read_text())
    assert payload["k"] == 3 and payload["model"] == "digits-resnet"
    assert payload["n_ablations"] <= payload["n_units"]
    assert "| rank | unit |" in (out / "verify.md").read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--k", "0"], "--k must be >= 1"), (["--k", "100000"], "larger than the number of units")],
)
def test_cli_verify_bad_input_is_one_line(digits_weights, capsys, extra, message):
    from captum_gndi.cli import main

    argv = ["verify", "--model", "digits-resnet", "--weights", digits_weights, "--limit", "24",
            "--kind", "branch", "--quiet", *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_verify_help(capsys):
    from captum_gndi.cli import main

    with pytest.raises(SystemExit) as done:
        main(["verify", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--granularity {layer,channel}" in text and "--kind" in text and "--k K" in text
