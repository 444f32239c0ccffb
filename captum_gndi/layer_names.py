"""Dotted layer names -> intervention points: :func:`get_layer` and its error type.

A name is a path of ``model.named_modules()`` (list indices written either way), optionally
with the ``"[call k]"`` suffix that names one call of a shared module
(:class:`~captum_gndi.LayerCall`). Names that are no module path, such as the ``".heads"``
points of ``find_layers(model, "head")``, are resolved by the finders that
:func:`register_point_names` adds: :mod:`captum_gndi.adapters` registers its head finder when it
is imported, so this core module imports nothing from the adapters (which build on it).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

from torch import nn

from .interventions import LayerCall, LayerSpec

__all__ = [
    "LayerNotFoundError",
    "PointFinder",
    "get_layer",
    "point_layout",
    "register_point_layout",
    "register_point_names",
]

PointFinder = Callable[[nn.Module, str, "int | None"], "LayerSpec | None"]
"""``finder(model, path, call)`` -> the point a non-module path names (``call``: the ``k`` of a
``"[call k]"`` suffix, or ``None``), or ``None`` when the name is not one of its points."""

_FINDERS: list[PointFinder] = []

_LAYOUTS: list[Callable[[nn.Module, nn.Module], LayerSpec | None]] = []


def register_point_layout(
    finder: Callable[[nn.Module, nn.Module], LayerSpec | None],
) -> Callable[[nn.Module, nn.Module], LayerSpec | None]:
    """Let :func:`point_layout` say what a module passed as a layer is in its model's layout.

    Args:
        finder: ``finder(model, module)`` returning the point (e.g. :class:`Heads`), or ``None``.

    Returns:
        ``finder`` (so this works as a decorator).
    """
    if finder not in _LAYOUTS:
        _LAYOUTS.append(finder)
    return finder


def point_layout(model: nn.Module, module: nn.Module) -> LayerSpec:
    """The intervention point a module of ``model`` is: the module itself, unless a registered
    layout says otherwise (a ``TransformerBridge``'s ``hook_z`` / ``hook_q`` / ``hook_k`` /
    ``hook_v``, which hand their heads over flattened, are :class:`Heads` points).
    """
    for finder in _LAYOUTS:
        found = finder(model, module)
        if found is not None:
            return found
    return module


_CALL_SUFFIX = re.compile(r"^(?P<name>.*)\[call (?P<k>\d+)\]$")


class LayerNotFoundError(KeyError, ValueError):
    """A dotted layer name that the model does not contain (a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


def register_point_names(finder: PointFinder) -> PointFinder:
    """Let :func:`get_layer` resolve names that are no module path (e.g. ``"h.0.attn.heads"``).

    Args:
        finder: ``finder(model, path, call)`` returning the point, or ``None``.

    Returns:
        ``finder`` (so this works as a decorator).
    """
    if finder not in _FINDERS:
        _FINDERS.append(finder)
    return finder


def get_layer(model: nn.Module, name: str) -> LayerSpec:
    """Resolve a dotted layer name to the module (or :class:`~captum_gndi.LayerCall`).

    Names are those of ``model.named_modules()``; list indices may be written either way
    (``"layer3.1.bn2"`` or ``"layer3[1].bn2"``), and a ``"[call k]"`` suffix, as in the names
    :func:`~captum_gndi.find_layers` gives for shared modules, returns ``LayerCall(module, k)``.
    A name ending in ``".heads"`` (``"transformer.h.0.attn.heads"``) returns that
    :class:`~captum_gndi.Heads` point of ``find_layers(model, "head")`` (through the finder
    :mod:`captum_gndi.adapters` registers).

    Args:
        model: The model.
        name: The dotted name.

    Returns:
        The submodule, or a ``LayerCall`` for a name ending in ``"[call k]"``.

    Raises:
        LayerNotFoundError: (a ``KeyError`` and ``ValueError``) if there is no such module;
            the message lists the closest names.

    Examples:
        >>> bn = get_layer(resnet, "layer3.1.bn2")
        >>> call = get_layer(albert, "encoder.albert_layer_groups.0.albert_layers.0[call 2]")
        >>> heads = get_layer(gpt2, "h.0.attn.heads")  # Heads(h.0.attn.c_proj, 12)
    """
    call = _CALL_SUFFIX.match(name.strip())
    path = call.group("name") if call else name.strip()
    path = re.sub(r"\[(\d+)\]", r".\1", path).strip(".")
    modules = dict(model.named_modules())
    if path in modules:
        module = modules[path]
        return LayerCall(module, int(call.group("k")), name=path) if call else module
    for finder in _FINDERS:  # names that are no module path, e.g. the adapters' ".heads"
        found = finder(model, path, int(call.group("k")) if call else None)
        if found is not None:
            return found
    what = "is a parameter, not a module" if path in dict(model.named_parameters()) else ""
    close = difflib.get_close_matches(path, [n for n in modules if n], n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise LayerNotFoundError(
        f"{type(model).__name__} "
        + (f"{name!r} {what}." if what else f"has no layer {name!r}.")
        + f"{hint} model.named_modules() lists all names; captum_gndi.describe_layers lists "
        "good intervention points."
    )
