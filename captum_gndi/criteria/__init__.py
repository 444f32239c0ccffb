"""Importance criteria, one score per unit: G-NDI and the criteria it is compared with.

Every criterion scores the same units as :func:`captum_gndi.validation.ablate` (whole layers,
single channels of them, or the groups of a ``layer_mask``) and returns a score per unit
``(U,)``, higher meaning "more important"; criteria defined per example also return ``(N, U)``
per-example scores (their mean over examples is the score). Each is a small function
``criterion(ctx)`` behind the :class:`Criterion` protocol, given a :class:`CriterionContext`
that :func:`build_context` builds once. The reductions to one number per unit are:

==========================  ================================================================
name                        score of a unit (a layer, or one channel of it)
==========================  ================================================================
gndi *                      ``|| J_{>L} (h - b) ||_2`` over the whole output, ``h - b`` kept
                            on the unit: the first-order change of the output (G-NDI)
gndi_path *                 same, Jacobian integrated from ``b`` to ``h`` (``n_steps``)
snip                        ``sum |w * dL/dw|`` over the unit's weights (Lee et al. 2019)
grasp                       ``sum -(w * Hg)`` over the unit's weights (Wang et al. 2020)
synflow                     ``sum |w * dR/dw|``, R = summed output of the network with ``|w|``
                            on an all-ones input (Tanaka et al. 2020)
magnitude                   mean ``|w|`` over the unit's weight matrices / kernels
hrank *                     mean matrix rank of the unit's (H, W) maps (Lin et al. 2020)
taylor *                    ``|sum_unit h * dL/dh|`` (Molchanov et al. 2017)
grad_x_activation *         ``|sum_unit dy_t/dh * (h - b)|`` (Captum LayerGradientXActivation)
layer_conductance *         ``|sum_unit conductance|`` (Captum LayerConductance)
layer_integrated_gradients  ``|sum_unit attribution|`` (Captum LayerIntegratedGradients); *
activation_change *         ``||h - b||_2`` over the unit
depth                       ``(last depth) - depth``: earlier layers score higher
param_count                 number of parameters feeding the unit
random                      uniform random numbers, one row per seed ``(S, U)``
==========================  ================================================================

Criteria marked * are defined per example.

``L`` is the cross-entropy with the labels, ``y_t`` the target logit (``target="label"``), ``h``
the unit's activation and ``b`` its baseline. G-NDI's output and norm are settings of their own
(``gndi_target``, ``norm``, ``n_probes``; default the L2 norm over the whole output, as in the
table), with the meaning of ``compute_gndi``'s ``target``, ``norm`` and ``n_probes``.

The controls ``depth``, ``param_count``, ``activation_change``, ``random`` and
``grad_x_activation`` (:data:`CONTROL_CRITERIA`) are ordinary criteria whose names the statistics
treat as controls.

At group granularity (``layer_mask``, Captum's ``LayerFeatureAblation`` semantics; see
:mod:`~captum_gndi.criteria.groups`) "the unit" is the group's elements ``1[M = g]``: ``gndi`` and
``gndi_path`` use the engine's group granularity, ``activation_change`` is
``||1[M = g] (h - b)||_2`` and the other per-element criteria sum over the group. The weight-based
criteria, ``hrank`` and ``param_count`` raise :class:`UndefinedCriterion` there.

The modules: :mod:`~captum_gndi.criteria.settings` (the options, once),
:mod:`~captum_gndi.criteria.context` (the context, its batches, the protocol and the shared
helpers), :mod:`~captum_gndi.criteria.activation` (G-NDI and activation-based),
:mod:`~captum_gndi.criteria.attribution` (Captum-based), :mod:`~captum_gndi.criteria.weights`
(weight-based, and which weights feed a unit), :mod:`~captum_gndi.criteria.groups` (masks over a
data set), :mod:`~captum_gndi.criteria.controls` and
:mod:`~captum_gndi.criteria.registry` (the names and the entry points).

SynFlow's layer sums are nearly equal by its conservation law (exactly equal for a bias-free
network without normalisation): the raw values are returned unchanged, and the statistics report
"constant score, no rank correlation" for them.
"""

from .context import (
    Criterion,
    CriterionBatch,
    CriterionContext,
    CriterionResult,
    UndefinedCriterion,
    build_context,
)
from .controls import CONTROL_CRITERIA
from .registry import (
    CRITERIA,
    available_criteria,
    channel_scores,
    check_criteria,
    score_criteria,
    score_each,
)
from .settings import CriterionSettings
from .weights import unit_parameters

__all__ = [
    "CONTROL_CRITERIA",
    "CRITERIA",
    "Criterion",
    "CriterionBatch",
    "CriterionContext",
    "CriterionResult",
    "CriterionSettings",
    "UndefinedCriterion",
    "available_criteria",
    "build_context",
    "channel_scores",
    "check_criteria",
    "score_criteria",
    "score_each",
    "unit_parameters",
]
