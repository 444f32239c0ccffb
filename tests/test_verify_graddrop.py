"""GradDrop (AtP*): the package's rows equal an independent autograd computation on tiny random
Llama and GPT-2 models, verify_top_k(screen="graddrop") returns brute force's exact top k, and a
model without residual branches gets an error that names the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from captum_gndi import find_layers, verify_top_k
from captum_gndi.tasks import PatchingTask, logit_diff
from captum_gndi.verify.graddrop import graddrop_effects, residual_branches

transformers = pytest.importorskip("transformers")

VOCAB, T, N, HEADS = 40, 6, 8, 4


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=HEADS,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        initializer_range=0.3,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).double().eval()


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        n_embd=32, n_layer=3, n_head=HEADS, vocab_size=VOCAB, n_positions=16,
        initializer_range=0.15, attn_implementation="eager",
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).double().eval()


def make_task() -> PatchingTask:
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, VOCAB, (N, T), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1:3] = torch.randint(0, VOCAB, (N, 2), generator=g)
    answers = torch.randint(0, VOCAB, (N, 2), generator=g)
    return PatchingTask(clean, corrupted, answers)


def sublayers(model: nn.Module) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
    """Per block: the attention module, the MLP module and the output projection of the heads."""
    if hasattr(model, "transformer"):  # GPT-2
        return [(b.attn, b.mlp, b.attn.c_proj) for b in model.transformer.h]
    return [(b.self_attn, b.mlp, b.self_attn.o_proj) for b in model.model.layers]


def first(output):
    return output[0] if isinstance(output, tuple) else output


def independent_rows(model: nn.Module, task: PatchingTask) -> np.ndarray:
    """``(1 + B, B, H)``: per drop (none, then block l), the mean over pairs of ``grad . (h - b)``
    summed per head, with plain hooks: a zero leaf is added to the heads' input of the output
    projection, and block l's attention and MLP outputs are detached (same value, no
    gradient)."""
    f = logit_diff(model)
    blocks = sublayers(model)
    source = []
    handles = [
        proj.register_forward_pre_hook(lambda m, a: source.append(a[0].detach()))
        for _, _, proj in blocks
    ]
    with torch.no_grad():
        f(task.corrupted, task.answers)
    for h in handles:
        h.remove()
    rows = []
    for drop in [None, *range(len(blocks))]:
        leaves, clean = [], []

        def make_leaf(m, a, leaves=leaves, clean=clean):
            leaves.append(torch.zeros_like(a[0], requires_grad=True))
            clean.append(a[0].detach())
            return (a[0] + leaves[-1],)

        def detach(m, a, out):
            return (first(out).detach(), *out[1:]) if isinstance(out, tuple) else out.detach()

        handles = [proj.register_forward_pre_hook(make_leaf) for _, _, proj in blocks]
        if drop is not None:
            attention, mlp, _ = blocks[drop]
            handles += [attention.register_forward_hook(detach), mlp.register_forward_hook(detach)]
        out = f(task.clean, task.answers).sum()
        for h in handles:
            h.remove()
        grads = torch.autograd.grad(out, leaves, allow_unused=True)
        row = []
        for g, h, b in zip(grads, clean, source):
            g = torch.zeros_like(h) if g is None else g
            c = (g * (h - b)).unflatten(-1, (HEADS, -1))  # (N, T, H, d)
            row.append(c.sum((1, 3)).mean(0))
        rows.append(torch.stack(row))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_graddrop_rows_equal_an_independent_autograd_computation(make_model):
    model, task = make_model(), make_task()
    heads = find_layers(model, "head")
    rows = graddrop_effects(logit_diff(model), task, heads, channel_dim=2)
    got = torch.stack(list(rows.values()), 1).numpy()  # (1 + B, B, H)
    want = independent_rows(model, task)
    assert got.shape == want.shape == (4, 3, HEADS)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    # a head inside the dropped block loses every gradient; the drops change the estimates
    for layer in range(3):
        np.testing.assert_array_equal(got[1 + layer, layer], 0.0)
    assert np.abs(got[1:] - got[0]).max() > 1e-3
    # batches: the same means from a loader of 3 batches
    split = graddrop_effects(logit_diff(model), task.loader(3), heads, channel_dim=2)
    for name in rows:
        torch.testing.assert_close(split[name], rows[name], rtol=1e-10, atol=1e-12)


def test_residual_branches_are_grouped_by_block():
    model = tiny_llama()
    groups = residual_branches(logit_diff(model))
    assert [[id(m) for m in g] for g in groups] == [
        [id(b.self_attn.o_proj), id(b.mlp.down_proj)] for b in model.model.layers
    ]


@torch.no_grad()
def brute_force(model: nn.Module, task: PatchingTask) -> dict[tuple[str, int], float]:
    """Mean effect f(clean) - f(clean; head patched from corrupted), one head at a time."""
    f = logit_diff(model)
    base = f(task.clean, task.answers)
    effects = {}
    for i, (_, _, proj) in enumerate(sublayers(model)):
        seen = {}
        handle = proj.register_forward_pre_hook(lambda m, a, seen=seen: seen.update(h=a[0]))
        f(task.corrupted, task.answers)
        handle.remove()
        d = seen["h"].shape[-1] // HEADS
        for head in range(HEADS):
            cols = slice(head * d, (head + 1) * d)

            def patch(m, a, cols=cols, seen=seen):
                h = a[0].clone()
                h[..., cols] = seen["h"][..., cols]
                return (h,)

            handle = proj.register_forward_pre_hook(patch)
            patched = f(task.clean, task.answers)
            handle.remove()
            effects[(i, head)] = float((base - patched).mean())
    return effects


@pytest.mark.parametrize("screen", ["graddrop", "combined_graddrop"])
@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_verify_top_k_with_graddrop_returns_the_exact_top_k(make_model, screen):
    model, task = make_model(), make_task()
    heads = find_layers(model, "head")
    names = list(heads)
    truth = brute_force(model, task)
    order = sorted(truth, key=lambda u: -abs(truth[u]))
    rows = graddrop_effects(logit_diff(model), task, heads, channel_dim=2)
    for k in (1, 3):
        result = verify_top_k(
            logit_diff(model), task, heads, k=k, channel_dim=2, screen=screen,
            expected_misses=0.25, progress=False,
        )  # fmt: skip
        assert result.units == [(names[i], h) for i, h in order[:k]]
        np.testing.assert_allclose(result.effects, [truth[u] for u in order[:k]], rtol=1e-8)
        assert result.settings["screen"] == screen
    if screen == "graddrop":  # the screen's predicted damages are the largest |row|
        want = torch.stack([rows[n].abs().amax(0) for n in names]).flatten().tolist()
        np.testing.assert_allclose(list(result.scores.values()), want, rtol=1e-12)


class Bag(nn.Module):
    """A metric model with no residual blocks: embedding, mean over positions, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, VOCAB)

    def forward(self, ids: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        logits = self.out(torch.tanh(self.hidden(self.embed(ids).mean(1))))
        return logits.gather(1, answers[:, :1]) - logits.gather(1, answers[:, 1:])


def test_a_model_without_residual_branches_gets_an_error_naming_the_fix():
    model, task = Bag().eval(), make_task()
    with pytest.raises(ValueError, match="register_adapter.*screen='combined'"):
        verify_top_k(model, task, ["hidden"], k=1, screen="graddrop", progress=False)
    with pytest.raises(ValueError, match="needs patching data"):
        verify_top_k(model, [task.clean], ["hidden"], k=1, screen="graddrop", progress=False)
