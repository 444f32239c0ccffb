"""Where first order cannot see: a cheap check of first-order G-NDI against real interventions.

First-order G-NDI is ``|| J (h - b) ||``, the tangent of the output change. Where the output is
far from linear along ``h - b`` it can be off by orders of magnitude: a zero baseline on a
layer that feeds a normalisation (the residual stream before a LayerNorm, a block of a pre-LN
transformer) scores about 0, because the normalisation is scale invariant, while the real
intervention moves the output a lot. :func:`first_order_ratios` measures it on a few examples:
one real intervention per layer (``L + 1`` forward passes) against the first-order score of the
whole layer, under the same norm. :func:`warn_first_order` names the layers where the ratio
leaves ``[1/2, 2]`` and recommends path integration (``n_steps``), which converges to the real
effect. ``compute_gndi`` runs both on the first examples of its data (``check_first_order``)
and keeps the ratios in ``GNDIResult.first_order_ratio``.
"""

from __future__ import annotations

import math
import warnings

import torch

from .engine import Mode, ScoringJob, compute_effects, true_effects
from .readouts import Readout

__all__ = ["FACTOR", "first_order_ratios", "warn_first_order"]

FACTOR = 2.0
"""First order is reported as unreliable when it is off by more than this factor."""


def first_order_ratios(job: ScoringJob, readout: Readout, mode: Mode = "auto") -> dict[str, float]:
    """Per layer: mean first-order G-NDI of the whole layer / mean norm of its real effect.

    Args:
        job: A few examples and the layers (their baselines as scored).
        readout: How the scores measure the output change (with random probes, the
            first-order score is estimated from them; the real effect is measured exactly).
        mode: The engine (``compute_gndi`` passes the one it settled on).

    Returns:
        Layer label -> ratio (1 when both are 0, ``inf`` when only the real effect is 0).

    Examples:
        >>> first_order_ratios(job, make_readout("l2"))  # {"h.11": 1e-06, ...}
    """
    first, _ = compute_effects(job, mode, "layer", readout=readout, warn_cost=False)
    exact = true_effects(job)
    with torch.no_grad():
        reference = job.run()
    shape = getattr(job.run, "output_shape", None)
    exact_readout = Readout(p=readout.p, fisher=readout.fisher, output_shape=shape)
    ratios = {}
    for label, estimate, effect in zip(job.labels, first, exact):
        if readout.n_probes is not None:  # probe projections: their L2 norm estimates it
            score = float(readout.scores(estimate).mean())
        else:
            score = float(exact_readout.scores(estimate, reference).mean())
        true = float(exact_readout.scores(effect, reference).mean())
        ratios[label] = score / true if true > 0 else (1.0 if score == 0 else math.inf)
    return ratios


def warn_first_order(ratios: dict[str, float], n_examples: int, stacklevel: int = 3) -> None:
    """One warning naming the layers whose ratio leaves ``[1 / FACTOR, FACTOR]``."""
    off = {name: r for name, r in ratios.items() if not 1 / FACTOR <= r <= FACTOR}
    if not off:
        return
    listed = ", ".join(f"'{name}' ({ratio:.3g})" for name, ratio in off.items())
    warnings.warn(
        f"First-order G-NDI is off by more than a factor of {FACTOR:g} on {n_examples} examples "
        f"for {listed} (first-order score / real intervention effect): the output is far from "
        "linear between the baseline and the activation (e.g. a normalisation after the layer "
        "is scale invariant, so a zero baseline scores about 0). Use path-integrated G-NDI "
        "(n_steps=8 or more converges to the real effect), a baseline closer to the activation "
        "(baseline='mean'), or check_first_order=0 to skip this check.",
        stacklevel=stacklevel,
    )
