"""Torch-Pruning importances: G-NDI computed on the fly, and precomputed channel scores.

:class:`GNDIImportance` is a ``torch_pruning.importance.Importance``: Torch-Pruning's pruners
(``tp.pruner.MetaPruner`` and its subclasses) call it once per pruning group, and it returns the
G-NDI of every index of the group measured on the model *as it is at that moment*. For one
index ``i`` of a group the intervention is joint: channel ``i`` of every coupled tensor the group
removes (each conv/linear output, or the normalisation layer that directly follows it) is set to
its baseline at once, which is what physically removing channel ``i`` does. Its first-order
effect on the output is the sum of the tensors' signed contributions ``J_p (h_p - b_p)_i``
(the same rule as a jointly intervened multi-tensor layer, see :mod:`captum_gndi.job`); these
come from :class:`captum_gndi.LayerGNDI` with ``signed=True`` for each output direction (each
class, the label's logit, or random probes), summed over the group and then measured with the
chosen norm. All groups of the model are scored from the same passes over the data; the scores
are cached for the model's current structure and recomputed when it changes (the next step of
an iterative pruner), never re-indexed.

:class:`ScoreImportance` reads scores computed beforehand (one-shot pruning): it raises when the
model no longer has the channels the scores describe, or for a group it has no scores for.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

try:
    import torch_pruning as tp
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "Torch-Pruning importances need Torch-Pruning: pip install captum_gndi[pruning] "
        "(or pip install torch-pruning)."
    ) from error

from ..attr import LayerGNDI
from ..interventions import intervene
from ..interventions.model_state import preserve_model
from ..runs import check_norm, eval_mode, iterate_batches, model_device
from ..scoring import layer_baselines
from .layers import channel_dim

__all__ = [
    "GROUP_REDUCTIONS",
    "NORMALIZERS",
    "GNDIImportance",
    "ScoreImportance",
    "normalize_group",
]

_F = tp.pruner.function
_OUT_FNS = (
    _F.prune_conv_out_channels,
    _F.prune_depthwise_conv_out_channels,
    _F.prune_linear_out_channels,
    _F.prune_batchnorm_out_channels,
    _F.prune_layernorm_out_channels,
    _F.prune_groupnorm_out_channels,
    _F.prune_instancenorm_out_channels,
)
_POINT_TYPES = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)
GROUP_REDUCTIONS = ("joint", "mean", "sum", "max", "first")
"""How a group's coupled tensors combine: ``"joint"`` (one intervention on all of them) or
Torch-Pruning's reductions of the tensors' separate G-NDI scores."""
NORMALIZERS = (None, "mean", "sum", "max", "standarization", "gaussian")
"""Torch-Pruning's normalisations of a group's scores (``None``: raw G-NDI, comparable across
groups because every score is a change of the same output)."""


@dataclass(frozen=True)
class _Point:
    """One coupled tensor of a group: ``module``'s output channels ``idxs`` are the group's
    indices ``root_idxs``."""

    module: nn.Module
    idxs: Tensor
    root_idxs: Tensor


def _is_out_fn(fn: Any) -> bool:
    return any(fn == out for out in _OUT_FNS)


def _group_points(group: Any) -> tuple[tuple[nn.Module, ...], list[_Point]]:
    """The tensors a group's removal zeroes, without those that only feed another of them."""
    candidates = []
    for item in group:
        module = item.dep.target.module
        root_idxs = getattr(item, "root_idxs", None)
        if not _is_out_fn(item.dep.handler) or not isinstance(module, _POINT_TYPES):
            continue
        if root_idxs is None or any(r is None for r in root_idxs):
            continue
        candidates.append(
            _Point(module, torch.tensor([int(i) for i in item.idxs]), torch.tensor(root_idxs))
        )
    modules = {id(p.module) for p in candidates}
    graph = group._DG
    fed = {id(m) for p in candidates if (m := _feeder(graph, p.module, modules)) is not None}
    points = [p for p in candidates if id(p.module) not in fed]
    key = tuple(sorted({id(p.module): p.module for p in candidates}.values(), key=id))
    return key, points


def _feeder(graph: Any, module: nn.Module, modules: set[int]) -> nn.Module | None:
    """The module among ``modules`` whose output reaches ``module`` through single-input
    operations only (a conv feeding its BatchNorm, a depthwise conv its LayerNorm), if any."""
    node = graph.module2node.get(module)
    while node is not None and len(node.inputs) == 1:
        node = node.inputs[0]
        if id(node.module) in modules:
            return node.module
        if isinstance(node.module, _POINT_TYPES):
            return None
    return None


def _signature(model: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def normalize_group(scores: Tensor, normalizer: str | Callable[[Tensor], Tensor] | None) -> Tensor:
    """Torch-Pruning's group normalisations (``GroupMagnitudeImportance``'s ``normalizer``)."""
    if normalizer is None:
        return scores
    if callable(normalizer):
        return normalizer(scores)
    if normalizer == "sum":
        return scores / scores.sum()
    if normalizer == "mean":
        return scores / scores.mean()
    if normalizer == "max":
        return scores / scores.max()
    if normalizer == "standarization":
        return (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)
    if normalizer == "gaussian":
        return (scores - scores.mean()) / (scores.std() + 1e-8)
    raise ValueError(f"normalizer must be one of {NORMALIZERS} or a callable, got {normalizer!r}.")


class GNDIImportance(tp.importance.Importance):
    """G-NDI of every channel of every Torch-Pruning group, computed from data at each step.

    Args:
        data: Batches of ``(inputs, labels)`` (or inputs alone without a label target) to score
            on; read once per pruning step (use training data).
        target: ``None`` (the norm over the whole output), an int class index, ``"label"`` or
            ``"predicted"``, as in :func:`captum_gndi.compute_gndi`.
        norm: ``"l2"``, ``"l1"``, ``"linf"``, a number ``p >= 1`` or ``"fisher"`` (without a
            target; with one, every norm is the absolute change of that output).
        n_probes: Estimate the squared L2 / Fisher norm from this many random output
            directions per batch instead of one per output (no effect with a target).
        baseline: ``"zero"`` (what pruning does), ``"mean"`` or a number.
        max_batches: Use at most this many batches of ``data`` per step.
        group_reduction: ``"joint"`` (default: one intervention on all coupled tensors of a
            group index), or ``"mean"``, ``"sum"``, ``"max"``, ``"first"``: Torch-Pruning's
            reductions of each tensor's own G-NDI.
        normalizer: Torch-Pruning's per-group normalisation (see :data:`NORMALIZERS`;
            Torch-Pruning's own importances default to ``"mean"``).
        probe_seed: Seed of the probes.
        progress: Show a progress bar per step.

    Examples:
        >>> importance = GNDIImportance(train_loader, target="label", max_batches=4)
        >>> pruner = tp.pruner.MetaPruner(model, example, importance, iterative_steps=3,
        ...                               pruning_ratio=0.5)
        >>> for _ in range(3):
        ...     pruner.step()  # G-NDI is recomputed on the pruned model at every step
    """

    def __init__(
        self,
        data: Iterable[Any],
        target: None | int | Literal["label", "predicted"] = None,
        norm: str | float = "l2",
        n_probes: int | None = None,
        baseline: Literal["zero", "mean"] | float = "zero",
        max_batches: int | None = None,
        group_reduction: str = "joint",
        normalizer: str | Callable[[Tensor], Tensor] | None = None,
        probe_seed: int = 0,
        progress: bool = False,
    ) -> None:
        if group_reduction not in GROUP_REDUCTIONS:
            raise ValueError(
                f"group_reduction must be one of {GROUP_REDUCTIONS}, got {group_reduction!r}."
            )
        if not (normalizer in NORMALIZERS or callable(normalizer)):
            raise ValueError(
                f"normalizer must be one of {NORMALIZERS} or a callable, got {normalizer!r}."
            )
        if n_probes is not None and (isinstance(n_probes, bool) or n_probes < 1):
            raise ValueError(f"n_probes must be a positive int or None, got {n_probes!r}.")
        self.fisher = norm == "fisher"
        self.p = math.nan if self.fisher else check_norm(norm)
        self.data, self.target, self.n_probes = data, target, n_probes
        self.baseline, self.max_batches = baseline, max_batches
        self.group_reduction, self.normalizer = group_reduction, normalizer
        self.probe_seed, self.progress = probe_seed, progress
        self.passes = 0
        """How many times the scores were computed (once per pruning step)."""
        self._cache: dict[tuple[nn.Module, ...], Tensor] = {}
        self._served: set[tuple[nn.Module, ...]] = set()
        self._signature: Any = None

    @torch.no_grad()
    @preserve_model
    def __call__(self, group: Any) -> Tensor | None:
        """The ``(len(group[0].idxs),)`` importance of a group's indices (``None`` for a group
        with no conv/linear/normalisation output, which Torch-Pruning skips)."""
        key, points = _group_points(group)
        if not points:
            return None
        model = group._DG.model
        if _signature(model) != self._signature or key in self._served or key not in self._cache:
            self._score(model, group._DG, extra=group)
        self._served.add(key)
        scores = self._cache[key]
        if len(scores) != len(group[0].idxs):
            raise RuntimeError(
                f"GNDIImportance has {len(scores)} scores for a group of {len(group[0].idxs)} "
                "indices; it only scores groups with every index (as Torch-Pruning's pruners ask)."
            )
        return normalize_group(scores.clone(), self.normalizer)

    def _score(self, model: nn.Module, graph: Any, extra: Any) -> None:
        """Score every group of ``graph`` (and ``extra``) on the model as it is now."""
        groups = {}
        for group in [*graph.get_all_groups(), extra]:
            key, points = _group_points(group)
            if points:
                groups[key] = (points, len(group[0].idxs))
        modules = list({id(p.module): p.module for g in groups.values() for p in g[0]}.values())
        position = {id(m): i for i, m in enumerate(modules)}
        names = {id(m): n for n, m in model.named_modules()}
        labels = [names[id(m)] for m in modules]
        device = model_device(model)
        totals = {key: torch.zeros(size, dtype=torch.float64) for key, (_, size) in groups.items()}
        count = 0
        with eval_mode(model), torch.enable_grad():
            specs = layer_baselines(
                model,
                self.data,
                dict(zip(labels, modules)),
                self.baseline,
                device,
                max_batches=self.max_batches,
            )
            baselines = [specs[name] for name in labels]
            batches = iterate_batches(
                self.data, device, self.max_batches, self.progress, "GNDIImportance"
            )
            for index, (inputs, labels_) in enumerate(batches):
                with torch.no_grad():
                    rows, weigh = self._rows(model, inputs, labels_, index)
                effects = self._effects(model, modules, labels, baselines, inputs, rows)
                for key, (points, size) in groups.items():
                    per_example = self._group_scores(points, position, effects, size, weigh)
                    totals[key] += per_example.sum(0).double().cpu()
                count += len(inputs[0])
        self._cache = {key: total / count for key, total in totals.items()}
        self._served = set()
        self._signature = _signature(model)
        self.passes += 1
        _warn_degenerate(self._cache, groups, names)

    def _rows(
        self, model: nn.Module, inputs: tuple[Tensor, ...], labels: Tensor | None, index: int
    ) -> tuple[list[Any], Callable[[Tensor], Tensor]]:
        """The output directions of one batch, and how their signed effects ``(R, N, G)``
        become per-example scores ``(N, G)``."""
        if self.target is not None:
            if self.target == "label":
                if labels is None:
                    raise ValueError("target='label' needs batches of (inputs, labels).")
                target: Any = labels
            elif self.target == "predicted":
                target = model(*inputs).flatten(1).argmax(1)
            else:
                target = self.target
            return [("target", target)], lambda d: d[0].abs()
        output = model(*inputs).flatten(1)
        k = output.shape[1]
        pi = output.double().softmax(1) if self.fisher else None
        if self.n_probes is None:
            rows = [("target", c) for c in range(k)]
            if self.fisher:
                return rows, lambda d: _fisher(d, pi)
            return rows, lambda d: torch.linalg.vector_norm(d, ord=self.p, dim=0)
        if not (self.fisher or self.p == 2):
            raise ValueError("n_probes estimates the 'l2' or 'fisher' norm only.")
        generator = torch.Generator().manual_seed(self.probe_seed + index)
        probes = []
        for _ in range(self.n_probes):
            if self.fisher:
                y = torch.multinomial(pi.cpu().float(), 1, generator=generator).squeeze(1)
                v = -pi.clone()
                v[torch.arange(len(y)), y.to(v.device)] += 1
            else:
                v = torch.randint(0, 2, output.shape, generator=generator).double() * 2 - 1
            probes.append(("probe", v.to(output.device, output.dtype)))
        return probes, lambda d: d.pow(2).mean(0).sqrt()

    def _effects(
        self,
        model: nn.Module,
        modules: list[nn.Module],
        labels: list[str],
        baselines: list[Any],
        inputs: tuple[Tensor, ...],
        rows: list[Any],
    ) -> list[list[Tensor]]:
        """Signed per-channel effects ``(N, C)`` of every module, for every output direction."""
        masks = []
        effects = []
        for kind, value in rows:
            if kind == "target":
                gndi = LayerGNDI(model, modules)
                target = value
            else:
                gndi = LayerGNDI(lambda *x, v=value: (model(*x).flatten(1) * v).sum(1), modules)
                target = None
            if not masks:
                masks = _channel_masks(model, modules, labels, inputs)
            scores = gndi.attribute(
                inputs,
                target=target,
                layer_baselines=baselines,
                layer_mask=masks,
                signed=True,
                mode="reverse",
            )
            effects.append([s.detach() for s in scores])
        return effects

    def _group_scores(
        self,
        points: list[_Point],
        position: Mapping[int, int],
        effects: list[list[Tensor]],
        size: int,
        weigh: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """Per-example ``(N, size)`` scores of one group from the signed effects."""
        n = effects[0][0].shape[0]
        if self.group_reduction == "joint":
            joint = effects[0][0].new_zeros(len(effects), n, size)
            for point in points:
                signed = torch.stack([row[position[id(point.module)]] for row in effects])
                joint[:, :, point.root_idxs] += signed[:, :, point.idxs]
            return weigh(joint)
        parts = []
        for point in points:
            signed = torch.stack([row[position[id(point.module)]] for row in effects])
            part = torch.zeros(n, size, dtype=signed.dtype, device=signed.device)
            part[:, point.root_idxs] = weigh(signed[:, :, point.idxs])
            parts.append(part)
        stacked = torch.stack(parts)
        if self.group_reduction == "first":
            return stacked[0]
        if self.group_reduction == "max":
            return stacked.max(0).values
        if self.group_reduction == "sum":
            return stacked.sum(0)
        return stacked.mean(0)


def _fisher(d: Tensor, pi: Tensor) -> Tensor:
    """``sqrt(dz^T (diag(pi) - pi pi^T) dz)`` for effects ``d`` of shape ``(K, N, G)``."""
    pi = pi.T.unsqueeze(-1).to(d.dtype)
    return (pi * d.pow(2)).sum(0).sub((pi * d).sum(0).pow(2)).clamp_min(0).sqrt()


def _channel_masks(
    model: nn.Module, modules: list[nn.Module], labels: list[str], inputs: tuple[Tensor, ...]
) -> list[Tensor]:
    """One ``layer_mask`` per module: the channel index along its channel dimension."""
    shapes: dict[int, torch.Size] = {}

    def record(position: int, h: Tensor) -> None:
        shapes[position] = h.shape

    with torch.no_grad(), intervene(modules, record, labels=labels):
        model(*inputs)
    masks = []
    for position, module in enumerate(modules):
        shape = shapes[position]
        dim = channel_dim(module, shape) % len(shape)
        view = [1] * len(shape)
        view[dim] = shape[dim]
        masks.append(torch.arange(shape[dim], device=model_device(model)).view(view))
    return masks


def _warn_degenerate(
    scores: Mapping[Any, Tensor], groups: Mapping[Any, Any], names: Mapping[int, str]
) -> None:
    """Warn for all-zero scores (e.g. a zero-initialised head) and constant groups."""

    def label(key: Any) -> str:
        return "+".join(names[id(p.module)] for p in groups[key][0])

    zero = [label(key) for key, s in scores.items() if bool((s == 0).all())]
    if zero:
        warnings.warn(
            f"G-NDI is exactly 0 for every channel of {zero}: the output does not depend on "
            "them (e.g. a zero-initialised classifier head downstream), so their ranking is "
            "arbitrary. Load trained weights first.",
            stacklevel=4,
        )
    constant = [
        label(key)
        for key, s in scores.items()
        if len(s) > 1 and bool((s == s[0]).all()) and not bool((s == 0).all())
    ]
    if constant:
        warnings.warn(
            f"G-NDI is the same for every channel of {constant}; their ranking is arbitrary.",
            stacklevel=4,
        )


class ScoreImportance(tp.importance.Importance):
    """A Torch-Pruning importance that reads precomputed per-channel scores (one-shot pruning).

    A group's importance is the sum of the scores of the conv/linear output channels it holds.
    For iterative pruning (``iterative_steps > 1``) use :class:`GNDIImportance`: after a step
    the channels no longer match the scores, and this class raises instead of re-indexing.

    Args:
        scores: Module -> ``(C,)`` scores of its output channels.

    Raises:
        RuntimeError: (when called) if a scored module no longer has ``C`` output channels
            (the model was pruned since), or if a group holds no scored module.

    Examples:
        >>> importance = ScoreImportance({model.layer1[0].conv1: gndi_scores})
        >>> tp.pruner.MetaPruner(model, example, importance, pruning_ratio=0.5).step()
    """

    def __init__(self, scores: Mapping[nn.Module, Tensor]) -> None:
        self.modules = {id(m): m for m in scores}
        self.scores = {id(m): s.detach().to(torch.float64).cpu() for m, s in scores.items()}
        for m, s in scores.items():
            if m.weight.shape[0] != len(s):
                raise ValueError(
                    f"{len(s)} scores for a {type(m).__name__} with {m.weight.shape[0]} output "
                    "channels; give one score per output channel."
                )

    @torch.no_grad()
    def __call__(self, group: Any) -> Tensor:
        total: Tensor | None = None
        names = {id(m): n for n, m in group._DG.model.named_modules()}
        for item in group:
            module = item.dep.target.module
            scores = self.scores.get(id(module))
            if scores is None or not _is_out_fn(item.dep.handler):
                continue
            if module.weight.shape[0] != len(scores):
                raise RuntimeError(
                    f"ScoreImportance has {len(scores)} scores for '{names.get(id(module))}', "
                    f"which now has {module.weight.shape[0]} output channels: the model was "
                    "pruned after the scores were computed (e.g. iterative_steps > 1). "
                    "Precomputed scores fit one-shot pruning only; use "
                    "GNDIImportance(data, ...) to rescore the pruned model at every step."
                )
            part = torch.zeros(len(group[0].idxs), dtype=torch.float64)
            part.scatter_add_(0, torch.tensor(item.root_idxs), scores[torch.tensor(item.idxs)])
            total = part if total is None else total + part
        if total is None:
            layers = sorted({names.get(id(item.dep.target.module), "?") for item in group} - {"?"})
            raise RuntimeError(
                f"ScoreImportance has no scores for the pruning group of {layers}; Torch-Pruning "
                "would skip it silently and miss its pruning ratio. Score these layers too, or "
                "pass them to the pruner's ignored_layers."
            )
        return total
