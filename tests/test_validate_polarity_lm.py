"""Core functions of experiments/validate_polarity_lm.py on a tiny random GPT-2 (no shared data)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "validate_polarity_lm.py"


@pytest.fixture(scope="module")
def vp():
    spec = importlib.util.spec_from_file_location("validate_polarity_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=40,
        n_positions=12,
        n_embd=16,
        n_layer=2,
        n_head=2,
        pad_token_id=1,
        initializer_range=0.3,  # large effects: KL far above float32 noise
    )
    config._attn_implementation = "eager"
    lm = transformers.GPT2LMHeadModel(config).eval()
    for p in lm.parameters():
        p.requires_grad_(False)
    ids = torch.randint(2, 40, (6, 8))
    mask = torch.ones_like(ids)
    mask[::2, 5:] = 0
    ids[mask == 0] = 1
    return lm, ids, mask


def _kl(clean, logits, mask):
    logp, logq = clean.log_softmax(-1), logits.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1) * mask
    return float(kl.sum() / mask.sum())


def test_head_and_mlp_patching_match_weight_surgery(vp, tiny):
    lm, ids, mask = tiny
    means = vp.real_token_means(lm, ids, mask)
    assert means[("head", 1)].shape == (2, 8) and means[("mlp", 0)].shape == (16,)
    with torch.no_grad():
        clean = lm(input_ids=ids, attention_mask=mask).logits
    # head 1 of layer 1 set to its mean = zero its rows of c_proj, move m_h W_h into the bias
    unit = vp.Unit("head", 1, 1)
    got = vp.next_token_damage(lm, ids, mask, clean, unit, means[("head", 1)], 2)
    brute = copy.deepcopy(lm)
    proj = brute.transformer.h[1].attn.c_proj
    rows = slice(8, 16)
    proj.bias += means[("head", 1)][1] @ proj.weight[rows]
    proj.weight[rows] = 0
    with torch.no_grad():
        want = brute(input_ids=ids, attention_mask=mask).logits
    assert got["kl"] == pytest.approx(_kl(clean, want, mask), rel=1e-4, abs=1e-9)
    assert got["kl"] > 0
    # MLP 0 set to its mean = zero its output projection, bias = mean
    unit = vp.Unit("mlp", 0)
    got = vp.next_token_damage(lm, ids, mask, clean, unit, means[("mlp", 0)], 2)
    brute = copy.deepcopy(lm)
    brute.transformer.h[0].mlp.c_proj.weight.zero_()
    brute.transformer.h[0].mlp.c_proj.bias.copy_(means[("mlp", 0)])
    with torch.no_grad():
        want = brute(input_ids=ids, attention_mask=mask).logits
    assert got["kl"] == pytest.approx(_kl(clean, want, mask), rel=1e-4, abs=1e-9)


def test_position_patching_leaves_earlier_positions(vp, tiny):
    lm, ids, mask = tiny
    means = vp.real_token_means(lm, ids, mask)
    with torch.no_grad():
        clean = lm(input_ids=ids, attention_mask=mask).logits
        unit = vp.Unit("head", 0, 0, 3)
        with vp.patched(lm, unit, means[("head", 0)], 2):
            logits = lm(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(logits[:, :3], clean[:, :3])
    assert not torch.allclose(logits[:, 3], clean[:, 3])


def test_atp_equals_gradient_times_delta(vp, tiny):
    lm, ids, mask = tiny
    means = vp.real_token_means(lm, ids, mask)
    n_targets = int((mask[:, 1:] == 1).sum())
    units = [vp.Unit("head", i, h) for i in range(2) for h in range(2)] + [vp.Unit("mlp", 1)]
    values = {u: means[(u.kind, u.layer)] for u in units}
    atp = vp.attribution_patching(
        lm,
        ids,
        mask,
        units,
        values,
        2,
        lambda z: vp.loss_terms(z, ids, mask).sum() / n_targets,
    )
    floss = vp.summed_nll(lm)
    for u in units:
        s = vp.gndi(
            floss,
            vp.point(lm, u.kind, u.layer),
            ids,
            mask,
            u.kind,
            False,
            layer_baselines=means[(u.kind, u.layer)],
            signed=True,
        )
        s = s[:, u.head] if u.kind == "head" else s
        assert -float(s.sum()) / n_targets == pytest.approx(atp[u], rel=1e-4, abs=1e-7)


def test_heads_first_order_converges_to_patching_l2(vp, tiny):
    lm, ids, mask = tiny
    means = vp.real_token_means(lm, ids, mask)
    with torch.no_grad():
        clean = lm(input_ids=ids, attention_mask=mask).logits
    f = vp.masked_logits(lm)
    path = vp.gndi(
        f, vp.point(lm, "head", 0), ids, mask, "head", False,
        layer_baselines=means[("head", 0)], n_steps=16,
    )  # fmt: skip
    true = vp.next_token_damage(lm, ids, mask, clean, vp.Unit("head", 0, 1), means[("head", 0)], 2)
    torch.testing.assert_close(path[:, 1], true["l2"], rtol=2e-3, atol=1e-5)
