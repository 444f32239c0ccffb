"""Whole-data-set G-NDI: ``compute_gndi`` and its result.

``compute_gndi`` streams a data loader with memory that stays constant in the number of examples
(running sums of scores and squared scores per layer; each batch is released before the next is
read), moves each batch to the model's device, optionally splits batches
(``internal_batch_size``), and under ``torch.distributed`` (e.g. ``torchrun``) scores each
rank's shard and all-reduces the sums, so that every rank returns the global result. A loader
with a ``DistributedSampler`` is already sharded and is used as is; any other iterable is
sharded by batches (rank r takes batches r, r + world_size, ...).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._captum_compat import integration_points
from .attr import _check_inputs, _warn_if_training, check_p, make_runner
from .baselines import LayerBaseline
from .engine import Batch, Granularity, Mode, capture_activations, compute_effects, effect_norms
from .interventions import LayerCall, LayerSpec, check_layers_in_model, layer_label

__all__ = ["GNDIResult", "compute_gndi", "mean_activations", "resolve_layers"]

Layers = Union[Mapping[str, LayerSpec], Sequence[Union[str, LayerSpec]]]
DataTarget = Union[None, int, Literal["label", "predicted"]]


def resolve_layers(model: nn.Module, layers: Layers) -> dict[str, LayerSpec]:
    """Normalise ``layers`` (a dict name -> module, or a list of dotted names / modules)."""
    if isinstance(layers, Mapping):
        resolved = dict(layers)
    else:
        if isinstance(layers, (str, nn.Module, LayerCall)):
            layers = [layers]
        resolved = {}
        for item in layers:
            if isinstance(item, str):
                from .adapters import get_layer

                resolved[item] = get_layer(model, item)
            else:
                resolved[layer_label(item, model)] = item
    if not resolved:
        raise ValueError("No layers given; pass a dict name -> module or a list of dotted names.")
    check_layers_in_model(model, list(resolved.values()))
    return resolved


@dataclass
class GNDIResult:
    """G-NDI over a data set: per-layer mean score and its standard error.

    Attributes:
        names: Layer names in the order given.
        mean: Mean score per layer: a float tensor of shape ``()`` (layer granularity),
            ``(C,)`` (channel) or the activation shape (unit).
        stderr: Standard error of the mean, same shapes.
        n_examples: Number of examples scored.
        settings: The options used (baseline, p, mode, granularity, n_steps).
    """

    names: list[str]
    mean: dict[str, Tensor]
    stderr: dict[str, Tensor]
    n_examples: int
    settings: dict[str, Any] = field(default_factory=dict)

    def layer_scores(self) -> dict[str, float]:
        """One number per layer (for channel/unit granularity: the sum over units)."""
        return {name: float(self.mean[name].sum()) for name in self.names}

    def ranking(self) -> list[str]:
        """Layer names sorted from most to least important."""
        scores = self.layer_scores()
        return sorted(self.names, key=lambda name: -scores[name])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return {
            "n_examples": self.n_examples,
            "settings": dict(self.settings),
            "layers": {
                name: {
                    "mean": self.mean[name].tolist(),
                    "stderr": self.stderr[name].tolist(),
                    "rank": self.ranking().index(name) + 1,
                }
                for name in self.names
            },
        }

    def __str__(self) -> str:
        scores = self.layer_scores()
        ranking = self.ranking()
        width = max(len("layer"), *(len(n) for n in self.names))
        unit_note = "" if self.settings.get("granularity", "layer") == "layer" else " (sum)"
        lines = [
            f"G-NDI over {self.n_examples} examples "
            + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            f"{'rank':>4}  {'layer':<{width}}  {'G-NDI' + unit_note:>12}  {'std. err.':>10}",
        ]
        for name in self.names:
            stderr = float(self.stderr[name].pow(2).sum().sqrt())
            lines.append(
                f"{ranking.index(name) + 1:>4}  {name:<{width}}  {scores[name]:>12.5g}  "
                f"{stderr:>10.3g}"
            )
        return "\n".join(lines)

    __repr__ = __str__


def _split_batch(batch: Any) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """A batch is a tensor, or (inputs, labels), or ((input tensors...), labels)."""
    if isinstance(batch, Tensor):
        return (batch,), None
    if isinstance(batch, Mapping):
        raise TypeError(
            "Dict batches are not supported directly; wrap the loader so it yields "
            "(input tensors, labels), or pass a forward wrapper taking tensors."
        )
    if isinstance(batch, (list, tuple)) and batch:
        inputs, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
        return inputs, labels if isinstance(labels, Tensor) else None
    raise TypeError(f"Cannot read a batch of type {type(batch).__name__}; yield tensors.")


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _has_distributed_sampler(data: Iterable[Any]) -> bool:
    samplers = (
        getattr(data, "sampler", None),
        getattr(getattr(data, "batch_sampler", None), "sampler", None),
    )
    return any(isinstance(s, torch.utils.data.DistributedSampler) for s in samplers)


def _shard(data: Iterable[Any], max_batches: int | None) -> tuple[Iterable[Any], int | None, int]:
    """This rank's batches, their number where known, and the rank.

    Without ``torch.distributed`` (or with one process) that is all of ``data``. Otherwise each
    rank takes every ``world_size``-th of the first ``max_batches`` batches, unless the loader
    already shards with a ``DistributedSampler``: then each rank scores its own loader's first
    ``ceil(max_batches / world_size)`` batches.
    """
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    rank, stride, limit = 0, 1, max_batches
    if _distributed():
        rank = dist.get_rank()
        if not _has_distributed_sampler(data):
            stride = dist.get_world_size()
        elif max_batches is not None:
            limit = math.ceil(max_batches / dist.get_world_size())
    if limit is not None:
        data = itertools.islice(data, limit)
        total = limit if total is None else min(total, limit)
    if stride > 1:
        data = itertools.islice(data, rank, None, stride)
        total = None if total is None else len(range(rank, total, stride))
    return data, total, rank


def _batches(
    data: Iterable[Any], device: torch.device, max_batches: int | None, progress: bool, what: str
):
    """Yield this rank's batches as ``(input tensors on device, labels on device or None)``."""
    shard, total, rank = _shard(data, max_batches)
    count = 0
    for batch in tqdm(shard, total=total, desc=what, disable=not progress or rank > 0):
        inputs, labels = _split_batch(batch)
        inputs = tuple(t.to(device, non_blocking=True) for t in inputs)
        yield inputs, (labels.to(device, non_blocking=True) if labels is not None else None)
        count += 1
    if count == 0 and not _distributed():
        raise ValueError(f"The data yielded no batches ({what}); pass a non-empty data loader.")


def _chunks(inputs: tuple[Tensor, ...], labels: Tensor | None, size: int | None):
    n = inputs[0].shape[0]
    step = size or n
    for start in range(0, n, step):
        part = tuple(t[start : start + step] for t in inputs)
        yield part, (labels[start : start + step] if labels is not None else None)


def _all_reduce(tensors: list[Tensor | None], device: torch.device) -> list[Tensor | None]:
    """Sum per-rank running sums over all ranks (a no-op without ``torch.distributed``).

    A rank that saw no data holds ``None``; it contributes zeros of the shape the other ranks
    report, so every rank takes part in one flat ``all_reduce``.
    """
    if not _distributed():
        return tensors
    shapes = [None if t is None else tuple(t.shape) for t in tensors]
    everyone: list[list[tuple[int, ...] | None]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, shapes)
    known = [next((s[i] for s in everyone if s[i] is not None), None) for i in range(len(shapes))]
    filled = [
        t if t is not None else torch.zeros(shape or (), dtype=torch.float64, device=device)
        for t, shape in zip(tensors, known)
    ]
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in filled])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    sizes = [t.numel() for t in filled]
    return [
        None if shape is None else part.reshape(shape)
        for part, shape in zip(flat.split(sizes), known)
    ]


def mean_activations(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    on_input: bool = False,
) -> dict[str, Tensor]:
    """Each layer's mean activation over a data set (shape ``h.shape[1:]``), for mean baselines.

    Args:
        model: The model.
        data: A DataLoader or iterable of batches (tensor, or ``(inputs, labels)``).
        layers: Dict name -> module, or list of dotted names / modules.
        device: Where to run (default: the model's device).
        progress: Show a progress bar.
        max_batches: Stop after this many batches.
        on_input: Average the layers' inputs instead of their outputs.

    Returns:
        Dict name -> mean activation.
    """
    named = resolve_layers(model, layers)
    names, specs = list(named), list(named.values())
    device = torch.device(device) if device is not None else _model_device(model)
    sums: list[Tensor | None] = [None] * len(specs)
    dtypes = [torch.get_default_dtype()] * len(specs)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for inputs, _labels in _batches(data, device, max_batches, progress, "mean activations"):
        batch = Batch(
            run=make_runner(model, inputs, None, None),
            layers=specs,
            labels=names,
            baselines=[None] * len(specs),
            on_input=on_input,
        )
        _, activations = capture_activations(batch)
        for i, h in enumerate(activations):
            total = h.to(torch.float64).sum(0)
            if sums[i] is not None and sums[i].shape != total.shape:
                raise ValueError(
                    f"Layer '{names[i]}' changes shape between batches ({tuple(sums[i].shape)} vs "
                    f"{tuple(total.shape)}); a mean baseline needs fixed shapes (pad inputs to "
                    "one length)."
                )
            if sums[i] is None:
                sums[i] = total
            else:
                sums[i].add_(total)  # in place: no new long-lived tensor per batch
            dtypes[i] = h.dtype
        count += inputs[0].shape[0]
    *sums, count = _all_reduce([*sums, count], device)
    if count.item() == 0:
        raise ValueError("The data yielded no examples; pass a non-empty data loader.")
    return {n: (s / count).to(d) for n, s, d in zip(names, sums, dtypes)}  # type: ignore[operator]


def compute_gndi(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    norm: str | float = "l2",
    target: DataTarget = None,
    mode: Mode = "auto",
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    granularity: Granularity = "layer",
    n_steps: int = 1,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    channel_dim: int = 1,
    attribute_to_layer_input: bool = False,
) -> GNDIResult:
    """G-NDI of every layer, averaged over a data set.

    Args:
        model: The model; it should be in eval mode.
        data: A DataLoader or iterable of batches: a tensor, ``(inputs, labels)`` or
            ``((input tensors...), labels)``.
        layers: Dict name -> module (e.g. from :func:`captum_gndi.find_layers`) or a list of
            dotted names.
        baseline: ``"zero"``, ``"mean"`` (a first pass computes each layer's data-set mean
            activation), a number, or a dict name -> layer baseline.
        norm: ``"l1"``, ``"l2"``, ``"linf"`` or a number p >= 1.
        target: ``None`` (norm over the whole output), an int class index, ``"label"`` (each
            example's label from the batch) or ``"predicted"`` (the model's top class).
        mode: ``"auto"``, ``"forward"`` or ``"reverse"``.
        device: Where to run (default: the model's device); batches are moved there.
        progress: Show a tqdm progress bar (on rank 0 only under ``torch.distributed``).
        max_batches: Stop after this many batches (in total over all ranks; with a
            ``DistributedSampler``, ``ceil(max_batches / world_size)`` per rank).
        granularity: ``"layer"``, ``"channel"`` or ``"unit"``.
        n_steps: Integration points (1: first-order G-NDI).
        method: Captum approximation method for ``n_steps > 1``.
        internal_batch_size: Split each batch into chunks of at most this many examples (the
            scores do not change; peak memory shrinks).
        channel_dim: Activation dimension holding channels.
        attribute_to_layer_input: Intervene on layer inputs instead of outputs.

    Returns:
        A :class:`GNDIResult` with per-layer mean, standard error and ranking. Under
        ``torch.distributed`` every rank returns the same global result (a
        ``DistributedSampler`` that pads its shards to equal length counts the padding
        examples twice; use ``drop_last=True`` or a data set size divisible by the world size
        for exactly the single-process numbers).

    Examples:
        >>> result = compute_gndi(model, test_loader, find_layers(model, "branch"))
        >>> print(result)
        >>> result.ranking()[:3]
        >>> # data-parallel: torchrun --nproc-per-node 4 score.py, with in score.py
        >>> torch.distributed.init_process_group("nccl")
        >>> result = compute_gndi(model, loader, layers)  # same numbers on every rank
    """
    p = check_p(norm)
    _warn_if_training(model)
    named = resolve_layers(model, layers)
    names, specs = list(named), list(named.values())
    device = torch.device(device) if device is not None else _model_device(model)
    if target not in (None, "label", "predicted") and not isinstance(target, int):
        raise ValueError(f"target must be None, an int, 'label' or 'predicted', got {target!r}.")
    if baseline == "mean":
        if isinstance(data, Iterator):
            raise ValueError(
                "baseline='mean' reads the data twice (means first, then scores), but the data "
                "is a one-pass iterator (e.g. a generator). Pass a DataLoader or a list of "
                "batches, or compute the means with mean_activations and pass them as a dict."
            )
        means = mean_activations(
            model, data, named, device, progress, max_batches, attribute_to_layer_input
        )
        layer_baselines: list[LayerBaseline] = [means[n] for n in names]
    elif isinstance(baseline, Mapping):
        missing = [n for n in names if n not in baseline]
        if missing:
            raise ValueError(f"baseline dict has no entry for layers {missing}.")
        layer_baselines = [baseline[n] for n in names]
    else:
        layer_baselines = [baseline] * len(names)  # type: ignore[list-item]
    alphas, weights = ((1.0,), (1.0,)) if n_steps == 1 else integration_points(n_steps, method)

    sums: list[Tensor | None] = [None] * len(specs)
    squares: list[Tensor | None] = [None] * len(specs)
    count = torch.zeros((), dtype=torch.float64, device=device)
    used_modes: set[str] = set()
    for inputs, labels in _batches(data, device, max_batches, progress, "G-NDI"):
        for part, part_labels in _chunks(inputs, labels, internal_batch_size):
            _check_inputs(part)
            batch_target = _batch_target(model, part, part_labels, target)
            batch = Batch(
                run=make_runner(model, part, None, batch_target),
                layers=specs,
                labels=names,
                baselines=layer_baselines,
                on_input=attribute_to_layer_input,
                channel_dim=channel_dim,
            )
            effects, used = compute_effects(batch, mode, granularity, alphas, weights)
            used_modes.add(used)
            mode = used  # decide (and warn about a fallback) once, not on every batch
            for i, effect in enumerate(effects):
                score = effect_norms(effect, p).to(torch.float64)
                if sums[i] is None:
                    sums[i], squares[i] = torch.zeros_like(score[0]), torch.zeros_like(score[0])
                sums[i].add_(score.sum(0))  # in place: no new long-lived tensor per batch
                squares[i].add_(score.pow(2).sum(0))
            count += part[0].shape[0]
    reduced = _all_reduce([*sums, *squares, count], device)
    sums, squares, count = reduced[: len(specs)], reduced[len(specs) : -1], reduced[-1]
    n = int(count.item())  # type: ignore[union-attr]
    if n == 0:
        raise ValueError("The data yielded no examples; pass a non-empty data loader.")
    mean = {name: s / n for name, s in zip(names, sums)}  # type: ignore[operator]
    stderr = {}
    for name, sq in zip(names, squares):
        variance = (sq / n - mean[name].pow(2)).clamp_min(0) * (n / max(n - 1, 1))  # type: ignore[operator]
        stderr[name] = variance.sqrt() / math.sqrt(n)
    settings = {
        "baseline": baseline if isinstance(baseline, (str, int, float)) else "custom",
        "p": p,
        "target": target,
        "granularity": granularity,
        "n_steps": n_steps,
        "mode": "/".join(sorted(used_modes)) or mode,
    }
    return GNDIResult(names, mean, stderr, n, settings)


def _batch_target(
    model: nn.Module, inputs: tuple[Tensor, ...], labels: Tensor | None, target: DataTarget
) -> Any:
    if target == "label":
        if labels is None:
            raise ValueError("target='label' needs batches of (inputs, labels).")
        return labels
    if target == "predicted":
        with torch.no_grad():
            return model(*inputs).argmax(dim=1)
    return target
