"""Pieces shared by all adapters: layer kinds, intervention points and the generic walk.

An adapter turns a model into an ordered list of :class:`Point` objects: a name, the module (or
:class:`~captum_gndi.LayerCall`) to intervene on, and a plain-words meaning of zeroing it. This
module holds what every adapter needs and the *generic walk* used for architectures no adapter
knows: leaf convolutions and linear layers, plus residual blocks recognised by a ``downsample``
or ``shortcut`` attribute. :func:`get_layer` and :class:`LayerNotFoundError` live in the core
(:mod:`captum_gndi.layer_names`) and are re-exported here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from ..interventions import LayerSpec
from ..layer_names import LayerNotFoundError, get_layer

__all__ = [
    "GRANULARITIES",
    "KINDS",
    "LayerNotFoundError",
    "Point",
    "UnsupportedGranularity",
    "UnsupportedKind",
    "check_granularity",
    "check_kind",
    "generic_points",
    "get_layer",
    "is_linear",
    "kind_argument",
    "leaf_points",
]

KINDS = ("auto", "block", "branch", "attention", "mlp", "head", "conv", "linear")
"""Valid ``kind`` values of :func:`~captum_gndi.find_layers`: which layers to intervene on
(``"head"``: one :class:`~captum_gndi.Heads` point per attention layer)."""

GRANULARITIES = KINDS
"""Deprecated name of :data:`KINDS` (the engine's ``granularity`` is layer/channel/unit)."""

SHORTCUT_ATTRIBUTES = ("downsample", "shortcut")
"""Attributes that mark a module as a residual block in the generic walk."""

KILLS_DOWNSTREAM = "zeroing this kills everything downstream (no shortcut bypasses it)"


class UnsupportedKind(ValueError):
    """Raised by an adapter for a kind of layer its model family does not have."""


UnsupportedGranularity = UnsupportedKind
"""Deprecated name of :class:`UnsupportedKind`."""


@dataclass(frozen=True)
class Point:
    """One intervention point found by an adapter.

    Attributes:
        name: Dotted name relative to the model passed to ``find_layers`` (``"[call k]"`` is
            appended for one call of a module that runs several times).
        layer: The module, the :class:`~captum_gndi.LayerCall` or the
            :class:`~captum_gndi.Heads` to intervene on.
        kind: What the point is: ``"block"``, ``"branch"``, ``"attention"``, ``"mlp"``,
            ``"head"``, ``"conv"``, ``"linear"`` or ``"custom"`` (from a user adapter).
        meaning: What setting this activation to zero does, in plain words.
    """

    name: str
    layer: LayerSpec
    kind: str
    meaning: str


def check_kind(kind: str) -> str:
    """Validate a ``kind`` argument (which layers :func:`~captum_gndi.find_layers` returns).

    Args:
        kind: The requested kind of layer.

    Returns:
        The kind, unchanged.

    Raises:
        ValueError: If it is not one of :data:`KINDS` (the message lists them).

    Examples:
        >>> check_kind("branch")
        'branch'
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}.")
    return kind


def check_granularity(granularity: str) -> str:
    """Deprecated name of :func:`check_kind` (kept for one release).

    Args:
        granularity: The requested kind of layer.

    Returns:
        The kind, unchanged.

    Raises:
        ValueError: If it is not one of :data:`KINDS`.
    """
    warnings.warn(
        "captum_gndi.adapters.check_granularity is deprecated; use check_kind.",
        DeprecationWarning,
        stacklevel=2,
    )
    return check_kind(granularity)


def kind_argument(kind: str, granularity: str | None, function: str) -> str:
    """Resolve the deprecated ``granularity=`` keyword of an adapter function into ``kind``.

    Args:
        kind: The ``kind`` argument as passed (``"auto"`` when left out).
        granularity: The deprecated ``granularity`` keyword, ``None`` when not passed.
        function: The function's name, for the warning.

    Returns:
        ``granularity`` (after a ``DeprecationWarning``) when it was passed, else ``kind``.

    Raises:
        TypeError: When both a non-default ``kind`` and ``granularity`` were passed.

    Examples:
        >>> kind_argument("auto", "branch", "find_layers")  # warns
        'branch'
    """
    if granularity is None:
        return kind
    if kind != "auto":
        raise TypeError(f"{function}() got both kind={kind!r} and granularity={granularity!r}.")
    warnings.warn(
        f"{function}(granularity=...) is deprecated; use kind=... (same values: "
        f"{', '.join(KINDS)}). The engine's granularity is layer/channel/unit.",
        DeprecationWarning,
        stacklevel=3,
    )
    return granularity


def is_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution (any dimension, transposed included)."""
    return isinstance(module, nn.modules.conv._ConvNd)


def is_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer: ``nn.Linear`` or Hugging Face's GPT-2 ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return True
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


def _functional_submodules(model: nn.Module) -> set[int]:
    """Modules that hold weights but are never called (``nn.MultiheadAttention.out_proj``)."""
    return {
        id(module.out_proj)
        for module in model.modules()
        if isinstance(module, nn.MultiheadAttention)
    }


def leaf_points(
    model: nn.Module,
    kind: str,
    contexts: Mapping[str, str] | None = None,
) -> list[Point]:
    """Every leaf convolution (``kind="conv"``) or linear layer (``kind="linear"``).

    Args:
        model: The model to walk (names are relative to it).
        kind: ``"conv"`` or ``"linear"``.
        contexts: Meanings by name prefix: a leaf inside ``prefix`` gets ``contexts[prefix]``
            (the longest matching prefix wins); other leaves kill everything downstream.

    Returns:
        The points in ``named_modules`` order. ``nn.MultiheadAttention.out_proj`` is left out:
        the attention calls its weights functionally, so the module never runs.
    """
    test = is_conv if kind == "conv" else is_linear
    skipped = _functional_submodules(model)
    prefixes = sorted((contexts or {}).items(), key=lambda item: -len(item[0]))
    points = []
    for name, module in model.named_modules():
        if not name or id(module) in skipped or not test(module):
            continue
        meaning = next(
            (text for prefix, text in prefixes if (name + ".").startswith(prefix + ".")),
            KILLS_DOWNSTREAM,
        )
        points.append(Point(name, module, kind, meaning))
    return points


def branch_contexts(blocks: Iterable[tuple[str, Iterable[str]]]) -> dict[str, str]:
    """Leaf meanings inside residual blocks, given ``(block name, shortcut child names)``."""
    contexts = {}
    for block, shortcuts in blocks:
        contexts[block] = (
            f"zeroing this changes only the residual branch of {block}; its shortcut still "
            "carries the signal past it"
        )
        for child in shortcuts:
            contexts[f"{block}.{child}"] = (
                f"zeroing this removes the projection shortcut of {block}; its residual branch "
                "still runs"
            )
    return contexts


def _outermost(named: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    kept: list[tuple[str, nn.Module]] = []
    for name, module in named:
        if not any(name.startswith(outer + ".") for outer, _ in kept):
            kept.append((name, module))
    return kept


def generic_points(
    model: nn.Module, kind: str = "auto", *, granularity: str | None = None
) -> list[Point]:
    """The generic walk, for architectures that no adapter knows.

    ``"conv"``/``"linear"`` give leaf layers, ``"auto"`` both, and ``"block"`` the modules with
    a ``downsample`` or ``shortcut`` attribute (the usual mark of a residual block). Where a
    residual branch ends, or which modules are attention and MLP sublayers, cannot be read off
    the module tree, so those kinds need an adapter.

    Args:
        model: The model.
        kind: One of :data:`KINDS`.
        granularity: Deprecated name of ``kind`` (kept for one release).

    Returns:
        The points in ``named_modules`` order.

    Raises:
        UnsupportedKind: For ``"branch"``, ``"attention"``, ``"mlp"``, ``"head"``, or
            ``"block"`` when no module has a shortcut attribute.

    Examples:
        >>> [p.name for p in generic_points(nn.Sequential(nn.Linear(2, 2)), "linear")]
        ['0']
    """
    kind = kind_argument(kind, granularity, "generic_points")
    blocks = _outermost(
        [
            (name, module)
            for name, module in model.named_modules()
            if name and any(hasattr(module, attr) for attr in SHORTCUT_ATTRIBUTES)
        ]
    )
    if kind in ("conv", "linear", "auto"):
        shortcuts = [
            (name, [a for a in SHORTCUT_ATTRIBUTES if isinstance(getattr(m, a, None), nn.Module)])
            for name, m in blocks
        ]
        contexts = branch_contexts(shortcuts)
        kinds = ("conv", "linear") if kind == "auto" else (kind,)
        points = [p for leaf in kinds for p in leaf_points(model, leaf, contexts)]
        order = {name: i for i, (name, _) in enumerate(model.named_modules())}
        return sorted(points, key=lambda p: order[p.name])
    if kind == "block":
        if not blocks:
            raise UnsupportedKind(
                "the generic walk found no residual blocks (modules with a "
                f"{' or '.join(map(repr, SHORTCUT_ATTRIBUTES))} attribute)"
            )
        return [
            Point(name, module, "block", f"zeroing this kills everything downstream of {name}")
            for name, module in blocks
        ]
    raise UnsupportedKind(
        f"the generic walk cannot tell {kind!r} points from the module tree; register "
        "an adapter for this model class with captum_gndi.register_adapter"
    )
