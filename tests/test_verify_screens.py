"""verify_top_k's screens on patching data: every screen returns brute force's exact top k, and
each screen's predicted damages are the documented estimates (a tiny random Llama)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from captum_gndi import compute_gndi, find_layers, verify_top_k
from captum_gndi.tasks import PatchingTask, logit_diff
from captum_gndi.verify.graddrop import graddrop_effects
from captum_gndi.verify.screens import SCREENS, check_screen

transformers = pytest.importorskip("transformers")

VOCAB, T, N, HEADS, LAYERS = 40, 6, 8, 4, 3


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        initializer_range=0.3,
        attn_implementation="eager",
    )
    model = transformers.LlamaForCausalLM(config).double().eval()
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, VOCAB, (N, T), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1:3] = torch.randint(0, VOCAB, (N, 2), generator=g)
    answers = torch.randint(0, VOCAB, (N, 2), generator=g)
    task = PatchingTask(clean, corrupted, answers)
    f = logit_diff(model)
    return model, f, task, find_layers(model, "head")


@torch.no_grad()
def brute_force(model, f, task) -> dict[tuple[str, int], float]:
    """Mean effect f(clean) - f(clean; head patched from corrupted), one head at a time, with
    plain hooks on o_proj's input."""
    base = f(task.clean, task.answers)
    effects = {}
    for i, layer in enumerate(model.model.layers):
        o_proj = layer.self_attn.o_proj
        seen = {}
        handle = o_proj.register_forward_pre_hook(
            lambda m, a, seen=seen: seen.update(h=a[0].clone())
        )
        f(task.corrupted, task.answers)
        handle.remove()
        d = seen["h"].shape[-1] // HEADS
        for head in range(HEADS):
            cols = slice(head * d, (head + 1) * d)

            def patch(m, a, cols=cols, seen=seen):
                h = a[0].clone()
                h[..., cols] = seen["h"][..., cols]
                return (h,)

            handle = o_proj.register_forward_pre_hook(patch)
            patched = f(task.clean, task.answers)
            handle.remove()
            name = f"model.layers.{i}.self_attn.heads"
            effects[(name, head)] = float((base - patched).mean())
    return effects


@pytest.mark.parametrize("screen", SCREENS)
@pytest.mark.parametrize("k", [1, 4])
def test_every_screen_returns_the_exact_top_k_of_brute_force(setup, screen, k):
    model, f, task, heads = setup
    truth = brute_force(model, f, task)
    # expected_misses=0.25: with 12 units the default rule (q = 0.5 at k = 1, an audit of 2)
    # may stop early; a stricter rule must find the exact top k with any of the screens
    result = verify_top_k(
        f, task.loader(4), heads, k=k, channel_dim=2, screen=screen, expected_misses=0.25,
        progress=False,
    )  # fmt: skip
    expected = sorted(truth, key=lambda u: -abs(truth[u]))[:k]
    assert result.units == expected
    np.testing.assert_allclose(result.effects, [truth[u] for u in expected], rtol=1e-8)
    assert result.settings["screen"] == screen
    assert result.n_units == LAYERS * HEADS


def test_screen_scores_are_the_documented_estimates(setup):
    model, f, task, heads = setup
    first = compute_gndi(f, task, heads, granularity="channel", channel_dim=2).stack()
    path = compute_gndi(
        f, task, heads, granularity="channel", channel_dim=2, n_steps=3, path="input"
    ).stack()
    rows = graddrop_effects(f, task, heads, channel_dim=2)
    dropped = torch.stack([r.abs().amax(0) for r in rows.values()])
    expected = {
        "first_order": first.abs(),
        "input": path.abs(),
        "combined": torch.maximum(first.abs(), path.abs()),
        "graddrop": dropped,
        "combined_graddrop": torch.maximum(dropped, path.abs()),
    }
    assert set(expected) == set(SCREENS)
    torch.testing.assert_close(torch.stack([r[0] for r in rows.values()]), first)
    assert not torch.allclose(first, path)  # the two screens differ on this model
    for screen, want in expected.items():
        result = verify_top_k(
            f, task, heads, k=2, channel_dim=2, screen=screen, n_steps=3, progress=False
        )
        got = torch.tensor([list(result.scores.values())], dtype=torch.float64)
        np.testing.assert_allclose(got.reshape(LAYERS, HEADS), want.numpy(), rtol=1e-9)
        # the candidate order (G-NDI rank of the verified top k) is the order of these scores
        flat, keys = want.flatten().tolist(), list(result.scores)
        order = sorted(range(len(flat)), key=lambda i: -flat[i])
        rank = {keys[i]: r + 1 for r, i in enumerate(order)}
        assert result.predicted_ranks == [rank[u] for u in result.units]
    default = verify_top_k(f, task, heads, k=2, channel_dim=2, progress=False)
    assert default.settings["screen"] == "first_order"
    first_order = verify_top_k(
        f, task, heads, k=2, channel_dim=2, screen="first_order", progress=False
    )
    assert default.scores == first_order.scores


def test_screen_errors_name_the_fix(setup):
    model, f, task, heads = setup
    assert check_screen("auto", True, 4) == "first_order"
    assert check_screen("auto", False, 4) == "first_order"
    with pytest.raises(ValueError, match="screen must be 'auto' or one of"):
        verify_top_k(f, task, heads, k=1, channel_dim=2, screen="gradient", progress=False)
    with pytest.raises(ValueError, match="needs patching data"):
        verify_top_k(model, [task.clean], heads, k=1, channel_dim=2, screen="input")
    assert check_screen("auto", True, 4, embeddings=False) == "first_order"
    with pytest.raises(ValueError, match="no get_input_embeddings"):
        check_screen("combined", True, 4, embeddings=False)
    with pytest.raises(ValueError, match="integer >= 2"):
        verify_top_k(f, task, heads, k=1, channel_dim=2, screen="combined", n_steps=1)
