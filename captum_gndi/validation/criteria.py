"""Deprecated location of the importance criteria: use :mod:`captum_gndi.criteria`.

The criteria moved to the top-level package :mod:`captum_gndi.criteria` (pruning uses them too).
This module keeps the old import path working for one release: every name read from it emits a
``DeprecationWarning`` and returns the object of :mod:`captum_gndi.criteria` (``score_methods``
is :func:`~captum_gndi.criteria.score_criteria`, ``available_methods``
:func:`~captum_gndi.criteria.available_criteria`, ``CONTROL_METHODS``
:data:`~captum_gndi.criteria.CONTROL_CRITERIA`).
"""

from __future__ import annotations

import warnings
from typing import Any

from .. import criteria as _new

_NEW_NAMES = {
    "CONTROL_METHODS": "CONTROL_CRITERIA",
    "UndefinedCriterion": "UndefinedCriterion",
    "available_methods": "available_criteria",
    "channel_scores": "channel_scores",
    "score_methods": "score_criteria",
    "unit_parameters": "unit_parameters",
}

__all__ = sorted(_NEW_NAMES)  # every name is read through __getattr__ (with a warning)


def __getattr__(name: str) -> Any:
    if name not in _NEW_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    new = _NEW_NAMES[name]
    warnings.warn(
        f"captum_gndi.validation.criteria.{name} is deprecated; use captum_gndi.criteria.{new}.",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(_new, new)
