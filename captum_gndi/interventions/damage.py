"""The damage metrics: how much an intervention changed the model's output, per example.

One registry, :data:`METRICS`, read by the batched ablation, :func:`captum_gndi.verify_top_k`,
the validation harness's defaults and the CLI's ``--damage`` choices. A metric compares the clean
output ``(N, K)`` with an intervened output of the same shape, or with ``U`` stacked intervened
outputs ``(U, N, K)``, and returns the per-example damage ``(N,)`` (``(U, N)``):

- ``output_delta`` (alias ``output_l2``): the L2 norm of the change of the output (the logits
  of a classifier, the embedding of an encoder): the metric of the G-NDI paper's public code.
- ``kl``: ``KL(p_clean || p_intervened)`` of the softmax of the output (needs labels, which mark
  the output as a classifier's logits).
- ``loss_increase`` (alias ``loss``): intervened minus clean cross-entropy (needs labels).
- ``accuracy_drop`` (alias ``accuracy``): clean accuracy minus intervened accuracy; per example
  1 when a correct prediction becomes wrong, -1 for the reverse, 0 otherwise (needs labels).
- ``embedding_cosine``: ``1 - cos(y_clean, y_intervened)``, for embedding models.

``loss_increase`` and ``accuracy_drop`` are signed (a metric's change, not a norm); the others
are >= 0. A user metric is any callable ``damage(clean_out, intervened_out, labels) -> (N,)``
on ``(N, K)`` outputs (``labels`` may be ``None``); :func:`resolve_damage` wraps it as a
:class:`DamageMetric` named after the callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ALIASES",
    "DAMAGE_METRICS",
    "LABELLED_DEFAULT",
    "LABELLED_METRICS",
    "METRICS",
    "UNLABELLED_DEFAULT",
    "Damage",
    "DamageMetric",
    "default_damage",
    "resolve_damage",
]

DamageFn = Callable[[Tensor, Tensor, Union[Tensor, None]], Tensor]
"""``damage(clean_out, intervened_out, labels) -> per-example damage``."""


@dataclass(frozen=True)
class DamageMetric:
    """One damage metric.

    Attributes:
        name: The metric's name (the key of results and reports).
        fn: ``fn(clean (N, K), intervened (N, K) or (U, N, K), labels (N,) or None)`` ->
            ``(N,)`` or ``(U, N)``.
        needs_labels: Whether the metric reads labels (and so a classifier's logits).
        embedding: Whether the metric is meant for embedding models (left out of the defaults
            on labelled data).
        stacked: Whether ``fn`` takes stacked outputs ``(U, N, K)`` itself (a user callable
            does not: it is called once per copy).
    """

    name: str
    fn: DamageFn
    needs_labels: bool = False
    embedding: bool = False
    stacked: bool = True

    def __call__(self, clean: Tensor, intervened: Tensor, labels: Tensor | None) -> Tensor:
        """Per-example damage of ``intervened`` (``(N, K)`` or ``(U, N, K)``) against ``clean``."""
        if self.stacked or intervened.dim() == clean.dim():
            return self.fn(clean, intervened, labels)
        return torch.stack([self.fn(clean, out, labels) for out in intervened])


def _output_delta(clean: Tensor, out: Tensor, labels: Tensor | None) -> Tensor:
    return torch.linalg.vector_norm(clean - out, dim=-1)


def _embedding_cosine(clean: Tensor, out: Tensor, labels: Tensor | None) -> Tensor:
    return 1 - F.cosine_similarity(clean.expand_as(out), out, dim=-1)


def _kl(clean: Tensor, out: Tensor, labels: Tensor | None) -> Tensor:
    log_p, log_q = F.log_softmax(clean, dim=-1), F.log_softmax(out, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _loss_increase(clean: Tensor, out: Tensor, labels: Tensor | None) -> Tensor:
    assert labels is not None
    batch = out.shape[:-1]
    intervened = F.cross_entropy(
        out.reshape(-1, out.shape[-1]), labels.expand(batch).reshape(-1), reduction="none"
    )
    return intervened.view(batch) - F.cross_entropy(clean, labels, reduction="none")


def _accuracy_drop(clean: Tensor, out: Tensor, labels: Tensor | None) -> Tensor:
    correct = (clean.argmax(-1) == labels).to(clean.dtype)
    return correct - (out.argmax(-1) == labels).to(clean.dtype)


METRICS: dict[str, DamageMetric] = {
    m.name: m
    for m in (
        DamageMetric("accuracy_drop", _accuracy_drop, needs_labels=True),
        DamageMetric("loss_increase", _loss_increase, needs_labels=True),
        DamageMetric("output_delta", _output_delta),
        DamageMetric("kl", _kl, needs_labels=True),
        DamageMetric("embedding_cosine", _embedding_cosine, embedding=True),
    )
}
"""The registry: name -> :class:`DamageMetric`."""

ALIASES = {"output_l2": "output_delta", "loss": "loss_increase", "accuracy": "accuracy_drop"}
"""Other names of registered metrics."""

DAMAGE_METRICS = tuple(METRICS)
"""The registered metrics' names, in registry order."""

LABELLED_METRICS = tuple(name for name, m in METRICS.items() if m.needs_labels)
"""Metrics that need labelled data and a classifier's logits."""

Damage = Union[str, DamageFn]
"""A metric name (or alias), or a user callable ``damage(clean, intervened, labels) -> (N,)``."""


def default_damage(has_labels: bool) -> tuple[str, ...]:
    """The metrics measured when none are asked for.

    Args:
        has_labels: Whether the data is labelled (a classifier).

    Returns:
        On labelled data every metric except the embedding ones; on unlabelled data every
        metric that needs no labels.

    Examples:
        >>> default_damage(False)
        ('output_delta', 'embedding_cosine')
    """
    if has_labels:
        return tuple(name for name, m in METRICS.items() if not m.embedding)
    return tuple(name for name, m in METRICS.items() if not m.needs_labels)


def resolve_damage(
    damage: Damage | Sequence[Damage], has_labels: bool, aliases: bool = True
) -> dict[str, DamageMetric]:
    """Check damage metrics (names, aliases or callables) against the data.

    Args:
        damage: One metric or a sequence of them.
        has_labels: Whether the data is labelled.
        aliases: Whether the names of :data:`ALIASES` are accepted (``ablate`` takes only the
            registered names, the keys of its results).

    Returns:
        Name -> metric, in the order given (an alias is keyed by the name it stands for).

    Raises:
        ValueError: For an unknown name, no metric at all, or a metric that needs labels on
            unlabelled data.

    Examples:
        >>> list(resolve_damage(("loss", "output_delta"), has_labels=True))
        ['loss_increase', 'output_delta']
    """
    items = [damage] if isinstance(damage, str) or callable(damage) else list(damage)
    known = {**ALIASES, **{m: m for m in METRICS}} if aliases else {m: m for m in METRICS}
    unknown = [m for m in items if isinstance(m, str) and m not in known]
    if unknown or not items:
        raise ValueError(
            f"Unknown damage metric(s) {unknown}; choose from {DAMAGE_METRICS} (or pass a "
            "callable damage(clean_out, intervened_out, labels) -> (N,))."
        )
    resolved: dict[str, DamageMetric] = {}
    for item in items:
        if isinstance(item, str):
            metric = METRICS[known[item]]
        elif callable(item):
            metric = DamageMetric(getattr(item, "__name__", "custom"), item, stacked=False)
        else:
            raise TypeError(
                f"A damage metric is a name or a callable, got {type(item).__name__}; choose "
                f"from {DAMAGE_METRICS}."
            )
        resolved[metric.name] = metric
    needing = [name for name, m in resolved.items() if m.needs_labels]
    if needing and not has_labels:
        raise ValueError(
            f"Damage metric(s) {needing} need labelled data (batches of (inputs, labels)) and a "
            "classifier's logits. For an embedding model use damage=('output_delta', "
            "'embedding_cosine')."
        )
    return resolved


LABELLED_DEFAULT = default_damage(True)
"""The metrics :func:`~captum_gndi.validation.ablate` and ``validate`` measure on labelled data."""

UNLABELLED_DEFAULT = default_damage(False)
"""The metrics ``validate`` measures on unlabelled data."""
