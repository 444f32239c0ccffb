"""Task metrics: the logit difference of a causal LM, and the check that a model does a task."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from captum_gndi.tasks.core import PatchingTask

__all__ = ["LogitDiff", "TaskMetrics", "check_task", "logit_diff"]


def _logits(output: Any) -> Tensor:
    """``(N, T, V)`` logits from a model's output (a ``ModelOutput``, a tensor, a tuple)."""
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, (tuple, list)) and output else output
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"logit_diff needs a causal LM returning (N, T, V) logits (a Hugging Face output with "
            f".logits, a TransformerLens model, or a tensor); the wrapped model returned {shape}"
        )
    return logits


class LogitDiff(nn.Module):
    """The logit difference metric of a causal LM: ``f(input_ids, answers) -> (N, 1)``.

    ``f(input_ids, answers)[i] = logits[i, -1, answers[i, 0]] - logits[i, -1, answers[i, 1]]``:
    the correct minus the distractor answer's logit at the last position. ``answers`` is a
    tensor with one row per example, so Captum's ``additional_forward_args=(answers,)``
    expands it with the inputs (integrated gradients, NoiseTunnel). The wrapped model is a
    submodule (``.to(device)`` moves it), and the wrapper's ``training`` flag is the model's:
    wrapping never changes the model's mode.

    Args:
        model: A causal LM: a Hugging Face model whose output has ``.logits``, a
            TransformerLens ``HookedTransformer`` (returns logits), or any module returning
            ``(N, T, V)``.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"logit_diff wraps an nn.Module, got {type(model).__name__}")
        super().__init__()
        self.model = model

    @property
    def training(self) -> bool:  # type: ignore[override]
        """The wrapped model's mode."""
        model = self._modules.get("model")
        return bool(model.training) if model is not None else False

    @training.setter
    def training(self, mode: bool) -> None:
        # nn.Module.__init__ and train() set the wrapper's own flag; the model's flag is the one
        # that counts (train() / eval() still reach the model as a submodule).
        pass

    def forward(self, input_ids: Tensor, answers: Tensor) -> Tensor:
        """Correct minus distractor logit at the last position, ``(N, 1)``."""
        if not isinstance(answers, Tensor) or answers.dim() != 2 or answers.shape[1] != 2:
            shape = tuple(answers.shape) if isinstance(answers, Tensor) else type(answers)
            raise ValueError(
                f"answers must be an (N, 2) tensor of (correct, distractor) token ids, got {shape}"
            )
        last = _logits(self.model(input_ids))[:, -1, :]
        if answers.shape[0] != last.shape[0]:
            raise ValueError(
                f"answers has {answers.shape[0]} rows for {last.shape[0]} prompts; pass one "
                "(correct, distractor) row per prompt"
            )
        picked = last.gather(1, answers.to(device=last.device, dtype=torch.long))
        return picked[:, :1] - picked[:, 1:]


def logit_diff(model: nn.Module) -> LogitDiff:
    """Wrap a causal LM into the task metric ``f(input_ids, answers) -> (N, 1)``.

    Examples:
        >>> f = logit_diff(model)
        >>> f(task.clean, task.answers).shape
        torch.Size([16, 1])
        >>> LayerGNDI(f, heads).attribute(task.clean, baselines=task.corrupted, signed=True,
        ...     additional_forward_args=(task.answers,), granularity="channel", channel_dim=2)
    """
    return LogitDiff(model)


class TaskMetrics(NamedTuple):
    """A metric on a task's clean and corrupted prompts, one value per pair."""

    clean: Tensor
    corrupted: Tensor

    @property
    def accuracy(self) -> float:
        """The fraction of pairs whose clean metric is positive (for :func:`logit_diff`: the
        correct answer's logit beats the distractor's)."""
        return float((self.clean > 0).float().mean())

    @property
    def fraction_better(self) -> float:
        """The fraction of pairs whose clean metric beats the corrupted one."""
        return float((self.clean > self.corrupted).float().mean())


def _metric_values(metric: Any, ids: Tensor, answers: Tensor) -> Tensor:
    value = metric(ids, answers)
    if not isinstance(value, Tensor) or value.shape not in ((ids.shape[0],), (ids.shape[0], 1)):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"a task metric must return one number per prompt, (N,) or (N, 1) with N = "
            f"{ids.shape[0]}, got {shape}; wrap the model with logit_diff(model) or reduce "
            "your metric's output to one value per example"
        )
    return value.detach().reshape(-1).float().cpu()


def check_task(metric: Any, task: PatchingTask, *, batch_size: int = 16) -> TaskMetrics:
    """Run a metric on a task's clean and corrupted prompts, and warn if the model fails it.

    Args:
        metric: ``metric(input_ids, answers) -> (N,) or (N, 1)``, such as
            :func:`logit_diff` ``(model)``; higher means more of the task's behaviour.
        task: The task.
        batch_size: Pairs per forward pass.

    Returns:
        The metric on every clean and corrupted prompt.

    Raises:
        ValueError: When the metric returns another shape than one number per prompt.

    Warns:
        UserWarning: When the clean metric beats the corrupted one on at most half of the
            pairs: the model does not do the task, and patching effects mean little.
    """
    if not isinstance(task, PatchingTask):
        raise TypeError(f"check_task needs a PatchingTask, got {type(task).__name__}")
    parameter = next(metric.parameters(), None) if isinstance(metric, nn.Module) else None
    if parameter is not None:
        task = task.to(parameter.device)
    clean, corrupted = [], []
    with torch.no_grad():
        for batch in task.loader(batch_size):
            clean.append(_metric_values(metric, batch.clean, batch.answers))
            corrupted.append(_metric_values(metric, batch.corrupted, batch.answers))
    result = TaskMetrics(torch.cat(clean), torch.cat(corrupted))
    if result.fraction_better <= 0.5:
        warnings.warn(
            f"the model does not do the task {task.name!r}: its clean metric beats the corrupted "
            f"one on only {result.fraction_better:.0%} of {len(task)} pairs (mean "
            f"{float(result.clean.mean()):.3g} clean vs {float(result.corrupted.mean()):.3g} "
            "corrupted); patching effects on it say little about the task's mechanism",
            stacklevel=2,
        )
    return result
