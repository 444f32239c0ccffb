"""Inputs as transformer users have them: dict / BatchEncoding batches, keyword inputs, padding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_gndi import LayerGNDI, compute_gndi, mean_activations
from captum_gndi.runs import KeywordInputs, split_batch

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf


class Logits(nn.Module):
    """GPT-2 logits at the last position, taking keyword inputs like the Hugging Face model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[:, -1]


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=8, vocab_size=20, n_positions=16, attn_implementation="eager"
    )
    return transformers.GPT2LMHeadModel(config).double().eval()


def test_split_batch_reads_a_batch_encoding():
    ids, mask = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    encoding = transformers.BatchEncoding({"input_ids": ids, "attention_mask": mask})
    encoding["labels"] = torch.tensor([0, 1])
    inputs, labels = split_batch(encoding)
    assert isinstance(inputs, KeywordInputs) and inputs.keys == ("input_ids", "attention_mask")
    assert labels.tolist() == [0, 1] and "labels" not in inputs.keys


def test_compute_gndi_on_a_dict_loader_equals_keyword_attribute():
    lm = Logits(tiny_gpt2()).eval()
    torch.manual_seed(1)
    batches = []
    for _ in range(2):
        ids = torch.randint(0, 20, (3, 5))
        mask = torch.ones_like(ids)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": ids[:, -1]})
    layers = {"h0": lm.model.transformer.h[0], "h1.mlp": lm.model.transformer.h[1].mlp}
    result = compute_gndi(lm, batches, layers, target="label", progress=False)
    gndi = LayerGNDI(lm, list(layers.values()))
    expected = [
        torch.cat(
            [
                g
                for b in batches
                for g in [
                    gndi.attribute(
                        b["input_ids"],
                        target=b["labels"],
                        forward_kwargs={"attention_mask": b["attention_mask"]},
                    )[i]
                ]
            ]
        ).mean()
        for i in range(2)
    ]
    for name, value in zip(layers, expected):
        torch.testing.assert_close(result.mean[name].double(), value.double())


def test_additional_forward_args_do_not_land_in_past_key_values_any_more():
    lm = Logits(tiny_gpt2()).eval()
    ids = torch.randint(0, 20, (2, 4))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with_mask = LayerGNDI(lm, lm.model.transformer.h[0]).attribute(
        ids, forward_kwargs={"attention_mask": mask}, target=3
    )
    without = LayerGNDI(lm, lm.model.transformer.h[0]).attribute(ids, target=3)
    torch.testing.assert_close(with_mask[0], without[0])  # no padding in example 0
    assert not torch.allclose(with_mask[1], without[1])  # the mask matters for example 1


def test_dict_batches_missing_a_key_name_the_fix():
    lm = Logits(tiny_gpt2()).eval()
    with pytest.raises(ValueError, match="needs \\['input_ids'\\]"):
        compute_gndi(
            lm,
            [{"ids": torch.ones(2, 3, dtype=torch.long)}],
            ["model.transformer.h.0"],
            progress=False,
        )
    with pytest.raises(ValueError, match="does not take \\['token_type'\\]"):
        compute_gndi(
            lm,
            [{"input_ids": torch.ones(2, 3, dtype=torch.long), "token_type": torch.ones(2, 3)}],
            ["model.transformer.h.0"],
            progress=False,
        )


def test_mean_baseline_on_padded_batches_averages_real_tokens_only():
    lm = Logits(tiny_gpt2()).eval()
    layer = lm.model.transformer.h[0].mlp
    torch.manual_seed(2)
    short = {"input_ids": torch.randint(0, 20, (2, 3)), "attention_mask": torch.ones(2, 3).long()}
    ids = torch.randint(0, 20, (2, 5))
    padded = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])}
    means = mean_activations(lm, [short, padded], {"mlp": layer}, progress=False)["mlp"]
    assert means.shape == (8,)  # pooled over positions: broadcasts to any padded length
    captured = []
    handle = layer.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        lm(**short)
        lm(**padded)
    handle.remove()
    real = torch.cat([captured[0].reshape(-1, 8), captured[1][0], captured[1][1, :2]])
    torch.testing.assert_close(means, real.mean(0))
    result = compute_gndi(lm, [short, padded], {"mlp": layer}, baseline="mean", progress=False)
    assert result.n_examples == 4 and torch.isfinite(result.mean["mlp"])


def test_next_token_logits_use_the_last_real_token_under_right_padding():
    from captum_gndi import model_logits

    model = tiny_gpt2()
    lm = model_logits(model, token_index=-1)
    short = torch.randint(0, 20, (1, 3))
    padded = torch.cat([short, torch.zeros(1, 2, dtype=torch.long)], 1)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=padded, attention_mask=mask), lm(input_ids=short))
        left = torch.cat([torch.zeros(1, 2, dtype=torch.long), short], 1)
        assert lm(input_ids=left, attention_mask=torch.tensor([[0, 0, 1, 1, 1]])).shape == (1, 20)
