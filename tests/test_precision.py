"""Half-precision models: bfloat16 / float16 passes with float32 effects, Fisher softmax and
reductions, within the tolerance documented in docs/benchmarks.md of the float32 scores, and a
warning where a half-precision effect overflows or underflows."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from captum_gndi import LayerGNDI, compute_gndi

pytest.importorskip("transformers")

from captum_gndi import find_layers, zoo  # noqa: E402

TOLERANCE = {torch.bfloat16: 0.03, torch.float16: 0.004}
"""Largest score difference against float32, as a share of the largest float32 score (the
trained polarity LM, every position x head: twice the largest difference measured by
benchmarks/bench_half_precision.py, 1.4% for bfloat16 and 0.18% for float16)."""

CLASSES = 16
"""The next-token logits of the first 16 vocabulary entries (16 backward passes in reverse mode
instead of 4,096)."""

SENTENCES = ["a gripping , funny and moving film", "dull , flat and far too long , sadly"]


@pytest.fixture(scope="module")
def polarity():
    lm, tokenizer = zoo.load_polarity_lm()
    rows = [tokenizer(s)["input_ids"][:8] for s in SENTENCES]  # 8 tokens each: no padding
    ids = torch.tensor(rows)
    assert (ids != tokenizer.pad_token_id).all()
    return lm, ids


def head_scores(model: nn.Module, ids: torch.Tensor, **options) -> torch.Tensor:
    heads = list(find_layers(model, "head").values())
    gndi = LayerGNDI(lambda x: model(x).logits[:, -1, :CLASSES], heads)
    scores = gndi.attribute(ids, granularity="channel", channel_dim=(1, 2), **options)
    assert all(s.dtype == torch.float32 for s in scores)  # the readout is float32
    return torch.stack(scores)


@pytest.mark.parametrize(
    "dtype, options",
    [
        (torch.bfloat16, dict(mode="reverse")),
        (torch.bfloat16, dict(mode="forward")),
        (torch.bfloat16, dict(norm="fisher", mode="reverse")),
        (torch.float16, dict(mode="reverse")),
    ],
    ids=["bf16-reverse", "bf16-forward", "bf16-fisher", "fp16-reverse"],
)
def test_half_precision_scores_are_within_the_documented_tolerance(polarity, dtype, options):
    lm, ids = polarity
    half = copy.deepcopy(lm).to(dtype)
    exact = head_scores(lm, ids, **options)
    approximate = head_scores(half, ids, **options)
    error = (approximate - exact).abs().max() / exact.abs().max()
    assert error < TOLERANCE[dtype]
    assert error > 0  # the half-precision pass really ran in half precision
    assert half.lm_head.weight.dtype == dtype  # the model is left in its dtype


def test_the_fisher_softmax_is_float32_for_a_bfloat16_model():
    """Logits of 0 and 2**-9: bfloat16 rounds softmax(...) to (0.5, 0.5); float32 keeps the
    difference, and with it a Fisher norm of the effect (1, 0) of sqrt(p (1 - p))."""
    from captum_gndi.readouts import make_readout

    readout = make_readout("fisher")
    logits = torch.tensor([[0.0, 2.0**-9]], dtype=torch.bfloat16)
    effect = torch.tensor([[1.0], [0.0]], dtype=torch.bfloat16)  # (K, N)
    p = torch.softmax(torch.tensor([0.0, 2.0**-9], dtype=torch.float64), 0)[0].item()
    score = readout.scores(effect, logits)
    assert score.dtype == torch.float32
    assert score.item() == pytest.approx((p * (1 - p)) ** 0.5, rel=1e-6)


def tiny(scale: float, dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        for layer in model:
            layer.weight.mul_(scale)
            layer.bias.zero_()
    return model.to(dtype)


def test_an_effect_that_underflows_in_float16_warns():
    """Weights scaled by 1e-4: the effect of the first layer is about 1e-9, zero in float16
    (smallest subnormal 6e-8) and not in float32."""
    x = torch.ones(2, 4)
    reference = tiny(1e-4, torch.float32)
    exact = LayerGNDI(reference, reference[0]).attribute(x)
    assert (exact > 0).all()
    for mode in ("forward", "reverse"):
        model = tiny(1e-4, torch.float16)
        with pytest.warns(RuntimeWarning, match="all zero: the tangents or gradients underflowed"):
            scores = LayerGNDI(model, model[0]).attribute(x.half(), mode=mode)
        assert (scores == 0).all()


def test_an_effect_that_overflows_in_float16_is_an_error():
    """A baseline of 6e4 (float16's largest number is 65504) and weights scaled by 10: the
    forward-mode tangent J (h - b) overflows to inf while every activation stays finite."""
    model = tiny(10.0, torch.float16)
    x = torch.full((2, 4), 0.01, dtype=torch.float16)
    with pytest.raises(ValueError, match="NaN or inf .* float16"):
        LayerGNDI(model, model[0]).attribute(x, layer_baselines=6e4, mode="forward")
    with pytest.raises(ValueError, match="NaN or inf"):
        compute_gndi(model, [x], [model[0]], baseline=6e4, mode="forward", progress=False)
    assert model[0].weight.dtype == torch.float16 and not model[0]._forward_hooks
