"""The suffix patcher of experiments/smollm2_patching.py on a tiny random Llama (no download)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_gndi import find_layers, tasks  # noqa: E402
from captum_gndi.interventions.patching import patch_heads_by_pos  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "smollm2_patching.py"
N_HEADS = 4


@pytest.fixture(scope="module")
def sp():
    spec = importlib.util.spec_from_file_location("smollm2_patching_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=N_HEADS,
        num_key_value_heads=2,
        max_position_embeddings=16,
        initializer_range=0.3,  # effects far above float32 noise
    )
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).eval()
    clean = torch.randint(2, 50, (3, 6))
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(2, 50, (3,))
    corrupted[:, 4] = torch.randint(2, 50, (3,))
    task = tasks.PatchingTask(clean, corrupted, torch.tensor([[3, 4], [5, 6], [7, 8]]))
    return model, tasks.logit_diff(model), task


def _one_by_one(f, task, layer, pos, head):
    """Full-sequence patching of one head slice of o_proj's input at one position."""
    o_proj = f.model.model.layers[layer].self_attn.o_proj
    seen = {}
    handle = o_proj.register_forward_pre_hook(lambda _m, a: seen.update(h=a[0].clone()))
    with torch.no_grad():
        f(task.corrupted, task.answers)
    handle.remove()
    d = seen["h"].shape[-1] // N_HEADS
    cols = slice(head * d, (head + 1) * d)

    def hook(_m, args):
        h = args[0].clone()
        h[:, pos, cols] = seen["h"][:, pos, cols]
        return (h,)

    handle = o_proj.register_forward_pre_hook(hook)
    with torch.no_grad():
        patched = f(task.clean, task.answers).squeeze(-1)
    handle.remove()
    with torch.no_grad():
        return (patched - f(task.clean, task.answers).squeeze(-1)).numpy()


def test_pos_heads_equal_full_sequence_patching_and_the_package(sp, setup):
    model, f, task = setup
    effects = sp.SuffixPatcher(f, task, "pos_heads", N_HEADS).effects()
    assert effects.shape == (3, 3 * 6 * N_HEADS)
    grid = effects.reshape(3, 3, 6, N_HEADS)
    assert np.abs(grid).max() > 0.05
    for layer, pos, head in [(0, 2, 1), (1, 4, 3), (2, 5, 0), (0, 3, 2)]:
        expected = _one_by_one(f, task, layer, pos, head)
        np.testing.assert_allclose(grid[:, layer, pos, head], expected, atol=1e-5)
    # positions before the first corrupted token are identical in both prompts
    np.testing.assert_allclose(grid[:, :, :2], 0.0, atol=1e-6)
    package = patch_heads_by_pos(f, task, find_layers(model, "head"))  # f(x) - f(patched)
    np.testing.assert_allclose(-package.numpy(), grid.mean(0), atol=1e-5)


def test_resid_equals_the_full_sequence_sweep(sp, setup):
    _model, f, task = setup
    suffix = sp.SuffixPatcher(f, task, "resid", N_HEADS).effects()
    full = sp.exact_patching(f, task, "resid", N_HEADS)
    assert np.abs(full).max() > 0.05
    np.testing.assert_allclose(suffix, full, atol=1e-5)


def test_check_and_model_left_as_it_was(sp, setup):
    model, f, task = setup
    layers = model.model.layers
    check = sp.SuffixPatcher(f, task, "pos_heads", N_HEADS).check([(0, 2, 1), (2, 5, 3)])
    assert check["max_abs_diff_to_full_sequence"] < 1e-5
    assert check["unpatched_max_abs"] < 1e-5
    assert model.model.layers is layers and len(layers) == 3


def test_first_order_pos_heads_sum_to_heads(sp, setup):
    _model, f, task = setup
    by_pos = sp.estimate(f, task, "pos_heads", N_HEADS).reshape(3, 3, 6, N_HEADS)
    heads = sp.estimate(f, task, "heads", N_HEADS).reshape(3, 3, N_HEADS)
    np.testing.assert_allclose(by_pos.sum(2), heads, atol=1e-5)


def test_replay_rule_with_an_exact_screen(sp, tmp_path):
    # a screen equal to the truth: rho = 1, so the rule verifies the top k and the audit only
    # (k + ceil(k / expected_misses) units by default, k + 5 at audit=0.05, all 100 at 0.1)
    true = -np.arange(100, 0, -1) / 10.0
    entry = {
        "estimate_mean": {"first_order": true.tolist(), "input_4": (2 * true).tolist()},
        "screens": {"first_order": {}, "input_4": {}, "combined": {}},
        "true_mean": true.tolist(),
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"task": "toy", "units": {"pos_heads": entry}}))
    table = sp.replay_rule([path], seeds=2).splitlines()
    rows = {row.split(" | ")[1]: row for row in table[2:]}
    assert len(rows) == len(sp.RULE_SETTINGS)
    assert (
        rows["default"]
        == "| toy (100) | default | "
        + " | ".join(["20.0% / 1.00 (1.00) | 40.0% / 1.00 (1.00)"] * 3)
        + " |"
    )
    assert rows["audit=0.05"].endswith(
        " | ".join(["15.0% / 1.00 (1.00) | 25.0% / 1.00 (1.00)"] * 3) + " |"
    )
    assert "| 100.0% / 1.00 (1.00) |" in rows["expected_misses=0.1"]
