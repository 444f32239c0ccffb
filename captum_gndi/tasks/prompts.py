"""From text prompt pairs to a :class:`PatchingTask`: tokenise, keep what patching can use.

Patching needs token ids of one shape: every corrupted prompt as long as its clean prompt, and
(to stack pairs into ``(N, T)`` without padding) every pair as long as the others. A metric on
one logit needs single-token answers. :func:`build_task` tokenises candidate pairs, keeps the
pairs that satisfy both at the most common length, and samples ``n`` of them.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import torch

from captum_gndi.tasks.core import PatchingTask

__all__ = ["PromptPair", "build_task", "check_task_size", "encode", "single_tokens"]


class PromptPair(NamedTuple):
    """A candidate pair: the two prompts and the two answers as text (``" Mary"``)."""

    clean: str
    corrupted: str
    correct: str
    distractor: str


def check_task_size(n: Any, seed: Any) -> None:
    """Check a generator's ``n`` (a positive int) and ``seed`` (an int)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (the number of prompt pairs), got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


def encode(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text`` from a Hugging Face tokenizer (or any callable returning a mapping
    with ``input_ids``)."""
    if not callable(tokenizer):
        raise TypeError(
            f"tokenizer must be a Hugging Face tokenizer (callable on text), got "
            f"{type(tokenizer).__name__}; for a TransformerLens model pass model.tokenizer"
        )
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return [int(i) for i in ids]


def single_tokens(tokenizer: Any, words: Iterable[str]) -> dict[str, int]:
    """The words (with a leading space, as they follow another word) that are one token.

    Returns:
        ``{word: token id}`` for each word whose ``" " + word`` is a single token, in order.
    """
    found = {}
    for word in words:
        ids = encode(tokenizer, " " + word, add_special_tokens=False)
        if len(ids) == 1:
            found[word] = ids[0]
    return found


def build_task(
    tokenizer: Any,
    candidates: Sequence[PromptPair],
    n: int,
    seed: int,
    name: str,
) -> PatchingTask:
    """Tokenise candidate pairs and sample ``n`` usable ones into a :class:`PatchingTask`.

    A pair is usable when its clean and corrupted prompts tokenise to the same length and both
    answers are single tokens. Of the usable pairs, those of the most common length (the
    shortest on a tie) are kept, so that the task stacks into ``(N, T)`` tensors.

    Args:
        tokenizer: A Hugging Face tokenizer.
        candidates: Candidate pairs (duplicates are dropped).
        n: The number of pairs to return.
        seed: Seed of the sample.
        name: The task's name, also used in error messages.

    Raises:
        ValueError: When fewer than ``n`` usable pairs of one length exist.
    """
    by_length: dict[int, list[tuple[PromptPair, list[int], list[int], list[int]]]] = {}
    for pair in dict.fromkeys(candidates):
        clean = encode(tokenizer, pair.clean)
        corrupted = encode(tokenizer, pair.corrupted)
        answers = [encode(tokenizer, a, add_special_tokens=False) for a in pair[2:]]
        if len(clean) != len(corrupted) or any(len(a) != 1 for a in answers):
            continue
        answer_ids = [answers[0][0], answers[1][0]]
        by_length.setdefault(len(clean), []).append((pair, clean, corrupted, answer_ids))
    best = max(by_length, key=lambda length: (len(by_length[length]), -length), default=None)
    count = len(by_length[best]) if best is not None else 0
    if count < n:
        raise ValueError(
            f"{name}: only {count} of {len(candidates)} generated prompt pairs have clean and "
            f"corrupted prompts of one common token length and single-token answers, fewer than "
            f"n={n}; ask for n <= {count}, or use a tokenizer that keeps the package's words "
            "(names, places, countries) as single tokens after a space"
        )
    rows = random.Random(seed).sample(by_length[best], n)
    return PatchingTask(
        clean=torch.tensor([row[1] for row in rows], dtype=torch.long),
        corrupted=torch.tensor([row[2] for row in rows], dtype=torch.long),
        answers=torch.tensor([row[3] for row in rows], dtype=torch.long),
        name=name,
        prompts=tuple((row[0].clean, row[0].corrupted) for row in rows),
    )
