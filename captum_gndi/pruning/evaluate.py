"""Accuracy against channel sparsity for several criteria, without and with a short fine-tune."""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..runs import eval_mode, iterate_batches, resolve_device
from .flops import pruning_report
from .layers import PrunableLayer
from .masks import apply_channel_masks, channel_masks
from .ranking import Normalization, Scope, check_sparsity, select_channels

__all__ = [
    "DEFAULT_SPARSITIES",
    "CurvePoint",
    "SparsityCurve",
    "evaluate_accuracy",
    "finetune",
    "sparsity_curve",
]

DEFAULT_SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    data: Iterable[Any],
    device: torch.device | str | None = None,
    max_batches: int | None = None,
) -> float:
    """Top-1 accuracy of a classifier, in eval mode (the model's mode is restored).

    Args:
        model: A model returning ``(N, classes)`` logits.
        data: Batches of ``(inputs, labels)``.
        device: Where to run (default: the model's device).
        max_batches: Stop after this many batches.

    Returns:
        The fraction of correctly classified examples.

    Examples:
        >>> evaluate_accuracy(model, test_loader)
        0.9...
    """
    device = resolve_device(model, device)
    correct, total = 0, 0
    with eval_mode(model):
        for inputs, labels in iterate_batches(data, device, max_batches, False, "accuracy"):
            if labels is None:
                raise ValueError("accuracy needs batches of (inputs, labels); got no labels.")
            correct += int((model(*inputs).argmax(1) == labels).sum())
            total += len(labels)
    return correct / total


def finetune(
    model: nn.Module,
    data: Iterable[Any],
    epochs: int,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> nn.Module:
    """Train a (masked) classifier in place with SGD and cross-entropy, then set eval mode.

    Channel masks stay in force during training (the masked weights are ``weight_orig * mask``,
    so pruned channels stay exactly zero).

    Args:
        model: The model to train (modified in place).
        data: Batches of ``(inputs, labels)`` (shuffle them for real training).
        epochs: Passes over ``data``.
        lr: Learning rate (constant).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        device: Where to run (default: the model's device).
        progress: Show a progress bar.

    Returns:
        The model, in eval mode.

    Examples:
        >>> finetune(pruned_copy, train_loader, epochs=1)
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}.")
    device = resolve_device(model, device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    for epoch in range(epochs):
        for inputs, labels in iterate_batches(
            data, device, None, progress, f"fine-tune {epoch + 1}"
        ):
            if labels is None:
                raise ValueError("fine-tuning needs batches of (inputs, labels); got no labels.")
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(*inputs), labels).backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@dataclass
class CurvePoint:
    """Accuracy of one criterion at one sparsity.

    Attributes:
        criterion: The criterion's name.
        sparsity: Target channel sparsity.
        accuracy: Accuracy after pruning, without retraining.
        finetuned_accuracy: Accuracy after the fine-tune, or ``None``.
        param_reduction: Fraction of parameters removed (see :class:`PruningReport`).
        flop_reduction: Fraction of FLOPs removed.
    """

    criterion: str
    sparsity: float
    accuracy: float
    finetuned_accuracy: float | None
    param_reduction: float
    flop_reduction: float


@dataclass
class SparsityCurve:
    """Accuracy against sparsity for several criteria.

    Attributes:
        dense_accuracy: Accuracy of the unpruned model.
        points: One :class:`CurvePoint` per criterion and sparsity.
        settings: How the curve was made (scope, normalisation, data sizes, ...).
    """

    dense_accuracy: float
    points: list[CurvePoint]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def criteria(self) -> list[str]:
        """Criteria in the order they were evaluated."""
        return list(dict.fromkeys(p.criterion for p in self.points))

    @property
    def sparsities(self) -> list[float]:
        """Sparsities in increasing order."""
        return sorted({p.sparsity for p in self.points})

    def point(self, criterion: str, sparsity: float) -> CurvePoint:
        """The point of ``criterion`` at ``sparsity``."""
        for p in self.points:
            if p.criterion == criterion and abs(p.sparsity - sparsity) < 1e-9:
                return p
        raise KeyError(f"no point for criterion {criterion!r} at sparsity {sparsity}.")

    def to_markdown(self, finetuned: bool = False) -> str:
        """A markdown table: one row per criterion, one column per sparsity (accuracy in %).

        Args:
            finetuned: Tabulate the fine-tuned accuracies instead.
        """
        header = "| criterion | " + " | ".join(f"{s:.0%}" for s in self.sparsities) + " |"
        lines = [
            f"Dense accuracy: {self.dense_accuracy:.2%}",
            "",
            header,
            "|---|" + "---:|" * len(self.sparsities),
        ]
        for criterion in self.criteria:
            cells = []
            for s in self.sparsities:
                p = self.point(criterion, s)
                value = p.finetuned_accuracy if finetuned else p.accuracy
                cells.append("-" if value is None else f"{value:.2%}")
            lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return {
            "dense_accuracy": self.dense_accuracy,
            "settings": self.settings,
            "points": [asdict(p) for p in self.points],
        }

    def plot(self, path: str | Path | None = None):
        """Plot accuracy against sparsity (fine-tuned accuracies dashed, where present).

        Args:
            path: Where to save the figure (PNG, PDF, ... by extension), or ``None``.

        Returns:
            The matplotlib ``Figure``.
        """
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6, 4), constrained_layout=True)
        axes = figure.subplots()
        for criterion in self.criteria:
            points = sorted(
                (p for p in self.points if p.criterion == criterion), key=lambda p: p.sparsity
            )
            line = axes.plot(
                [p.sparsity for p in points],
                [p.accuracy for p in points],
                marker="o",
                label=criterion,
            )[0]
            tuned = [p for p in points if p.finetuned_accuracy is not None]
            if tuned:
                axes.plot(
                    [p.sparsity for p in tuned],
                    [p.finetuned_accuracy for p in tuned],
                    linestyle="--",
                    marker="x",
                    color=line.get_color(),
                    label=f"{criterion} + fine-tune",
                )
        axes.axhline(self.dense_accuracy, color="black", linewidth=0.8, label="unpruned")
        axes.set_xlabel("channel sparsity")
        axes.set_ylabel("accuracy")
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        if path is not None:
            figure.savefig(path, dpi=120)
        return figure

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``curve.csv``, ``curve.json``, ``curve.md`` and ``curve.png`` into ``out_dir``.

        Returns:
            File kind -> path.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {kind: out / f"curve.{kind}" for kind in ("csv", "json", "md", "png")}
        with paths["csv"].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(self.points[0])))
            writer.writeheader()
            writer.writerows(asdict(p) for p in self.points)
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        tuned = any(p.finetuned_accuracy is not None for p in self.points)
        text = "## Without retraining\n\n" + self.to_markdown()
        if tuned:
            text += "\n\n## After fine-tuning\n\n" + self.to_markdown(finetuned=True)
        paths["md"].write_text(text + "\n")
        self.plot(paths["png"])
        return paths


def sparsity_curve(
    model: nn.Module,
    layers: Sequence[PrunableLayer],
    scores: Mapping[str, Mapping[str, Tensor]],
    test_data: Iterable[Any],
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    *,
    example_inputs: Tensor | Sequence[Tensor] | None = None,
    scope: Scope = "global",
    normalize: Normalization = "none",
    min_keep: int = 1,
    finetune_data: Iterable[Any] | None = None,
    finetune_epochs: int = 0,
    lr: float = 0.01,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> SparsityCurve:
    """Accuracy of the pruned model at each sparsity, for each criterion's channel scores.

    Without fine-tuning the masks are applied to ``model`` and undone after each evaluation;
    with ``finetune_epochs > 0`` a copy of the model is masked, fine-tuned and evaluated too.
    Either way ``model`` is left as it was.

    Args:
        model: The trained classifier.
        layers: The prunable layers (from :func:`~captum_gndi.pruning.find_prunable`).
        scores: Criterion name -> (layer name -> ``(C,)`` channel scores).
        test_data: Batches of ``(inputs, labels)`` to measure accuracy on (keep it separate
            from the data the scores were computed on).
        sparsities: Channel sparsities in [0, 1).
        example_inputs: A batch for the parameter/FLOP report (default: the first test batch).
        scope: ``"global"`` or ``"layer"`` ranking (see :func:`select_channels`).
        normalize: Per-layer score normalisation for global ranking.
        min_keep: Channels every layer keeps at least.
        finetune_data: Training batches for the fine-tune (required when ``finetune_epochs``).
        finetune_epochs: Epochs of SGD fine-tuning after pruning (0: none).
        lr: Fine-tuning learning rate.
        device: Where to run (default: the model's device).
        progress: Show a progress bar over the (criterion, sparsity) pairs.

    Returns:
        A :class:`SparsityCurve` (``.to_markdown()``, ``.plot(path)``, ``.save(out_dir)``).

    Examples:
        >>> layers = find_prunable(model, images[:8])
        >>> scores = {c: channel_importance(model, train_loader, layers, c)
        ...           for c in ("gndi", "magnitude")}
        >>> curve = sparsity_curve(model, layers, scores, test_loader, (0.3, 0.5, 0.7))
        >>> print(curve.to_markdown())
    """
    sparsities = [check_sparsity(s) for s in sparsities]
    if finetune_epochs and finetune_data is None:
        raise ValueError("finetune_epochs > 0 needs finetune_data (training batches).")
    if example_inputs is None:
        device_ = resolve_device(model, device)
        example_inputs = next(iterate_batches(test_data, device_, 1, False, "example batch"))[0]
    dense = evaluate_accuracy(model, test_data, device)
    points = []
    jobs = [(c, s) for c in scores for s in sparsities]
    for criterion, sparsity in tqdm(jobs, desc="pruning", disable=not progress):
        keep = select_channels(scores[criterion], sparsity, scope, normalize, min_keep)
        report = pruning_report(model, layers, keep, example_inputs)
        with channel_masks(model, layers, keep):
            accuracy = evaluate_accuracy(model, test_data, device)
        tuned = None
        if finetune_epochs:
            student = copy.deepcopy(model)
            apply_channel_masks(student, layers, keep)
            finetune(student, finetune_data, finetune_epochs, lr=lr, device=device)  # type: ignore[arg-type]
            tuned = evaluate_accuracy(student, test_data, device)
        points.append(
            CurvePoint(
                criterion=criterion,
                sparsity=sparsity,
                accuracy=accuracy,
                finetuned_accuracy=tuned,
                param_reduction=report.param_reduction,
                flop_reduction=report.flop_reduction,
            )
        )
    settings = {
        "scope": scope,
        "normalize": normalize,
        "min_keep": min_keep,
        "finetune_epochs": finetune_epochs,
        "lr": lr if finetune_epochs else None,
    }
    return SparsityCurve(dense_accuracy=dense, points=points, settings=settings)
