"""Validate importance scores against real interventions (see ``docs/validation.md``).

:func:`validate` ablates every unit (a layer, or a channel) with ``do(h := b)``, scores the same
units with G-NDI and the other criteria (SNIP, GraSP, SynFlow, magnitude, HRank, Taylor, Captum's
layer methods) and trivial controls (depth, parameter count, activation change, random,
gradient x activation), and reports how well each score predicts the damage.
"""

from .ablation import (
    DAMAGE_METRICS,
    AblationResult,
    Unit,
    ablate,
    intervened_output,
    layer_baselines,
    select_units,
)
from .criteria import (
    CONTROL_METHODS,
    UndefinedCriterion,
    available_methods,
    channel_scores,
    score_methods,
    unit_parameters,
)
from .harness import validate
from .report import ValidationReport, build_report

__all__ = [
    "CONTROL_METHODS",
    "DAMAGE_METRICS",
    "AblationResult",
    "UndefinedCriterion",
    "Unit",
    "ValidationReport",
    "ablate",
    "available_methods",
    "build_report",
    "channel_scores",
    "intervened_output",
    "layer_baselines",
    "score_methods",
    "select_units",
    "unit_parameters",
    "validate",
]
