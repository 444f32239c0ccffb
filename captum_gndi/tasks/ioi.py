"""Indirect object identification (Wang et al. 2022): "When Mary and John went to the store,
John gave a drink to" -> " Mary" (the indirect object), not " John" (the subject)."""

from __future__ import annotations

import random
from typing import Any

from captum_gndi.tasks.core import PatchingTask
from captum_gndi.tasks.prompts import PromptPair, build_task, check_task_size, single_tokens
from captum_gndi.tasks.words import IOI_OBJECTS, IOI_PLACES, IOI_TEMPLATES, NAMES

__all__ = ["ioi"]


def ioi(tokenizer: Any, n: int = 32, seed: int = 0) -> PatchingTask:
    """IOI prompt pairs with ABC-style corruption.

    The clean prompt names two people, the subject twice ("When Mary and John went to the
    store, John gave a drink to"; frames from :data:`~captum_gndi.tasks.words.IOI_TEMPLATES`,
    in ABBA and BABA order). The corrupted prompt is the same sentence with the three name
    slots filled by three other names ("When Alice and Tom went to the store, Kate gave a
    drink to"), so the indirect object can no longer be identified. Answers: the indirect
    object (correct) and the subject (distractor).

    Args:
        tokenizer: A Hugging Face tokenizer; names, places and objects that are not one token
            after a space are not used.
        n: The number of prompt pairs.
        seed: Seed of the random choice of frames, names, places and objects.

    Returns:
        A :class:`PatchingTask` named ``"ioi"`` with ``prompts`` filled.

    Raises:
        ValueError: When fewer than ``n`` pairs with equal-length tokenisations and
            single-token answers can be made with this tokenizer.

    Examples:
        >>> task = ioi(tokenizer, n=16)
        >>> task.prompts[0][0]
        'When Mary and John went to the store, John gave a drink to'
    """
    check_task_size(n, seed)
    names = list(single_tokens(tokenizer, NAMES))
    places = list(single_tokens(tokenizer, IOI_PLACES)) or list(IOI_PLACES)
    objects = list(single_tokens(tokenizer, IOI_OBJECTS)) or list(IOI_OBJECTS)
    if len(names) < 5:
        raise ValueError(
            f"ioi needs at least 5 names that are single tokens after a space for this "
            f"tokenizer, found {len(names)} ({names}); use a tokenizer with a larger vocabulary"
        )
    rng = random.Random(seed)
    candidates = []
    for _ in range(8 * n + 64):
        a, b, c, d, e = rng.sample(names, 5)
        frame = rng.choice(IOI_TEMPLATES)
        if rng.random() < 0.5:  # BABA: the subject is named first
            frame = frame.replace("{A} and {B}", "{B} and {A}", 1)
        slots = {"place": rng.choice(places), "object": rng.choice(objects)}
        clean = frame.format(A=a, B=b, **slots)
        # ABC corruption: the three name slots get three other names, in the same order
        corrupted = frame.replace("{B}", "{D}", 1).replace("{A}", "{C}").replace("{B}", "{E}")
        corrupted = corrupted.format(C=c, D=d, E=e, **slots)
        candidates.append(PromptPair(clean, corrupted, " " + a, " " + b))
    return build_task(tokenizer, candidates, n, seed, "ioi")
