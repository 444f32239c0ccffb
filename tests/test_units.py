"""Units beyond layers: groups (layer_mask), several unit dimensions, per-unit path integration,
joint multi-tensor layers and signed effects, each against an independent computation."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerFeatureAblation
from torch import nn

from captum_gndi import LayerGNDI


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class Split(nn.Module):
    """prefix -> layer -> nonlinear suffix, with the suffix callable on its own."""

    def __init__(self, d_in: int = 5, shape: tuple[int, ...] = (3, 4, 2), d_out: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.shape = shape
        self.prefix = nn.Linear(d_in, int(torch.tensor(shape).prod()))
        self.layer = nn.Tanh()
        self.suffix = nn.Sequential(
            nn.Flatten(),
            nn.Linear(int(torch.tensor(shape).prod()), 7),
            nn.Softplus(),
            nn.Linear(7, d_out),
        )

    def forward(self, x):
        return self.suffix(self.layer(self.prefix(x).reshape(-1, *self.shape)))

    def activation(self, x):
        with torch.no_grad():
            return self.layer(self.prefix(x).reshape(-1, *self.shape))


def jvp_norms(model: Split, h: torch.Tensor, tangent: torch.Tensor) -> torch.Tensor:
    """||J_suffix(h) tangent||_2 per example, by torch.func.jvp (independent of captum_gndi)."""
    _, out = torch.func.jvp(model.suffix, (h,), (tangent,))
    return out.norm(dim=1)


def ablated(model: Split, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The output with the elements where ``keep`` is False set to zero (brute force)."""
    with torch.no_grad():
        return model.suffix(model.activation(x) * keep)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_groups_equal_one_jvp_per_group(mode):
    model = Split().eval()
    x = torch.randn(4, 5)
    mask = torch.tensor([[0, 1], [2, 2], [1, 0], [3, 3]]).repeat(3, 1, 1)[None]  # (1, 3, 4, 2)
    scores = LayerGNDI(model, model.layer).attribute(x, layer_mask=mask, mode=mode)
    assert scores.shape == (4, 4)
    h = model.activation(x)
    for g in range(4):
        expected = jvp_norms(model, h, h * (mask == g))  # zero baseline: delta = h
        torch.testing.assert_close(scores[:, g], expected)


def test_per_example_mask_and_ground_truth_from_captums_layer_feature_ablation():
    """With a linear suffix the first-order score is exact: it equals Captum's own ablation."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).eval()
    x = torch.randn(3, 4)
    mask = torch.stack([torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([2, 1, 0, 2, 1, 0])] * 2)[:3]
    target = 1
    scores = LayerGNDI(model, model[1]).attribute(x, target=target, layer_mask=mask, signed=True)
    captum = LayerFeatureAblation(model, model[1]).attribute(
        x, target=target, layer_mask=mask, layer_baselines=0.0
    )  # (N, 6): each element carries its group's f(x) - f_do(x)
    per_group = torch.stack(
        [captum[torch.arange(3), (mask == g).float().argmax(1)] for g in range(3)], 1
    )
    torch.testing.assert_close(scores, per_group)


def test_channel_dim_tuple_gives_position_by_head_scores():
    model = Split(shape=(3, 4, 2)).eval()  # (N, T=3, H=4, d=2)
    x = torch.randn(2, 5)
    scores = LayerGNDI(model, model.layer).attribute(x, granularity="channel", channel_dim=(1, 2))
    assert scores.shape == (2, 3, 4)
    h = model.activation(x)
    for t, head in [(0, 0), (2, 3), (1, 2)]:
        tangent = torch.zeros_like(h)
        tangent[:, t, head] = h[:, t, head]
        torch.testing.assert_close(scores[:, t, head], jvp_norms(model, h, tangent))
    # the reversed order transposes, and a single dimension is the old channel granularity
    swapped = LayerGNDI(model, model.layer).attribute(x, granularity="channel", channel_dim=(2, 1))
    torch.testing.assert_close(swapped, scores.transpose(1, 2))
    heads = LayerGNDI(model, model.layer).attribute(x, granularity="channel", channel_dim=2)
    assert heads.shape == (2, 4)


@pytest.mark.parametrize("granularity,kwargs", [("channel", {}), ("group", {})])
def test_per_unit_path_integration_converges_to_each_units_own_intervention(granularity, kwargs):
    model = Split(shape=(3, 4, 2)).eval()
    x = torch.randn(3, 5) * 2  # large activations: first order is visibly wrong
    h = model.activation(x)
    with torch.no_grad():
        reference = model.suffix(h)
    if granularity == "channel":
        args = {"granularity": "channel", "channel_dim": 1}
        keeps = [torch.ones_like(h).index_fill(1, torch.tensor([c]), 0.0) for c in range(3)]
    else:
        mask = (torch.arange(24).reshape(1, 3, 4, 2) % 5).long()
        args = {"layer_mask": mask}
        keeps = [(mask != g).double().expand_as(h) for g in range(5)]
    exact = torch.stack([(reference - model.suffix(h * keep)).norm(dim=1) for keep in keeps], 1)
    gndi = LayerGNDI(model, model.layer)
    scale = float(exact.abs().max())

    def error(**extra) -> float:
        return float((gndi.attribute(x, mode="forward", **args, **extra) - exact).abs().max())

    first, two, many = error(), error(n_steps=2), error(n_steps=16)
    assert first > 1e-3 * scale  # first order really is off
    assert first > two > many and many < 1e-9 * scale  # Gauss-Legendre: exact to rounding
    midpoint = [error(n_steps=n, method="riemann_middle") for n in (4, 16, 64)]
    assert midpoint[0] > 8 * midpoint[1] > 64 * midpoint[2]  # O(1/n^2): 16x per 4x steps
    assert midpoint[2] < 1e-3 * first
    # reverse mode computes the same per-unit paths
    torch.testing.assert_close(
        gndi.attribute(x, n_steps=8, mode="reverse", **args),
        gndi.attribute(x, n_steps=8, mode="forward", **args),
    )


def test_unit_granularity_path_integration_matches_single_neuron_ablation():
    model = Split(shape=(2, 2, 1)).eval()
    x = torch.randn(2, 5) * 2
    h = model.activation(x)
    with torch.no_grad():
        reference = model.suffix(h)
    scores = LayerGNDI(model, model.layer).attribute(x, granularity="unit", n_steps=24)
    assert scores.shape == (2, 2, 2, 1)
    for index in [(0, 0, 0), (1, 1, 0), (0, 1, 0)]:
        keep = torch.ones_like(h)
        keep[(slice(None), *index)] = 0.0
        exact = (reference - model.suffix(h * keep)).norm(dim=1)
        torch.testing.assert_close(scores[(slice(None), *index)], exact, rtol=1e-6, atol=1e-9)


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 4)

    def forward(self, x):
        return torch.tanh(self.a(x)), torch.sigmoid(self.b(x))


class JointNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.pair = Pair()
        self.mix = nn.Bilinear(4, 4, 2)
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        u, v = self.pair(x)
        return self.head(torch.tanh(self.mix(u, v)))


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_joint_multi_tensor_layer_against_a_hand_written_joint_intervention(mode):
    model = JointNet().eval()
    x = torch.randn(3, 3)
    with torch.no_grad():
        u, v = model.pair(x)
    tail = lambda u, v: model.head(torch.tanh(model.mix(u, v)))  # noqa: E731
    b_u, b_v = torch.full_like(u, 0.1), torch.zeros_like(v)
    _, jvp = torch.func.jvp(tail, (u, v), (u - b_u, v - b_v))
    scores, delta = LayerGNDI(model, model.pair).attribute(
        x, layer_baselines=(0.1, None), mode=mode, return_convergence_delta=True
    )
    torch.testing.assert_close(scores, jvp.norm(dim=1))
    with torch.no_grad():
        exact = tail(u, v) - tail(b_u, b_v)
    torch.testing.assert_close(delta, (exact - jvp).norm(dim=1))
    # and through the inputs of the consumer: the same joint intervention
    on_input = LayerGNDI(model, model.mix).attribute(
        x, layer_baselines=(0.1, None), mode=mode, attribute_to_layer_input=True
    )
    torch.testing.assert_close(on_input, scores)


def test_joint_layer_rejects_a_baseline_tuple_of_the_wrong_length():
    model = JointNet().eval()
    with pytest.raises(ValueError, match="one baseline per tensor"):
        LayerGNDI(model, model.pair).attribute(torch.randn(2, 3), layer_baselines=(0.0, 0.0, 0.0))


def test_signed_effect_is_attribution_patching_with_the_sign_flipped():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3), nn.Softplus(), nn.Linear(3, 2)
    )
    model.eval()
    clean, corrupt = torch.randn(2, 4), torch.randn(2, 4)

    def metric(x):  # a logit difference, one model call
        logits = model(x)
        return logits[:, 0] - logits[:, 1]

    layer = model[1]
    signed = LayerGNDI(metric, layer).attribute(clean, baselines=corrupt, signed=True)
    # attribution patching (Nanda 2023): (a_corr - a_clean) . dm/da at the clean run
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("clean", o))
    m = metric(clean)
    handle.remove()
    grad = torch.autograd.grad(m.sum(), acts["clean"])[0]
    with torch.no_grad():
        a_corr = layer(model[0](corrupt))
    atp = ((a_corr - acts["clean"].detach()) * grad).sum(1)
    torch.testing.assert_close(signed, -atp)
    assert (signed < 0).any() or (signed > 0).any()
    absolute = LayerGNDI(metric, layer).attribute(clean, baselines=corrupt)
    torch.testing.assert_close(absolute, signed.abs())


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"layer_mask": torch.zeros(1, 5, dtype=torch.long)}, ValueError, "does not broadcast"),
        ({"layer_mask": torch.zeros(1, 6)}, TypeError, "integer group ids"),
        ({"layer_mask": torch.tensor([[0, 0, 2, 2, 0, 0]])}, ValueError, "missing \\[1\\]"),
        ({"layer_mask": torch.tensor([[-1, 0, 0, 0, 0, 0]])}, ValueError, "0..G-1"),
        (
            {"layer_mask": torch.zeros(1, 6, dtype=torch.long), "granularity": "channel"},
            ValueError,
            "cannot be combined",
        ),
        ({"granularity": "channel", "channel_dim": (1, 1)}, ValueError, "same dimension twice"),
        ({"granularity": "channel", "channel_dim": (1, 3)}, ValueError, "channel_dim=3"),
        ({"granularity": "channel", "channel_dim": 1.5}, TypeError, "int or a tuple"),
        ({"signed": True}, ValueError, "one output per example"),
    ],
)
def test_bad_unit_input_names_the_fix(kwargs, error, match):
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    with pytest.raises(error, match=match):
        LayerGNDI(model, model[1]).attribute(torch.randn(2, 4), **kwargs)
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_number_as_layer_baseline_is_a_clear_error(value):
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    with pytest.raises(ValueError, match="give a finite number"):
        LayerGNDI(model, model[1]).attribute(torch.randn(2, 4), layer_baselines=value)
    assert not model[1]._forward_hooks
