"""The data plumbing every whole-data-set computation shares.

Everything that reads a data loader, or checks what a user handed in before a forward pass, lives
here and nowhere else: reading a batch (a tensor, ``(inputs, labels)``, ``((inputs...), labels)``,
a dict),
sharding batches over ``torch.distributed`` ranks, splitting batches into chunks, summing running
totals over ranks, resolving the device, resolving data-set targets (``"label"``,
``"predicted"``), checking inputs, the norm, the layers and the model's mode, and building the
zero-argument runner that the engine differentiates (the last two, with keyword inputs from dict
batches, are written in :mod:`captum_gndi.model_calls` and re-exported here). Scoring
(:mod:`captum_gndi.scoring`), the validation harness, the criteria and pruning all import these
public names; none of them reads a batch its own way.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from .interventions import Heads, LayerCall, LayerSpec, check_layers_in_model, layer_label
from .layer_names import get_layer, point_layout
from .model_calls import (
    KeywordInputs,
    Runner,
    attention_mask_of,
    call_model,
    check_devices,
    check_inputs,
    check_keywords,
    eval_mode,
    keyword_forward,
    make_runner,
    map_inputs,
    unwrap_model,
    warn_if_training,
)

__all__ = [
    "CUSTOM_BASELINE",
    "DataTarget",
    "KeywordInputs",
    "LABEL_KEYS",
    "Layers",
    "Runner",
    "RankBatches",
    "RunningMoments",
    "all_reduce",
    "baseline_label",
    "attention_mask_of",
    "batch_target",
    "call_model",
    "check_devices",
    "check_keywords",
    "check_data_target",
    "check_inputs",
    "check_norm",
    "channel_count",
    "chunks",
    "eval_mode",
    "first_batch",
    "is_distributed",
    "iterate_batches",
    "keyword_forward",
    "map_inputs",
    "make_runner",
    "model_device",
    "resolve_device",
    "resolve_layers",
    "shard",
    "split_batch",
    "unwrap_model",
    "warn_if_training",
]

Layers = Union[Mapping[str, LayerSpec], Sequence[Union[str, LayerSpec]]]
"""Layers as users give them: a dict name -> module, or a list of dotted names / modules."""

DataTarget = Union[None, int, Literal["label", "predicted"]]
"""Targets over a data set: none, one class index, each example's label, or the top class."""

CUSTOM_BASELINE = "custom"
"""How reports and settings name a baseline that is not a string or a number."""


# ---------------------------------------------------------------------------------------------
# Checks of what the user handed in
# ---------------------------------------------------------------------------------------------


def check_norm(norm: float | str) -> float:
    """Validate the norm order: any p >= 1, or ``inf`` (``'l1'``, ``'l2'``, ``'linf'`` too)."""
    if isinstance(norm, str):
        norm = {"l1": 1.0, "l2": 2.0, "linf": math.inf, "inf": math.inf}.get(norm.lower(), norm)
    if isinstance(norm, bool):
        raise TypeError(
            f"norm={norm!r} is a bool, not a norm; give an order p >= 1 (e.g. 2), math.inf, "
            "'l1', 'l2', 'linf' or 'fisher'."
        )
    if not isinstance(norm, (int, float)) or math.isnan(norm) or norm < 1:
        raise ValueError(
            f"The norm must be a number >= 1 or inf ('l1', 'l2', 'linf' are accepted too), got "
            f"{norm!r}; p < 1 is not a norm."
        )
    return float(norm)


def channel_count(shape: Sequence[int], channel_dim: int, label: str = "layer") -> int:
    """The size of dimension ``channel_dim`` of an activation of ``shape``, with a clear error.

    Dimension 0 indexes examples and is never a channel dimension.
    """
    if channel_dim == 0 or not -len(shape) < channel_dim < len(shape):
        raise ValueError(
            f"channel_dim={channel_dim} is not a channel dimension of the activation of "
            f"'{label}' (shape {tuple(shape)}; dimension 0 indexes examples); use 1 for "
            "(N, C, ...) or -1 for (N, T, D) activations, or granularity='layer'."
        )
    return shape[channel_dim]


def resolve_layers(model: nn.Module, layers: Layers) -> dict[str, LayerSpec]:
    """Normalise ``layers`` (a dict name -> module, or a list of dotted names / modules).

    Args:
        model: The model the layers belong to.
        layers: A dict name -> module / :class:`~captum_gndi.LayerCall`, or a list of dotted
            names, modules or layer calls.

    Returns:
        A dict name -> intervention point, in the order given.

    Raises:
        ValueError: For no layers; :class:`~captum_gndi.InterventionError` for a layer that is
            not a submodule of ``model``.
    """
    if isinstance(layers, Mapping):
        resolved = dict(layers)
    else:
        if isinstance(layers, (str, nn.Module, LayerCall, Heads)):
            layers = [layers]
        resolved = {}
        for item in layers:
            if isinstance(item, str):
                resolved[item] = get_layer(model, item)
            else:
                resolved[layer_label(item, model)] = item
    if not resolved:
        raise ValueError("No layers given; pass a dict name -> module or a list of dotted names.")
    check_layers_in_model(model, list(resolved.values()))
    return {  # a module in its model's layout (a TransformerBridge's flattened head hooks)
        name: point_layout(model, point) if isinstance(point, nn.Module) else point
        for name, point in resolved.items()
    }


def baseline_label(baseline: Any) -> Any:
    """How settings and reports name a baseline: itself if a string or number, else 'custom'."""
    return baseline if isinstance(baseline, (str, int, float)) else CUSTOM_BASELINE


# ---------------------------------------------------------------------------------------------
# Devices and targets
# ---------------------------------------------------------------------------------------------


def model_device(model: nn.Module) -> torch.device:
    """Where the model's inputs go: the execution device of a model dispatched by accelerate
    (``device_map``; its hooks move activations between the layers' devices), else the device
    of its first parameter that is not on the meta device (offloaded weights sit there), else
    the CPU."""
    model = unwrap_model(model)
    execution_device = getattr(getattr(model, "_hf_hook", None), "execution_device", None)
    if execution_device is not None:
        return torch.device(execution_device)
    for parameter in model.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")


def resolve_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device`` if given, else the model's own device."""
    return torch.device(device) if device is not None else model_device(model)


def batch_target(
    model: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    labels: Tensor | None,
    target: DataTarget,
) -> Any:
    """Resolve a data-set target for one batch: the labels, the model's top class, or as given.

    Args:
        model: The model (run once without gradients for ``"predicted"``).
        inputs: The batch's input tensors.
        labels: The batch's labels, if it has any.
        target: ``None``, an int, ``"label"`` or ``"predicted"``.

    Returns:
        A Captum ``TargetType`` for this batch.
    """
    if target == "label":
        if labels is None:
            raise ValueError("target='label' needs batches of (inputs, labels).")
        return labels
    if target == "predicted":
        with torch.no_grad():
            return call_model(model, inputs).argmax(dim=1)
    return target


def check_data_target(target: Any) -> None:
    """Raise a clear error unless ``target`` is a :data:`DataTarget`."""
    if isinstance(target, bool) or (
        target not in (None, "label", "predicted") and not isinstance(target, int)
    ):
        raise ValueError(f"target must be None, an int, 'label' or 'predicted', got {target!r}.")


# ---------------------------------------------------------------------------------------------
# Reading, sharding and chunking batches
# ---------------------------------------------------------------------------------------------


LABEL_KEYS = ("labels", "label")
"""Keys of a dict batch read as labels (for ``target="label"``) and not passed to the model."""


def split_batch(batch: Any) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """A batch is a tensor, (inputs, labels), ((input tensors...), labels), or a dict.

    A dict (e.g. a tokenizer's ``BatchEncoding``) gives :class:`KeywordInputs` of its tensor
    values; a ``labels`` (or ``label``) key gives the labels and is not passed to the model.
    """
    if isinstance(batch, Tensor):
        return (batch,), None
    if isinstance(batch, Mapping):
        labels = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        items = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        bad = [k for k, v in items.items() if not isinstance(v, Tensor)]
        if bad or not items:
            raise TypeError(
                f"A dict batch must map input names to tensors; keys {bad or list(batch)} "
                "are not tensors (use return_tensors='pt' in the tokenizer / collator)."
            )
        labels = labels if isinstance(labels, Tensor) else None
        return KeywordInputs(list(items), items.values()), labels
    if isinstance(batch, (list, tuple)) and batch:
        _check_not_patching(batch)
        inputs, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        inputs = tuple(inputs) if isinstance(inputs, (list, tuple)) else (inputs,)
        return inputs, labels if isinstance(labels, Tensor) else None
    raise TypeError(f"Cannot read a batch of type {type(batch).__name__}; yield tensors.")


def _check_not_patching(batch: Sequence[Any]) -> None:
    """Patching batches (clean, corrupted, answers) are not ``(inputs, labels)``: say so."""
    if len(batch) != 3 or not all(
        isinstance(t, Tensor) and not t.is_floating_point() for t in batch
    ):
        return
    clean, corrupted, answers = batch
    if clean.dim() == 2 and corrupted.shape == clean.shape and answers.shape == (len(clean), 2):
        raise TypeError(
            "This batch looks like a patching batch (clean ids, corrupted ids, answers), which "
            "would be read as (inputs, labels) here. Pass a captum_gndi.tasks.PatchingTask or "
            "its .loader(batch_size) (batches of PatchingBatch) to compute_gndi, verify_top_k "
            "or validate; ordinary batches are a tensor, (inputs, labels) or ((inputs...), "
            "labels)."
        )


def is_distributed() -> bool:
    """Whether ``torch.distributed`` runs with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _has_distributed_sampler(data: Iterable[Any]) -> bool:
    samplers = (
        getattr(data, "sampler", None),
        getattr(getattr(data, "batch_sampler", None), "sampler", None),
    )
    return any(isinstance(s, torch.utils.data.DistributedSampler) for s in samplers)


class RankBatches(list):
    """Batches this rank already read through :func:`iterate_batches` (its shard), kept to be
    read again: :func:`shard` passes them through whole instead of splitting them over the
    ranks a second time (``verify_top_k`` caches its batches so)."""


def shard(data: Iterable[Any], max_batches: int | None) -> tuple[Iterable[Any], int | None, int]:
    """This rank's batches, their number where known, and the rank.

    Without ``torch.distributed`` (or with one process) that is all of ``data``. Otherwise each
    rank takes every ``world_size``-th of the first ``max_batches`` batches, unless the loader
    already shards with a ``DistributedSampler``: then each rank scores its own loader's first
    ``ceil(max_batches / world_size)`` batches, or the data are :class:`RankBatches`, this
    rank's own.
    """
    total = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    rank, stride, limit = 0, 1, max_batches
    if is_distributed():
        rank = dist.get_rank()
        if isinstance(data, RankBatches):
            pass  # already this rank's own
        elif not _has_distributed_sampler(data):
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


def iterate_batches(
    data: Iterable[Any],
    device: torch.device,
    max_batches: int | None = None,
    progress: bool = False,
    what: str = "batches",
) -> Iterator[tuple[tuple[Tensor, ...], Tensor | None]]:
    """Yield this rank's batches as ``(input tensors on device, labels on device or None)``.

    Args:
        data: A DataLoader or any iterable of batches.
        device: Where to move each batch.
        max_batches: Stop after this many batches (in total over all ranks).
        progress: Show a tqdm progress bar (rank 0 only).
        what: The progress bar's label, also named in the error for empty data.

    Raises:
        ValueError: When the data yields no batch (outside ``torch.distributed``).
    """
    batches, total, rank = shard(data, max_batches)
    count = 0
    for batch in tqdm(batches, total=total, desc=what, disable=not progress or rank > 0):
        inputs, labels = split_batch(batch)
        if inputs[0].dim() == 0 or inputs[0].shape[0] == 0:
            raise ValueError(
                f"Batch {count} of the data ({what}) holds no examples (input shape "
                f"{tuple(inputs[0].shape)}); drop empty batches from the data loader."
            )
        inputs = map_inputs(inputs, lambda t: t.to(device, non_blocking=True))
        yield inputs, (labels.to(device, non_blocking=True) if labels is not None else None)
        count += 1
    if count == 0 and not is_distributed():
        raise ValueError(f"The data yielded no batches ({what}); pass a non-empty data loader.")


def first_batch(data: Iterable[Any], device: torch.device) -> tuple[tuple[Tensor, ...], Any]:
    """The first batch of ``data`` as ``(inputs on device, labels)``."""
    return next(iter(iterate_batches(data, device, 1, False, "layer shapes")))


def chunks(
    inputs: tuple[Tensor, ...], labels: Tensor | None, size: int | None
) -> Iterator[tuple[tuple[Tensor, ...], Tensor | None]]:
    """Split one batch into consecutive parts of at most ``size`` examples (all of it if None)."""
    n = inputs[0].shape[0]
    step = size or n
    for start in range(0, n, step):
        part = map_inputs(inputs, lambda t, start=start: t[start : start + step])
        yield part, (labels[start : start + step] if labels is not None else None)


# ---------------------------------------------------------------------------------------------
# Running sums and their reduction over ranks
# ---------------------------------------------------------------------------------------------


def all_reduce(tensors: list[Tensor | None], device: torch.device) -> list[Tensor | None]:
    """Sum per-rank running sums over all ranks (a no-op without ``torch.distributed``).

    A rank that saw no data holds ``None``; it contributes zeros of the shape the other ranks
    report, so every rank takes part in one flat ``all_reduce``.
    """
    if not is_distributed():
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


class RunningMoments:
    """Running sums of per-example values and their squares, one slot per named quantity.

    Memory stays constant in the number of examples: each :meth:`add` folds one batch into the
    sums in place. :meth:`reduce` sums over ``torch.distributed`` ranks and returns means and
    standard errors of the mean.

    Args:
        names: One name per quantity (e.g. layer names).
        device: Where the sums live.

    Examples:
        >>> moments = RunningMoments(["layer1"], torch.device("cpu"))
        >>> moments.add("layer1", torch.tensor([1.0, 3.0]))  # two examples
        >>> mean, stderr, n = moments.reduce()
    """

    def __init__(self, names: Sequence[str], device: torch.device) -> None:
        self.names = list(names)
        self.device = device
        self._sums: dict[str, Tensor | None] = {name: None for name in self.names}
        self._squares: dict[str, Tensor | None] = {name: None for name in self.names}
        self._counts: dict[str, int] = {name: 0 for name in self.names}

    def add(self, name: str, values: Tensor) -> None:
        """Fold ``values`` (examples first, any trailing shape) into the sums of ``name``."""
        values = values.to(device=self.device, dtype=torch.float64)  # effects of any layer's device
        if self._sums[name] is None:
            self._sums[name] = torch.zeros_like(values[0])
            self._squares[name] = torch.zeros_like(values[0])
        self._sums[name].add_(values.sum(0))  # type: ignore[union-attr]
        self._squares[name].add_(values.pow(2).sum(0))  # type: ignore[union-attr]
        self._counts[name] += values.shape[0]

    def reduce(self) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
        """``(mean, stderr, n)`` over all ranks; ``n`` is the number of examples seen."""
        counts = torch.tensor(
            [self._counts[n] for n in self.names], dtype=torch.float64, device=self.device
        )
        reduced = all_reduce(
            [*(self._sums[n] for n in self.names), *(self._squares[n] for n in self.names), counts],
            self.device,
        )
        k = len(self.names)
        sums, squares, counts = reduced[:k], reduced[k : 2 * k], reduced[-1]
        n = int(counts.max().item()) if counts is not None and counts.numel() else 0
        if n == 0 or any(s is None for s in sums):
            raise ValueError("The data yielded no examples; pass a non-empty data loader.")
        mean, stderr = {}, {}
        for name, s, sq in zip(self.names, sums, squares):
            mean[name] = s / n  # type: ignore[operator]
            variance = (sq / n - mean[name].pow(2)).clamp_min(0) * (n / max(n - 1, 1))  # type: ignore[operator]
            stderr[name] = variance.sqrt() / math.sqrt(n)
        return mean, stderr, n
