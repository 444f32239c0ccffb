"""Which adapter handles a model, and :func:`find_layers`.

Adapters are tried in order: the ones registered with :func:`register_adapter` (the latest
first), then the built-in Hugging Face and torchvision adapters. A model that none of them
recognises gets the generic walk (leaf convolutions and linear layers, residual blocks marked by
a ``downsample``/``shortcut`` attribute) and a ``UserWarning`` saying so. The ``".heads"``
names of head points are taught to :func:`captum_gndi.get_layer` here
(:func:`head_point_named`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Union

from torch import nn

from ..interventions import Heads, LayerCall, LayerSpec
from ..layer_names import register_point_names
from .generic import (
    KINDS,
    Point,
    UnsupportedKind,
    check_kind,
    generic_points,
    kind_argument,
)
from .torchvision import is_torchvision_model, torchvision_points
from .transformer_lens import is_transformer_lens_model, transformer_lens_points
from .transformers import is_transformers_model, transformers_points

__all__ = [
    "Adapter",
    "find_layers",
    "find_points",
    "head_point_named",
    "register_adapter",
    "unregister_adapter",
]

FindResult = Union[Mapping[str, LayerSpec], Sequence[Point], None]
FindFn = Callable[[nn.Module, str], FindResult]
Match = Union[type, tuple, str, Callable[[nn.Module], bool]]


@dataclass(frozen=True, eq=False)
class Adapter:
    """A registered adapter (the handle :func:`register_adapter` returns).

    Attributes:
        name: Shown in error messages.
        match: ``match(model) -> bool``: whether this adapter handles the model.
        find: ``find(model, kind)`` returning ``{name: layer}`` in forward order (or
            :class:`~captum_gndi.adapters.generic.Point` objects; ``None`` passes the model on
            to the next adapter).
    """

    name: str
    match: Callable[[nn.Module], bool]
    find: FindFn


class _NotRecognised(Exception):
    """A built-in adapter matched the model's library but not its architecture."""


_USER_ADAPTERS: list[Adapter] = []
_BUILTIN_ADAPTERS = (
    Adapter("TransformerLens", is_transformer_lens_model, transformer_lens_points),
    Adapter("Hugging Face transformers", is_transformers_model, transformers_points),
    Adapter("torchvision", is_torchvision_model, torchvision_points),
)


def _matcher(match: Match) -> Callable[[nn.Module], bool]:
    if isinstance(match, type) or (
        isinstance(match, tuple) and all(isinstance(t, type) for t in match)
    ):
        return lambda model: isinstance(model, match)
    if isinstance(match, str):

        def by_name(model: nn.Module) -> bool:
            cls = type(model)
            return match in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}")

        return by_name
    if callable(match):
        return match
    raise TypeError(
        "match must be a class (or tuple of classes), a class name, or a callable "
        f"model -> bool; got {type(match).__name__}."
    )


def register_adapter(match: Match, find_fn: FindFn, *, name: str | None = None) -> Adapter:
    """Teach :func:`find_layers` (and :func:`describe_layers`) the layers of your own model.

    Args:
        match: Which models the adapter handles: a class or tuple of classes (``isinstance``),
            a class name (``"MyNet"`` or ``"my_package.models.MyNet"``), or a callable
            ``model -> bool``.
        find_fn: ``find_fn(model, kind) -> {name: module or LayerCall}`` in forward order,
            for ``kind`` among ``captum_gndi.adapters.KINDS`` (``"auto"`` included), passed
            positionally. Return an empty dict, or raise ``ValueError``, for a kind your model
            does not have.
        name: A name for error messages (default: derived from ``match``).

    Returns:
        The adapter handle; pass it to :func:`unregister_adapter` to remove it. Adapters
        registered later are tried first, before the built-in ones.

    Examples:
        >>> def my_points(model, kind):
        ...     if kind in ("auto", "block"):
        ...         return {f"stages.{i}": s for i, s in enumerate(model.stages)}
        ...     return {}
        >>> handle = register_adapter(MyNet, my_points)
        >>> find_layers(MyNet())  # {'stages.0': ..., 'stages.1': ...}
        >>> unregister_adapter(handle)
    """
    if not callable(find_fn):
        raise TypeError(f"find_fn must be callable, got {type(find_fn).__name__}.")
    label = name or getattr(match, "__name__", None) or str(match)
    adapter = Adapter(label, _matcher(match), find_fn)
    _USER_ADAPTERS.append(adapter)
    return adapter


def unregister_adapter(adapter: Adapter) -> None:
    """Remove an adapter added with :func:`register_adapter`.

    Args:
        adapter: The handle :func:`register_adapter` returned.

    Raises:
        ValueError: If the adapter is not registered.

    Examples:
        >>> unregister_adapter(register_adapter(MyNet, my_points))
    """
    if adapter not in _USER_ADAPTERS:
        raise ValueError(f"Adapter {adapter.name!r} is not registered.")
    _USER_ADAPTERS.remove(adapter)


def _as_points(result: Mapping[str, LayerSpec] | Sequence[Point]) -> list[Point]:
    if isinstance(result, Mapping):
        return [
            Point(name, layer, "custom", f"zeroing this sets the output of {name} to zero")
            for name, layer in result.items()
        ]
    return list(result)


def _points_from(adapter: Adapter | None, model: nn.Module, kind: str) -> list[Point]:
    """The points one adapter (``None``: the generic walk) gives; raises if there are none."""
    if adapter is None:
        return generic_points(model, kind)
    try:
        result = adapter.find(model, kind)
    except UnsupportedKind:
        raise
    except ValueError as error:  # a user adapter's own refusal
        raise UnsupportedKind(str(error)) from error
    if result is None:
        raise _NotRecognised(adapter.name)
    points = _as_points(result)
    for point in points:
        if not isinstance(point.layer, (nn.Module, LayerCall, Heads)):
            raise TypeError(
                f"The {adapter.name} adapter returned a {type(point.layer).__name__} for "
                f"{point.name!r}; adapters must return modules, LayerCall or Heads objects."
            )
    if not points:
        raise UnsupportedKind(f"the {adapter.name} adapter found no {kind!r} points")
    return points


def _valid_kinds(adapter: Adapter | None, model: nn.Module) -> list[str]:
    valid = []
    for kind in KINDS:
        try:
            _points_from(adapter, model, kind)
        except (ValueError, _NotRecognised):
            continue
        valid.append(kind)
    return valid


def find_points(
    model: nn.Module, kind: str = "auto", *, granularity: str | None = None
) -> list[Point]:
    """Like :func:`find_layers`, but returns :class:`Point` objects with their meaning.

    Args:
        model: The model.
        kind: One of ``captum_gndi.adapters.KINDS``.
        granularity: Deprecated name of ``kind`` (kept for one release; warns).

    Returns:
        The intervention points, in forward order.

    Raises:
        ValueError: For an invalid kind, or one the model's family does not have (the message
            says why and lists the kinds that work for this model).

    Examples:
        >>> [p.meaning for p in find_points(resnet18, "branch")][0]
        'zeroing this skips block layer1.0 (its output becomes its input)'
    """
    kind = check_kind(kind_argument(kind, granularity, "find_points"))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
    for adapter in (*reversed(_USER_ADAPTERS), *_BUILTIN_ADAPTERS):
        if not adapter.match(model):
            continue
        try:
            return _points_from(adapter, model, kind)
        except _NotRecognised:
            continue  # a built-in adapter that does not know this architecture
        except UnsupportedKind as error:
            raise _explain(error, adapter, model, kind) from None
    warnings.warn(
        f"captum_gndi: no adapter knows {type(model).__name__}; using the generic walk (leaf "
        "convolutions and linear layers; blocks = modules with a 'downsample' or 'shortcut' "
        "attribute). Check the points with captum_gndi.describe_layers, or register an adapter "
        "with captum_gndi.register_adapter.",
        UserWarning,
        stacklevel=3,
    )
    try:
        return generic_points(model, kind)
    except UnsupportedKind as error:
        raise _explain(error, None, model, kind) from None


def _explain(
    error: UnsupportedKind, adapter: Adapter | None, model: nn.Module, kind: str
) -> UnsupportedKind:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        valid = _valid_kinds(adapter, model)
    return UnsupportedKind(
        f"kind={kind!r} does not apply to {type(model).__name__}: {error}. "
        f"Valid for this model: {', '.join(map(repr, valid)) or 'none'}."
    )


def find_layers(
    model: nn.Module, kind: str = "auto", *, granularity: str | None = None
) -> dict[str, LayerSpec]:
    """Find the intervention points of a model, by name, in forward order.

    Kinds of layer:

    - ``"block"``: whole residual blocks / transformer layers (zeroing one cuts the stream);
    - ``"branch"``: residual branch outputs before the addition (zeroing one skips its block;
      for transformers, the attention and MLP sublayers);
    - ``"attention"``, ``"mlp"``: transformer sublayer outputs before the residual addition;
    - ``"head"``: one :class:`~captum_gndi.Heads` point per attention layer (the input of its
      output projection seen as ``(N, T, H, d_head)``; ``granularity="channel"`` with
      ``channel_dim=2`` scores each head, ``(1, 2)`` each position x head). torchvision's
      attention needs ``with captum_gndi.adapters.expose_heads(model):``;
    - ``"conv"``, ``"linear"``: every leaf convolution / linear layer;
    - ``"auto"``: branches for residual CNNs, attention + MLP for transformers, dense layers
      for DenseNet, convolutions and linear layers otherwise.

    ``docs/adapters.md`` has the table of points per model family.

    Args:
        model: A torchvision or Hugging Face model (or a wrapper holding one), or any model
            with an adapter registered through :func:`register_adapter`. Others get the
            generic walk and a ``UserWarning``.
        kind: One of the kinds above (``captum_gndi.adapters.KINDS``).
        granularity: Deprecated name of ``kind`` (kept for one release; warns). The engine's
            ``granularity`` (layer/channel/unit) is an argument of ``LayerGNDI.attribute``.

    Returns:
        ``{name: layer}``: names relative to ``model`` (``"[call k]"`` marks one call of a
        shared module), layers ready for :class:`~captum_gndi.LayerGNDI` (modules,
        :class:`~captum_gndi.LayerCall` for shared modules such as ALBERT's layers, or
        :class:`~captum_gndi.Heads` for ``"head"``).

    Raises:
        ValueError: For an invalid kind (the message lists the valid ones) or one the model's
            family does not have.

    Examples:
        >>> layers = find_layers(torchvision.models.resnet18(), "branch")
        >>> list(layers)[:2]
        ['layer1.0.bn2', 'layer1.1.bn2']
        >>> scores = LayerGNDI(model, list(layers.values())).attribute(images, target=labels)
    """
    kind = kind_argument(kind, granularity, "find_layers")
    return {point.name: point.layer for point in find_points(model, kind)}


@register_point_names
def head_point_named(model: nn.Module, path: str, call: int | None) -> LayerSpec | None:
    """The :class:`~captum_gndi.Heads` point of ``find_layers(model, "head")`` named ``path``.

    Registered with :func:`captum_gndi.layer_names.register_point_names`, so that
    :func:`~captum_gndi.get_layer` resolves ``".heads"`` names (``call``: the ``k`` of a
    ``"[call k]"`` suffix).

    Args:
        model: The model.
        path: The dotted name without its ``"[call k]"`` suffix.
        call: The ``k`` of that suffix, or ``None``.

    Returns:
        The point, or ``None`` when ``path`` names none.

    Examples:
        >>> head_point_named(gpt2, "h.0.attn.heads", None)  # Heads(h.0.attn.c_proj, 12)
    """
    if not path.endswith(".heads"):
        return None
    name = path + (f"[call {call}]" if call is not None else "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return find_layers(model, "head").get(name)
    except ValueError:
        return None
