"""The criteria by name, and the entry points that run them.

:data:`CRITERIA` maps every name to its :class:`~captum_gndi.criteria.Criterion` function, in
the order :func:`available_criteria` lists them. :func:`score_criteria` scores units with several
criteria (the validation harness calls :func:`check_criteria`, :func:`build_context
<captum_gndi.criteria.build_context>` and :func:`score_each` itself to time each criterion);
:func:`channel_scores` gives one criterion's score per channel (pruning ranks filters with it).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..baselines import LayerBaseline
from ..interventions.model_state import preserve_model
from ..interventions.selection import Unit
from ..runs import DataTarget, Layers
from .activation import activation_change, gndi, gndi_path, hrank, taylor
from .attribution import grad_x_activation, layer_conductance, layer_integrated_gradients
from .context import Criterion, CriterionContext, CriterionResult, UndefinedCriterion, build_context
from .controls import depth, param_count, random
from .settings import CriterionSettings
from .weights import grasp, magnitude, snip, synflow

__all__ = [
    "CRITERIA",
    "available_criteria",
    "channel_scores",
    "check_criteria",
    "score_criteria",
    "score_each",
]

CRITERIA: dict[str, Criterion] = {
    "gndi": gndi,
    "gndi_path": gndi_path,
    "snip": snip,
    "grasp": grasp,
    "synflow": synflow,
    "magnitude": magnitude,
    "hrank": hrank,
    "taylor": taylor,
    "grad_x_activation": grad_x_activation,
    "layer_conductance": layer_conductance,
    "layer_integrated_gradients": layer_integrated_gradients,
    "activation_change": activation_change,
    "depth": depth,
    "param_count": param_count,
    "random": random,
}
"""Name -> criterion, in the order of :func:`available_criteria`."""

_F = TypeVar("_F", bound=Callable[..., Any])


def _renamed_keyword(old: str, new: str) -> Callable[[_F], _F]:
    """Accept the keyword ``old`` as ``new`` for one release, with a ``DeprecationWarning``."""

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {new}= and its old name {old}=.")
                warnings.warn(
                    f"{fn.__name__}({old}=...) is deprecated; use {new}=...",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def available_criteria() -> dict[str, str]:
    """The criteria :func:`score_criteria` knows, with a one-line description each.

    Returns:
        Dict name -> first line of the criterion's docstring, in a stable order.

    Examples:
        >>> list(available_criteria())[:3]
        ['gndi', 'gndi_path', 'snip']
    """
    return {name: (fn.__doc__ or "").strip().splitlines()[0] for name, fn in CRITERIA.items()}


def check_criteria(criteria: Sequence[str] | str | None) -> list[str]:
    """Check criterion names and return them as a list (``None``: every criterion).

    Args:
        criteria: One name, several, or ``None``.

    Returns:
        The names, in the order given.

    Raises:
        ValueError: For an unknown name or an empty list.

    Examples:
        >>> check_criteria("gndi")
        ['gndi']
    """
    if criteria is None:
        return list(CRITERIA)
    criteria = [criteria] if isinstance(criteria, str) else list(criteria)
    unknown = [c for c in criteria if c not in CRITERIA]
    if unknown or not criteria:
        # "method" is the old word for a criterion; messages keep it so that matches still work
        raise ValueError(
            f"Unknown method(s) {unknown}; the importance criteria are {list(CRITERIA)}."
        )
    return criteria


def score_each(
    ctx: CriterionContext, criteria: Sequence[str]
) -> Iterator[tuple[str, CriterionResult | UndefinedCriterion]]:
    """Run each criterion; yield its scores, or the reason why it is undefined here.

    Args:
        ctx: The context (see :func:`~captum_gndi.criteria.build_context`).
        criteria: Names checked by :func:`check_criteria`.

    Yields:
        ``(name, (scores, per_example))``, or ``(name, UndefinedCriterion)``.

    Examples:
        >>> for name, result in score_each(ctx, ["gndi", "depth"]):
        ...     print(name, result[0].shape)
        gndi (8,)
        depth (8,)
    """
    for name in criteria:
        try:
            yield name, CRITERIA[name](ctx)
        except UndefinedCriterion as reason:
            yield name, reason


@_renamed_keyword("methods", "criteria")
@preserve_model
def score_criteria(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    criteria: Sequence[str] | str | None = None,
    *,
    settings: CriterionSettings | None = None,
    units: Sequence[Unit] | None = None,
    skip_undefined: bool = False,
    integration: str | None = None,
    **options: Any,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score every unit of ``layers`` with several importance criteria.

    Args:
        model: The model (in eval mode); left unchanged.
        data: A DataLoader (or re-iterable) of ``(inputs, labels)`` or unlabelled inputs.
        layers: Dict name -> module (e.g. ``captum_gndi.adapters.find_layers``) or dotted names.
        criteria: Names among :func:`available_criteria` (``None``: all). The old keyword
            ``methods=`` is accepted with a ``DeprecationWarning``.
        settings: The options (default: :class:`~captum_gndi.criteria.CriterionSettings`
            defaults).
        units: Precomputed units (e.g. the ones :func:`~captum_gndi.validation.ablate` used).
        skip_undefined: Skip criteria undefined for this model (warning with the reason)
            instead of raising :class:`~captum_gndi.criteria.UndefinedCriterion`.
        integration: Deprecated spelling of ``method``.
        **options: Fields of :class:`~captum_gndi.criteria.CriterionSettings`, replacing those
            of ``settings``: ``granularity`` (``"layer"``, ``"channel"`` or ``"group"``, implied
            by ``layer_mask``), ``baseline`` (``"zero"``, ``"mean"``, a number or a dict; used
            by G-NDI, gradient x activation and activation change), ``target`` (``"label"``,
            ``"predicted"``, a class index, or ``None``: the loss- and logit-based criteria
            are then undefined), ``gndi_target``, ``norm`` and ``n_probes`` (the output G-NDI
            measures and its norm, as ``compute_gndi``'s ``target``, ``norm`` and
            ``n_probes``: default the L2 norm over the whole output), ``n_channels``, ``seed``
            (also G-NDI's probe seed), ``n_random``, ``n_steps`` and ``method`` (the path
            criteria's points and Captum rule), ``channel_dim``, ``device``, ``progress``,
            ``max_batches`` and ``layer_mask`` (groups as units, Captum's
            ``LayerFeatureAblation`` semantics).

    Returns:
        ``(scores, scores_per_example)``: criterion -> ``(U,)`` scores (``random``: ``(S, U)``),
        and criterion -> ``(N, U)`` for the criteria defined per example.

    Raises:
        UndefinedCriterion: For a criterion undefined here (unless ``skip_undefined``).

    Examples:
        >>> scores, per_example = score_criteria(model, loader, find_layers(model, "branch"),
        ...                                      criteria=["gndi", "snip", "depth"])
        >>> scores["gndi"].shape, per_example["gndi"].shape
        ((8,), (512, 8))
        >>> fisher, _ = score_criteria(model, loader, layers, "gndi", norm="fisher", n_probes=8)
    """
    if integration is not None:
        warnings.warn(
            "score_criteria(integration=...) is deprecated; use method=... (Captum's name).",
            DeprecationWarning,
            stacklevel=2,
        )
        options["method"] = integration
    names = check_criteria(criteria)
    ctx = build_context(model, data, layers, settings=settings, units=units, **options)
    scores: dict[str, np.ndarray] = {}
    per_example: dict[str, np.ndarray] = {}
    for name, result in score_each(ctx, names):
        if isinstance(result, UndefinedCriterion):
            if not skip_undefined:
                raise result
            warnings.warn(f"Skipping {name}: {result}", stacklevel=3)
            continue
        scores[name], rows = result
        if rows is not None:
            per_example[name] = rows
    return scores, per_example


@_renamed_keyword("method", "criterion")
@preserve_model
def channel_scores(
    criterion: str,
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    target: DataTarget = "label",
    seed: int = 0,
    n_steps: int = 16,
    channel_dim: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    **options: Any,
) -> dict[str, np.ndarray]:
    """One criterion's score for every channel of every layer (e.g. to rank filters to prune).

    Args:
        criterion: A name among :func:`available_criteria` (``random`` uses one seed). The old
            keyword ``method=`` is accepted with a ``DeprecationWarning``.
        model: The model (in eval mode); left unchanged.
        data: A DataLoader of ``(inputs, labels)`` (or unlabelled inputs for label-free criteria).
        layers: Dict name -> module or dotted names: conv, linear or normalisation layers.
        baseline: ``"zero"``, ``"mean"``, a number or a dict (see :func:`score_criteria`).
        target: See :func:`score_criteria`.
        seed: Seed of ``random``.
        n_steps: Integration points of the path criteria.
        channel_dim: Activation dimension holding channels.
        device: Where to run.
        progress: Show progress bars.
        max_batches: Use at most this many batches.
        **options: Other fields of :class:`~captum_gndi.criteria.CriterionSettings`, e.g.
            G-NDI's ``gndi_target``, ``norm`` and ``n_probes``.

    Returns:
        Dict layer name -> scores of shape ``(C,)`` (higher: more important).

    Raises:
        UndefinedCriterion: When the criterion is undefined for these layers.

    Examples:
        >>> scores = channel_scores("gndi", model, loader, ["layer1.0.conv1", "layer1.0.conv2"])
        >>> scores["layer1.0.conv1"].shape
        (16,)
    """
    (name,) = check_criteria([criterion])
    ctx = build_context(
        model,
        data,
        layers,
        granularity="channel",
        baseline=baseline,
        target=target,
        seed=seed,
        n_random=1,
        n_steps=n_steps,
        channel_dim=channel_dim,
        device=device,
        progress=progress,
        max_batches=max_batches,
        **options,
    )
    scores, _ = CRITERIA[name](ctx)
    scores = scores[0] if scores.ndim == 2 else scores
    return {layer: scores[ctx.columns(layer)[0]] for layer in ctx.layer_names}
