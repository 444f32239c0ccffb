"""One scoring job and what both engines share: the job, its activations, its cells.

A :class:`ScoringJob` is a zero-argument ``run`` that evaluates the model on a fixed batch and
returns its (target-selected) output flattened to ``(N, K)``, plus the intervention points,
their baselines and how each layer splits into units (:mod:`captum_gndi.units`). A layer whose
output is a tuple of several floating-point tensors of one shape (or, with
``attribute_to_layer_input``, a module with several such inputs) is intervened on *jointly*:
every such tensor is set to its baseline together, and its effect is the sum of the tensors'
first-order contributions.

A :class:`Cell` is one tangent direction: a unit of a layer at an integration point ``a``; the
forward and reverse engines (:mod:`captum_gndi.forward_mode`, :mod:`captum_gndi.reverse_mode`)
both compute one output column per cell and :func:`assemble` weights them into effects.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .baselines import LayerBaseline, resolve_layer_baseline
from .interventions import LayerSpec, intervene
from .readouts import accumulation_dtype, check_precision
from .runs import channel_count
from .units import ChannelDim, UnitIndex, unit_index

__all__ = [
    "MAX_EFFECT_BYTES",
    "Activation",
    "Cell",
    "ScoringJob",
    "assemble",
    "capture_activations",
    "check_effect_memory",
    "first_order",
    "job_hooks",
    "per_tensor",
    "make_cells",
    "parts",
    "rebuild",
    "true_effects",
]

Activation = Any  # a tensor, or a tuple of tensors for a jointly intervened multi-tensor layer


def parts(h: Activation) -> tuple[Tensor, ...]:
    """The tensors of an activation (one for an ordinary layer)."""
    return tuple(h) if isinstance(h, tuple) else (h,)


def rebuild(h: Activation, new: Sequence[Tensor]) -> Activation:
    """An activation of the same structure as ``h`` (tensor or tuple) from new tensors."""
    return tuple(new) if isinstance(h, tuple) else new[0]


@dataclass
class ScoringJob:
    """One scoring job: a fixed batch of examples, the model run on it, and where to intervene.

    Not a data batch: ``run`` closes over the batch's inputs and targets, so both engines, the
    true-effect computation and the validation harness share one object and resolve targets and
    baselines once.

    Attributes:
        run: Runs the model on the batch and returns the selected output as ``(N, K)``.
        layers: Intervention points.
        labels: One readable name per layer (used in errors).
        baselines: One layer-baseline specification per layer (see :mod:`captum_gndi.baselines`;
            a tuple gives one per tensor of a multi-tensor layer).
        attribute_to_layer_input: Intervene on each layer's input instead of its output.
        channel_dim: Dimension(s) of the activation that hold the units of ``"channel"``
            granularity (1 for ``(N, C, H, W)``, -1 for ``(N, T, D)``, ``(1, 2)`` for position x
            head on ``(N, T, H, d)``).
        layer_masks: One ``layer_mask`` (or ``None``) per layer for ``"group"`` granularity.
        grad_kwargs: Extra keyword arguments for every ``torch.autograd.grad`` call.
        input_path: For ``path="input"`` (EAP-IG): ``input_path(a)`` is a run of the model at
            the point ``a`` of the input-space path from the input baselines to the inputs
            (:mod:`captum_gndi.input_path`); ``None`` otherwise.
        tensor_of: Per layer, ``None`` (every tensor of a multi-tensor layer, jointly) or the
            index of the one tensor intervened on (the others keep their values); see
            :meth:`per_tensor`.
    """

    run: Callable[[], Tensor]
    layers: Sequence[LayerSpec]
    labels: Sequence[str]
    baselines: Sequence[LayerBaseline]
    attribute_to_layer_input: bool = False
    channel_dim: ChannelDim = 1
    layer_masks: Sequence[Tensor | None] | None = None
    grad_kwargs: dict[str, Any] | None = None
    input_path: Callable[[float], Callable[[], Tensor]] | None = None
    tensor_of: Sequence[int | None] | None = None

    def check_activation(self, position: int, h: Activation) -> None:
        """Raise a clear error for a non-float or non-finite activation."""
        label = self.labels[position]
        for part in parts(h):
            if not part.is_floating_point():
                raise TypeError(
                    f"Layer '{label}' produces a {part.dtype} tensor, which cannot be "
                    "differentiated. Pick a layer with a floating-point activation (e.g. an "
                    "embedding's output rather than token ids)."
                )
            if not torch.isfinite(part).all():
                raise ValueError(
                    f"Layer '{label}' produced NaN or inf activations; G-NDI is undefined there. "
                    "Check the inputs and the model's numerics (e.g. float16 overflow)."
                )

    def check_output(self, output: Tensor) -> None:
        """A clear error, naming examples, for a NaN or ``+inf`` output (``-inf``, a masked
        logit, is allowed): every score would be NaN, or a number where the model's is not."""
        bad = output.detach().isnan() | output.detach().isposinf()
        if bool(bad.any()):
            examples = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten().tolist()
            raise ValueError(
                f"The model output is NaN or inf for examples {_shown(examples)} of the batch, so "
                f"the scores of every layer ({', '.join(map(repr, self.labels))}) would be NaN "
                "or meaningless. Check the model's parameters (torch.isfinite(p).all()) and "
                "its numerics on these examples (an overflow: run in float32 / float64)."
            )

    def check_effects(self, effects: Sequence[Tensor]) -> None:
        """A clear error, naming layers and examples, for effects ``(K, N, ...)`` holding NaN or
        inf: something after the layer (a NaN or inf weight, an overflow) would make the score,
        and a ranking, NaN."""
        bad = []
        for effect, label in zip(effects, self.labels):
            finite = torch.isfinite(effect)
            if not bool(finite.all()):
                per_example = (~finite).transpose(0, 1).reshape(effect.shape[1], -1).any(1)
                examples = per_example.nonzero().flatten().tolist()
                bad.append(f"'{label}' (examples {_shown(examples)} of the batch)")
        if bad:
            raise ValueError(
                f"The output change under the intervention is NaN or inf for layer(s) "
                f"{'; '.join(bad)}: something after the layer produces non-finite values (a NaN "
                "or inf weight, an overflow such as float16 logits), so the scores would be NaN. "
                "Check the model's parameters (torch.isfinite(p).all()) and its output on these "
                "examples, or run in float32 / float64."
            )

    def delta(self, position: int, h: Activation) -> tuple[Activation, Activation]:
        """``(b, h - b)`` for the activation ``h`` of layer ``position`` (tuples part-wise)."""
        self.check_activation(position, h)
        spec, label = self.baselines[position], self.labels[position]
        tensors = parts(h)
        specs = spec if isinstance(spec, tuple) else (spec,) * len(tensors)
        if len(specs) != len(tensors):
            raise ValueError(
                f"Layer '{label}' has {len(tensors)} tensor(s) to intervene on but got a tuple of "
                f"{len(specs)} layer baselines; give one baseline per tensor (or one for all)."
            )
        bs = [resolve_layer_baseline(s, t, label) for s, t in zip(specs, tensors)]
        only = None if self.tensor_of is None else self.tensor_of[position]
        if only is not None:  # one tensor of a multi-tensor layer: the others keep their value
            bs = [b if k == only else t.detach() for k, (t, b) in enumerate(zip(tensors, bs))]
        return rebuild(h, bs), rebuild(h, [t.detach() - b for t, b in zip(tensors, bs)])

    def n_channels(self, h: Tensor) -> int:
        """The size of the channel dimension of an activation, with a clear error if absent."""
        return channel_count(h.shape, self.channel_dim)

    def units(self, position: int, h: Activation, granularity: str) -> UnitIndex:
        """How layer ``position`` splits into units at ``granularity``."""
        tensors = parts(h)
        one = self.tensor_of is not None and self.tensor_of[position] is not None
        if granularity != "layer" and len(tensors) > 1 and not one:
            raise ValueError(
                f"Layer '{self.labels[position]}' has {len(tensors)} tensors that are "
                f"intervened on jointly; granularity={granularity!r} needs a layer with one "
                "tensor (LayerGNDI.attribute returns one score tensor per tensor there). Use "
                "granularity='layer', or pick the submodule that produces the tensor you want "
                "to split."
            )
        mask = None if self.layer_masks is None else self.layer_masks[position]
        return unit_index(
            granularity,
            tensors[0].shape,
            self.labels[position],
            self.channel_dim,
            mask,
            tensors[0].device,
        )


def per_tensor(job: ScoringJob) -> tuple[ScoringJob, list[list[int]]]:
    """The job with every multi-tensor layer split into one point per tensor.

    Each new point intervenes on one tensor of the layer (the other tensors keep their values),
    so unit scores of a multi-tensor layer come as one score tensor per tensor, each unit
    intervened on alone (Captum's layer methods return one attribution per tensor). Runs the
    batch once (no gradients) to see which layers have several tensors.

    Returns:
        The new job and, per layer of ``job``, its positions in the new job.
    """
    _, activations = capture_activations(job)
    positions: list[list[int]] = []
    index: list[int] = []
    tensor_of: list[int | None] = []
    for p, h in enumerate(activations):
        count = len(parts(h)) if isinstance(h, tuple) else 1
        positions.append(list(range(len(index), len(index) + count)))
        index += [p] * count
        tensor_of += list(range(count)) if count > 1 else [None]
    if len(index) == len(job.layers):
        return job, positions
    pick = [job.layer_masks[p] for p in index] if job.layer_masks is not None else None
    return (
        dataclasses.replace(
            job,
            layers=[job.layers[p] for p in index],
            labels=[
                job.labels[p] if k is None else f"{job.labels[p]}[{k}]"
                for p, k in zip(index, tensor_of)
            ],
            baselines=[job.baselines[p] for p in index],
            layer_masks=pick,
            tensor_of=tensor_of,
        ),
        positions,
    )


def job_hooks(job: ScoringJob, positions: Sequence[int], edit):
    """Hook the layers at ``positions``; ``edit`` receives positions into ``job.layers``."""
    return intervene(
        [job.layers[p] for p in positions],
        lambda i, h: edit(positions[i], h),
        attribute_to_layer_input=job.attribute_to_layer_input,
        labels=[job.labels[p] for p in positions],
    )


def capture_activations(job: ScoringJob) -> tuple[Tensor, list[Activation]]:
    """Run the batch once (no gradients) and return its output and detached activations."""
    activations: list[Activation | None] = [None] * len(job.layers)

    def edit(position: int, h: Activation) -> None:
        job.check_activation(position, h)
        activations[position] = rebuild(h, [t.detach().clone() for t in parts(h)])

    with torch.no_grad(), job_hooks(job, range(len(job.layers)), edit):
        output = job.run()
    job.check_output(output)
    return output.detach(), activations  # type: ignore[return-value]


def true_effects(job: ScoringJob) -> list[Tensor]:
    """Exact intervention effects ``f(x) - f(x; do(h_L := b_L))``, each of shape ``(K, N)``."""
    with torch.no_grad():
        reference = job.run()
        effects = []
        for position in range(len(job.layers)):

            def edit(position: int, h: Activation) -> Activation:
                b, _delta = job.delta(position, h)
                return rebuild(h, [t.clone() for t in parts(b)])

            with job_hooks(job, [position], edit):
                intervened = job.run()
            effects.append((reference - intervened).T)
    return effects


MAX_EFFECT_BYTES = 8 * 2**30
"""Largest memory for effects either engine allocates, unless the environment variable
``CAPTUM_GNDI_MAX_EFFECT_BYTES`` sets another limit (see :func:`check_effect_memory`)."""


def check_effect_memory(
    job: ScoringJob,
    units: Sequence[UnitIndex],
    rows: int,
    n_examples: int,
    element_size: int,
    mode: str,
    n_cells: int = 0,
) -> None:
    """A clear error, before anything is allocated, for effects that cannot fit in memory.

    Both engines return effects ``(rows, N, *unit_shape)`` for every layer; forward mode also
    holds one output column ``(N, K)`` per cell twice (the vectorised passes' results and their
    concatenation) before it sums them into effects.

    Args:
        job: The job (for the layer names).
        units: How each layer splits into units.
        rows: Output rows: ``K``, or ``n_probes``.
        n_examples: Examples in the batch.
        element_size: Bytes per number.
        mode: ``"forward"`` or ``"reverse"`` (named in the error).
        n_cells: Forward mode's tangents (units x integration points).

    Raises:
        MemoryError: With the size, the cause and the cheaper options.
    """
    per_layer = [rows * n_examples * max(math.prod(u.shape), 1) * element_size for u in units]
    columns = 2 * n_cells * n_examples * rows * element_size
    size = sum(per_layer) + columns
    limit = float(os.environ.get("CAPTUM_GNDI_MAX_EFFECT_BYTES", MAX_EFFECT_BYTES))
    if size <= limit:
        return
    largest = max(range(len(units)), key=per_layer.__getitem__)
    n_units = max(math.prod(units[largest].shape), 1)
    raise MemoryError(
        f"G-NDI in {mode} mode would allocate about {_in_units(size)} (limit "
        f"{_in_units(limit)}) for its effects: {rows} output rows x {n_examples} examples "
        f"x units per layer (the largest: '{job.labels[largest]}', {n_units} units)"
        + (f", plus {n_cells} tangent columns" if n_cells else "")
        + ". Split the batch (internal_batch_size= in attribute and compute_gndi), select "
        "fewer outputs (a target, or n_probes random rows in reverse mode), or use a coarser "
        "granularity (channel_dim, layer_mask) than 'unit'; the limit is the environment "
        "variable CAPTUM_GNDI_MAX_EFFECT_BYTES."
    )


def _in_units(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def _shown(indices: list[int]) -> str:
    """At most ten indices, for an error message."""
    return ", ".join(map(str, indices[:10])) + (", ..." if len(indices) > 10 else "")


def first_order(alphas: Sequence[float]) -> bool:
    """Whether ``alphas`` is first-order G-NDI (the Jacobian at the activation itself)."""
    return tuple(alphas) == (1.0,)


@dataclass(frozen=True)
class Cell:
    """One tangent direction: group ``group`` of layer ``position`` at integration point
    ``alpha``, with integration weight ``weight``."""

    position: int
    group: int
    alpha: float
    weight: float


def make_cells(
    units: Sequence[UnitIndex], alphas: Sequence[float], weights: Sequence[float]
) -> list[Cell]:
    """Every (layer, unit, integration point) of a job, layer by layer."""
    return [
        Cell(p, g, a, w)
        for p, index in enumerate(units)
        for g in range(index.n_groups)
        for a, w in zip(alphas, weights)
    ]


def assemble(units: Sequence[UnitIndex], cells: Sequence[Cell], columns: Tensor) -> list[Tensor]:
    """Effects ``(K, N, *unit_shape)`` per layer from per-cell output tangents ``(C, N, K)``."""
    n, k = columns.shape[1:]
    dtype = accumulation_dtype(columns.dtype)  # float32 sums for half-precision tangents
    effects = [columns.new_zeros(k, n, index.n_groups, dtype=dtype) for index in units]
    for cell, column in zip(cells, columns):
        effects[cell.position][:, :, cell.group] += cell.weight * column.T
    check_precision(effects, columns.dtype)
    return [e.reshape(k, n, *index.shape) for e, index in zip(effects, units)]
