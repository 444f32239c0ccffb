"""Counterfactual patching: clean and corrupted prompts, a task metric, and which run is patched.

LLM interpretability asks what happens to a task metric (the logit difference between the right
and the wrong answer) when one component's activation is *patched*: taken from a run on another
prompt of the same length. In G-NDI's terms the baseline ``b_u`` of a unit is its activation on
that other prompt, per example, and the metric model ``f(input_ids, answers) -> (N, 1)`` is the
function whose change is estimated (first order) and measured (exactly). Two directions:

- ``"noising"`` (this package's default): run the *clean* prompt and patch in the *corrupted*
  activation: the effect ``f(clean) - f(clean; do(h_u := h_u(corrupted)))`` says how much of the
  clean behaviour depends on the unit;
- ``"denoising"`` (TransformerLens's default in ``transformer_lens.patching``): run the
  *corrupted* prompt and patch in the *clean* activation: the effect
  ``f(corrupted) - f(corrupted; do(h_u := h_u(clean)))`` is minus how much the unit restores.

Every effect in the package keeps G-NDI's sign: ``f(x) - f(x; do(h_u := b_u))`` (positive when
patching lowers the metric), so signed first-order G-NDI is minus attribution patching (AtP),
and the value TransformerLens's sweeps report for a unit is ``f(x) - effect``.

This module turns patching data (a :class:`~captum_gndi.tasks.PatchingTask` or a loader of
``(clean, corrupted, answers)`` batches) into :class:`~captum_gndi.engine.ScoringJob`s whose
baselines are the other run's activations, wraps a model and a metric into a metric model
(:class:`PatchingMetric`), and checks what users hand in; :func:`captum_gndi.compute_gndi`,
:func:`captum_gndi.verify_top_k` and :func:`captum_gndi.validation.validate` read patching data
through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .engine import ScoringJob, capture_activations
from .interventions import LayerSpec
from .runs import Layers, chunks, make_runner, resolve_layers, shard
from .tasks.core import PatchingTask, check_patching_batches, is_patching_data
from .units import ChannelDim

__all__ = [
    "DIRECTIONS",
    "PatchingMetric",
    "PatchingRun",
    "check_direction",
    "check_metric_output",
    "is_patching_data",
    "metric_model",
    "metric_model_and_layers",
    "patching_baselines",
    "patching_job",
    "patching_runs",
    "source_label",
]

DIRECTIONS = ("noising", "denoising")
"""Patching directions: noising (run clean, patch corrupted in; the default) and denoising
(run corrupted, patch clean in; TransformerLens's default)."""


def check_direction(direction: str) -> str:
    """Return ``direction`` if it is one of :data:`DIRECTIONS`, else raise a clear error."""
    if direction not in DIRECTIONS:
        raise ValueError(
            f"direction must be 'noising' (run the clean prompt, patch corrupted activations "
            f"in) or 'denoising' (run the corrupted prompt, patch clean activations in), got "
            f"{direction!r}."
        )
    return direction


def source_label(direction: str) -> str:
    """What the baselines are in ``direction``: ``"corrupted"`` or ``"clean"`` activations."""
    return "corrupted" if check_direction(direction) == "noising" else "clean"


def check_metric_output(value: Any, n: int, what: str = "the metric") -> Tensor:
    """``value`` as ``(N, 1)`` if it holds one number per example, else a clear error.

    Args:
        value: What the metric (or metric model) returned.
        n: The number of prompt pairs in the batch.
        what: How to name the metric in the error.

    Returns:
        The values as a float tensor of shape ``(N, 1)``.

    Raises:
        TypeError: For a non-tensor or a non-float tensor.
        ValueError: For any shape but ``(N,)`` or ``(N, 1)`` (a batch mean, logits, ...).
    """
    if not isinstance(value, Tensor) or not value.is_floating_point():
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise TypeError(
            f"{what} returned {got}; a patching metric returns a float tensor with one number "
            "per prompt pair, shape (N,) or (N, 1) (e.g. the logit difference at the last "
            "position)."
        )
    if tuple(value.shape) not in ((n,), (n, 1)):
        raise ValueError(
            f"{what} returned shape {tuple(value.shape)} for {n} prompt pairs; a patching "
            f"metric returns one number per pair, shape ({n},) or ({n}, 1): not a batch mean "
            "(TransformerLens's patching metrics are scalars: drop the .mean()) and not the "
            "logits (reduce them to the metric, e.g. the correct minus the distractor logit at "
            "the last position)."
        )
    return value.reshape(n, 1)


class PatchingMetric(nn.Module):
    """A metric model ``f(input_ids, answers) -> (N, 1)`` from a model and a metric on its output.

    Args:
        model: The model; called as ``model(input_ids)``. A Hugging Face ``ModelOutput`` is
            read through its ``logits``.
        metric: ``metric(output, answers)``: one number per example, ``(N,)`` or ``(N, 1)``,
            from the model's output (e.g. logits ``(N, T, V)``) and the ``(N, 2)`` answers.

    Examples:
        >>> def logit_diff(logits, answers):
        ...     last = logits[:, -1]
        ...     return last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])
        >>> f = PatchingMetric(model, logit_diff)
        >>> f(task.clean, task.answers).shape
        torch.Size([16, 1])
    """

    def __init__(self, model: nn.Module, metric: Callable[[Any, Tensor], Tensor]) -> None:
        super().__init__()
        if not callable(metric):
            raise TypeError(f"metric must be callable, got {type(metric).__name__}.")
        self.model = model
        self.metric = metric
        self.training = model.training  # the wrapper's own flag only; the model is not touched

    def forward(self, input_ids: Tensor, answers: Tensor) -> Tensor:
        """``metric(model(input_ids), answers)`` as ``(N, 1)``."""
        output = self.model(input_ids)
        if not isinstance(output, Tensor) and isinstance(getattr(output, "logits", None), Tensor):
            output = output.logits
        return check_metric_output(self.metric(output, answers), input_ids.shape[0])


def metric_model(model: nn.Module, metric: Callable[[Any, Tensor], Tensor] | None) -> nn.Module:
    """The function patching evaluates: ``model`` itself, or ``PatchingMetric(model, metric)``."""
    return model if metric is None else PatchingMetric(model, metric)


def metric_model_and_layers(
    model: nn.Module, layers: Layers, metric: Callable[[Any, Tensor], Tensor] | None
) -> tuple[nn.Module, dict[str, LayerSpec]]:
    """The function patching evaluates (:func:`metric_model`) and ``layers`` resolved on
    ``model`` itself, so dotted names are the model's, not the metric wrapper's."""
    return metric_model(model, metric), resolve_layers(model, layers)


@dataclass
class PatchingRun:
    """One batch of patching data in one direction.

    Attributes:
        inputs: Token ids of the run that is patched (clean for noising, corrupted for
            denoising).
        source: Token ids of the run the patched-in activations come from.
        answers: ``(N, 2)`` correct / distractor token ids.
    """

    inputs: Tensor
    source: Tensor
    answers: Tensor


def patching_runs(
    data: PatchingTask | Iterable[Any],
    direction: str = "noising",
    device: torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = False,
    what: str = "patching",
    batch_size: int | None = None,
) -> Iterator[PatchingRun]:
    """This rank's patching batches as :class:`PatchingRun` on ``device``.

    Args:
        data: A :class:`~captum_gndi.tasks.PatchingTask` or an iterable of ``(clean,
            corrupted, answers)`` batches (e.g. ``task.loader(batch_size)``).
        direction: ``"noising"`` or ``"denoising"``.
        device: Where to move the tensors.
        max_batches: Stop after this many batches (in total over all ranks).
        progress: Show a progress bar.
        what: The progress bar's label.
        batch_size: Split each batch into parts of at most this many pairs.

    Raises:
        TypeError / ValueError: For a batch that is not ``(clean, corrupted, answers)`` of
            token ids with matching shapes (the message names the fix).
    """
    check_direction(direction)
    if isinstance(data, PatchingTask):
        data = data.loader()  # its batches: len() counts batches, not prompt pairs
    batches, total, rank = shard(data, max_batches)
    count = 0
    for batch in tqdm(
        check_patching_batches(batches), total=total, desc=what, disable=not progress or rank > 0
    ):
        clean, corrupted, answers = (t.to(device) if device is not None else t for t in batch)
        inputs, source = (clean, corrupted) if direction == "noising" else (corrupted, clean)
        for (part, part_source), part_answers in chunks((inputs, source), answers, batch_size):
            yield PatchingRun(part, part_source, part_answers)  # type: ignore[arg-type]
        count += 1
    if count == 0 and rank == 0:
        raise ValueError(f"The patching data yielded no batches ({what}); pass a non-empty task.")


def patching_baselines(
    model: nn.Module,
    run: PatchingRun,
    layers: Sequence[LayerSpec],
    labels: Sequence[str],
    attribute_to_layer_input: bool = False,
) -> list[Tensor]:
    """Each layer's activation on the source prompts: the per-example patching baselines.

    Also checks that the model is a metric model: one number per example on ``(ids,
    answers)``.
    """
    job = ScoringJob(
        run=make_runner(model, (run.source,), (run.answers,), None),
        layers=layers,
        labels=labels,
        baselines=[None] * len(layers),
        attribute_to_layer_input=attribute_to_layer_input,
    )
    output, activations = capture_activations(job)
    check_metric_model_output(output, run.source.shape[0])
    return activations


def check_metric_model_output(output: Tensor, n: int) -> None:
    """Raise a clear error unless a metric model's output (flattened ``(N, K)``) has K = 1."""
    if output.shape[1] != 1:
        raise ValueError(
            f"The model returned {output.shape[1]} numbers per prompt pair; patching needs a "
            "metric model f(input_ids, answers) -> (N, 1), e.g. "
            "captum_gndi.tasks.logit_diff(model), or pass the model with metric=... (a "
            "callable metric(output, answers) returning one number per pair)."
        )


def patching_job(
    model: nn.Module,
    run: PatchingRun,
    layers: Sequence[LayerSpec],
    labels: Sequence[str],
    attribute_to_layer_input: bool = False,
    channel_dim: ChannelDim = 1,
    layer_masks: Sequence[Tensor | None] | None = None,
    grad_kwargs: dict[str, Any] | None = None,
) -> ScoringJob:
    """The scoring job of one patching batch: the metric model on the patched run's prompts,
    every layer's baseline its activation on the source prompts (per example)."""
    baselines = patching_baselines(model, run, layers, labels, attribute_to_layer_input)
    return ScoringJob(
        run=make_runner(model, (run.inputs,), (run.answers,), None),
        layers=layers,
        labels=labels,
        baselines=baselines,
        attribute_to_layer_input=attribute_to_layer_input,
        channel_dim=channel_dim,
        layer_masks=layer_masks,
        grad_kwargs=grad_kwargs,
    )
