"""Specification of the G-NDI engine: every mode, granularity and integration rule agree with
independent computations (split-model JVPs, brute-force interventions, exact effects)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from captum_gndi import LayerGNDI
from captum_gndi.engine import (
    ScoringJob,
    choose_mode,
    compute_effects,
    forward_effects,
    reverse_effects,
    true_effects,
)
from captum_gndi.runs import make_runner


@pytest.fixture(autouse=True)
def _float64():
    """Every model and tensor here is float64, so agreement can be asked to 1e-5 relative."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def assert_rel_close(actual, expected, rtol=1e-5):
    """Agreement to ``rtol`` relative to the largest magnitude of the expected values."""
    actual, expected = torch.as_tensor(actual).detach(), torch.as_tensor(expected).detach()
    scale = expected.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(scale))


# --- models -----------------------------------------------------------------------------------


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)
    ).eval()


def cnn() -> nn.Sequential:
    """Conv/BatchNorm (eval statistics) with an in-place ReLU right after the scored BN."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 4),
    )
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    return model.eval()


class WithAux(nn.Module):
    """A layer returning ``(activation, auxiliary)``, as attention layers often do."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        h = self.linear(x)
        return h, h.detach().sum()


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.first = WithAux()
        self.second = nn.Linear(4, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h, _aux = self.first(x)
        return self.head(torch.sigmoid(self.second(torch.tanh(h))))


class TwoInputs(nn.Module):
    """Two input tensors plus a non-tensor additional forward argument."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)
        self.mix = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x1, x2, scale):
        return self.out(torch.tanh(self.mix(torch.tanh(self.a(x1) + scale * self.b(x2)))))


class TokenNet(nn.Module):
    """``(N, T, D)`` states with channels last, like a transformer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.proj = nn.Linear(3, 4)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.mix(torch.tanh(self.proj(x)))).mean(1))


class _LegacyTanh(torch.autograd.Function):
    """An old-style Function (no setup_context): torch.func refuses it, autograd supports it."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        ctx.save_for_forward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)

    @staticmethod
    def jvp(ctx, tangent):
        (y,) = ctx.saved_tensors
        return tangent * (1 - y * y)


class LegacyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(_LegacyTanh.apply(self.a(x)))


def cases():
    """(name, model, inputs, additional_forward_args, layers, channel_dim)."""
    torch.manual_seed(10)
    m, c = mlp(), cnn()
    t, two, seq, legacy = (net().eval() for net in (TupleNet, TwoInputs, TokenNet, LegacyNet))
    return [
        ("mlp", m, (torch.randn(6, 5),), None, [m[0], m[2]], 1),
        ("cnn", c, (torch.randn(3, 2, 5, 5),), None, [c[1], c[3], c[4]], 1),
        ("tuple", t, (torch.randn(4, 4),), None, [t.first, t.second], 1),
        ("two-inputs", two, (torch.randn(4, 3), torch.randn(4, 2)), (0.7,), [two.a, two.mix], 1),
        ("sequence", seq, (torch.randn(3, 5, 3),), None, [seq.proj, seq.mix], -1),
        ("legacy-function", legacy, (torch.randn(4, 3),), None, [legacy.a], 1),
    ]


CASE_IDS = ["mlp", "cnn", "tuple", "two-inputs", "sequence", "legacy-function"]


def make_batch(model, inputs, forward_args, layers, target=None, channel_dim=1, baselines=None):
    return ScoringJob(
        run=make_runner(model, inputs, forward_args, target),
        layers=layers,
        labels=[f"layer{i}" for i in range(len(layers))],
        baselines=baselines or [None] * len(layers),
        channel_dim=channel_dim,
    )


# --- all layers at once: the modes agree ------------------------------------------------------


@pytest.mark.parametrize("index", range(len(CASE_IDS)), ids=CASE_IDS)
@pytest.mark.parametrize("target", [None, 1])
def test_all_modes_agree_on_every_layer(index, target):
    _name, model, inputs, args, layers, channel_dim = cases()[index]
    gndi = LayerGNDI(model, layers)
    kwargs = dict(target=target, additional_forward_args=args, channel_dim=channel_dim)
    results = {
        mode: {
            gran: gndi.attribute(inputs, mode=mode, granularity=gran, **kwargs)
            for gran in ("layer", "channel")
        }
        for mode in ("forward", "reverse", "auto")
    }
    reference = results["reverse"]
    for mode in ("forward", "auto"):
        for gran in ("layer", "channel"):
            for got, want in zip(results[mode][gran], reference[gran]):
                assert_rel_close(got, want)
    assert all(score.abs().max() > 0 for score in reference["layer"])


@pytest.mark.parametrize("index", range(len(CASE_IDS)), ids=CASE_IDS)
def test_reverse_agrees_with_jvp_on_each_layer_alone(index):
    """All layers from one reverse pass == each layer scored alone by torch.func.jvp."""
    _name, model, inputs, args, layers, channel_dim = cases()[index]
    batch = make_batch(model, inputs, args, layers, channel_dim=channel_dim)
    together = reverse_effects(batch)
    for position, layer in enumerate(layers):
        alone = forward_effects(make_batch(model, inputs, args, [layer], channel_dim=channel_dim))
        assert_rel_close(together[position], alone[0])


def test_models_torch_func_cannot_transform_fall_back_to_one_pass_per_tangent(caplog):
    _name, model, inputs, args, layers, channel_dim = cases()[5]
    batch = make_batch(model, inputs, args, layers)
    with caplog.at_level(logging.DEBUG, logger="captum_gndi.engine"):
        effects = forward_effects(batch, "channel")
    assert "one pass per tangent" in caplog.text
    assert_rel_close(effects[0], reverse_effects(batch, "channel")[0])


def test_chunk_sizes_and_layer_order_do_not_change_results():
    _name, model, inputs, args, layers, channel_dim = cases()[1]
    batch = make_batch(model, inputs, args, layers)
    backwards = make_batch(model, inputs, args, layers[::-1])  # groups against execution order
    for granularity in ("layer", "channel"):
        big = forward_effects(batch, granularity)
        small = forward_effects(batch, granularity, tangent_chunk=1)
        reordered = forward_effects(backwards, granularity)[::-1]
        batched_vjps = reverse_effects(batch, granularity, vjp_chunk=3)
        for a, b, c, d in zip(big, small, reordered, batched_vjps):
            assert_rel_close(b, a, rtol=1e-12)
            assert_rel_close(c, a, rtol=1e-12)
            assert_rel_close(d, a)


# --- choosing the engine ----------------------------------------------------------------------


def test_choose_mode_rule():
    # passes: reverse 1 + K; forward round(sqrt(L)) groups + L tangents
    assert choose_mode("auto", 27, 10, "layer") == "reverse"  # 11 < 5 + 27
    assert choose_mode("auto", 8, 9, "layer") == "reverse"  # 10 < 3 + 8
    assert choose_mode("auto", 8, 10, "layer") == "forward"  # a tie, 11 = 3 + 8, goes forward
    assert choose_mode("auto", 12, 384, "layer") == "forward"  # 385 > 3 + 12
    assert choose_mode("auto", 12, 384, "channel", n_tangents=12 * 384) == "reverse"
    assert choose_mode("auto", 1, 1, "unit") == "reverse"
    assert choose_mode("forward", 1, 100, "layer") == "forward"
    with pytest.raises(ValueError, match="mode must be one of"):
        choose_mode("backward", 1, 1, "layer")


class Counting(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_auto_reuses_its_probe_pass_and_logs_the_choice(caplog):
    """With fewer outputs than layers, auto runs exactly one forward pass (reverse mode)."""
    model = Counting(mlp())
    layers = [model.model[0], model.model[2], model.model[4]]
    batch = make_batch(model, (torch.randn(4, 5),), None, layers, target=0)
    with caplog.at_level(logging.DEBUG, logger="captum_gndi.engine"):
        effects, used = compute_effects(batch, mode="auto")
    assert used == "reverse" and model.calls == 1
    assert "chose reverse (3 layers, 1 output dims" in caplog.text
    assert_rel_close(effects[1], forward_effects(batch)[1])


def test_auto_picks_forward_when_outputs_outnumber_layers(caplog):
    model = mlp()  # 3 outputs, 1 layer
    batch = make_batch(model, (torch.randn(4, 5),), None, [model[2]])
    with caplog.at_level(logging.DEBUG, logger="captum_gndi.engine"):
        effects, used = compute_effects(batch, mode="auto")
    assert used == "forward" and "chose forward" in caplog.text
    assert_rel_close(effects[0], reverse_effects(batch)[0])


# --- channel and unit granularity -------------------------------------------------------------


def test_channel_scores_equal_per_channel_jvps_on_the_split_model():
    model = cnn()
    x = torch.randn(3, 2, 5, 5)
    scores = LayerGNDI(model, model[1]).attribute(x, granularity="channel")
    assert scores.shape == (3, 4)
    prefix, suffix = model[:2], model[2:]
    with torch.no_grad():
        h = prefix(x)
    for c in range(4):
        tangent = torch.zeros_like(h)
        tangent[:, c] = h[:, c]  # zero baseline: delta = h
        _, jvp = torch.func.jvp(lambda z: suffix(z.clone()), (h,), (tangent,))
        assert_rel_close(scores[:, c], jvp.norm(dim=1))


class LinearTail(nn.Module):
    """Nonlinear up to ``conv``, linear (conv, average pool, linear) after it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.tail = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 2)
        )

    def forward(self, x):
        return self.tail(torch.tanh(self.conv(torch.tanh(x))))


def ablate(model, module, x, mask_fn):
    """Brute force, written independently of captum_gndi: zero a slice of module's output."""

    def hook(_module, _args, output):
        output = output.clone()
        output[mask_fn(output)] = 0.0
        return output

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(x)
    finally:
        handle.remove()


def test_channel_scores_equal_brute_force_channel_ablation_on_a_linear_tail():
    model = LinearTail().eval()
    layer = model.tail[0]  # everything after it is linear
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        reference = model(x)
    scores = LayerGNDI(model, layer).attribute(x, granularity="channel", mode="reverse")
    for c in range(4):

        def channel(out, c=c):
            mask = torch.zeros_like(out, dtype=torch.bool)
            mask[:, c] = True
            return mask

        exact = (reference - ablate(model, layer, x, channel)).norm(dim=1)
        assert_rel_close(scores[:, c], exact, rtol=1e-10)


def test_unit_scores_equal_brute_force_unit_ablation_on_a_linear_tail():
    model = LinearTail().eval()
    layer = model.tail[0]
    x = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        reference = model(x)
    scores = LayerGNDI(model, layer).attribute(x, granularity="unit", target=1)
    assert scores.shape == (2, 4, 4, 4)
    for index in [(0, 0, 0), (1, 2, 3), (3, 3, 1), (2, 1, 2)]:

        def unit(out, index=index):
            mask = torch.zeros_like(out, dtype=torch.bool)
            mask[(slice(None), *index)] = True
            return mask

        exact = (reference - ablate(model, layer, x, unit))[:, 1].abs()
        assert_rel_close(scores[(slice(None), *index)], exact, rtol=1e-10)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_channel_and_unit_effects_sum_to_the_layer_effect(mode):
    """Linearity of J: the signed per-channel (per-unit) effects add up to the layer's."""
    model = cnn()
    x = torch.randn(3, 2, 5, 5)
    batch = make_batch(model, (x,), None, [model[1], model[3]], target=2)
    layer, _ = compute_effects(batch, mode, "layer")
    channel, _ = compute_effects(batch, mode, "channel")
    unit, _ = compute_effects(batch, "reverse", "unit")
    for lay, ch, un in zip(layer, channel, unit):
        assert ch.shape[:2] == (1, 3) and un.shape == (*ch.shape, 5, 5)
        assert_rel_close(ch.sum(-1), lay)
        assert_rel_close(un.flatten(2).sum(-1), lay)
    # and through the public API: with norm=1 each channel score is |its signed effect|
    scores = LayerGNDI(model, model[1]).attribute(x, target=2, norm=1, granularity="channel")
    assert_rel_close(scores, channel[0][0].abs())


def test_channel_granularity_of_an_unused_layer_is_zero():
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 3, 1)

        def forward(self, x):
            self.unused(x)
            return self.used(x).mean((2, 3))

    model = Unused().eval()
    x = torch.randn(2, 2, 3, 3)
    for mode in ("forward", "reverse"):
        scores = LayerGNDI(model, [model.unused, model.used]).attribute(
            x, mode=mode, granularity="channel"
        )
        assert torch.equal(scores[0], torch.zeros(2, 3))
        assert scores[1].abs().min() > 0


def test_channel_dim_zero_is_rejected():
    model = cnn()
    with pytest.raises(ValueError, match="channel_dim=0"):
        LayerGNDI(model, model[1]).attribute(
            torch.randn(2, 2, 5, 5), granularity="channel", channel_dim=0
        )


# --- path-integrated G-NDI --------------------------------------------------------------------


def test_convergence_delta_shrinks_with_the_number_of_steps():
    model = mlp()
    x = torch.randn(8, 5) * 2
    gndi = LayerGNDI(model, model[0])
    deltas = {
        k: gndi.attribute(x, n_steps=k, return_convergence_delta=True)[1].mean().item()
        for k in (1, 2, 4, 8, 16)
    }
    assert deltas[1] > deltas[2] > deltas[4] > deltas[8] > deltas[16]
    assert deltas[16] < 1e-6 * deltas[1]
    exact = true_effects(make_batch(model, (x,), None, [model[0]]))[0].norm(dim=0)
    assert_rel_close(gndi.attribute(x, n_steps=16), exact, rtol=1e-6)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_path_integrated_modes_agree_and_one_step_is_first_order(method):
    model = cnn()
    x = torch.randn(2, 2, 5, 5)
    gndi = LayerGNDI(model, [model[1], model[3]])
    for granularity in ("layer", "channel"):
        forward = gndi.attribute(
            x, n_steps=3, method=method, mode="forward", granularity=granularity
        )
        reverse = gndi.attribute(
            x, n_steps=3, method=method, mode="reverse", granularity=granularity
        )
        for a, b in zip(forward, reverse):
            assert_rel_close(a, b)
    one_step = gndi.attribute(x, n_steps=1, method=method)
    first_order = gndi.attribute(x)
    for a, b in zip(one_step, first_order):
        assert torch.equal(a, b)


# --- the user's model is left as it was -------------------------------------------------------


def test_vectorised_forward_and_reverse_leave_the_model_untouched():
    model = cnn()
    model[3].weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 2, 5, 5)
    for mode in ("forward", "reverse"):
        LayerGNDI(model, [model[1], model[4]]).attribute(x, mode=mode, granularity="channel")
    assert not model.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
