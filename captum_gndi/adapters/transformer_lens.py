"""Intervention points of TransformerLens models, under TransformerLens's own hook names.

TransformerLens puts a ``HookPoint`` (an identity ``nn.Module`` that runs once per forward
pass) at every activation of interest, so its hook points are ready-made G-NDI layers. This
adapter knows the two model APIs:

- ``HookedTransformer`` (TransformerLens 2.x and 3.x; removed in 4.x), and
- ``TransformerBridge`` (TransformerLens 3.x and 4.x; wraps a Hugging Face model),

and their subclasses (``HookedSAETransformer``, ...), also inside a wrapper module. The points
are the same for both:

==============  =====================================  ========================================
kind            hook point (block ``i``)               what the point is
==============  =====================================  ========================================
``"block"``     ``blocks.i.hook_resid_post``           the residual stream after block ``i``
``"attention"`` ``blocks.i.hook_attn_out``             attention output before the residual add
``"mlp"``       ``blocks.i.hook_mlp_out``              MLP output before the residual add
``"head"``      ``blocks.i.attn.hook_z``               per-head outputs ``(N, T, H, d_head)``
``"auto"``,     attention and MLP points, in forward
``"branch"``    order
==============  =====================================  ========================================

``hook_z`` is each head's output *before* the output projection ``W_O``: setting head ``h`` to
its baseline removes that head's contribution to the residual stream (the shared bias ``b_O``
stays). A ``HookedTransformer`` computes it as ``(N, T, H, d_head)``, so the point is the hook
point itself. A ``TransformerBridge`` passes it flattened, ``(N, T, H * d_head)`` (its
``hook_z`` is an alias of the output projection's ``o.hook_in``; TransformerLens reshapes it
only for hooks added with its own ``add_hook``), so the point is
``Heads(hook_point, n_heads)``, which hands G-NDI the same ``(N, T, H, d_head)`` view. Either
way ``granularity="channel", channel_dim=2`` scores each head ``(N, H)`` and
``channel_dim=(1, 2)`` each position x head ``(N, T, H)``.

Every hook name of the model resolves through :func:`captum_gndi.get_layer` (and so wherever a
layer may be named by a string): ``get_layer(bridge, "blocks.0.attn.hook_z")`` returns the same
``Heads`` point as ``find_layers``, ``"blocks.3.hook_resid_pre"`` the bridge's hook point behind
that alias, and an unknown name is an error that suggests TransformerLens hook names, not the
bridge's internal module paths (:func:`hook_point_named`).

``transformer_lens`` is never imported by this module at import time: models are recognised by
the module path of their classes.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from importlib import metadata

from torch import nn

from ..interventions import Heads, LayerSpec
from ..layer_names import LayerNotFoundError, register_point_layout, register_point_names
from .generic import KILLS_DOWNSTREAM, Point, UnsupportedKind, kind_argument

__all__ = [
    "KNOWN_APIS",
    "UnsupportedTransformerLens",
    "hook_point_layout",
    "hook_point_named",
    "is_transformer_lens_model",
    "transformer_lens_api",
    "transformer_lens_points",
    "transformer_lens_version",
]

KNOWN_APIS = ("HookedTransformer", "TransformerBridge")
"""The TransformerLens model classes the adapter knows (and their subclasses)."""

_PACKAGE = "transformer_lens"
_ROOT_BASES = ("HookedRootModule", "BridgeCore")  # TransformerLens's own hooked roots
_HOOKS = {
    "block": "hook_resid_post",
    "attention": "hook_attn_out",
    "mlp": "hook_mlp_out",
    "head": "attn.hook_z",
}
_SUPPORTED = (
    "The adapter knows HookedTransformer (TransformerLens 2.x-3.x) and TransformerBridge "
    "(TransformerLens 3.x-4.x), with the hook points blocks.<i>.hook_resid_post, "
    "blocks.<i>.hook_attn_out, blocks.<i>.hook_mlp_out and blocks.<i>.attn.hook_z. Pass hook "
    "points from model.hook_dict to LayerGNDI directly, or teach find_layers this model with "
    "captum_gndi.register_adapter."
)


class UnsupportedTransformerLens(RuntimeError):
    """A TransformerLens model or installation whose API the adapter does not know."""


def transformer_lens_version() -> str | None:
    """The installed TransformerLens version, or ``None`` when it is not installed.

    Returns:
        The distribution's version string (``"3.2.1"``), ``"unknown"`` for an importable
        package without distribution metadata, or ``None``.

    Examples:
        >>> transformer_lens_version()  # doctest: +SKIP
        '4.3.0'
    """
    try:
        return metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:
        module = sys.modules.get(_PACKAGE)
        if module is None and importlib.util.find_spec(_PACKAGE) is None:
            return None
        return str(getattr(module, "__version__", "unknown"))


def _version_text() -> str:
    return transformer_lens_version() or "not installed"


def _offers(package: object, api: str) -> bool:
    """Whether ``package`` has ``api``; TransformerLens 4.x raises ImportError for removed names."""
    try:
        getattr(package, api)
    except (AttributeError, ImportError):
        pass
    else:
        return True
    if api != "TransformerBridge":
        return False
    try:  # TransformerLens 3.x keeps it in model_bridge
        return hasattr(importlib.import_module(f"{_PACKAGE}.model_bridge"), api)
    except ImportError:
        return False


def transformer_lens_api() -> tuple[str, ...]:
    """Which of the known model APIs the installed TransformerLens offers.

    Imports ``transformer_lens``. ``HookedTransformer`` is looked up at the package top level,
    ``TransformerBridge`` there or in ``transformer_lens.model_bridge`` (TransformerLens 3.x).
    TransformerLens 4.x answers a removed name such as ``HookedTransformer`` with an
    ``ImportError``, which counts as absent.

    Returns:
        The subset of :data:`KNOWN_APIS` that is importable, in that order, e.g.
        ``("HookedTransformer", "TransformerBridge")`` for 3.x, ``("TransformerBridge",)``
        for 4.x.

    Raises:
        ImportError: If TransformerLens is not installed (the message names the extra).
        UnsupportedTransformerLens: If it offers neither API (a version the adapter does not
            know).

    Examples:
        >>> transformer_lens_api()  # doctest: +SKIP
        ('TransformerBridge',)
    """
    try:
        package = importlib.import_module(_PACKAGE)
    except ImportError as error:
        raise ImportError(
            "TransformerLens is not installed: pip install 'captum_gndi[tl]'."
        ) from error
    found = [api for api in KNOWN_APIS if _offers(package, api)]
    if not found:
        raise UnsupportedTransformerLens(
            f"TransformerLens {_version_text()} offers neither HookedTransformer nor "
            f"TransformerBridge. {_SUPPORTED}"
        )
    return tuple(found)


def _tl_class_names(module: nn.Module) -> set[str]:
    return {
        cls.__name__ for cls in type(module).__mro__ if cls.__module__.split(".")[0] == _PACKAGE
    }


def _api_of(module: nn.Module) -> str | None:
    """The known API of a TransformerLens root module, or ``None``."""
    names = _tl_class_names(module)
    return next((api for api in KNOWN_APIS if api in names), None)


def _is_root(module: nn.Module) -> bool:
    """A TransformerLens model: a known API, or a hooked root defined in TransformerLens."""
    if _api_of(module) is not None:
        return True
    defined_in_tl = type(module).__module__.split(".")[0] == _PACKAGE
    return defined_in_tl and bool(_tl_class_names(module) & set(_ROOT_BASES))


def _roots(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost TransformerLens models in ``model``, with their names."""
    roots: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") or outer == "" for outer, _ in roots):
            continue
        if _is_root(module):
            roots.append((name, module))
    return roots


def is_transformer_lens_model(model: nn.Module) -> bool:
    """Whether ``model`` is, or contains, a TransformerLens model.

    True for a ``HookedTransformer`` or ``TransformerBridge`` (or a subclass), for another
    hooked model defined in TransformerLens, and for any model whose own class is defined in
    TransformerLens (so that an API the adapter does not know gets a clear error rather than
    the generic walk). A model of your own that merely uses TransformerLens's ``HookPoint``
    or subclasses ``HookedRootModule`` is not matched.

    Args:
        model: The model.

    Returns:
        Whether the TransformerLens adapter handles it.

    Examples:
        >>> is_transformer_lens_model(HookedTransformer(cfg))  # doctest: +SKIP
        True
    """
    if type(model).__module__.split(".")[0] == _PACKAGE:
        return True
    return any(_is_root(module) for module in model.modules())


def _unknown(root: nn.Module, what: str) -> UnsupportedTransformerLens:
    return UnsupportedTransformerLens(
        f"{type(root).__name__} (TransformerLens {_version_text()}) {what}. {_SUPPORTED}"
    )


def _structure(root: nn.Module) -> tuple[Mapping[str, nn.Module], int, int]:
    """The root's hook dictionary, block count and head count; raises for unknown APIs."""
    hooks = getattr(root, "hook_dict", None)
    if not isinstance(hooks, Mapping):
        raise _unknown(root, "has no hook_dict")
    blocks = getattr(root, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise _unknown(root, "has no list of transformer blocks at .blocks")
    n_heads = getattr(getattr(root, "cfg", None), "n_heads", None)
    if not isinstance(n_heads, int) or n_heads < 1:
        raise _unknown(root, "has no head count at .cfg.n_heads")
    return hooks, len(blocks), n_heads


def _meaning(kind: str, block: str) -> str:
    if kind == "block":
        return f"{KILLS_DOWNSTREAM} (the residual stream after {block})"
    if kind == "head":
        return (
            f"zeroing head h removes its output z (before W_O) from {block}'s attention "
            "(the output bias b_O stays)"
        )
    what = "attention" if kind == "attention" else "MLP"
    return f"zeroing this removes the {what} sublayer of {block} (the residual stream skips it)"


def _root_points(prefix: str, root: nn.Module, kind: str) -> list[Point]:
    hooks, n_blocks, n_heads = _structure(root)
    if kind in ("conv", "linear"):
        raise UnsupportedKind(
            "TransformerLens models are intervened on at their hook points; use 'block', "
            "'attention', 'mlp' or 'head' (or pass hook points from model.hook_dict)"
        )
    if kind == "mlp" and getattr(root.cfg, "attn_only", False):
        raise UnsupportedKind("an attention-only model (cfg.attn_only) has no MLP sublayers")
    kinds = ("attention", "mlp") if kind in ("auto", "branch") else (kind,)
    if getattr(root.cfg, "attn_only", False):
        kinds = tuple(k for k in kinds if k != "mlp")
    bridge = _api_of(root) == "TransformerBridge"
    points = []
    for i in range(n_blocks):
        block = f"{prefix}blocks.{i}"
        for wanted in kinds:
            hook_name = f"blocks.{i}.{_HOOKS[wanted]}"
            hook = hooks.get(hook_name)
            if not isinstance(hook, nn.Module):
                present = sorted(n for n in hooks if n.startswith(f"blocks.{i}."))[:8]
                raise _unknown(
                    root,
                    f"has no hook point {hook_name!r} (its block {i} has: "
                    f"{', '.join(present) or 'none'})",
                )
            name = prefix + hook_name
            layer: LayerSpec = hook
            if wanted == "head" and bridge:
                layer = Heads(hook, n_heads, name=name)  # the bridge hands hook_z flattened
            points.append(Point(name, layer, wanted, _meaning(wanted, block)))
    return points


def transformer_lens_points(model: nn.Module, kind: str = "auto") -> list[Point]:
    """Intervention points of a TransformerLens model (or of a module containing one).

    Args:
        model: A ``HookedTransformer`` or ``TransformerBridge``, or a wrapper holding one
            (names are then prefixed with its attribute path, e.g. ``"model."``).
        kind: One of ``captum_gndi.adapters.KINDS``: ``"block"``, ``"attention"``, ``"mlp"``,
            ``"head"``, or ``"auto"``/``"branch"`` (attention and MLP points in forward
            order). See the module docstring for the hook points.

    Returns:
        The points in forward order, named by TransformerLens's hook names
        (``"blocks.0.attn.hook_z"``). Head points are the ``hook_z`` hook point of a
        ``HookedTransformer``, and ``Heads(hook_point, n_heads)`` for a ``TransformerBridge``.

    Raises:
        UnsupportedKind: For ``"conv"``/``"linear"``, and ``"mlp"`` on an attention-only model.
        UnsupportedTransformerLens: For a TransformerLens model whose API or hook names the
            adapter does not know (the message names the installed version).

    Examples:
        >>> from transformer_lens import HookedTransformer, HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8,
        ...                               n_ctx=16, d_vocab=30, act_fn="gelu")
        >>> [p.name for p in transformer_lens_points(HookedTransformer(cfg), "head")]
        ['blocks.0.attn.hook_z', 'blocks.1.attn.hook_z']
    """
    kind = kind_argument(kind, None, "transformer_lens_points")
    roots = _roots(model)
    if not roots:
        raise UnsupportedTransformerLens(
            f"{type(model).__name__} (TransformerLens {_version_text()}) is not a "
            f"TransformerLens model the adapter knows: pass the whole model. {_SUPPORTED}"
        )
    return [
        point
        for name, root in roots
        for point in _root_points(f"{name}." if name else "", root, kind)
    ]


_FLAT_HEADS = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v")
"""Hook points a ``TransformerBridge`` hands over flattened ``(N, T, H * d_head)`` (a
``HookedTransformer`` gives them as ``(N, T, H, d_head)``)."""


def _bridge_heads(root: nn.Module, name: str, hook: nn.Module, label: str) -> Heads | None:
    """``Heads(hook, n_heads)`` for a bridge's flattened head hook, else ``None``."""
    if not name.endswith(_FLAT_HEADS) or _api_of(root) != "TransformerBridge":
        return None
    n_heads = _structure(root)[2]
    if name.endswith(("hook_k", "hook_v")):  # grouped-query attention: fewer key/value heads
        n_heads = getattr(getattr(root, "cfg", None), "n_key_value_heads", None) or n_heads
    return Heads(hook, n_heads, name=label)


@register_point_layout
def hook_point_layout(model: nn.Module, module: nn.Module) -> LayerSpec | None:
    """A hook point passed as a module (``bridge.hook_dict["blocks.0.attn.hook_z"]``) in its
    model's layout: the flattened head hooks of a ``TransformerBridge`` become
    ``Heads(hook_point, n_heads)``, so ``channel_dim=2`` scores heads, as on a
    ``HookedTransformer`` (registered with :func:`captum_gndi.layer_names.point_layout`).

    Args:
        model: The model the module belongs to.
        module: The module given as a layer.

    Returns:
        The :class:`Heads` point, or ``None`` (the module is its own point).

    Examples:
        >>> hook_point_layout(bridge, bridge.hook_dict["blocks.0.attn.hook_z"])  # doctest: +SKIP
        Heads(module=HookPoint(), n_heads=12, call_index=None, name='blocks.0.attn.hook_z')
    """
    if not isinstance(model, nn.Module) or not is_transformer_lens_model(model):
        return None
    for prefix, root in _roots(model):
        hooks = getattr(root, "hook_dict", None)
        if not isinstance(hooks, Mapping):
            continue
        for name, hook in hooks.items():
            if hook is module and name.endswith(_FLAT_HEADS):
                return _bridge_heads(root, name, hook, f"{prefix}.{name}" if prefix else name)
    return None


@register_point_names
def hook_point_named(model: nn.Module, path: str, call: int | None) -> LayerSpec | None:
    """The hook point of a TransformerLens model named by its TransformerLens hook name.

    Registered with :func:`captum_gndi.layer_names.register_point_names`, so that
    :func:`~captum_gndi.get_layer` resolves every name of ``model.hook_dict`` (a
    ``TransformerBridge``'s aliases such as ``blocks.0.attn.hook_z`` or
    ``blocks.0.hook_resid_pre`` included) when the name is no module path. ``hook_z`` of a
    bridge is returned as ``Heads(hook_point, n_heads)``, as :func:`transformer_lens_points`
    does (the bridge hands it flattened).

    Args:
        model: A TransformerLens model, or a wrapper holding one (names then carry the
            wrapper's prefix, e.g. ``"model.blocks.0.attn.hook_z"``); any other model gives
            ``None``.
        path: The dotted name without a ``"[call k]"`` suffix.
        call: The ``k`` of a ``"[call k]"`` suffix (hook points run once: must be ``None``).

    Returns:
        The point, or ``None`` when ``model`` is not a TransformerLens model or ``path`` ends in
        ``".heads"`` (another finder's names).

    Raises:
        LayerNotFoundError: For a TransformerLens model without a hook point of that name; the
            message suggests the closest hook names.

    Examples:
        >>> hook_point_named(bridge, "blocks.0.attn.hook_z", None)  # doctest: +SKIP
        Heads(module=HookPoint(), n_heads=12, call_index=None, name='blocks.0.attn.hook_z')
    """
    if path.endswith(".heads") or not is_transformer_lens_model(model):
        return None
    names: list[str] = []
    for prefix, root in _roots(model):
        hooks = getattr(root, "hook_dict", None)
        if not isinstance(hooks, Mapping):
            continue
        start = f"{prefix}." if prefix else ""
        names.extend(start + name for name in hooks)
        if not path.startswith(start) or not isinstance(hooks.get(path[len(start) :]), nn.Module):
            continue
        if call is not None:
            raise LayerNotFoundError(
                f"{path!r} is a TransformerLens hook point, which runs once per forward pass; "
                f"drop the '[call {call}]' suffix."
            )
        hook = hooks[path[len(start) :]]
        return _bridge_heads(root, path[len(start) :], hook, path) or hook
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise LayerNotFoundError(
        f"{type(model).__name__} has no TransformerLens hook point {path!r}.{hint} "
        "model.hook_dict lists the hook names; find_layers(model, kind) gives the usual points."
    )
