"""Channel importance of prunable layers from any criterion.

Every criterion is measured at the point the channel mask sets to zero (the BatchNorm output
when a BatchNorm follows the conv/linear, the layer's own output otherwise), so that zero-baseline
G-NDI is exactly the first-order estimate of the output change the mask causes. G-NDI comes from
:func:`captum_gndi.compute_gndi` (``granularity="channel"``); the other criteria (magnitude,
Taylor, SNIP, HRank, random, ...) from :func:`captum_gndi.validation.criteria.channel_scores`,
whose docstrings define each per-channel reduction. Each layer's channels are read along its
:attr:`~captum_gndi.pruning.PrunableLayer.channel_dim` (dimension 1 for a conv, the last one
for a linear layer, also on ``(N, T, D)`` or channels-last activations).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..criteria import available_criteria as available_methods
from ..criteria import channel_scores
from ..interventions.model_state import preserve_model
from ..runs import DataTarget, check_data_target
from ..scoring import compute_gndi
from .layers import PrunableLayer

__all__ = ["CRITERIA", "channel_importance"]

CRITERIA = ("gndi", "gndi_path", "magnitude", "taylor", "snip", "hrank", "random")
"""The criteria compared in the pruning experiments (any name of
:func:`captum_gndi.validation.criteria.available_methods` is accepted too)."""


@preserve_model
def channel_importance(
    model: nn.Module,
    data: Iterable[Any],
    layers: Sequence[PrunableLayer],
    criterion: str = "gndi",
    *,
    baseline: Literal["zero", "mean"] | float = "zero",
    n_steps: int = 8,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
    max_batches: int | None = None,
    target: DataTarget = None,
    norm: float | str = "l2",
    n_probes: int | None = None,
) -> dict[str, Tensor]:
    """Score every output channel of the prunable layers (higher = more important).

    Args:
        model: The model, in eval mode (left unchanged).
        data: Batches of ``(inputs, labels)`` to score on (use training data, not the data you
            measure accuracy on).
        layers: Prunable layers from :func:`~captum_gndi.pruning.find_prunable`.
        criterion: ``"gndi"`` (first-order G-NDI, L2 norm over the whole output),
            ``"gndi_path"`` (path-integrated G-NDI with ``n_steps`` Gauss-Legendre points),
            ``"magnitude"`` (mean ``|w|`` of the filter, i.e. the L1 filter norm over its size),
            ``"taylor"`` (Molchanov), ``"snip"``, ``"hrank"``, ``"random"`` or any other
            criterion of :func:`captum_gndi.validation.criteria.available_methods`.
        baseline: Layer baseline of G-NDI (and of other baseline-based criteria): ``"zero"``
            (the pruning intervention itself) or ``"mean"`` (data-set mean activation).
        n_steps: Integration points of ``"gndi_path"`` and other path methods.
        seed: Seed of ``"random"``.
        device: Where to run (default: the model's device).
        progress: Show progress bars.
        max_batches: Use at most this many batches of ``data``.
        target: The output G-NDI measures: ``None`` (every output, e.g. all 1,000 logits),
            ``"label"``, ``"predicted"`` or a class index (one output: one backward pass per
            batch instead of one per logit). For the loss- and logit-based criteria (Taylor,
            SNIP, ...) the class they use (default ``"label"``).
        norm: G-NDI's norm over the output (``"l1"``, ``"l2"``, a number ``p >= 1``,
            ``"fisher"``; see :func:`captum_gndi.compute_gndi`).
        n_probes: Estimate G-NDI's squared L2 / Fisher norm from this many random
            vector-Jacobian products per batch (``n_probes`` backward passes whatever the
            number of outputs; see :mod:`captum_gndi.readouts`).

    Returns:
        Layer name -> ``(C,)`` float64 channel scores.

    Raises:
        ValueError: For an unknown criterion or empty ``layers``, or ``norm`` / ``n_probes``
            with a criterion other than G-NDI.

    Examples:
        >>> layers = find_prunable(model, images[:8])
        >>> scores = channel_importance(model, train_loader, layers, "gndi", max_batches=4)
        >>> scores["layer1.0.conv1"].shape
        torch.Size([16])
    """
    if not layers:
        raise ValueError("layers is empty; find_prunable(model, example_inputs) lists them.")
    gndi = criterion in ("gndi", "gndi_path")
    if not gndi and (n_probes is not None or norm != "l2"):
        raise ValueError(
            f"norm= and n_probes= set how G-NDI measures the output change; criterion "
            f"{criterion!r} has its own definition. Drop them, or use 'gndi' / 'gndi_path'."
        )
    check_data_target(target)
    if criterion not in ("gndi", "gndi_path") and criterion not in available_methods():
        raise ValueError(
            f"Unknown criterion {criterion!r}; choose from {list(available_methods())}."
        )
    scores: dict[str, Tensor] = {}
    for dim in sorted({layer.channel_dim for layer in layers}):
        points = {
            layer.name: model.get_submodule(layer.output_name)
            for layer in layers
            if layer.channel_dim == dim
        }
        scores.update(
            _scores(
                model,
                data,
                points,
                criterion,
                dim,
                baseline,
                n_steps,
                seed,
                device,
                progress,
                max_batches,
                dict(target=target, norm=norm, n_probes=n_probes),
            )
        )
    _warn_degenerate(scores, criterion)
    return {layer.name: scores[layer.name] for layer in layers}


def _warn_degenerate(scores: dict[str, Tensor], criterion: str) -> None:
    """Warn when every score is 0 (e.g. a zero-initialised head) or a layer's are constant."""
    if criterion == "random":
        return
    if all(bool((s == 0).all()) for s in scores.values()):
        warnings.warn(
            f"Every {criterion} score is exactly 0: the output does not depend on any of these "
            "channels (e.g. a zero-initialised classifier head, as in a fresh torchvision ViT); "
            "a ranking would be arbitrary. Load trained weights first.",
            stacklevel=3,
        )
        return
    constant = [n for n, s in scores.items() if len(s) > 1 and bool((s == s[0]).all())]
    if constant:
        warnings.warn(
            f"The {criterion} scores of {constant} are the same for every channel; their "
            "ranking is arbitrary.",
            stacklevel=3,
        )


def _scores(
    model: nn.Module,
    data: Iterable[Any],
    points: dict[str, nn.Module],
    criterion: str,
    dim: int,
    baseline: Literal["zero", "mean"] | float,
    n_steps: int,
    seed: int,
    device: torch.device | str | None,
    progress: bool,
    max_batches: int | None,
    output: dict[str, Any],
) -> dict[str, Tensor]:
    """One criterion's channel scores of layers that share a channel dimension (``output``:
    ``target``, ``norm`` and ``n_probes``)."""
    if criterion in ("gndi", "gndi_path"):
        result = compute_gndi(
            model,
            data,
            points,
            baseline=baseline,
            granularity="channel",
            channel_dim=dim,
            n_steps=1 if criterion == "gndi" else n_steps,
            device=device,
            progress=progress,
            max_batches=max_batches,
            **output,
        )
        return {name: result.mean[name].to(torch.float64).cpu() for name in points}
    scores = channel_scores(
        criterion,
        model,
        data,
        points,
        baseline=baseline,
        target="label" if output["target"] is None else output["target"],
        seed=seed,
        n_steps=n_steps,
        channel_dim=dim,
        device=device,
        progress=progress,
        max_batches=max_batches,
    )
    return {name: torch.as_tensor(scores[name], dtype=torch.float64) for name in points}
