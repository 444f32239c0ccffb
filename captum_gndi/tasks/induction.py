"""Induction: a random word sequence repeated ("... tiger lamp ocean ... tiger lamp") is
continued by the word that followed last time (" ocean")."""

from __future__ import annotations

import random
from typing import Any

from captum_gndi.tasks.core import PatchingTask
from captum_gndi.tasks.prompts import PromptPair, build_task, check_task_size, single_tokens
from captum_gndi.tasks.words import INDUCTION_WORDS

__all__ = ["induction"]


def induction(tokenizer: Any, n: int = 32, seed: int = 0, length: int = 8) -> PatchingTask:
    """Induction prompt pairs: a repeated random sequence, and the same with a new second half.

    The clean prompt is ``length`` random words (one token each, from
    :data:`~captum_gndi.tasks.words.INDUCTION_WORDS`, all different) followed by the first
    ``length - 1`` of them again; induction predicts the last word of the sequence. The
    corrupted prompt has the same first half and ``length - 1`` other random words after it,
    so nothing predicts that word. Answers: the induction word (correct) and another word of
    the first half, not the prompt's last word (distractor), so the metric rewards induction,
    not copying any word seen before.

    Args:
        tokenizer: A Hugging Face tokenizer.
        n: The number of prompt pairs.
        seed: Seed of the random words.
        length: The number of words in the repeated sequence (at least 3).

    Returns:
        A :class:`PatchingTask` named ``"induction"`` with ``prompts`` filled.

    Raises:
        ValueError: When the tokenizer keeps fewer than ``2 * length - 1`` of the words as
            single tokens, or fewer than ``n`` pairs can be made.
    """
    check_task_size(n, seed)
    if isinstance(length, bool) or not isinstance(length, int) or length < 3:
        raise ValueError(f"length must be an int >= 3 (words in the sequence), got {length!r}")
    words = list(single_tokens(tokenizer, INDUCTION_WORDS))
    if len(words) < 2 * length - 1:
        raise ValueError(
            f"induction with length={length} needs {2 * length - 1} words that are single tokens "
            f"after a space, this tokenizer keeps {len(words)}; pass a smaller length"
        )
    rng = random.Random(seed)
    candidates = []
    for _ in range(2 * n + 16):
        sequence = rng.sample(words, length)
        fresh = rng.sample([w for w in words if w not in sequence], length - 1)
        distractor = rng.choice(sequence[:-2])  # not the answer, not the prompt's last word
        clean = " ".join(sequence + sequence[:-1])
        corrupted = " ".join(sequence + fresh)
        candidates.append(PromptPair(clean, corrupted, " " + sequence[-1], " " + distractor))
    return build_task(tokenizer, candidates, n, seed, "induction")
