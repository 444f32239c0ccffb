"""Screen and verify: the exact top-k units of a model at a fraction of brute-force ablation.

- :mod:`~captum_gndi.verify.top_k`: :func:`verify_top_k` = screen (first-order G-NDI,
  :func:`captum_gndi.compute_gndi`) + ablate (the batched ablation of
  :mod:`captum_gndi.interventions.ablation`) + the stopping rule.
- :mod:`~captum_gndi.verify.screens`: the screens (first order, ``path="input"``, combined).
- :mod:`~captum_gndi.verify.rule`: the stopping rule as pure functions of numbers
  (:func:`screen_and_verify`), with its derivation.
- :mod:`~captum_gndi.verify.result`: :class:`VerifyResult`.

``VERIFY_DAMAGE_METRICS`` and ``ENGINES`` are the registries of
:mod:`captum_gndi.interventions` under their old names.
"""

from ..interventions.backends import ENGINES
from ..interventions.damage import DAMAGE_METRICS as VERIFY_DAMAGE_METRICS
from .result import VerifyResult
from .rule import screen_and_verify
from .top_k import verify_top_k

__all__ = [
    "ENGINES",
    "VERIFY_DAMAGE_METRICS",
    "VerifyResult",
    "screen_and_verify",
    "verify_top_k",
]
