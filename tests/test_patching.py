"""Counterfactual patching in compute_gndi: corrupted activations as per-example baselines.

The signed first-order G-NDI of patching data is compared with attribution patching computed by
hand (autograd on the clean run, no package hooks), with LayerGNDI's input-space baselines, with
exact patching where the model is linear after the layer, and across directions. Tiny random
models (an embedding + MLP language model in float64, a two-layer GPT-2), no network.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from captum_gndi import LayerGNDI, compute_gndi, find_layers, verify_top_k
from captum_gndi.interventions.patching import (
    activation_patch,
    patch_heads,
    patch_heads_by_pos,
    patch_positions,
)
from captum_gndi.patching import PatchingMetric
from captum_gndi.tasks import PatchingBatch, PatchingTask
from captum_gndi.validation import validate

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB, WIDTH, T, N = 11, 6, 4, 6
TOL = dict(rtol=1e-9, atol=1e-12)


class ToyLM(nn.Module):
    """Embedding -> tanh MLP per position -> mean over positions -> vocabulary logits."""

    def __init__(self, linear_after_hidden: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.hidden = nn.Linear(WIDTH, WIDTH)
        self.act = nn.Identity() if linear_after_hidden else nn.Tanh()
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.act(self.hidden(self.embed(ids)))  # (N, T, D)
        return self.head(h.cumsum(1))  # logits (N, T, V); last position sees every position


def logit_diff(logits: Tensor, answers: Tensor) -> Tensor:
    last = logits[:, -1]
    return last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])


class LogitDiff(nn.Module):
    """The metric-model contract: f(input_ids, answers) -> (N, 1)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, answers: Tensor) -> Tensor:
        return logit_diff(self.model(ids), answers)


def toy_task(n: int = N) -> PatchingTask:
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (n, T), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, VOCAB, (n,), generator=g)
    answers = torch.randint(0, VOCAB, (n, 2), generator=g)
    return PatchingTask(clean, corrupted, answers)


def models(linear: bool = False) -> tuple[nn.Module, nn.Module]:
    lm = ToyLM(linear).double().eval()
    return lm, LogitDiff(lm).eval()


def attribution_patching(lm: nn.Module, task: PatchingTask, module: nn.Module) -> Tensor:
    """AtP by hand: (a_corrupted - a_clean) . d metric / d a at the clean run, per example."""
    acts: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _i: tuple, out: Tensor) -> Tensor:
            if name == "clean":
                out.retain_grad()
            acts[name] = out
            return out

        return hook

    handle = module.register_forward_hook(keep("corrupted"))
    with torch.no_grad():
        lm(task.corrupted)
    handle.remove()
    handle = module.register_forward_hook(keep("clean"))
    logit_diff(lm(task.clean), task.answers).sum().backward()
    handle.remove()
    clean = acts["clean"]
    return (acts["corrupted"] - clean.detach()) * clean.grad  # (N, T, D)


def exact_patch(lm: nn.Module, source: Tensor, target: Tensor, answers: Tensor, module, where):
    """f(target) - f(target; module output at `where` set to its value on `source`)."""
    with torch.no_grad():
        cache: dict[str, Tensor] = {}
        handle = module.register_forward_hook(lambda m, i, o: cache.__setitem__("h", o))
        lm(source)
        handle.remove()

        def patch(_m, _i, out):
            out = out.clone()
            out[where] = cache["h"][where]
            return out

        base = logit_diff(lm(target), answers)
        handle = module.register_forward_hook(patch)
        patched = logit_diff(lm(target), answers)
        handle.remove()
    return (base - patched).squeeze(1)


def test_patching_scores_are_minus_attribution_patching_per_position_and_channel() -> None:
    lm, f = models()
    task = toy_task()
    result = compute_gndi(f, task, {"hidden": lm.hidden}, granularity="unit", progress=False)
    atp = attribution_patching(lm, task, lm.hidden)
    torch.testing.assert_close(result.mean["hidden"], -atp.mean(0), **TOL)
    assert result.settings["signed"] and result.settings["direction"] == "noising"
    assert result.settings["baseline"] == "corrupted"


def test_patching_equals_layer_gndi_with_corrupted_input_baselines() -> None:
    lm, f = models()
    task = toy_task()
    per_position = compute_gndi(
        f,
        task.loader(4),
        {"hidden": lm.hidden},
        granularity="channel",
        channel_dim=1,
        progress=False,
    )
    attributed = LayerGNDI(f, lm.hidden).attribute(
        task.clean,
        baselines=task.corrupted,
        additional_forward_args=(task.answers,),
        signed=True,
        granularity="channel",
        channel_dim=1,
    )
    torch.testing.assert_close(per_position.mean["hidden"], attributed.mean(0), **TOL)
    assert per_position.n_examples == N


def test_first_order_is_exact_patching_when_the_rest_is_linear() -> None:
    lm, f = models(linear=True)
    task = toy_task()
    result = compute_gndi(f, task, {"hidden": lm.hidden}, granularity="channel", channel_dim=1)
    for pos in range(T):
        effect = exact_patch(
            lm, task.corrupted, task.clean, task.answers, lm.hidden, (slice(None), pos)
        )
        torch.testing.assert_close(result.mean["hidden"][pos], effect.mean(), **TOL)


def test_denoising_runs_the_corrupted_prompt_and_patches_clean_activations_in() -> None:
    lm, f = models(linear=True)
    task = toy_task()
    denoised = compute_gndi(
        f, task, {"hidden": lm.hidden}, granularity="channel", channel_dim=1, direction="denoising"
    )
    swapped = compute_gndi(
        f,
        PatchingTask(task.corrupted, task.clean, task.answers),
        {"hidden": lm.hidden},
        granularity="channel",
        channel_dim=1,
    )
    torch.testing.assert_close(denoised.mean["hidden"], swapped.mean["hidden"], **TOL)
    effect = exact_patch(lm, task.clean, task.corrupted, task.answers, lm.hidden, (slice(None), 1))
    torch.testing.assert_close(denoised.mean["hidden"][1], effect.mean(), **TOL)
    assert denoised.settings["baseline"] == "clean"


def test_a_metric_callable_on_the_model_output_works_like_a_metric_model() -> None:
    lm, f = models()
    task = toy_task()
    by_module = compute_gndi(f, task, {"hidden": lm.hidden}, granularity="channel", channel_dim=2)
    by_metric = compute_gndi(
        lm, task, {"hidden": lm.hidden}, granularity="channel", channel_dim=2, metric=logit_diff
    )
    torch.testing.assert_close(by_metric.mean["hidden"], by_module.mean["hidden"], **TOL)


def test_signed_false_gives_the_absolute_effect_and_ranking_uses_magnitudes() -> None:
    lm, f = models()
    task = toy_task()
    signed = compute_gndi(f, task, {"hidden": lm.hidden}, granularity="unit")
    absolute = compute_gndi(f, task, {"hidden": lm.hidden}, granularity="unit", signed=False)
    atp = attribution_patching(lm, task, lm.hidden)
    torch.testing.assert_close(absolute.mean["hidden"], atp.abs().mean(0), **TOL)
    assert "signed" not in absolute.settings
    torch.testing.assert_close(signed.mean["hidden"], -atp.mean(0), **TOL)


def test_stack_is_layer_first_in_the_order_given() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=4, n_positions=16, vocab_size=VOCAB
    )
    gpt2 = transformers.GPT2LMHeadModel(config).eval()
    task = toy_task(3)
    heads = find_layers(gpt2, "head")
    names = list(heads)
    by_head = compute_gndi(
        gpt2, task, heads, granularity="channel", channel_dim=2, metric=logit_diff
    )
    assert by_head.stack().shape == (2, 4)
    by_pos_head = compute_gndi(
        gpt2, task, heads, granularity="channel", channel_dim=(1, 2), metric=logit_diff
    )
    stacked = by_pos_head.stack()
    assert stacked.shape == (2, T, 4)  # [layer, pos, head]
    torch.testing.assert_close(stacked[1], by_pos_head.mean[names[1]])
    # summing positions gives the per-head estimate (first order is linear in the units)
    torch.testing.assert_close(stacked.sum(1), by_head.stack(), rtol=1e-5, atol=1e-6)
    reversed_ = compute_gndi(
        gpt2,
        task,
        dict(reversed(heads.items())),
        granularity="channel",
        channel_dim=2,
        metric=logit_diff,
    )
    torch.testing.assert_close(reversed_.stack(), by_head.stack().flip(0))
    blocks = find_layers(gpt2, "block")
    by_pos = compute_gndi(
        gpt2, task, blocks, granularity="channel", channel_dim=1, metric=logit_diff
    )
    assert by_pos.stack().shape == (2, T)  # [layer, pos]
    assert by_pos.stack(stderr=True).shape == (2, T)


def test_stack_of_different_unit_shapes_is_a_clear_error() -> None:
    lm, f = models()
    result = compute_gndi(f, toy_task(), [lm.embed, lm.head], granularity="channel", channel_dim=-1)
    with pytest.raises(ValueError, match="different unit shapes"):
        result.stack()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_metric_returning_a_batch_mean_is_a_clear_error() -> None:
    lm, _ = models()
    with pytest.raises(ValueError, match=r"returned shape \(\) for 6 prompt pairs.*drop the .mean"):
        compute_gndi(
            lm,
            toy_task(),
            {"hidden": lm.hidden},
            metric=lambda out, ans: logit_diff(out, ans).mean(),
        )


def test_model_that_is_no_metric_model_is_a_clear_error() -> None:
    lm, _ = models()

    class Logits(nn.Module):  # takes the answers but returns the logits
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, ids: Tensor, answers: Tensor) -> Tensor:
            return self.lm(ids)

    with pytest.raises(ValueError, match=r"returned 44 numbers per prompt pair.*metric="):
        compute_gndi(Logits().eval(), toy_task(), {"hidden": lm.hidden})


def test_target_and_baseline_are_rejected_with_patching_data() -> None:
    lm, f = models()
    with pytest.raises(ValueError, match="drop target= and baseline="):
        compute_gndi(f, toy_task(), {"hidden": lm.hidden}, baseline="mean")
    with pytest.raises(ValueError, match="direction must be 'noising'"):
        compute_gndi(f, toy_task(), {"hidden": lm.hidden}, direction="clean->corrupted")
    with pytest.raises(ValueError, match="metric= needs patching data"):
        compute_gndi(lm, [toy_task().clean], {"hidden": lm.hidden}, metric=logit_diff)


def test_a_patching_batch_of_mismatched_shapes_is_a_clear_error() -> None:
    lm, f = models()
    task = toy_task()
    bad = [PatchingBatch(task.clean, task.corrupted[:, :-1], task.answers)]
    with pytest.raises(ValueError, match="differ in shape"):
        compute_gndi(f, bad, {"hidden": lm.hidden})
    multi = [PatchingBatch(task.clean, task.corrupted, task.answers[:, :1])]
    with pytest.raises(ValueError, match="single-token"):
        compute_gndi(f, multi, {"hidden": lm.hidden})


def test_plain_three_tuples_are_not_misread_as_inputs_and_labels() -> None:
    lm, f = models()
    task = toy_task()
    plain = [(task.clean, task.corrupted, task.answers)]
    with pytest.raises(TypeError, match="PatchingBatch"):
        compute_gndi(f, plain, {"hidden": lm.hidden})


def test_patching_metric_wraps_model_outputs() -> None:
    lm, f = models()
    task = toy_task()
    wrapped = PatchingMetric(lm, logit_diff)
    torch.testing.assert_close(wrapped(task.clean, task.answers), f(task.clean, task.answers))
    with pytest.raises(TypeError, match="float tensor"):
        PatchingMetric(lm, lambda out, ans: ans)(task.clean, task.answers)


# ---------------------------------------------------------------------------------------------
# Exact patching (the ground truth): activation_patch and its specialisations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["hooks", "suffix"])
def test_activation_patch_is_brute_force_patching_on_either_back_end(engine: str) -> None:
    lm, f = models()
    task = toy_task()
    swept = patch_positions(f, task.loader(4), {"hidden": lm.hidden}, engine=engine)
    assert swept.shape == (1, T)  # [layer, pos]
    for pos in range(T):
        effect = exact_patch(
            lm, task.corrupted, task.clean, task.answers, lm.hidden, (slice(None), pos)
        )
        torch.testing.assert_close(swept[0, pos], effect.mean(), **TOL)
    whole = activation_patch(lm, task, {"hidden": lm.hidden}, metric=logit_diff)
    effect = exact_patch(lm, task.corrupted, task.clean, task.answers, lm.hidden, (slice(None),))
    torch.testing.assert_close(whole[0], effect.mean(), **TOL)


def test_activation_patch_denoising_and_heads_stack_layer_first() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=4, n_positions=16, vocab_size=VOCAB
    )
    gpt2 = transformers.GPT2LMHeadModel(config).eval()
    task = toy_task(3)
    heads = find_layers(gpt2, "head")
    by_pos = patch_heads_by_pos(gpt2, task, heads, metric=logit_diff, direction="denoising")
    per_head = patch_heads(gpt2, task, heads, metric=logit_diff, direction="denoising")
    assert by_pos.shape == (2, T, 4) and per_head.shape == (2, 4)
    # position 0 is the same in both prompts: patching it changes nothing
    assert by_pos[:, 0].abs().max() < 1e-6 and by_pos.abs().max() > 1e-4
    # the first-order estimate in the same shape; at these small effects (about 1e-3) the
    # second-order remainder is a few percent at most
    estimate = compute_gndi(
        gpt2, task, heads, granularity="channel", channel_dim=(1, 2), metric=logit_diff,
        direction="denoising",
    ).stack()  # fmt: skip
    assert estimate.shape == by_pos.shape
    assert (estimate - by_pos).abs().max() < 0.05 * by_pos.abs().max()


def test_activation_patch_of_different_unit_shapes_is_a_clear_error() -> None:
    lm, f = models()
    with pytest.raises(ValueError, match="different unit shapes"):
        activation_patch(f, toy_task(), {"e": lm.embed, "h": lm.head}, channel_dim=-1)


# ---------------------------------------------------------------------------------------------
# verify_top_k and validate on patching data
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_verify_top_k_on_patching_data_returns_the_exact_top_k_by_absolute_mean_effect(
    direction: str,
) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=4, n_positions=16, vocab_size=VOCAB, initializer_range=0.3
    )
    gpt2 = transformers.GPT2LMHeadModel(config).eval()
    task = toy_task(4)
    heads = find_layers(gpt2, "head")
    brute = patch_heads_by_pos(gpt2, task, heads, metric=logit_diff, direction=direction)
    names = list(heads)
    flat = {(n, i): float(v) for n, row in zip(names, brute.flatten(1)) for i, v in enumerate(row)}
    result = verify_top_k(
        gpt2, task.loader(2), heads, k=3, channel_dim=(1, 2), metric=logit_diff,
        direction=direction, progress=False,
    )  # fmt: skip
    expected = sorted(flat, key=lambda u: -abs(flat[u]))[:3]
    assert result.units == expected
    np.testing.assert_allclose(result.effects, [flat[u] for u in expected], rtol=1e-5)
    np.testing.assert_allclose(result.damages, np.abs(result.effects))
    assert result.n_ablations < result.n_units == 2 * T * 4
    assert result.damage == "abs_effect" and result.settings["direction"] == direction
    assert "signed effect" in str(result)


def test_verify_top_k_rejects_baselines_and_damage_with_patching_data() -> None:
    lm, f = models()
    with pytest.raises(ValueError, match="drop baseline=, target= and damage="):
        verify_top_k(f, toy_task(), {"hidden": lm.hidden}, k=1, damage="kl")
    with pytest.raises(ValueError, match="metric= needs patching data"):
        verify_top_k(lm, [toy_task().clean], {"hidden": lm.hidden}, k=1, metric=logit_diff)


def test_validate_on_patching_data_compares_criteria_with_exact_patching_effects() -> None:
    lm, f = models()
    task = toy_task(8)
    layers = {"embed": lm.embed, "hidden": lm.hidden}
    with pytest.warns(UserWarning, match="Skipping snip: needs labels"):
        report = validate(
            f, task.loader(4), layers, criteria=["gndi", "gndi_path", "activation_change",
            "random", "snip", "magnitude"], granularity="channel", channel_dim=1, n_steps=4,
            n_boot=50, n_random=2,
        )  # fmt: skip
    assert list(report.damage) == ["effect", "abs_effect"]
    assert report.units[:2] == ["embed[0]", "embed[1]"] and len(report.units) == 2 * T
    brute = patch_positions(f, task, layers)  # [layer, pos], forward order embed, hidden
    np.testing.assert_allclose(report.damage["effect"], brute.flatten().numpy(), rtol=1e-9)
    estimate = compute_gndi(f, task, layers, granularity="channel", channel_dim=1).stack()
    np.testing.assert_allclose(report.scores["gndi"], estimate.flatten().numpy(), rtol=1e-9)
    assert set(report.metadata["skipped"]) == {"snip", "magnitude"}
    assert "weights" in report.metadata["skipped"]["magnitude"]
    assert report.metadata["baseline"] == "corrupted"
    # path integration on each position converges to its exact effect
    np.testing.assert_allclose(report.scores["gndi_path"], report.damage["effect"], atol=1e-4)
    with pytest.raises(ValueError, match="drop baseline=, damage= and layer_mask="):
        validate(f, task, layers, baseline="mean")


def test_layer_names_of_the_model_resolve_with_a_metric() -> None:
    lm, _ = models()
    result = compute_gndi(lm, toy_task(), ["hidden"], metric=logit_diff)
    assert result.names == ["hidden"]
    top = verify_top_k(lm, toy_task(), ["hidden"], k=1, metric=logit_diff, progress=False)
    assert top.units[0][0] == "hidden"
