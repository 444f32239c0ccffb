"""``probe_exact``: the most probable classes read out exactly, random probes for the rest.

Specifications on a tiny LM with a vocabulary of 50 and a peaked softmax: the estimate of the
squared L2 / Fisher norm is unbiased (its mean over many probe seeds equals the exact norm
within a few standard errors), exact when ``probe_exact`` covers the vocabulary, less variable
than plain probes with the same number of probes, and its ``probe_stderr`` matches the spread
over seeds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_gndi import LayerGNDI, compute_gndi

VOCAB = 50


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class PeakedLM(nn.Module):
    """Token embeddings -> tanh mixer -> logits over 50 classes, a few of them made likely by a
    large output bias (top 3 classes: about 90% of the softmax mass)."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, width)
        self.mix = nn.Linear(width, width)
        self.act = nn.Tanh()
        self.out = nn.Linear(width, VOCAB)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[:3] = torch.tensor([5.0, 4.5, 4.0])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.mix(self.embed(ids))))  # (N, T, V)


class LastPosition(nn.Module):
    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(ids)[:, -1]  # (N, V)


def ids(n: int = 3, t: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(1))


def effects_by_jvp(model: PeakedLM, x: torch.Tensor) -> torch.Tensor:
    """``dz = J h`` (zero baseline at ``act``) by ``torch.func.jvp``, independent of the
    library: ``(N, T, V)``."""
    with torch.no_grad():
        h = model.act(model.mix(model.embed(x)))
    return torch.func.jvp(model.out, (h,), (h,))[1]


def squared_norm_by_hand(model: PeakedLM, x: torch.Tensor, norm) -> torch.Tensor:
    dz = effects_by_jvp(model, x)
    if norm == 2:
        return dz.pow(2).sum((1, 2))
    with torch.no_grad():
        pi = torch.softmax(model(x), -1)
    return ((pi * dz * dz).sum(-1) - (pi * dz).sum(-1) ** 2).sum(-1)


def estimates(model, x, norm, seeds, **kwargs):
    """Squared scores and probe standard errors over probe seeds: ``(seeds, N)`` each."""
    gndi = LayerGNDI(model, model.act if hasattr(model, "act") else model.lm.act)
    squares, stderrs = [], []
    for seed in seeds:
        scores = gndi.attribute(x, norm=norm, mode="reverse", probe_seed=seed, **kwargs)
        squares.append(scores.pow(2))
        stderrs.append(gndi.probe_stderr)
    return torch.stack(squares), torch.stack(stderrs)


@pytest.mark.parametrize("norm", [2, "fisher"])
def test_unbiased_over_seeds_with_several_positions(norm):
    model, x = PeakedLM().eval(), ids()
    exact = squared_norm_by_hand(model, x, norm)
    squares, _ = estimates(model, x, norm, range(300), n_probes=4, probe_exact=3)
    mean, se = squares.mean(0), squares.std(0) / 300**0.5
    assert (se > 0).all()
    assert ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)


@pytest.mark.parametrize("norm", [2, "fisher"])
def test_exact_when_the_exact_classes_cover_the_vocabulary(norm):
    model, x = PeakedLM().eval(), ids()
    gndi = LayerGNDI(model, model.act)
    scores = gndi.attribute(x, norm=norm, n_probes=2, probe_exact=VOCAB)
    torch.testing.assert_close(scores.pow(2), squared_norm_by_hand(model, x, norm))
    assert (gndi.probe_stderr == 0).all()
    # one more exact row per position than classes (the rest's mean, here empty)
    assert gndi.attribute(x, norm=norm, n_probes=2, probe_exact=VOCAB + 7).allclose(scores)


@pytest.mark.parametrize("norm, at_most", [(2, 1.0), ("fisher", 0.2)])
def test_lower_variance_than_plain_probes_on_a_peaked_softmax(norm, at_most):
    """Fisher: the rest holds ~13% of the softmax mass, so its probes' variance shrinks with
    that mass squared (measured: 0.005-0.1 of plain probes' variance). L2 weighs every class
    alike: the exact classes and the rest's common shift only remove their share of ``dz``
    (measured here: 0.77-1.0)."""
    model = LastPosition(PeakedLM()).eval()
    x = ids(4, 3)
    plain, _ = estimates(model, x, norm, range(200), n_probes=8)
    split, _ = estimates(model, x, norm, range(200), n_probes=8, probe_exact=3)
    ratio = split.var(0) / plain.var(0)
    assert (ratio < at_most).all(), ratio


@pytest.mark.parametrize("norm", [2, "fisher"])
def test_probe_stderr_matches_the_spread_over_seeds(norm):
    model = LastPosition(PeakedLM()).eval()
    x = ids(4, 3)
    squares, stderr = estimates(model, x, norm, range(300), n_probes=8, probe_exact=2)
    empirical = squares.std(0)  # the spread of one estimate over seeds
    reported = stderr.pow(2).mean(0).sqrt()  # its reported standard error, root mean square
    torch.testing.assert_close(reported, empirical, rtol=0.15, atol=0.0)


def test_compute_gndi_takes_probe_exact():
    model = LastPosition(PeakedLM()).eval()
    data = [ids(3, 2), ids(2, 2)]
    exact = compute_gndi(model, data, {"act": model.lm.act}, norm="fisher", progress=False)
    full = compute_gndi(
        model,
        data,
        {"act": model.lm.act},
        norm="fisher",
        n_probes=3,
        probe_exact=VOCAB,
        progress=False,
    )
    torch.testing.assert_close(full.mean["act"], exact.mean["act"])
    assert full.settings["probe_exact"] == VOCAB
    assert float(full.probe_stderr["act"]) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"probe_exact": 4}, "pass n_probes too"),
        ({"n_probes": 4, "probe_exact": -1}, "integer >= 0"),
        ({"n_probes": 4, "probe_exact": True}, "integer >= 0"),
        ({"n_probes": 4, "probe_exact": 2, "norm": 1}, "L2 or the Fisher norm"),
    ],
)
def test_bad_probe_exact(kwargs, match):
    model = PeakedLM().eval()
    with pytest.raises(ValueError, match=match):
        LayerGNDI(model, model.act).attribute(ids(), **kwargs)
