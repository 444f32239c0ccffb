"""Heads of a Llama-family model with grouped-query attention, against patching (#22 item 5).

The heads are the *query* heads at ``o_proj``'s input (``Heads(o_proj, num_attention_heads)``;
``num_key_value_heads`` plays no part: each query head has its own slice of ``o_proj``'s
input). On a tiny random Llama with 4 query heads and 2 key/value heads: the signed first-order
score with ``baselines=`` the corrupted prompts equals minus attribution patching written by
hand, and exact patching of one head (``captum_gndi.interventions.intervene``) agrees with it
to first order when the corrupted run is a small perturbation of the clean one.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from captum_gndi import Heads, LayerGNDI, find_layers
from captum_gndi.interventions import intervene
from captum_gndi.tasks import logit_diff

pytestmark = pytest.mark.hf

N, T, VOCAB, HEADS, KV_HEADS = 3, 6, 40, 4, 2


@pytest.fixture(scope="module")
def llama() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=24,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=16,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).double().eval()


def _prompts() -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (N, T), generator=gen)
    corrupted = torch.randint(0, VOCAB, (N, T), generator=gen)
    answers = torch.randint(0, VOCAB, (N, 2), generator=gen)
    return clean, corrupted, answers


def test_gqa_heads_are_the_query_heads_at_o_proj(llama):
    points = find_layers(llama, "head")
    assert list(points) == [f"model.layers.{i}.self_attn.heads" for i in range(2)]
    for i, heads in enumerate(points.values()):
        assert isinstance(heads, Heads)
        assert heads.module is llama.model.layers[i].self_attn.o_proj
        assert heads.n_heads == HEADS != KV_HEADS  # query heads, not key/value heads
        assert heads.module.in_features == HEADS * 6  # d_head = 24 / 4


def _o_proj_inputs(f: nn.Module, ids: Tensor, answers: Tensor, module: nn.Module):
    """The input of ``module`` (N, T, H, d) on one run, and the gradient of sum(f) there."""
    seen = {}

    def hook(_module, args):
        args[0].retain_grad()
        seen["h"] = args[0]

    handle = module.register_forward_pre_hook(hook)
    try:
        f(ids, answers).sum().backward()
    finally:
        handle.remove()
    h = seen["h"]
    return h.detach().unflatten(-1, (HEADS, -1)), h.grad.unflatten(-1, (HEADS, -1))


def test_signed_head_scores_are_minus_attribution_patching(llama):
    f = logit_diff(llama)
    clean, corrupted, answers = _prompts()
    for name, heads in find_layers(llama, "head").items():
        scores = LayerGNDI(f, heads).attribute(
            clean,
            baselines=corrupted,
            additional_forward_args=(answers,),
            signed=True,
            granularity="channel",
            channel_dim=2,
        )
        llama.zero_grad()
        h_clean, grad = _o_proj_inputs(f, clean, answers, heads.module)
        h_corrupted, _ = _o_proj_inputs(f, corrupted, answers, heads.module)
        attribution_patching = (grad * (h_corrupted - h_clean)).sum(dim=(1, 3))  # (N, H)
        assert scores.shape == (N, HEADS), name
        torch.testing.assert_close(scores, -attribution_patching, rtol=1e-9, atol=1e-12)
    llama.zero_grad(set_to_none=True)


def test_exact_head_patching_agrees_to_first_order(llama):
    embed = llama.get_input_embeddings()

    class FromEmbeddings(nn.Module):
        """The logit difference of the model run on input embeddings."""

        def __init__(self) -> None:
            super().__init__()
            self.model = llama

        def forward(self, embeds: Tensor, answers: Tensor) -> Tensor:
            picked = self.model(inputs_embeds=embeds).logits[:, -1].gather(1, answers)
            return picked[:, :1] - picked[:, 1:]

    f = FromEmbeddings().eval()
    clean_ids, _, answers = _prompts()
    with torch.no_grad():
        clean = embed(clean_ids)
    direction = torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    heads = find_layers(llama, "head")["model.layers.0.self_attn.heads"]
    errors = []
    # (below ~1e-5 the float32 softmax of HF's eager attention adds rounding noise)
    for eps in (1e-3, 1e-4):
        corrupted = clean + eps * direction
        first_order = LayerGNDI(f, heads).attribute(
            clean,
            baselines=corrupted,
            additional_forward_args=(answers,),
            signed=True,
            granularity="channel",
            channel_dim=2,
        )
        exact = _exact_patching(f, heads, clean, corrupted, answers)
        errors.append(float((first_order - exact).abs().max() / exact.abs().max()))
    # first order: the relative error shrinks with the perturbation, by about its ratio
    # (measured: 0.0085 at 1e-3, 0.00089 at 1e-4)
    assert errors[1] < 0.002 and errors[1] < errors[0] / 5, errors


def _exact_patching(f, heads: Heads, clean, corrupted, answers) -> Tensor:
    """``f(clean) - f(clean with one head patched from the corrupted run)``, ``(N, H)``."""
    stored = {}

    def store(_, h):
        stored["h"] = h.clone()  # (N, T, H, d_head) on the corrupted run

    def patch(_, h):
        h = h.clone()
        h[:, :, stored["head"]] = stored["h"][:, :, stored["head"]]
        return h

    with torch.no_grad():
        with intervene([heads], store):
            f(corrupted, answers)
        base = f(clean, answers)
        exact = torch.zeros(N, HEADS, dtype=torch.float64)
        for head in range(HEADS):
            stored["head"] = head
            with intervene([heads], patch):
                exact[:, head] = (base - f(clean, answers))[:, 0]
    return exact
