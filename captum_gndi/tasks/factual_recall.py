"""Factual recall: "The capital of France is" -> " Paris"; the corrupted prompt asks about
another country ("The capital of Poland is"), whose answer (" Warsaw") is the distractor."""

from __future__ import annotations

from typing import Any

from captum_gndi.tasks.core import PatchingTask
from captum_gndi.tasks.prompts import PromptPair, build_task, check_task_size, single_tokens
from captum_gndi.tasks.words import COUNTRIES

__all__ = ["FACT_TEMPLATES", "factual_recall"]

FACT_TEMPLATES = {
    "capital": "The capital of {} is",
    "language": "The people of {} speak",
}
"""The relations asked about: relation -> prompt frame (``{}`` is the country); the answers are
the ``capital`` and ``language`` columns of :data:`~captum_gndi.tasks.words.COUNTRIES`."""


def factual_recall(tokenizer: Any, n: int = 32, seed: int = 0) -> PatchingTask:
    """Factual-recall prompt pairs with the subject swapped.

    The clean prompt asks for a fact about one country ("The capital of France is"), the
    corrupted prompt for the same fact about another country of the same token length ("The
    capital of Poland is"). Answers: the clean country's fact (correct, " Paris") and the
    corrupted country's (distractor, " Warsaw"). Relations: :data:`FACT_TEMPLATES`; pairs
    whose two answers coincide are not made.

    Args:
        tokenizer: A Hugging Face tokenizer.
        n: The number of prompt pairs (at most a few hundred distinct pairs exist).
        seed: Seed of the sample.

    Returns:
        A :class:`PatchingTask` named ``"factual_recall"`` with ``prompts`` filled.

    Raises:
        ValueError: When fewer than ``n`` pairs with equal-length tokenisations and
            single-token answers can be made with this tokenizer.
    """
    check_task_size(n, seed)
    candidates = []
    for column, frame in enumerate(FACT_TEMPLATES.values(), start=1):  # COUNTRIES' columns
        facts = {row[0]: row[column] for row in COUNTRIES if row[column]}
        answers = single_tokens(tokenizer, dict.fromkeys(facts.values()))
        facts = {country: fact for country, fact in facts.items() if fact in answers}
        for country, fact in facts.items():
            for other, other_fact in facts.items():
                if other_fact != fact:
                    clean, corrupted = frame.format(country), frame.format(other)
                    candidates.append(PromptPair(clean, corrupted, " " + fact, " " + other_fact))
    return build_task(tokenizer, candidates, n, seed, "factual_recall")
