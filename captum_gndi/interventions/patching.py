"""Exact activation patching, TransformerLens-shaped: the ground truth of patching data.

The true effect of a unit on patching data is ``f(x) - f(x; do(h_u := b_u))``: the change of the
metric model's output when only that unit's activation takes its value on the other prompt of
the pair (:mod:`captum_gndi.patching`: ``x`` is the clean prompt and ``b`` the corrupted
activation for ``direction="noising"``, the reverse for ``"denoising"``). Nothing here is
special to patching: the per-example baseline is a layer baseline shaped like the activation,
handed to the one batched ablation (:func:`~captum_gndi.interventions.ablation.batch_damage`,
on hooks or the traced suffix), and the damage is the signed change of the one output,
:data:`EFFECT` (or its absolute value, :data:`ABS_EFFECT`).

:func:`activation_patch` is the one sweep, in the shape of TransformerLens's
``generic_activation_patch``: every unit of every layer, stacked layer first; the named
specialisations fix the units the way ``transformer_lens.patching`` does:
:func:`patch_heads` (``[layer, head]``, as ``get_act_patch_attn_head_out_all_pos``),
:func:`patch_heads_by_pos` (``[layer, pos, head]``, as ``get_act_patch_attn_head_out_by_pos``)
and :func:`patch_positions` (``[layer, pos]`` on block or residual outputs, as
``get_act_patch_resid_pre`` / ``get_act_patch_block_every``). TransformerLens reports the
patched metric; here the effect, so ``TL value = f(x) - effect`` (with the mean metric).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..patching import (
    check_metric_model_output,
    metric_model_and_layers,
    patching_baselines,
    patching_runs,
)
from ..runs import Layers, make_runner, resolve_device, resolve_layers, warn_if_training
from ..tasks.core import PatchingTask
from ..units import ChannelDim, unit_index
from .ablation import batch_damage
from .backends import CleanBatch, HookBackend, make_backend
from .damage import DamageMetric
from .hooks import LayerSpec
from .model_state import preserve_model
from .selection import probe_layers

__all__ = [
    "ABS_EFFECT",
    "EFFECT",
    "PatchedBatch",
    "activation_patch",
    "patch_heads",
    "patch_heads_by_pos",
    "patch_positions",
    "patched_batches",
    "unit_effects",
]


def _effect(clean: Tensor, out: Tensor, labels: Tensor | None) -> Tensor:
    return clean[..., 0] - out[..., 0]


def _abs_effect(clean: Tensor, out: Tensor, labels: Tensor | None) -> Tensor:
    return (clean[..., 0] - out[..., 0]).abs()


EFFECT = DamageMetric("effect", _effect)
"""The signed change of a metric model's one output, ``f(x) - f(x; do(h_u := b_u))``."""

ABS_EFFECT = DamageMetric("abs_effect", _abs_effect)
"""Its absolute value, per example."""


@dataclass
class PatchedBatch:
    """One patching batch ready for the batched ablation.

    Attributes:
        batch: The metric model's inputs ``(ids, answers)`` of the run that is patched, and
            its output ``(N, 1)``.
        baselines: Layer name -> the activation on the source prompts ``(N, ...)``.
    """

    batch: CleanBatch
    baselines: dict[str, Tensor]


def patched_batches(
    model: nn.Module,
    data: PatchingTask | Iterable[Any],
    named: Mapping[str, LayerSpec],
    direction: str = "noising",
    device: torch.device | None = None,
    max_batches: int | None = None,
) -> list[PatchedBatch]:
    """Read patching data once: every batch's run, its metric output and its baselines.

    Args:
        model: The metric model ``f(input_ids, answers) -> (N, 1)``.
        data: A :class:`~captum_gndi.tasks.PatchingTask` or a loader of ``(clean, corrupted,
            answers)`` batches.
        named: Layer name -> intervention point.
        direction: ``"noising"`` or ``"denoising"``.
        device: Where to keep the batches.
        max_batches: Use at most this many batches.

    Returns:
        One :class:`PatchedBatch` per batch (kept in memory).
    """
    names, specs = list(named), list(named.values())
    out = []
    for run in patching_runs(data, direction, device, max_batches, False, "patching"):
        baselines = patching_baselines(model, run, specs, names)
        inputs = (run.inputs, run.answers)
        with torch.no_grad():
            clean = make_runner(model, inputs, None, None)()
        check_metric_model_output(clean, run.inputs.shape[0])
        out.append(
            PatchedBatch(CleanBatch(inputs, None, clean.detach()), dict(zip(names, baselines)))
        )
    return out


def unit_effects(
    backend: HookBackend,
    batches: Sequence[PatchedBatch],
    name: str,
    mask: Tensor | None,
    ids: Sequence[int | None],
    metric: DamageMetric = EFFECT,
    units_per_pass: int = 8,
) -> Tensor:
    """Per-example effects ``(U, N_total)`` of patching each unit ``ids[j]`` of layer ``name``.

    Args:
        backend: Where the interventions run (:func:`~captum_gndi.interventions.backends.
            make_backend` on the metric model).
        batches: From :func:`patched_batches`.
        name: The layer.
        mask: Unit ids broadcastable to the activation (:func:`captum_gndi.units.unit_index`),
            or ``None`` for the whole layer.
        ids: The units.
        metric: :data:`EFFECT` (signed) or :data:`ABS_EFFECT`.
        units_per_pass: Units stacked in one forward pass.

    Returns:
        The effects, one column per example over all batches, in order.
    """
    parts = [
        batch_damage(
            backend,
            name,
            position,
            item.batch,
            item.baselines[name],
            mask,
            ids,
            {metric.name: metric},
            units_per_pass,
        )[metric.name]  # fmt: skip
        for position, item in enumerate(batches)
    ]
    return torch.cat(parts, 1)


@preserve_model
def activation_patch(
    model: nn.Module,
    data: PatchingTask | Iterable[Any],
    layers: Layers,
    channel_dim: ChannelDim | None = None,
    direction: str = "noising",
    metric: Callable[[Any, Tensor], Tensor] | None = None,
    engine: str = "auto",
    units_per_pass: int = 8,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> Tensor:
    """The exact effect of patching every unit of every layer alone, stacked layer first.

    Brute force, one intervention per unit (``units_per_pass`` stacked per forward pass): the
    sweep of ``transformer_lens.patching.generic_activation_patch`` for any model and any
    layers. :func:`captum_gndi.compute_gndi` on the same data gives its first-order estimate
    in the same shape (``result.stack()``), :func:`captum_gndi.verify_top_k` the exact top k
    without the full sweep.

    Args:
        model: The metric model ``f(input_ids, answers) -> (N, 1)``, or the model with
            ``metric``.
        data: A :class:`~captum_gndi.tasks.PatchingTask` or a loader of ``(clean, corrupted,
            answers)`` batches.
        layers: Dict name -> intervention point (e.g. ``find_layers(model, "head")``) or dotted
            names; every layer must have the same unit shape.
        channel_dim: The activation dimension(s) whose indices are the units: ``2`` for heads
            ``(N, T, H, d)``, ``(1, 2)`` for position x head, ``1`` for positions of ``(N, T,
            D)``; ``None`` patches each whole layer.
        direction: ``"noising"`` (run clean, patch corrupted in) or ``"denoising"`` (run
            corrupted, patch clean in: TransformerLens's default).
        metric: ``metric(output, answers)``, one number per example, with a plain model.
        engine: ``"auto"``, ``"suffix"`` or ``"hooks"`` (see
            :func:`~captum_gndi.interventions.backends.make_backend`).
        units_per_pass: Units stacked in one forward pass.
        device: Where to run (default: the model's device).
        max_batches: Use at most this many batches.
        progress: Show a progress bar over layers.

    Returns:
        Mean effects ``f(x) - f(x; do(h_u := b_u))``, shape ``(n_layers, *unit_shape)``.

    Examples:
        >>> effects = activation_patch(f, task, find_layers(model, "head"), channel_dim=(1, 2))
        >>> effects.shape  # [layer, pos, head]
        torch.Size([30, 15, 9])
    """
    model, layers = metric_model_and_layers(model, layers, metric)
    warn_if_training(model)
    named = resolve_layers(model, layers)
    device = resolve_device(model, device)
    batches = patched_batches(model, data, named, direction, device, max_batches)
    _, shapes = probe_layers(model, batches[0].batch.inputs, named)
    backend = make_backend(model, named, engine)
    granularity = "layer" if channel_dim is None else "channel"
    stacked = []
    for name in tqdm(named, desc="activation patching", disable=not progress):
        index = unit_index(granularity, shapes[name], name, channel_dim or 1, device=device)
        ids: list[int | None] = list(range(index.n_groups)) if index.mask is not None else [None]
        effects = unit_effects(backend, batches, name, index.mask, ids, EFFECT, units_per_pass)
        stacked.append(effects.double().mean(1).reshape(index.shape))
    shape_set = {tuple(s.shape) for s in stacked}
    if len(shape_set) > 1:
        raise ValueError(
            f"The layers have different unit shapes ({sorted(shape_set)}); patch layers of one "
            "shape together (e.g. the heads of layers with the same head count)."
        )
    return torch.stack(stacked)


def patch_heads(model: nn.Module, data: Any, layers: Layers, **options: Any) -> Tensor:
    """Every head of head points ``(N, T, H, d)``, all positions at once: ``[layer, head]``.

    :func:`activation_patch` with ``channel_dim=2`` (TransformerLens's
    ``get_act_patch_attn_head_out_all_pos``).
    """
    return activation_patch(model, data, layers, channel_dim=2, **options)


def patch_heads_by_pos(model: nn.Module, data: Any, layers: Layers, **options: Any) -> Tensor:
    """Every head at every position: ``[layer, pos, head]``.

    :func:`activation_patch` with ``channel_dim=(1, 2)`` (TransformerLens's
    ``get_act_patch_attn_head_out_by_pos``).
    """
    return activation_patch(model, data, layers, channel_dim=(1, 2), **options)


def patch_positions(model: nn.Module, data: Any, layers: Layers, **options: Any) -> Tensor:
    """Every position of ``(N, T, D)`` outputs (blocks, residual stream): ``[layer, pos]``.

    :func:`activation_patch` with ``channel_dim=1`` (TransformerLens's
    ``get_act_patch_resid_pre`` and the block sweeps).
    """
    return activation_patch(model, data, layers, channel_dim=1, **options)
