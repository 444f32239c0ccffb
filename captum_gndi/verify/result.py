"""The result of :func:`captum_gndi.verify_top_k`: the exact top k and what finding them cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

__all__ = ["UnitKey", "VerifyResult", "unit_name"]

UnitKey = tuple[str, Union[int, None]]
"""How a result names a unit: ``(layer, index)``, the
:attr:`~captum_gndi.interventions.selection.Unit.key` of a unit (``index`` is ``None`` for a
whole layer)."""


@dataclass
class VerifyResult:
    """The exact top-k units found by :func:`verify_top_k`, and what finding them cost.

    Attributes:
        units: The top k units as ``(layer_name, unit_index)`` (the
            :attr:`~captum_gndi.interventions.selection.Unit.key` of each unit), in order of true
            damage (``unit_index`` is the channel, the flat index over ``channel_dim``
            dimensions, the group id of ``layer_mask``, or ``None`` for a whole layer).
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
        effects: With patching data, the top k units' signed mean effects ``f(x) - f(x;
            do(h_u := b_u))`` (``damages`` are their absolute values), shape ``(k,)``;
            ``None`` otherwise.
    """

    units: list[UnitKey]
    damages: np.ndarray
    predicted: np.ndarray
    predicted_ranks: list[int]
    n_ablations: int
    n_units: int
    miss_probability: float
    ratio: float
    stopped: str
    audit: list[UnitKey]
    verified: dict[UnitKey, float]
    scores: dict[UnitKey, float]
    damage: str
    engine: str
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    effects: np.ndarray | None = None

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
        return [unit_name(unit) for unit in self.units]

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
                    "name": unit_name(unit),
                    "damage": float(self.damages[i]),
                    **({} if self.effects is None else {"effect": float(self.effects[i])}),
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
            "audit": [unit_name(unit) for unit in self.audit],
            "verified": {unit_name(unit): d for unit, d in self.verified.items()},
            "scores": {unit_name(unit): s for unit, s in self.scores.items()},
            "engine": self.engine,
            "timings": dict(self.timings),
            "settings": dict(self.settings),
        }

    def to_markdown(self) -> str:
        """The result as a Markdown report: a summary line and the top-k table."""
        lines = [
            f"# Exact {self._which} units by `{self.damage}`",
            "",
            self._summary(),
            "",
            "| rank | unit | true damage | G-NDI | G-NDI rank |"
            + (" signed effect |" if self.effects is not None else ""),
            "|---:|---|---:|---:|---:|" + ("---:|" if self.effects is not None else ""),
        ]
        for i, unit in enumerate(self.units):
            lines.append(
                f"| {i + 1} | `{unit_name(unit)}` | {self.damages[i]:.5g} "
                f"| {self.predicted[i]:.5g} | {self.predicted_ranks[i]} |"
                + (f" {self.effects[i]:+.5g} |" if self.effects is not None else "")
            )
        return "\n".join(lines) + "\n"

    @property
    def _which(self) -> str:
        """``top k``, or ``k least damaging`` for ``verify_top_k(..., largest=False)``."""
        return f"top {self.k}" if self.settings.get("largest", True) else f"{self.k} least damaging"

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
            f"Exact {self._which} units by {self.damage}: {self._summary()}",
            f"{'rank':>4}  {'unit':<{width}}  {'true damage':>12}  {'G-NDI':>12}  "
            f"{'G-NDI rank':>10}"
            + (f"  {'signed effect':>13}" if self.effects is not None else ""),
        ]
        for i, name in enumerate(self.names):
            lines.append(
                f"{i + 1:>4}  {name:<{width}}  {self.damages[i]:>12.5g}  "
                f"{self.predicted[i]:>12.5g}  {self.predicted_ranks[i]:>10}"
                + (f"  {self.effects[i]:>+13.5g}" if self.effects is not None else "")
            )
        return "\n".join(lines)

    __repr__ = __str__


def unit_name(unit: UnitKey) -> str:
    """``"layer[index]"``, or ``"layer"`` for a whole layer."""
    return unit[0] if unit[1] is None else f"{unit[0]}[{unit[1]}]"
