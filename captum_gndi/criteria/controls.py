"""Trivial controls a real criterion should beat: ``depth``, ``param_count`` and ``random``.

:data:`CONTROL_CRITERIA` also names two controls defined elsewhere because they share their
machinery: ``activation_change`` (:mod:`captum_gndi.criteria.activation`) and
``grad_x_activation`` (:mod:`captum_gndi.criteria.attribution`). The validation report compares
every other criterion with each control.
"""

from __future__ import annotations

import numpy as np

from .context import CriterionContext, CriterionResult
from .weights import unit_parameters

__all__ = ["CONTROL_CRITERIA", "depth", "param_count", "random"]

CONTROL_CRITERIA = ("depth", "param_count", "activation_change", "random", "grad_x_activation")
"""Criteria that serve as controls: a real criterion should beat them."""


def param_count(ctx: CriterionContext) -> CriterionResult:
    """Control: the number of parameters feeding the unit (its weights' slices for a channel).

    Args:
        ctx: The context.

    Returns:
        ``(counts (U,), None)``, float64.

    Examples:
        >>> scores, _ = param_count(build_context(model, loader, ["0", "2"]))
    """
    ctx.no_groups("param_count", "a group of activation elements has no parameters of its own")
    counts = [
        sum(p.numel() for _, p in unit_parameters(ctx.model, ctx.named[u.layer], u.channel))
        for u in ctx.units
    ]
    return np.asarray(counts, dtype=np.float64), None


def depth(ctx: CriterionContext) -> CriterionResult:
    """Control: ``max depth - depth`` (forward order), so that earlier layers score higher.

    Args:
        ctx: The context.

    Returns:
        ``(scores (U,), None)``.

    Examples:
        >>> depth(build_context(model, loader, ["0", "2"]))[0]
        array([1., 0.])
    """
    depths = np.asarray([u.depth for u in ctx.units], dtype=np.float64)
    return depths.max() - depths, None


def random(ctx: CriterionContext) -> CriterionResult:
    """Control: uniform random scores, ``n_random`` rows (seeds ``seed``, ``seed + 1``, ...).

    Args:
        ctx: The context; ``ctx.settings.seed`` and ``ctx.settings.n_random`` give the seeds.

    Returns:
        ``(scores (n_random, U), None)``.

    Examples:
        >>> random(build_context(model, loader, ["0", "2"], n_random=3))[0].shape
        (3, 2)
    """
    rows = [
        np.random.default_rng(ctx.settings.seed + s).random(len(ctx.units))
        for s in range(ctx.settings.n_random)
    ]
    return np.stack(rows), None
