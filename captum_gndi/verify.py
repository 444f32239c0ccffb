"""Screen and verify: the exact top-k units of a model at a fraction of brute-force ablation.

First-order G-NDI scores every unit (channel, group or layer) of a set of layers in ``1 + K``
passes, but ranks single-unit damage only approximately; the exact answer needs one
intervention ``do(h_u := b_u)`` per unit. :func:`verify_top_k` combines the two, in the spirit
of AtP* (Kramár et al. 2024), which screens with attribution patching and verifies with
activation patching:

1. **Screen.** Score every unit with first-order G-NDI over the data (:func:`compute_gndi`, or
   :class:`~captum_gndi.LayerGNDI` with ``layer_mask`` for groups): the predicted damage
   ``s_u``.
2. **Audit.** Ablate a uniform random sample of ``m`` units among those G-NDI does *not* put in
   its top k (default ``m = ceil(k / expected_misses)``, see below), so that the calibration
   also sees the low-ranked units, where first-order errors are largest.
3. **Verify** units in order of decreasing ``s_u`` with exact interventions (the damage
   ``d_u`` of :mod:`captum_gndi.validation.ablation`, computed with the same formulas), several
   units per forward pass and with the network's prefix before the layer run once.
4. **Stop** when no unverified unit can still enter the top k (the *stopping rule*).

Stopping rule. Let ``r_u = d_u / s_u`` be the true/predicted ratio of a verified unit, ``D_k``
the k-th largest verified damage, ``s*`` the largest score of an unverified unit, and ``rho``
the conformal ``q``-quantile of the ratios of every verified and audited unit (the
``ceil((n + 1) q)``-th smallest of their ``n`` ratios). Stop as soon as

    ``D_k > rho * s*``.

Derivation. An unverified unit ``u`` belongs to the true top k only if ``d_u > D_k``, i.e.
``r_u > D_k / s_u >= D_k / s* > rho``. If a true top-k unit's ratio is exchangeable with the
calibration ratios, ``P(r_u > rho) <= 1 - q`` (the conformal quantile's guarantee), so the
expected number of true top-k units left unverified is at most ``k (1 - q)``. Choosing
``q = 1 - expected_misses / k`` (default ``expected_misses = 1``; ``q`` is at least 0.5) makes
that bound ``expected_misses``. The audit must be able to move the ``q``-quantile on its own,
which needs at least ``1 / (1 - q) = k / expected_misses`` tail ratios: that is its default size.
Units are verified in score order, so ``s*`` is the next unit's score; after every pass the next
pass verifies the first half (at most ``units_per_pass``) of the units the rule does not yet
exclude (those with ``rho * s_u >= D_k``): each pass can lower ``rho`` or raise ``D_k``, so
passes shrink as the rule nears its stop and overshoot stays small. Units with a zero score
(``h == b`` everywhere, so ``d = 0``) are excluded unless a zero-scored unit with positive damage
has been seen (then ``rho`` is infinite and everything is verified).

The exchangeability assumption is optimistic in one known way: a unit enters the true top k
*because* its damage is high, so true top-k units lean towards high ratios. On the trained CIFAR
ResNets the ratio's upper tail is also heavier for low-scored units (first-order G-NDI
underestimates small effects most), which the audit feeds into ``rho`` and which makes the rule
conservative there; ``docs/results.md`` reports the measured recall against brute force.

Cost. Each intervention runs only the part of the network after the layer when the model can be
traced by :mod:`torch.fx` (``engine="suffix"``): the prefix runs once per layer and batch, its
values are kept, and ``units_per_pass`` edited copies of the layer's activation go through the
suffix as one stacked batch. Models that cannot be traced use hooks on the full forward pass,
still stacking ``units_per_pass`` copies of the inputs (``engine="hooks"``).

Examples:
    >>> from captum_gndi import find_layers, verify_top_k
    >>> result = verify_top_k(model, loader, find_layers(model, "branch"), k=10)
    >>> print(result)  # the exact top 10 channels, their damage, and the cost
    >>> result.units[0], result.n_ablations, result.n_units
    (('layer1.2.bn2', 9), 50, 336)
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .attr import LayerGNDI
from .baselines import LayerBaseline, resolve_layer_baseline
from .interventions import LayerCall, LayerSpec, intervene, module_of
from .runs import (
    DataTarget,
    Layers,
    baseline_label,
    batch_target,
    iterate_batches,
    make_runner,
    resolve_device,
    resolve_layers,
    warn_if_training,
)
from .scoring import compute_gndi, layer_baselines
from .units import ChannelDim, UnitIndex, unit_index

__all__ = [
    "ENGINES",
    "VERIFY_DAMAGE_METRICS",
    "VerifyResult",
    "screen_and_verify",
    "verify_top_k",
]

VERIFY_DAMAGE_METRICS = ("output_delta", "kl", "loss_increase", "accuracy_drop", "embedding_cosine")
"""Damage metrics :func:`verify_top_k` accepts: those of :func:`captum_gndi.validation.ablate`."""

_LABELLED = ("kl", "loss_increase", "accuracy_drop")
_ALIASES = {"output_l2": "output_delta", "loss": "loss_increase", "accuracy": "accuracy_drop"}

ENGINES = ("auto", "suffix", "hooks")
"""How interventions run: traced suffix (prefix reused), full forward with hooks, or the first
that works."""

Unit = tuple[str, "int | None"]


# ---------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """The exact top-k units found by :func:`verify_top_k`, and what finding them cost.

    Attributes:
        units: The top k units as ``(layer_name, unit_index)``, in order of true damage
            (``unit_index`` is the channel, the flat index over ``channel_dim`` dimensions, the
            group id of ``layer_mask``, or ``None`` for a whole layer).
        damages: Their true (ablated) mean damage, shape ``(k,)``.
        predicted: Their G-NDI score (predicted damage), shape ``(k,)``.
        predicted_ranks: Their rank (1 = highest) in the G-NDI ordering.
        n_ablations: Interventions run (verified plus audited units; each over all the data).
        n_units: Units that were scored (what brute force would ablate).
        miss_probability: Estimated probability that at least one true top-k unit was not
            verified: ``1 - prod_u (1 - p_u)`` over the unverified units ``u``, with
            ``p_u = #{i : r_i * s_u > D_k} / (n + 1)``: the share of the ``n`` calibration
            ratios ``r_i`` (verified and audited units) that would carry ``u`` over the k-th
            damage ``D_k`` had ``u`` that ratio (the conformal estimate of ``P(d_u > D_k)`` if
            ``u``'s ratio is exchangeable with theirs). Ratios that only occur at small scores
            (the heavy tail of the audit) are applied to every unverified unit, so the estimate
            is conservative when, as on CIFAR ResNets, ratios grow as scores shrink; ``0``
            means no calibration ratio would put any unverified unit into the top k.
        ratio: The calibrated ratio ``rho`` (the conformal ``q``-quantile of true/predicted
            damage over the verified and audited units) when the rule stopped.
        stopped: ``"rule"`` (the stopping rule held) or ``"exhausted"`` (every unit verified).
        audit: The audited units (a random sample of the units outside G-NDI's top k).
        verified: Every ablated unit and its true damage.
        scores: Every unit and its G-NDI score, in forward order.
        damage: The damage metric.
        engine: ``"suffix"`` or ``"hooks"`` (how interventions ran; see the module docstring).
        timings: Seconds spent scoring, verifying and in total.
        settings: The options used.
    """

    units: list[Unit]
    damages: np.ndarray
    predicted: np.ndarray
    predicted_ranks: list[int]
    n_ablations: int
    n_units: int
    miss_probability: float
    ratio: float
    stopped: str
    audit: list[Unit]
    verified: dict[Unit, float]
    scores: dict[Unit, float]
    damage: str
    engine: str
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """The number of units asked for."""
        return len(self.units)

    @property
    def fraction(self) -> float:
        """``n_ablations / n_units``: the share of brute force's interventions that were run."""
        return self.n_ablations / self.n_units

    @property
    def names(self) -> list[str]:
        """The top k as readable names, ``"layer[index]"`` (or ``"layer"``)."""
        return [_name(unit) for unit in self.units]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary of the result."""
        return {
            "k": self.k,
            "damage": self.damage,
            "top_k": [
                {
                    "rank": i + 1,
                    "layer": unit[0],
                    "index": unit[1],
                    "name": _name(unit),
                    "damage": float(self.damages[i]),
                    "gndi": float(self.predicted[i]),
                    "gndi_rank": self.predicted_ranks[i],
                }
                for i, unit in enumerate(self.units)
            ],
            "n_ablations": self.n_ablations,
            "n_units": self.n_units,
            "fraction": self.fraction,
            "miss_probability": self.miss_probability,
            "ratio": self.ratio,
            "stopped": self.stopped,
            "n_audit": len(self.audit),
            "audit": [_name(unit) for unit in self.audit],
            "verified": {_name(unit): d for unit, d in self.verified.items()},
            "scores": {_name(unit): s for unit, s in self.scores.items()},
            "engine": self.engine,
            "timings": dict(self.timings),
            "settings": dict(self.settings),
        }

    def to_markdown(self) -> str:
        """The result as a Markdown report: a summary line and the top-k table."""
        lines = [
            f"# Exact top {self.k} units by `{self.damage}`",
            "",
            self._summary(),
            "",
            "| rank | unit | true damage | G-NDI | G-NDI rank |",
            "|---:|---|---:|---:|---:|",
        ]
        for i, unit in enumerate(self.units):
            lines.append(
                f"| {i + 1} | `{_name(unit)}` | {self.damages[i]:.5g} | {self.predicted[i]:.5g} "
                f"| {self.predicted_ranks[i]} |"
            )
        return "\n".join(lines) + "\n"

    def _summary(self) -> str:
        return (
            f"{self.n_ablations} of {self.n_units} units ablated ({100 * self.fraction:.1f}%, "
            f"{len(self.audit)} of them a random audit); stopped: {self.stopped}; calibrated "
            f"ratio {self.ratio:.3g}; estimated miss probability {self.miss_probability:.3g}; "
            f"engine {self.engine}; {self.timings.get('total_s', float('nan')):.1f} s."
        )

    def __str__(self) -> str:
        width = max(len("unit"), *(len(n) for n in self.names))
        lines = [
            f"Exact top {self.k} units by {self.damage}: {self._summary()}",
            f"{'rank':>4}  {'unit':<{width}}  {'true damage':>12}  {'G-NDI':>12}  "
            f"{'G-NDI rank':>10}",
        ]
        for i, name in enumerate(self.names):
            lines.append(
                f"{i + 1:>4}  {name:<{width}}  {self.damages[i]:>12.5g}  "
                f"{self.predicted[i]:>12.5g}  {self.predicted_ranks[i]:>10}"
            )
        return "\n".join(lines)

    __repr__ = __str__


def _name(unit: Unit) -> str:
    return unit[0] if unit[1] is None else f"{unit[0]}[{unit[1]}]"


# ---------------------------------------------------------------------------------------------
# Damage (the formulas of captum_gndi.validation.ablation, over stacked copies)
# ---------------------------------------------------------------------------------------------


def _check_damage(damage: str, has_labels: bool) -> str:
    if not isinstance(damage, str):
        raise TypeError(
            f"damage must be one metric name (a string), got {type(damage).__name__}; choose "
            f"from {VERIFY_DAMAGE_METRICS}."
        )
    metric = _ALIASES.get(damage, damage)
    if metric not in VERIFY_DAMAGE_METRICS:
        raise ValueError(
            f"Unknown damage metric {damage!r}; choose from {VERIFY_DAMAGE_METRICS} "
            "(the harness's metrics)."
        )
    if metric in _LABELLED and not has_labels:
        raise ValueError(
            f"damage={metric!r} needs labelled data (batches of (inputs, labels)) and a "
            "classifier's logits; use damage='output_delta' for unlabelled data."
        )
    return metric


def _damage(metric: str, clean: Tensor, out: Tensor, labels: Tensor | None) -> Tensor:
    """Per-example damage ``(U, N)`` of ``U`` intervened outputs ``(U, N, K)``."""
    if metric == "output_delta":
        return torch.linalg.vector_norm(clean.unsqueeze(0) - out, dim=2)
    if metric == "embedding_cosine":
        return 1 - F.cosine_similarity(clean.unsqueeze(0).expand_as(out), out, dim=2)
    if metric == "kl":
        log_p, log_q = F.log_softmax(clean, dim=1).unsqueeze(0), F.log_softmax(out, dim=2)
        return (log_p.exp() * (log_p - log_q)).sum(2)
    assert labels is not None
    u, n = out.shape[:2]
    if metric == "loss_increase":
        intervened = F.cross_entropy(out.flatten(0, 1), labels.repeat(u), reduction="none")
        return intervened.view(u, n) - F.cross_entropy(clean, labels, reduction="none")
    correct = (clean.argmax(1) == labels).to(clean.dtype)
    return correct.unsqueeze(0) - (out.argmax(2) == labels.unsqueeze(0)).to(clean.dtype)


# ---------------------------------------------------------------------------------------------
# Exact interventions: a traced suffix (prefix reused), or hooks on the full forward pass
# ---------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    inputs: tuple[Tensor, ...]
    labels: Tensor | None
    clean: Tensor  # (N, K)


def _edited(h: Tensor, b: Tensor, index: UnitIndex, groups: Sequence[int | None]) -> Tensor:
    """``len(groups)`` copies of ``h`` stacked on dim 0, copy j with group j set to ``b``."""
    if index.mask is None:  # whole layer: one unit
        return b.clone().repeat(len(groups), *([1] * (h.dim() - 1)))
    mask = torch.broadcast_to(index.mask.to(h.device), h.shape)
    ids = torch.tensor(list(groups), device=h.device).view(-1, *([1] * h.dim()))
    out = torch.where(mask.unsqueeze(0) == ids, b.unsqueeze(0), h.unsqueeze(0))
    return out.reshape(len(groups) * h.shape[0], *h.shape[1:])


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps the target layers as single ``call_module`` nodes."""

    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, module_qualified_name)


def _fetch_attr(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


@dataclass
class _Split:
    """One layer's place in the traced graph."""

    node: fx.Node
    suffix: list[fx.Node]  # nodes after the layer, in execution order (output last)
    prefix: list[fx.Node]  # nodes needed to compute the frontier, in execution order
    frontier: list[fx.Node]  # values the suffix reads from the prefix (the layer node included)
    batched: dict[fx.Node, bool]  # frontier node -> depends on the inputs


class _Graph:
    """A :mod:`torch.fx` trace of the model, split at each layer into a prefix and a suffix."""

    def __init__(self, model: nn.Module, named: Mapping[str, LayerSpec]) -> None:
        self.model = model
        leaves = {id(module_of(spec)) for spec in named.values()}
        self.graph = _LeafTracer(leaves).trace(model)
        self.modules = dict(model.named_modules())
        paths = {id(m): n for n, m in self.modules.items()}
        self.nodes = list(self.graph.nodes)
        self.placeholders = [n for n in self.nodes if n.op == "placeholder"]
        input_dependent: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder" or any(a in input_dependent for a in node.all_input_nodes):
                input_dependent.add(node)
        self.splits: dict[str, _Split] = {}
        for name, spec in named.items():
            path = paths.get(id(module_of(spec)))
            calls = [n for n in self.nodes if n.op == "call_module" and n.target == path]
            wanted = spec.call_index if isinstance(spec, LayerCall) else 0
            if (
                path is None
                or len(calls) <= wanted
                or (not isinstance(spec, LayerCall) and len(calls) != 1)
            ):
                raise fx.proxy.TraceError(f"layer {name!r} is not one call_module node")
            self.splits[name] = self._split(calls[wanted], input_dependent)

    def _split(self, node: fx.Node, input_dependent: set[fx.Node]) -> _Split:
        after: set[fx.Node] = {node}
        for n in self.nodes:
            if any(a in after for a in n.all_input_nodes):
                after.add(n)
        suffix = [n for n in self.nodes if n in after and n is not node]
        frontier = {a for n in suffix for a in n.all_input_nodes if a not in after}
        frontier.add(node)
        needed: set[fx.Node] = set()
        stack = list(frontier)
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(n.all_input_nodes)
        prefix = [n for n in self.nodes if n in needed]
        ordered = [n for n in self.nodes if n in frontier]
        return _Split(node, suffix, prefix, ordered, {n: n in input_dependent for n in ordered})

    def _run(self, node: fx.Node, env: dict[fx.Node, Any], inputs: tuple[Tensor, ...]) -> Any:
        if node.op == "placeholder":
            position = self.placeholders.index(node)
            if position < len(inputs):
                return inputs[position]
            if node.args:
                return node.args[0]  # the forward's default value
            raise TypeError(f"The model's input {node.target!r} was not given.")
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "get_attr":
            return _fetch_attr(self.model, node.target)  # type: ignore[arg-type]
        if node.op == "call_function":
            return node.target(*args, **kwargs)  # type: ignore[operator]
        if node.op == "call_method":
            obj, *rest = args
            return getattr(obj, node.target)(*rest, **kwargs)  # type: ignore[arg-type]
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)  # type: ignore[index]
        if node.op == "output":
            return args[0]
        raise RuntimeError(f"Unknown fx node op {node.op!r}.")

    def frontier(self, name: str, inputs: tuple[Tensor, ...]) -> dict[fx.Node, Any]:
        """Run the prefix of layer ``name`` once; return the values its suffix reads."""
        split = self.splits[name]
        env: dict[fx.Node, Any] = {}
        for node in split.prefix:
            env[node] = self._run(node, env, inputs)
        return {n: env[n] for n in split.frontier}

    def stackable(self, name: str, values: Mapping[fx.Node, Any], n: int) -> bool:
        """Whether every input-dependent frontier value is a tensor with ``n`` rows."""
        split = self.splits[name]
        return all(
            isinstance(values[f], Tensor) and values[f].dim() > 0 and values[f].shape[0] == n
            for f in split.frontier
            if split.batched[f] and f is not split.node
        )

    def suffix(self, name: str, values: Mapping[fx.Node, Any], h: Tensor, copies: int) -> Any:
        """The model output with the layer's output replaced by ``h`` (``copies`` stacked)."""
        split = self.splits[name]
        env: dict[fx.Node, Any] = {}
        for f in split.frontier:
            value = values[f]
            if copies > 1 and split.batched[f] and isinstance(value, Tensor):
                value = value.repeat(copies, *([1] * (value.dim() - 1)))
            env[f] = value
        env[split.node] = h
        out = None
        for node in split.suffix:
            out = env[node] = self._run(node, env, ())
        return out


class _Interventions:
    """Exact damage of units, batch by batch, with the prefix cached per layer and batch."""

    def __init__(
        self,
        model: nn.Module,
        named: Mapping[str, LayerSpec],
        baselines: Mapping[str, LayerBaseline],
        indices: Mapping[str, UnitIndex],
        batches: list[_Batch],
        metric: str,
        engine: str,
        units_per_pass: int,
        max_cache_bytes: int,
    ) -> None:
        self.model, self.named, self.baselines, self.indices = model, named, baselines, indices
        self.batches, self.metric = batches, metric
        self.units_per_pass = units_per_pass
        self.max_cache_bytes = max_cache_bytes
        self.cache: dict[tuple[str, int], dict[fx.Node, Any]] = {}
        self.cache_bytes = 0
        self.graph: _Graph | None = None
        self.engine = "hooks"
        if engine in ("auto", "suffix"):
            try:
                self.graph = _Graph(model, named)
                self.engine = "suffix"
            except Exception as error:  # tracing is best effort: any failure means hooks
                if engine == "suffix":
                    raise ValueError(
                        f"engine='suffix' needs a model that torch.fx can trace: {error}. Use "
                        "engine='hooks' (full forward passes) instead."
                    ) from error
        self.checked: set[str] = set()
        self.unstackable: set[str] = set()
        self.hooks_only: set[str] = set()
        self.n_interventions = 0

    def _frontier(self, name: str, b: int) -> dict[fx.Node, Any]:
        assert self.graph is not None
        key = (name, b)
        if key in self.cache:
            return self.cache[key]
        with torch.no_grad():
            values = self.graph.frontier(name, self.batches[b].inputs)
        size = sum(v.numel() * v.element_size() for v in values.values() if isinstance(v, Tensor))
        if self.cache_bytes + size <= self.max_cache_bytes:
            self.cache[key] = values
            self.cache_bytes += size
        return values

    def _check_suffix(self, name: str, values: Mapping[fx.Node, Any], batch: _Batch) -> bool:
        """The traced suffix must reproduce the model's clean output; else use hooks."""
        assert self.graph is not None
        h = values[self.graph.splits[name].node]
        out = self.graph.suffix(name, values, h, 1)
        ok = isinstance(out, Tensor) and out.shape[0] == batch.clean.shape[0]
        if ok:
            out = out.reshape(out.shape[0], -1)
            ok = out.shape == batch.clean.shape and torch.allclose(
                out, batch.clean, rtol=1e-4, atol=1e-5 * float(batch.clean.abs().max()) + 1e-12
            )
        if not ok:
            warnings.warn(
                f"The torch.fx trace of the model does not reproduce its output after layer "
                f"{name!r} (data-dependent control flow?); verify_top_k uses full forward passes "
                "with hooks there instead.",
                RuntimeWarning,
                stacklevel=4,
            )
        return ok

    def _use_suffix(self, name: str, b: int) -> dict[fx.Node, Any] | None:
        """The cached prefix values of layer ``name`` on batch ``b``, or None to use hooks."""
        if self.graph is None or name in self.hooks_only:
            return None
        values = self._frontier(name, b)
        if name not in self.checked:
            self.checked.add(name)
            batch = self.batches[b]
            if not self._check_suffix(name, values, batch):
                self.hooks_only.add(name)
                return None
            if not self.graph.stackable(name, values, batch.clean.shape[0]):
                self.unstackable.add(name)
        return values

    def damage(self, name: str, groups: Sequence[int | None]) -> np.ndarray:
        """Mean damage over all batches of each unit (group) of layer ``name``."""
        total = torch.zeros(len(groups), dtype=torch.float64)
        count = 0
        spec, baseline, index = self.named[name], self.baselines[name], self.indices[name]
        for b, batch in enumerate(self.batches):
            values = self._use_suffix(name, b)
            step = 1 if name in self.unstackable else self.units_per_pass
            n = batch.clean.shape[0]
            for start in range(0, len(groups), step):
                chunk = groups[start : start + step]
                if values is not None:
                    out = self._suffix_outputs(name, values, baseline, index, chunk)
                else:
                    out = self._hook_outputs(name, spec, baseline, index, batch, chunk)
                out = out.reshape(len(chunk), n, -1)
                per_example = _damage(self.metric, batch.clean, out, batch.labels)
                total[start : start + len(chunk)] += per_example.double().sum(1).cpu()
            count += n
        self.n_interventions += len(groups)
        return (total / count).numpy()

    def _suffix_outputs(
        self,
        name: str,
        values: Mapping[fx.Node, Any],
        baseline: LayerBaseline,
        index: UnitIndex,
        chunk: Sequence[int | None],
    ) -> Tensor:
        assert self.graph is not None
        h = values[self.graph.splits[name].node]
        b = resolve_layer_baseline(baseline, h, name)
        with torch.no_grad():
            return self.graph.suffix(name, values, _edited(h, b, index, chunk), len(chunk))

    def _hook_outputs(
        self,
        name: str,
        spec: LayerSpec,
        baseline: LayerBaseline,
        index: UnitIndex,
        batch: _Batch,
        chunk: Sequence[int | None],
    ) -> Tensor:
        copies = len(chunk)
        inputs = tuple(t.repeat(copies, *([1] * (t.dim() - 1))) for t in batch.inputs)
        n = batch.inputs[0].shape[0]

        def edit(_: int, h: Tensor) -> Tensor:
            clean = h[:n]
            b = resolve_layer_baseline(baseline, clean, name)
            return _edited(clean.detach(), b, index, chunk)

        with torch.no_grad(), intervene([spec], edit, labels=[name]):
            return make_runner(self.model, inputs, None, None)()


# ---------------------------------------------------------------------------------------------
# Screening: G-NDI of every unit
# ---------------------------------------------------------------------------------------------


def _shapes(
    model: nn.Module, batch: _Batch, named: Mapping[str, LayerSpec]
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Activation shape and forward position of every layer, from one forward pass."""
    names, specs = list(named), list(named.values())
    shapes: dict[str, tuple[int, ...]] = {}
    order: dict[str, int] = {}

    def edit(position: int, h: Tensor) -> None:
        if isinstance(h, tuple):
            raise ValueError(
                f"Layer '{names[position]}' has {len(h)} output tensors; verify_top_k needs one "
                "tensor per layer. Pick the submodule that produces the tensor you want."
            )
        shapes.setdefault(names[position], tuple(h.shape))
        order.setdefault(names[position], len(order))

    with torch.no_grad(), intervene(specs, edit, labels=names):
        make_runner(model, batch.inputs, None, None)()
    return shapes, order


def _masks(
    layer_mask: Tensor | Mapping[str, Tensor] | Sequence[Tensor] | None, names: Sequence[str]
) -> dict[str, Tensor] | None:
    if layer_mask is None:
        return None
    if isinstance(layer_mask, Tensor):
        return {name: layer_mask for name in names}
    if isinstance(layer_mask, Mapping):
        missing = [n for n in names if n not in layer_mask]
        if missing:
            raise ValueError(f"layer_mask has no mask for layers {missing}.")
        return {name: layer_mask[name] for name in names}
    masks = list(layer_mask)
    if len(masks) != len(names):
        raise ValueError(f"Got {len(masks)} layer masks for {len(names)} layers; give one each.")
    return dict(zip(names, masks))


def _group_scores(
    model: nn.Module,
    named: Mapping[str, LayerSpec],
    baselines: Mapping[str, LayerBaseline],
    masks: Mapping[str, Tensor],
    batches: list[_Batch],
    target: DataTarget,
    progress: bool,
) -> dict[str, Tensor]:
    """Mean G-NDI of every group of ``layer_mask``, per layer, over the batches."""
    names = list(named)
    gndi = LayerGNDI(model, [named[n] for n in names])
    sums: dict[str, Tensor] = {}
    count = 0
    for batch in tqdm(batches, desc="G-NDI (groups)", disable=not progress):
        scores = gndi.attribute(
            batch.inputs,
            target=batch_target(model, batch.inputs, batch.labels, target),
            layer_baselines=[baselines[n] for n in names],
            layer_mask=[masks[n] for n in names],
        )
        for name, s in zip(names, scores):
            total = s.detach().double().sum(0)
            sums[name] = total if name not in sums else sums[name] + total
        count += batch.clean.shape[0]
    return {name: s / count for name, s in sums.items()}


# ---------------------------------------------------------------------------------------------
# verify_top_k
# ---------------------------------------------------------------------------------------------


def _check_options(
    k: int, expected_misses: float, quantile: float | None, units_per_pass: int, engine: str
) -> float:
    """Validate the options; return the calibration quantile ``q``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}.")
    if isinstance(expected_misses, bool) or not isinstance(expected_misses, (int, float)):
        raise TypeError(f"expected_misses must be a number, got {expected_misses!r}.")
    if not expected_misses > 0:
        raise ValueError(f"expected_misses must be > 0, got {expected_misses!r}.")
    if quantile is not None and not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}.")
    if (
        isinstance(units_per_pass, bool)
        or not isinstance(units_per_pass, int)
        or units_per_pass < 1
    ):
        raise ValueError(f"units_per_pass must be an integer >= 1, got {units_per_pass!r}.")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}.")
    return max(0.5, 1 - expected_misses / k) if quantile is None else float(quantile)


def _audit_size(audit: int | float | None, q: float, n_units: int, pool: int) -> int:
    if audit is None:
        size = math.ceil(1 / (1 - q) - 1e-9)  # enough tail ratios to set the q-quantile
    elif isinstance(audit, bool) or not isinstance(audit, (int, float)) or audit < 0:
        raise ValueError(
            f"audit must be None (ceil(1 / (1 - quantile))), a count >= 0 or a fraction in "
            "(0, 1), "
            f"got {audit!r}."
        )
    elif isinstance(audit, float) and audit < 1:
        size = math.ceil(audit * n_units)
    else:
        size = int(audit)
    return min(size, pool)


def _ratios(units: Iterable[Unit], verified: Mapping[Unit, float], scores: Mapping[Unit, float]):
    out = []
    for unit in units:
        s, d = scores[unit], verified[unit]
        if s > 0:
            out.append(d / s)
        elif d > 0:
            out.append(math.inf)  # G-NDI blind to a damaging unit: nothing can be excluded
    return np.asarray(out, dtype=np.float64)


def _upper_quantile(ratios: np.ndarray, q: float) -> float:
    """The conformal q-quantile: the ceil((n + 1) q)-th smallest of n ratios (inf if > n)."""
    if not len(ratios):
        return math.inf
    j = math.ceil((len(ratios) + 1) * q - 1e-9)
    return math.inf if j > len(ratios) else float(np.sort(ratios)[j - 1])


def _miss_probability(
    unverified: Sequence[Unit],
    scores: Mapping[Unit, float],
    ratios: np.ndarray,
    d_k: float,
) -> float:
    """``1 - prod_u (1 - p_u)``, ``p_u = #{i: r_i s_u > D_k} / (n + 1)`` over n ratios."""
    if not len(unverified):
        return 0.0
    s = np.array([scores[u] for u in unverified], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        carried = np.nan_to_num(np.outer(s, ratios), nan=0.0) > d_k
    p = carried.sum(1) / (len(ratios) + 1)
    return float(1 - np.prod(1 - p))


def verify_top_k(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    k: int,
    granularity: str = "channel",
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    damage: str = "output_delta",
    expected_misses: float = 1.0,
    quantile: float | None = None,
    audit: int | float | None = None,
    units_per_pass: int = 8,
    layer_mask: Tensor | Mapping[str, Tensor] | Sequence[Tensor] | None = None,
    channel_dim: ChannelDim = 1,
    target: DataTarget = None,
    engine: str = "auto",
    device: torch.device | str | None = None,
    max_batches: int | None = None,
    max_cache_bytes: int = 2**31,
    progress: bool = True,
    seed: int = 0,
) -> VerifyResult:
    """The exact top-k units by ablation damage, verifying only what G-NDI cannot rule out.

    Scores every unit with first-order G-NDI, audits a random sample of low-ranked units, then
    ablates units in order of predicted damage until the stopping rule of the module docstring
    holds: the k-th verified damage exceeds every unverified unit's G-NDI score times the
    conformal ``q``-quantile of the true/predicted damage ratios seen so far.

    Args:
        model: The model, in eval mode; its output must be ``(N, K)`` (logits or an embedding).
        data: A DataLoader or list of batches (a tensor, ``(inputs, labels)`` or
            ``((inputs...), labels)``). It is read once and kept in memory (on ``device``).
        layers: Dict name -> module (e.g. ``find_layers(model, "branch")``) or dotted names.
        k: How many units to return (1 <= k <= number of units).
        granularity: ``"channel"`` (one unit per index of ``channel_dim``) or ``"layer"`` (one
            unit per layer); ignored when ``layer_mask`` is given (groups).
        baseline: ``"zero"``, ``"mean"`` (each layer's data-set mean activation), a number, or a
            dict name -> layer baseline; the same baseline for G-NDI and the ablations.
        damage: The damage metric of the ground truth: ``"output_delta"`` (L2 norm of the output
            change, default; ``"output_l2"`` is a synonym), ``"kl"``, ``"loss_increase"``
            (``"loss"``), ``"accuracy_drop"`` (``"accuracy"``) or ``"embedding_cosine"``.
        expected_misses: The bound the rule puts on the expected number of true top-k units it
            leaves unverified, under exchangeable ratios: sets ``q = max(0.5, 1 -
            expected_misses / k)`` and the default audit size ``ceil(1 / (1 - q))``. Lower is
            safer and costlier.
        quantile: Set ``q`` directly instead (in (0, 1)).
        audit: Size of the random audit of units outside G-NDI's top k: ``None`` for
            ``ceil(1 / (1 - q))``, a count, or a fraction (< 1) of the units.
        units_per_pass: Units intervened on in one stacked forward pass (memory grows with it).
        layer_mask: Groups (Captum's ``LayerFeatureAblation`` convention): an integer tensor
            broadcastable to the activation holding group ids ``0..G-1``, one for all layers,
            or a dict / list with one per layer. The ground truth of group g sets the elements
            with ``mask == g`` to the baseline.
        channel_dim: Activation dimension(s) holding the channels (1 for CNNs, -1 for
            transformer states, a tuple for e.g. position x head; the unit index is then the
            row-major flat index).
        target: G-NDI's target (``None``: the norm over the whole output, which matches
            ``output_delta``; ``"label"`` or a class index otherwise).
        engine: ``"auto"`` (traced suffix when :mod:`torch.fx` can trace the model, hooks
            otherwise), ``"suffix"`` or ``"hooks"``.
        device: Where to run (default: the model's device).
        max_batches: Use at most this many batches.
        max_cache_bytes: Memory for cached prefix values (beyond it prefixes are recomputed).
        progress: Show progress bars.
        seed: Seed of the audit sample.

    Returns:
        A :class:`VerifyResult`: the top k ``units`` with their ``damages``, ``n_ablations``,
        ``n_units``, ``miss_probability``, ...; ``print(result)`` shows a table.

    Raises:
        ValueError: For ``k < 1`` or ``k > n_units``, an unknown damage metric (or a labelled
            one on unlabelled data), a bad granularity, audit or engine.

    Examples:
        >>> result = verify_top_k(model, loader, find_layers(model, "branch"), k=20)
        >>> print(result)
        >>> result.units[:3], result.fraction, result.miss_probability
        >>> # groups: two halves of every channel's spatial map
        >>> mask = (torch.arange(16 * 32 * 32).reshape(1, 16, 32, 32) // 512)
        >>> verify_top_k(model, loader, ["layer1.0.bn2"], k=4, layer_mask=mask)
    """
    start = time.perf_counter()
    _check_options(k, expected_misses, quantile, units_per_pass, engine)
    if layer_mask is None and granularity not in ("channel", "layer"):
        raise ValueError(
            f"granularity must be 'channel' or 'layer' (or pass layer_mask for groups), got "
            f"{granularity!r}."
        )
    warn_if_training(model)
    named = resolve_layers(model, layers)
    names = list(named)
    device = resolve_device(model, device)
    batches: list[_Batch] = []
    for inputs, labels in iterate_batches(data, device, max_batches, False, "verify_top_k"):
        with torch.no_grad():
            clean = make_runner(model, inputs, None, None)()
        batches.append(_Batch(inputs, labels, clean.detach()))
    metric = _check_damage(damage, all(b.labels is not None for b in batches))
    baselines = layer_baselines(model, _batches_as_data(batches), named, baseline, device, False)

    # screen: G-NDI of every unit
    shapes, order = _shapes(model, batches[0], named)
    masks = _masks(layer_mask, names)
    mode = "group" if masks is not None else granularity
    indices = {
        name: unit_index(
            mode, shapes[name], name, channel_dim, None if masks is None else masks[name], device
        )
        for name in names
    }
    if masks is not None:
        means = _group_scores(model, named, baselines, masks, batches, target, progress)
    else:
        result = compute_gndi(
            model,
            _batches_as_data(batches),
            named,
            baseline=baselines,
            target=target,
            device=device,
            progress=progress,
            granularity=granularity,  # type: ignore[arg-type]
            channel_dim=channel_dim,  # type: ignore[arg-type]
        )
        means = result.mean
    scores: dict[Unit, float] = {}
    for name in sorted(names, key=order.__getitem__):
        values = means[name].detach().double().flatten().cpu().numpy()
        if mode == "layer":
            scores[(name, None)] = float(values.sum())
        else:
            scores.update({(name, g): float(v) for g, v in enumerate(values)})
    if k > len(scores):
        raise ValueError(
            f"k={k} is larger than the number of units ({len(scores)} {mode} units in "
            f"{len(names)} layers); pass k <= {len(scores)}."
        )
    scoring_s = time.perf_counter() - start

    runner = _Interventions(
        model, named, baselines, indices, batches, metric, engine, units_per_pass, max_cache_bytes
    )

    def ablate_units(chunk: Sequence[Unit]) -> dict[Unit, float]:
        by_layer: dict[str, list[int | None]] = {}
        for unit in chunk:
            by_layer.setdefault(unit[0], []).append(unit[1])
        return {
            (name, g): float(d)
            for name, groups in by_layer.items()
            for g, d in zip(groups, runner.damage(name, groups))
        }

    result = screen_and_verify(
        scores,
        ablate_units,
        k,
        expected_misses=expected_misses,
        quantile=quantile,
        audit=audit,
        units_per_pass=units_per_pass,
        seed=seed,
        progress=progress,
    )
    result.damage, result.engine = metric, runner.engine
    result.timings = {
        "scoring_s": scoring_s,
        "verify_s": result.timings["verify_s"],
        "total_s": time.perf_counter() - start,
    }
    result.settings.update(
        {
            "granularity": mode,
            "baseline": baseline_label(baseline),
            "damage": metric,
            "channel_dim": channel_dim if isinstance(channel_dim, int) else list(channel_dim),
            "target": target,
            "n_examples": sum(b.clean.shape[0] for b in batches),
        }
    )
    return result


def screen_and_verify(
    scores: Mapping[Unit, float],
    ablate: Callable[[Sequence[Unit]], Mapping[Unit, float]],
    k: int,
    expected_misses: float = 1.0,
    quantile: float | None = None,
    audit: int | float | None = None,
    units_per_pass: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> VerifyResult:
    """The stopping rule of :func:`verify_top_k` on given scores and any exact intervention.

    :func:`verify_top_k` calls this with G-NDI scores and its batched ablations; call it
    directly to verify another screen (a different criterion) or another intervention, or to
    replay the rule on recorded brute-force damages (``ablate=lambda us: {u: d[u] for u in
    us}``).

    Args:
        scores: Unit -> predicted damage (>= 0), in a fixed order (ties keep it).
        ablate: Called with a list of units, returns their true damage.
        k: How many units to return (1 <= k <= len(scores)).
        expected_misses: See :func:`verify_top_k`.
        quantile: See :func:`verify_top_k`.
        audit: See :func:`verify_top_k`.
        units_per_pass: At most this many units per call of ``ablate`` after the first calls
            (the audit, then G-NDI's top k).
        seed: Seed of the audit sample.
        progress: Show a progress bar of the ablations.

    Returns:
        A :class:`VerifyResult` (its ``damage``, ``engine`` and scoring time are left for the
        caller to fill in).

    Examples:
        >>> damage = {("a", 0): 3.0, ("a", 1): 1.0, ("a", 2): 0.5}
        >>> result = screen_and_verify({("a", 0): 2.0, ("a", 1): 1.5, ("a", 2): 0.1},
        ...                            lambda us: {u: damage[u] for u in us}, k=1)
        >>> result.units
        [('a', 0)]
    """
    q = _check_options(k, expected_misses, quantile, units_per_pass, "auto")
    units = list(scores)
    n_units = len(units)
    if k > n_units:
        raise ValueError(
            f"k={k} is larger than the number of units ({n_units}); pass k <= {n_units}."
        )
    negative = [u for u in units if not scores[u] >= 0]
    if negative:
        raise ValueError(f"Scores must be >= 0 (predicted damage); got {negative[:3]} ...")
    start = time.perf_counter()
    ranking = sorted(range(n_units), key=lambda i: -scores[units[i]])  # stable: ties by position
    ordered = [units[i] for i in ranking]
    rank_of = {unit: r + 1 for r, unit in enumerate(ordered)}
    pool = ordered[k:]
    m = _audit_size(audit, q, n_units, len(pool))
    rng = np.random.default_rng(seed)
    audit_units = [pool[i] for i in sorted(rng.choice(len(pool), size=m, replace=False))]
    verified: dict[Unit, float] = {}
    bar = tqdm(total=n_units, desc="verify_top_k", disable=not progress, unit="ablation")

    def run(chunk: Sequence[Unit]) -> None:
        chunk = [u for u in chunk if u not in verified]
        if chunk:
            found = ablate(chunk)
            verified.update({u: float(found[u]) for u in chunk})
            bar.update(len(chunk))

    run(audit_units)
    run(ordered[:k])
    position = k
    stopped = "exhausted"
    while True:
        while position < n_units and ordered[position] in verified:
            position += 1
        d_k = sorted(verified.values(), reverse=True)[k - 1]
        rho = _upper_quantile(_ratios(verified, verified, scores), q)
        if position >= n_units:
            break
        bounds = [
            rho * scores[u] if scores[u] > 0 else (math.inf if math.isinf(rho) else 0.0)
            for u in ordered[position:]
        ]
        bar.set_postfix(D_k=f"{d_k:.3g}", rho=f"{rho:.3g}")
        if bounds[0] < d_k:
            stopped = "rule"
            break
        candidates = [
            u for u, bound in zip(ordered[position:], bounds) if bound >= d_k and u not in verified
        ]
        # half the remaining candidates (at most units_per_pass): every pass can lower rho or
        # raise D_k and exclude the rest, so passes shrink near the stopping point
        run(candidates[: min(units_per_pass, math.ceil(len(candidates) / 2))])
    bar.close()
    top_units = sorted(verified, key=lambda u: (-verified[u], rank_of[u]))[:k]
    unverified = [u for u in ordered if u not in verified]
    miss = _miss_probability(unverified, scores, _ratios(verified, verified, scores), d_k)
    return VerifyResult(
        units=top_units,
        damages=np.array([verified[u] for u in top_units]),
        predicted=np.array([scores[u] for u in top_units]),
        predicted_ranks=[rank_of[u] for u in top_units],
        n_ablations=len(verified),
        n_units=n_units,
        miss_probability=miss,
        ratio=rho,
        stopped=stopped,
        audit=audit_units,
        verified=dict(verified),
        scores=dict(scores),
        damage="custom",
        engine="custom",
        timings={"verify_s": time.perf_counter() - start},
        settings={
            "k": k,
            "expected_misses": expected_misses,
            "quantile": q,
            "audit": len(audit_units),
            "units_per_pass": units_per_pass,
            "seed": seed,
        },
    )


def _batches_as_data(batches: Sequence[_Batch]) -> list[tuple[Any, ...]]:
    """Cached batches in the ``((inputs...), labels)`` form every loader of the package reads."""
    return [(b.inputs, b.labels) if b.labels is not None else (b.inputs,) for b in batches]
