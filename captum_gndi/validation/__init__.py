"""Validate importance scores against real interventions (see ``docs/validation.md``).

:func:`validate` ablates every unit (a layer, or a channel) with ``do(h := b)``, scores the same
units with G-NDI and the other criteria of :mod:`captum_gndi.criteria` (SNIP, GraSP, SynFlow,
magnitude, HRank, Taylor, Captum's layer methods) and trivial controls (depth, parameter count,
activation change, random, gradient x activation), and reports how well each score predicts the
damage.

The criteria's names are re-exported here; the old names ``score_methods``,
``available_methods`` and ``CONTROL_METHODS`` still work for one release with a
``DeprecationWarning`` (use ``score_criteria``, ``available_criteria``, ``CONTROL_CRITERIA``).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from .. import criteria as _criteria
from ..criteria import (
    CONTROL_CRITERIA,
    UndefinedCriterion,
    available_criteria,
    channel_scores,
    score_criteria,
    unit_parameters,
)
from .ablation import (
    DAMAGE_METRICS,
    AblationResult,
    Unit,
    ablate,
    intervened_output,
    layer_baselines,
    select_units,
)
from .harness import validate
from .report import ValidationReport, build_report

__all__ = [
    "CONTROL_CRITERIA",
    "DAMAGE_METRICS",
    "AblationResult",
    "UndefinedCriterion",
    "Unit",
    "ValidationReport",
    "ablate",
    "available_criteria",
    "build_report",
    "channel_scores",
    "intervened_output",
    "layer_baselines",
    "score_criteria",
    "select_units",
    "unit_parameters",
    "validate",
]

_DEPRECATED = {
    "CONTROL_METHODS": "CONTROL_CRITERIA",
    "available_methods": "available_criteria",
    "score_methods": "score_criteria",
}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(
            f"captum_gndi.validation.{name} is deprecated; use captum_gndi.criteria.{new} "
            f"(also importable as captum_gndi.validation.{new}).",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_criteria, new)
    if name == "criteria":  # the deprecated submodule, read as an attribute
        return importlib.import_module(f"{__name__}.criteria")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
