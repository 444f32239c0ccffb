"""The validation harness's ground truth: true interventions and the damage they do.

The implementation lives in :mod:`captum_gndi.interventions` (units and their selection in
:mod:`~captum_gndi.interventions.selection`, batched ablation in
:mod:`~captum_gndi.interventions.ablation`, the ground truth of ``layer_mask`` groups in
:mod:`~captum_gndi.interventions.lfa`, the damage metrics in
:mod:`~captum_gndi.interventions.damage`); this module keeps the import path
``captum_gndi.validation.ablation`` of its public names.
"""

from __future__ import annotations

from ..interventions.ablation import AblationResult, ablate, intervened_output
from ..interventions.damage import DAMAGE_METRICS, LABELLED_METRICS
from ..interventions.lfa import LFA, OWN
from ..interventions.selection import Unit, group_masks, select_units
from ..scoring import layer_baselines

__all__ = [
    "DAMAGE_METRICS",
    "LABELLED_METRICS",
    "LFA",
    "OWN",
    "AblationResult",
    "Unit",
    "ablate",
    "group_masks",
    "intervened_output",
    "layer_baselines",
    "select_units",
]
