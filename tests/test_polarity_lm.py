"""The zoo's polarity LM: the packaged checkpoint, its tokenizer and its held-out perplexity.

Everything loads from the checkpoint in the package (no network, no ../shared); only the
perplexity test reads the corpus from the shared data folder, and skips without it.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

import captum_gndi.zoo
from captum_gndi.zoo import POLARITY_LM_DIR, load_polarity_lm, polarity_lm_perplexity
from captum_gndi.zoo.polarity_lm import (
    POLARITY_CORPUS,
    TRAINING_FILE,
    load_polarity_sentences,
)

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "train_polarity_lm.py"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

N_HELDOUT = 64
"""The first sentences of the held-out split scored by the perplexity test."""
PPL_BOUND = 130.0
"""Upper bound on their perplexity: 123.2 measured with the packaged checkpoint, plus 5%
(the whole held-out split's 127.4 is in training.json)."""

SENTENCES = [
    'the rock is destined to be the 21st century\'s new " conan " .',
    "compleja e intelectualmente retadora , el ladrón de orquídeas es uno de esos filmes .",
    "a gorgeous , witty , seductive movie .",
    "it's a bad sign when you're rooting for the villain -- 100% awful !",
]


@pytest.fixture(scope="module")
def lm():
    return load_polarity_lm()


@pytest.fixture(scope="module")
def training_info() -> dict:
    return json.loads((POLARITY_LM_DIR / TRAINING_FILE).read_text(encoding="utf-8"))


def test_architecture_is_gpt2_4_layers_4_heads_width_128(lm):
    model, tokenizer = lm
    assert isinstance(model, transformers.GPT2LMHeadModel)
    config = model.config
    assert (config.n_layer, config.n_head, config.n_embd) == (4, 4, 128)
    assert len(model.transformer.h) == 4
    assert config.vocab_size == len(tokenizer) and 2000 <= len(tokenizer) <= 4096
    assert config._attn_implementation == "eager"
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_checkpoint_is_small_safetensors(training_info):
    weights = POLARITY_LM_DIR / "model.safetensors"
    assert weights.stat().st_size < 4 * 2**20
    assert (POLARITY_LM_DIR / "tokenizer.json").is_file()
    assert training_info["saved_dtype"] == "float16"
    for key in ("command", "heldout_perplexity", "train_seconds"):
        assert key in training_info
    assert training_info["split"] == {"seed": 0, "heldout_fraction": 0.1}


def test_tokenizer_round_trips_and_prepends_bos(lm):
    _, tokenizer = lm
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
    for text in SENTENCES:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id == tokenizer.eos_token_id
        assert tokenizer.pad_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # a word gets the same token at the start of a sentence as inside one
    assert tokenizer("good")["input_ids"][1:] == tokenizer("very good")["input_ids"][2:]


def test_batches_pad_right_with_an_attention_mask(lm):
    model, tokenizer = lm
    batch = tokenizer(SENTENCES[2:], padding=True, return_tensors="pt")
    assert isinstance(batch, transformers.BatchEncoding)
    assert set(batch) == {"input_ids", "attention_mask"}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    lengths = mask.sum(1)
    assert tokenizer.padding_side == "right"
    assert lengths[0] < lengths[1] == ids.shape[1]
    short = int(lengths[0])
    assert mask[0, :short].all() and not mask[0, short:].any()
    assert (ids[0, short:] == tokenizer.pad_token_id).all()
    with torch.no_grad():
        padded = model(**batch).logits[0, :short]
        alone = model(input_ids=ids[:1, :short]).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)


def test_forward_mode_ad_matches_finite_differences(lm):
    model, tokenizer = lm
    model = copy.deepcopy(model).double()  # float64: central differences are exact enough
    ids = tokenizer(SENTENCES[2], return_tensors="pt")["input_ids"]
    embeds = model.transformer.wte(ids).detach()
    tangent = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(0)).double()
    _, jvp = torch.func.jvp(lambda e: model(inputs_embeds=e).logits, (embeds,), (tangent,))
    eps = 1e-5
    with torch.no_grad():
        plus = model(inputs_embeds=embeds + eps * tangent).logits
        minus = model(inputs_embeds=embeds - eps * tangent).logits
    torch.testing.assert_close(jvp, (plus - minus) / (2 * eps), atol=1e-5, rtol=1e-4)


@pytest.mark.shared_data
def test_heldout_perplexity_below_bound(lm, shared_data, training_info):
    corpus = shared_data / POLARITY_CORPUS
    if not corpus.is_file():
        pytest.skip(f"sentence-polarity corpus not found at {corpus}")
    model, tokenizer = lm
    split = training_info["split"]
    heldout = load_polarity_sentences(corpus, "heldout", **split)
    train = set(load_polarity_sentences(corpus, "train", **split))
    assert len(heldout) == training_info["n_heldout_sentences"]
    assert not train.intersection(heldout)
    ppl = polarity_lm_perplexity(model, tokenizer, heldout[:N_HELDOUT])
    assert ppl < PPL_BOUND, f"held-out perplexity {ppl:.2f} >= {PPL_BOUND}"
    assert ppl > 1.0


@pytest.fixture(scope="module")
def train_script():
    spec = importlib.util.spec_from_file_location("train_polarity_lm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_lives_in_the_experiment_script_and_the_old_path_warns(train_script):
    assert "train_polarity_tokenizer" not in captum_gndi.zoo.polarity_lm.__all__
    assert "train_polarity_lm" not in captum_gndi.zoo.__all__
    with pytest.warns(DeprecationWarning, match="experiments/train_polarity_lm.py"):
        old = captum_gndi.zoo.train_polarity_lm
    assert old.__code__.co_filename == str(SCRIPT)
    assert old.__code__.co_code == train_script.train_polarity_lm.__code__.co_code


def test_tokenizer_training_is_deterministic(train_script):
    train_polarity_tokenizer = train_script.train_polarity_tokenizer
    texts = ["a good film .", "a bad film , a sad film .", "the film is good"] * 3
    first = train_polarity_tokenizer(texts, vocab_size=300)
    second = train_polarity_tokenizer(texts, vocab_size=300)
    assert first.get_vocab() == second.get_vocab()
    assert first.decode(first(texts[1])["input_ids"], skip_special_tokens=True) == texts[1]


def test_missing_checkpoint_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_polarity_lm.py"):
        load_polarity_lm(tmp_path)


def test_perplexity_rejects_no_texts(lm):
    with pytest.raises(ValueError, match="empty"):
        polarity_lm_perplexity(*lm, [])
