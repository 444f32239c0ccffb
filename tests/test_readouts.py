"""The Fisher norm and random probes, against direct computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_gndi import LayerGNDI, compute_gndi


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class TinyLM(nn.Module):
    """Token embeddings -> a nonlinear mixer -> per-position logits over a vocabulary of 11."""

    def __init__(self, vocab: int = 11, width: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.act = nn.Tanh()
        self.out = nn.Linear(width, vocab)

    def forward(self, ids):
        return self.out(self.act(self.mix(self.embed(ids))))  # (N, T, V)


def effects_by_jvp(model: TinyLM, ids: torch.Tensor) -> torch.Tensor:
    """dz = J_{>act}(h) h (zero baseline) by torch.func.jvp: (N, T, V)."""
    with torch.no_grad():
        h = model.act(model.mix(model.embed(ids)))
    return torch.func.jvp(model.out, (h,), (h,))[1]


def fisher_by_hand(logits: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    pi = torch.softmax(logits, -1)
    quad = (pi * dz * dz).sum(-1) - (pi * dz).sum(-1) ** 2  # dz^T (diag(pi) - pi pi^T) dz
    return quad.sum(-1).sqrt()


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_exact_fisher_norm_equals_the_quadratic_form(mode):
    model = TinyLM().eval()
    ids = torch.randint(0, 11, (3, 4))
    scores = LayerGNDI(model, model.act).attribute(ids, norm="fisher", mode=mode)
    with torch.no_grad():
        logits = model(ids)
    torch.testing.assert_close(scores, fisher_by_hand(logits, effects_by_jvp(model, ids)))


def test_fisher_is_twice_the_kl_to_second_order():
    model = TinyLM().eval()
    ids = torch.randint(0, 11, (2, 3))
    with torch.no_grad():
        logits = model(ids)
    dz = 1e-3 * effects_by_jvp(model, ids)
    log_p, log_q = torch.log_softmax(logits, -1), torch.log_softmax(logits - dz, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).sum(-1)
    torch.testing.assert_close(fisher_by_hand(logits, dz) ** 2, 2 * kl, rtol=1e-2, atol=0)


@pytest.mark.parametrize("norm", [2, "fisher"])
def test_probes_are_unbiased_for_the_squared_norm(norm):
    model = TinyLM().eval()
    ids = torch.randint(0, 11, (2, 3))
    gndi = LayerGNDI(model, model.act)
    exact = gndi.attribute(ids, norm=norm, granularity="channel", channel_dim=-1) ** 2
    estimates = torch.stack(
        [
            gndi.attribute(
                ids, norm=norm, n_probes=8, probe_seed=seed, granularity="channel", channel_dim=-1
            )
            ** 2
            for seed in range(120)
        ]
    )
    se = gndi.probe_stderr
    assert se.shape == exact.shape and (se > 0).all()
    mean, spread = estimates.mean(0), estimates.std(0) / 120**0.5
    assert ((mean - exact).abs() < 4.5 * spread + 1e-12).all()  # unbiased within 4.5 s.e.
    # one estimate's reported standard error matches the spread of the estimates
    ratio = (estimates.std(0) / exact.clamp_min(1e-12)).median()
    assert 0.05 < float(ratio) < 2.0


def test_probes_converge_and_cost_does_not_depend_on_the_output_size():
    model = TinyLM(vocab=50).eval()
    ids = torch.randint(0, 50, (4, 5))
    gndi = LayerGNDI(model, model.act)
    exact = gndi.attribute(ids, granularity="channel", channel_dim=-1)
    many = gndi.attribute(ids, granularity="channel", channel_dim=-1, n_probes=1500)
    torch.testing.assert_close(many, exact, rtol=0.15, atol=0)
    calls = []
    handle = model.out.register_full_backward_hook(lambda *a: calls.append(1))
    try:
        gndi.attribute(ids, n_probes=16, mode="reverse")
    finally:
        handle.remove()
    assert len(calls) == 16  # one backward pass per probe, not 5 x 50 = 250


def test_compute_gndi_with_fisher_probes_reports_the_probe_error():
    model = TinyLM().eval()
    data = [torch.randint(0, 11, (3, 4)) for _ in range(2)]
    layers = {"act": model.act}
    exact = compute_gndi(model, data, layers, norm="fisher", progress=False)
    probes = compute_gndi(model, data, layers, norm="fisher", n_probes=800, progress=False)
    torch.testing.assert_close(probes.mean["act"], exact.mean["act"], rtol=0.15, atol=0)
    assert probes.probe_stderr is not None and 0 < float(probes.probe_stderr["act"]) < 0.1 * float(
        exact.mean["act"]
    )
    assert probes.settings["p"] == "fisher" and probes.settings["n_probes"] == 800


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_probes": 0}, "n_probes must be an integer >= 1"),
        ({"n_probes": 4, "norm": 1}, "L2 or the Fisher norm"),
        ({"n_probes": 4, "mode": "forward"}, "reverse mode"),
        ({"n_probes": 4, "signed": True, "target": 0}, "signed=True needs the exact"),
        ({"norm": "fisher", "target": 0}, "class dimension"),
    ],
)
def test_bad_readout_input(kwargs, match):
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5)).eval()
    with pytest.raises(ValueError, match=match):
        LayerGNDI(model, model[1]).attribute(torch.randn(2, 3), **kwargs)
