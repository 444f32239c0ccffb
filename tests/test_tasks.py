"""Patching tasks: the PatchingTask type, the IOI / factual-recall / induction generators, the
logit-difference metric and the task check. A word tokenizer written here (no network); the
metric on a tiny random Llama; the real SmolLM2 is in tests/test_smollm2.py."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import Tensor, nn

from captum_gndi import LayerGNDI, tasks
from captum_gndi.runs import warn_if_training
from captum_gndi.tasks import (
    PatchingBatch,
    PatchingTask,
    PromptPair,
    build_task,
    check_patching_batches,
    check_task,
    factual_recall,
    induction,
    ioi,
    is_patching_data,
    logit_diff,
    single_tokens,
)
from captum_gndi.tasks.words import COUNTRIES, INDUCTION_WORDS, IOI_TEMPLATES, NAMES


class WordTokenizer:
    """Words and punctuation are tokens (ids in order of first sight, 0 = a BOS token); the
    words in ``split`` become two tokens, as a BPE tokenizer splits a rare word."""

    def __init__(self, split: tuple[str, ...] = ()) -> None:
        self.vocab = {"<bos>": 0}
        self.split = set(split)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [0] if add_special_tokens else []
        for word in re.findall(r"\w+|[^\w\s]", text):
            pieces = [word[:2], word[2:]] if word in self.split else [word]
            ids += [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]
        return {"input_ids": ids}

    def decode(self, ids: Tensor) -> list[str]:
        words = {i: w for w, i in self.vocab.items()}
        return [words[int(i)] for i in ids]


def test_patching_task_checks_shapes_and_types():
    ids = torch.zeros(3, 4, dtype=torch.long)
    answers = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="differ in shape.*same number of tokens"):
        PatchingTask(ids, torch.zeros(3, 5, dtype=torch.long), answers)
    with pytest.raises(TypeError, match="integer tensor of token ids.*tokenise"):
        PatchingTask(ids.float(), ids, answers)
    with pytest.raises(ValueError, match=r"answers must be \(N, 2\).*single tokens"):
        PatchingTask(ids, ids, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, T\) token ids with N >= 1"):
        PatchingTask(ids[:0], ids[:0], answers[:0])


def test_patching_task_loader_batches_and_device():
    clean = torch.arange(10).reshape(5, 2)
    task = PatchingTask(clean, clean + 100, torch.arange(10, 20).reshape(5, 2), name="t")
    batches = task.loader(2)
    assert [len(b.clean) for b in batches] == [2, 2, 1]
    assert all(isinstance(b, PatchingBatch) for b in batches)
    torch.testing.assert_close(torch.cat([b.corrupted for b in batches]), clean + 100)
    torch.testing.assert_close(torch.cat([b.answers for b in batches]), task.answers)
    assert len(task) == 5 and len(list(task)) == 1  # iterating: one batch of the default 8
    moved = task.to("cpu")
    assert moved.name == "t" and torch.equal(moved.clean, clean)
    assert is_patching_data(task) and is_patching_data(batches)
    assert not is_patching_data([clean]) and not is_patching_data([])
    plain = [(b.clean, b.corrupted, b.answers) for b in batches]
    assert [type(b) for b in check_patching_batches(plain)] == [PatchingBatch] * 3
    with pytest.raises(TypeError, match=r"\(clean, corrupted, answers\) batches"):
        list(check_patching_batches([(clean, clean)]))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        task.loader(0)


def _words(tokenizer: WordTokenizer, ids: Tensor) -> list[str]:
    return [w for w in tokenizer.decode(ids) if w != "<bos>"]


def test_ioi_prompts_answers_and_abc_corruption():
    tokenizer = WordTokenizer()
    task = ioi(tokenizer, n=64, seed=3)
    assert task.name == "ioi" and len(task) == 64 and len(task.prompts) == 64
    assert task.clean.shape == task.corrupted.shape == (64, 15)  # BOS + 14 tokens, every frame
    frames = {prompt.split()[0] for prompt, _ in task.prompts}
    assert frames == {frame.split()[0] for frame in IOI_TEMPLATES}
    for i, (clean, corrupted) in enumerate(task.prompts):
        assert _words(tokenizer, task.clean[i]) == re.findall(r"\w+|[^\w\s]", clean)
        correct, distractor = tokenizer.decode(task.answers[i])
        names = [w for w in re.findall(r"\w+", clean) if w in NAMES]
        assert sorted(names) == sorted([correct, distractor, distractor])  # IO once, S twice
        assert names[2] == distractor  # the subject gives
        others = [w for w in re.findall(r"\w+", corrupted) if w in NAMES]
        assert len(set(others)) == 3 and not set(others) & {correct, distractor}  # ABC
        frame = [w for w in re.findall(r"\w+", clean) if w not in NAMES]
        assert frame == [w for w in re.findall(r"\w+", corrupted) if w not in NAMES]
    again = ioi(tokenizer, n=64, seed=3)
    assert torch.equal(again.clean, task.clean) and again.prompts == task.prompts
    assert ioi(tokenizer, n=64, seed=4).prompts != task.prompts


def test_ioi_never_uses_names_that_are_not_single_tokens():
    split = ("Mary", "John", "Alice", "Tom", "Kate")
    tokenizer = WordTokenizer(split=split)
    task = ioi(tokenizer, n=200, seed=0)
    text = " ".join(p for pair in task.prompts for p in pair)
    assert not set(re.findall(r"\w+", text)) & set(split)
    assert single_tokens(tokenizer, ["Mary", "Anna"]) == {"Anna": tokenizer.vocab["Anna"]}


def test_factual_recall_answers_are_the_facts_of_each_country():
    tokenizer = WordTokenizer()
    task = factual_recall(tokenizer, n=100, seed=0)
    capitals = {c: cap for c, cap, _ in COUNTRIES}
    languages = {c: lang for c, _, lang in COUNTRIES if lang}
    relations = set()
    for i, (clean, corrupted) in enumerate(task.prompts):
        correct, distractor = tokenizer.decode(task.answers[i])
        country, other = clean.split()[3], corrupted.split()[3]
        facts = capitals if clean.startswith("The capital") else languages
        relations.add(clean.split()[1])
        assert clean.split()[:3] == corrupted.split()[:3] and country != other
        assert (correct, distractor) == (facts[country], facts[other])
    assert relations == {"capital", "people"}
    with pytest.raises(ValueError, match=r"factual_recall: only \d+ of .* n=100000.*n <="):
        factual_recall(tokenizer, n=100_000, seed=0)


def test_induction_repeats_the_sequence_and_corrupts_the_second_half():
    tokenizer = WordTokenizer()
    task = induction(tokenizer, n=20, seed=1, length=6)
    assert task.clean.shape == (20, 1 + 6 + 5)
    for i in range(20):
        clean, corrupted = _words(tokenizer, task.clean[i]), _words(tokenizer, task.corrupted[i])
        first = clean[:6]
        assert len(set(first)) == 6 and set(first) <= set(INDUCTION_WORDS)
        assert clean[6:] == first[:5] and corrupted[:6] == first
        assert not set(corrupted[6:]) & set(first)  # a different random second half
        correct, distractor = tokenizer.decode(task.answers[i])
        assert correct == first[5]  # what followed the last token's earlier occurrence
        assert distractor in first[:4]  # seen before, but neither the answer nor the last token
    with pytest.raises(ValueError, match="length must be an int >= 3"):
        induction(tokenizer, n=2, length=2)


def test_build_task_keeps_equal_lengths_and_single_token_answers():
    tokenizer = WordTokenizer(split=("Rosalind",))
    candidates = [
        PromptPair("a b c", "a b d", " x", " y"),  # usable, length 4
        PromptPair("a b e", "a b f", " x", " z"),  # usable, length 4
        PromptPair("a b", "a c", " x", " y"),  # usable, but length 3 is the minority
        PromptPair("a b c", "a b c d", " x", " y"),  # clean and corrupted lengths differ
        PromptPair("a b g", "a b h", " Rosalind", " y"),  # two-token answer
    ]
    task = build_task(tokenizer, candidates, 2, 0, "toy")
    assert sorted(task.prompts) == [("a b c", "a b d"), ("a b e", "a b f")]
    assert task.clean.shape == (2, 4)
    with pytest.raises(ValueError, match="toy: only 2 of 5 generated prompt pairs"):
        build_task(tokenizer, candidates, 3, 0, "toy")
    for bad in (dict(n=0), dict(n=True), dict(seed=1.5)):
        with pytest.raises(ValueError, match="must be"):
            ioi(tokenizer, **{"n": 2, "seed": 0, **bad})
    with pytest.raises(TypeError, match="Hugging Face tokenizer"):
        ioi("not a tokenizer", n=2)


def _tiny_llama(vocab_size: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = transformers.LlamaForCausalLM(config)
    model.config._attn_implementation = "eager"
    return model.double().eval()


@pytest.mark.hf
def test_logit_diff_is_correct_minus_distractor_at_the_last_position():
    model = _tiny_llama(50)
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    answers = torch.tensor([[1, 2], [5, 3], [7, 7]])
    f = logit_diff(model)
    logits = model(ids).logits[:, -1]
    expected = torch.stack([logits[i, a] - logits[i, b] for i, (a, b) in enumerate(answers)])
    torch.testing.assert_close(f(ids, answers), expected[:, None])
    assert f(ids, answers)[2].item() == 0.0

    # a TransformerLens-style model returns the logits tensor; a tuple's first item is taken
    class Bare(nn.Module):
        def __init__(self, tuple_output: bool) -> None:
            super().__init__()
            self.model, self.tuple_output = model, tuple_output

        def forward(self, input_ids):
            logits = self.model(input_ids).logits
            return (logits, None) if self.tuple_output else logits

    for tuple_output in (False, True):
        torch.testing.assert_close(logit_diff(Bare(tuple_output))(ids, answers), expected[:, None])
    with pytest.raises(ValueError, match=r"\(N, T, V\) logits.*returned \(3, 50\)"):
        logit_diff(nn.Sequential(Bare(False), Last()))(ids, answers)
    with pytest.raises(ValueError, match=r"answers must be an \(N, 2\) tensor"):
        f(ids, answers[:, 0])
    with pytest.raises(ValueError, match="answers has 2 rows for 3 prompts"):
        f(ids, answers[:2])
    with pytest.raises(TypeError, match="wraps an nn.Module"):
        logit_diff(lambda ids: ids)


class Last(nn.Module):
    """(N, T, V) -> (N, V): a model whose output is not (N, T, V)."""

    def forward(self, logits: Tensor) -> Tensor:
        return logits[:, -1]


@pytest.mark.hf
def test_logit_diff_leaves_the_model_mode_alone():
    model = _tiny_llama(20).train()
    f = logit_diff(model)
    assert model.training and f.training
    with pytest.warns(UserWarning, match="training mode"):
        warn_if_training(f)
    model.eval()
    assert not f.training and all(not m.training for m in model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_training(f)
    f.train()  # an explicit call reaches the model, as for any submodule
    assert model.training
    f.eval()
    assert not model.training


@pytest.mark.hf
def test_logit_diff_answers_batch_with_captum_additional_forward_args():
    from captum.attr import LayerIntegratedGradients

    model = _tiny_llama(30)
    f = logit_diff(model)
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 30, (4, 6), generator=gen)
    corrupted = torch.randint(0, 30, (4, 6), generator=gen)
    answers = torch.randint(0, 30, (4, 2), generator=gen)
    embed = model.get_input_embeddings()
    lig = LayerIntegratedGradients(f, embed)
    together = lig.attribute(
        clean, baselines=corrupted, additional_forward_args=(answers,), n_steps=5
    )
    alone = torch.cat(
        [
            lig.attribute(
                clean[i : i + 1],
                baselines=corrupted[i : i + 1],
                additional_forward_args=(answers[i : i + 1],),
                n_steps=5,
            )
            for i in range(4)
        ]
    )
    torch.testing.assert_close(together, alone)  # each example scored with its own answers
    heads = LayerGNDI(f, model.model.layers[1].self_attn.o_proj)
    signed = heads.attribute(
        clean, baselines=corrupted, additional_forward_args=(answers,), signed=True
    )
    signed_alone = torch.cat(
        [
            heads.attribute(
                clean[i : i + 1],
                baselines=corrupted[i : i + 1],
                additional_forward_args=(answers[i : i + 1],),
                signed=True,
            )
            for i in range(4)
        ]
    )
    torch.testing.assert_close(signed, signed_alone)


class FixedMetric(nn.Module):
    """A metric that reads the first token: clean prompts start with 1, corrupted with 0."""

    def __init__(self, shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, ids: Tensor, answers: Tensor) -> Tensor:
        value = ids[:, :1].double() * answers[:, :1].double() - 0.5
        return value if self.shape is None else value.reshape(self.shape)


def test_check_task_measures_and_warns_when_the_model_does_not_do_the_task():
    clean = torch.ones(4, 3, dtype=torch.long)
    answers = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1]])
    task = PatchingTask(clean, torch.zeros_like(clean), answers, name="toy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = check_task(FixedMetric(), task, batch_size=3)
    torch.testing.assert_close(result.clean, torch.tensor([0.5, 0.5, 0.5, -0.5]))
    torch.testing.assert_close(result.corrupted, torch.full((4,), -0.5))
    assert result.accuracy == 0.75 and result.fraction_better == 0.75
    swapped = PatchingTask(task.corrupted, task.clean, answers, name="toy")
    with pytest.warns(UserWarning, match="does not do the task 'toy'.*only 0% of 4 pairs"):
        check_task(FixedMetric(), swapped)
    with pytest.raises(ValueError, match=r"one number per prompt.*N = 4, got \(1, 4\)"):
        check_task(FixedMetric(shape=(1, 4)), task)
    with pytest.raises(TypeError, match="needs a PatchingTask"):
        check_task(FixedMetric(), [clean])


def test_everything_is_exported():
    for name in tasks.__all__:
        assert getattr(tasks, name) is not None
    assert {"ioi", "factual_recall", "induction", "logit_diff", "check_task"} <= set(tasks.__all__)
