"""The patching task type: clean and corrupted token ids of equal shape, and the answers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["PatchingBatch", "PatchingTask", "is_patching_data"]


class PatchingBatch(NamedTuple):
    """One batch of a patching task: ``clean`` and ``corrupted`` token ids ``(N, T)`` and
    ``answers`` ``(N, 2)`` (correct, distractor token id)."""

    clean: Tensor
    corrupted: Tensor
    answers: Tensor


def _check(clean: Tensor, corrupted: Tensor, answers: Tensor) -> None:
    for name, value in (("clean", clean), ("corrupted", corrupted), ("answers", answers)):
        if not isinstance(value, Tensor) or value.dtype.is_floating_point:
            raise TypeError(
                f"PatchingTask.{name} must be an integer tensor of token ids, got "
                f"{type(value).__name__ if not isinstance(value, Tensor) else value.dtype}; "
                "tokenise the prompts first (tokenizer(prompts, return_tensors='pt').input_ids)"
            )
    if clean.dim() != 2 or clean.shape[0] == 0:
        raise ValueError(
            f"PatchingTask.clean must be (N, T) token ids with N >= 1, got shape "
            f"{tuple(clean.shape)}"
        )
    if corrupted.shape != clean.shape:
        raise ValueError(
            f"clean prompts {tuple(clean.shape)} and corrupted prompts {tuple(corrupted.shape)} "
            "differ in shape: patching needs every corrupted prompt to have the same number of "
            "tokens as its clean prompt; drop or rewrite the pairs whose tokenisations differ"
        )
    if answers.shape != (clean.shape[0], 2):
        raise ValueError(
            f"PatchingTask.answers must be (N, 2) = (correct, distractor) single-token ids with "
            f"N = {clean.shape[0]}, got shape {tuple(answers.shape)}; an answer of several "
            "tokens cannot be scored by one logit: keep pairs whose answers are single tokens"
        )


@dataclass(frozen=True)
class PatchingTask:
    """Clean and corrupted prompts of the same token length, with correct / distractor answers.

    Attributes:
        clean: Token ids ``(N, T)`` of the clean prompts.
        corrupted: Token ids ``(N, T)`` of the corrupted prompts (same shape as ``clean``).
        answers: ``(N, 2)``: the correct and the distractor answer's token id per pair.
        name: A label for reports.
        prompts: Optional ``(clean text, corrupted text)`` per pair, for display.
    """

    clean: Tensor
    corrupted: Tensor
    answers: Tensor
    name: str = "task"
    prompts: tuple[tuple[str, str], ...] | None = None

    def __post_init__(self) -> None:
        _check(self.clean, self.corrupted, self.answers)

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def loader(self, batch_size: int = 8) -> list[PatchingBatch]:
        """The task as a list of :class:`PatchingBatch` of at most ``batch_size`` pairs."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return [
            PatchingBatch(
                self.clean[i : i + batch_size],
                self.corrupted[i : i + batch_size],
                self.answers[i : i + batch_size],
            )
            for i in range(0, len(self), batch_size)
        ]

    def __iter__(self) -> Iterator[PatchingBatch]:
        return iter(self.loader())

    def to(self, device: torch.device | str) -> PatchingTask:
        """The same task with its tensors on ``device``."""
        return PatchingTask(
            self.clean.to(device),
            self.corrupted.to(device),
            self.answers.to(device),
            self.name,
            self.prompts,
        )


def is_patching_data(data: Any) -> bool:
    """Whether ``data`` is a :class:`PatchingTask` or a sequence whose first item is a
    :class:`PatchingBatch` (a one-pass iterator is not inspected)."""
    if isinstance(data, PatchingTask):
        return True
    if isinstance(data, (list, tuple)) and data:
        return isinstance(data[0], PatchingBatch)
    return False


def check_patching_batches(batches: Iterable[Any]) -> Iterator[PatchingBatch]:
    """Yield each batch as a checked :class:`PatchingBatch` (plain 3-tuples are accepted)."""
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 3):
            raise TypeError(
                "a patching loader must yield (clean, corrupted, answers) batches, got "
                f"{type(batch).__name__}; use PatchingTask(...).loader(batch_size)"
            )
        clean, corrupted, answers = batch
        _check(clean, corrupted, answers)
        yield PatchingBatch(clean, corrupted, answers)
