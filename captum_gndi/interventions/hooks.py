"""The hook back end: the one place where captum_gndi registers hooks on a model's layers.

Every computation in the package (G-NDI in forward or reverse mode, true ablations, activation
capture, baselines estimated over a data set) goes through :func:`intervene`: a context manager
that registers one forward hook (or forward pre-hook) per module, hands the layer's activation to
an ``edit`` callback that may replace it, counts how often each module runs, and always removes
its hooks, also when the forward pass raises. (The traced-suffix back end,
:mod:`captum_gndi.interventions.suffix`, runs only the part of the network after a layer and
edits its activation with the same edit functions, :mod:`captum_gndi.interventions.edits`.)

An *intervention point* is either a module (which must run exactly once per forward pass) or a
:class:`LayerCall`, which names one call of a module that runs several times per forward pass
(ALBERT's shared layers, a reused activation module).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

__all__ = [
    "InterventionError",
    "Heads",
    "LayerCall",
    "LayerSpec",
    "intervene",
    "layer_label",
    "module_of",
    "check_layers_in_model",
    "count_calls",
]


class InterventionError(ValueError):
    """Raised when a layer cannot be intervened on as asked (never called, called twice, ...)."""


@dataclass(frozen=True, eq=False)
class LayerCall:
    """One call of a module that runs several times per forward pass.

    Args:
        module: The module (for example ALBERT's shared transformer layer).
        call_index: Which call to intervene on, counting from 0 in execution order.
        name: Optional readable name used in tables and error messages.

    Examples:
        >>> shared = albert.encoder.albert_layer_groups[0].albert_layers[0]
        >>> LayerGNDI(albert_embedding, LayerCall(shared, 3)).attribute(input_ids)
    """

    module: nn.Module
    call_index: int
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise TypeError(f"LayerCall needs an nn.Module, got {type(self.module).__name__}.")
        if self.call_index < 0:
            raise ValueError(f"LayerCall.call_index must be >= 0, got {self.call_index}.")


@dataclass(frozen=True, eq=False)
class Heads:
    """The attention heads of one attention layer, as an intervention point.

    The point is the *input* of the layer's output projection (``o_proj``, ``c_proj``,
    ``out_lin``, ``attention.output.dense``, ...), where the heads' outputs are still separate:
    the concatenation ``(N, T, H * d_head)`` is handed to G-NDI reshaped as
    ``(N, T, H, d_head)``, so ``granularity="channel", channel_dim=2`` scores every head
    ``(N, H)`` and ``channel_dim=(1, 2)`` every position x head ``(N, T, H)``; intervening on a
    head sets exactly that head's output to its baseline. ``captum_gndi.find_layers(model,
    "head")`` returns one per attention layer.

    Args:
        module: The output projection (a module that runs once per forward pass, or with
            ``call_index`` one of several calls).
        n_heads: The number of heads H (the input's last dimension must be ``H * d_head``).
        call_index: For a projection shared by several layers (ALBERT), which call.
        name: Optional readable name.

    Examples:
        >>> heads = Heads(gpt2.transformer.h[0].attn.c_proj, n_heads=12)
        >>> LayerGNDI(lm, heads).attribute(ids, granularity="channel", channel_dim=2)  # (N, 12)
    """

    module: nn.Module
    n_heads: int
    call_index: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.module, nn.Module):
            raise TypeError(f"Heads needs an nn.Module, got {type(self.module).__name__}.")
        if not isinstance(self.n_heads, int) or self.n_heads < 1:
            raise ValueError(f"Heads.n_heads must be a positive int, got {self.n_heads!r}.")

    def split(self, h: Tensor, label: str) -> Tensor:
        """``(..., H * d)`` -> ``(..., H, d)``, with a clear error when it does not divide."""
        if h.shape[-1] % self.n_heads:
            raise InterventionError(
                f"The input of '{label}' has last dimension {h.shape[-1]}, which does not split "
                f"into {self.n_heads} heads; check n_heads (the model config's num_heads)."
            )
        return h.unflatten(-1, (self.n_heads, h.shape[-1] // self.n_heads))


LayerSpec = Union[nn.Module, LayerCall, Heads]
"""A module that runs once per forward pass, one call of a module that runs several times, or
the attention heads at an output projection's input."""

# edit(position_in_layers, activation) -> replacement activation, or None to leave it unchanged
EditFn = Callable[[int, Tensor], Union[Tensor, None]]


def module_of(layer: LayerSpec) -> nn.Module:
    """The module behind an intervention point (a module, or the module of a LayerCall/Heads)."""
    return layer.module if isinstance(layer, (LayerCall, Heads)) else layer


def layer_label(layer: LayerSpec, model: nn.Module | None = None) -> str:
    """A readable name for an intervention point: its dotted name in ``model`` where known."""
    module = module_of(layer)
    name = layer.name if isinstance(layer, (LayerCall, Heads)) else None
    if name is not None:
        return name
    if model is not None:  # not `if model`: a compiled module's truthiness calls len()
        name = next((n for n, m in model.named_modules() if m is module), None)
    if name is None:
        name = type(module).__name__
    if isinstance(layer, Heads):
        call = "" if layer.call_index is None else f"[call {layer.call_index}]"
        return f"{name}{call}[heads]"
    return f"{name}[call {layer.call_index}]" if isinstance(layer, LayerCall) else name


def check_layers_in_model(model: Any, layers: Sequence[LayerSpec]) -> None:
    """Raise a clear error if ``model`` is a module and a layer is not one of its submodules."""
    if not isinstance(model, nn.Module):
        return  # an arbitrary forward function: a layer that never runs is caught after the call
    known = {id(m) for m in model.modules()}
    for layer in layers:
        module = module_of(layer)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"Layers must be nn.Module or LayerCall objects, got {type(layer).__name__}. "
                "Pass e.g. model.layer3, or resolve a dotted name with captum_gndi.get_layer."
            )
        if id(module) not in known:
            raise InterventionError(
                f"Layer {type(module).__name__} is not a submodule of the model "
                f"{type(model).__name__}. Pass a module taken from this model instance "
                "(model.named_modules() lists them; captum_gndi.find_layers suggests good ones)."
            )


def _first_tensor_index(values: Sequence[Any]) -> int | None:
    return next((i for i, v in enumerate(values) if isinstance(v, Tensor)), None)


def _get_activation(value: Any, where: str) -> tuple[Any, Callable[[Any], Any]]:
    """Split a layer's output (or inputs) into what to intervene on and a rebuild function.

    A tensor is intervened on as is. In a tuple or list, every floating-point tensor element of
    the same shape as the first one is intervened on *jointly*, handed to ``edit`` as a tuple
    when there are several and as the tensor itself when there is one; other elements pass
    through unchanged. (Tensors of another shape are a layer's side outputs, not its
    activation: Hugging Face attention weights ``(N, H, T, T)`` and caches, an auxiliary scalar,
    the float attention mask among a layer's inputs.) A sequence without a floating-point tensor
    hands over its first tensor (so the dtype check can say what is wrong).
    """
    if isinstance(value, Tensor):
        return value, lambda t: t
    if isinstance(value, (tuple, list)):
        indices = [
            i for i, v in enumerate(value) if isinstance(v, Tensor) and v.is_floating_point()
        ]
        if indices:
            shape = value[indices[0]].shape
            indices = [i for i in indices if value[i].shape == shape]
        if not indices:
            first = _first_tensor_index(value)
            indices = [] if first is None else [first]
        if indices:

            def rebuild(new: Any) -> Any:
                items = list(value)
                for i, t in zip(indices, new if len(indices) > 1 else (new,)):
                    items[i] = t
                return type(value)(items) if isinstance(value, tuple) else items

            selected = tuple(value[i] for i in indices)
            return (selected if len(selected) > 1 else selected[0]), rebuild
    raise InterventionError(
        f"The {where} is a {type(value).__name__}, not a tensor (or a tuple holding one), so "
        "G-NDI cannot intervene on it. Pick a submodule whose output is a tensor."
    )


@dataclass
class _Site:
    position: int
    call_index: int | None  # None: the module must run exactly once
    heads: Heads | None = None  # hand the input over split into heads


class _CallCounter:
    def __init__(
        self, labels: list[str], sites: dict[tuple[int, bool], tuple[nn.Module, list[_Site]]]
    ):
        self.labels = labels
        self.sites = sites
        self.calls = {key: 0 for key in sites}
        self.single_tensor: dict[int, bool] = {}  # position -> the raw value was one tensor

    def verify(self) -> None:
        for key, (module, sites) in self.sites.items():
            count = self.calls[key]
            for site in sites:
                label = self.labels[site.position]
                if count == 0:
                    raise InterventionError(
                        f"Layer '{label}' ({type(module).__name__}) was never called in the "
                        "forward pass, so intervening on it changes nothing. Pick a module that "
                        "the forward pass uses (captum_gndi.describe_layers lists them)."
                    )
                if site.call_index is None and count > 1:
                    raise InterventionError(
                        f"Layer '{label}' ({type(module).__name__}) was called {count} times in "
                        "one forward pass; G-NDI needs one activation per layer. Wrap it as "
                        f"captum_gndi.LayerCall(module, call_index=k) with 0 <= k < {count} to "
                        "intervene on the k-th call, or pick a submodule that runs once."
                    )
                if site.call_index is not None and site.call_index >= count:
                    raise InterventionError(
                        f"Layer '{label}' asks for call {site.call_index}, but the module ran "
                        f"only {count} times in one forward pass (valid: 0..{count - 1})."
                    )


def _thread_filter() -> Callable[[], bool]:
    """Whether a hook call belongs to the computation that registered the hook: the same thread,
    or a worker thread of torch's ``parallel_apply`` (``DataParallel`` runs its replicas, which
    carry the hooks, in threads whose target is named ``_worker``). Hooks sit on shared modules;
    a plain ``model(x)`` in any other thread must see the model unmodified, and two scorers on
    different threads must not see each other's interventions or call counts."""
    owner = threading.get_ident()

    def on_this_thread() -> bool:
        if threading.get_ident() == owner:
            return True
        return threading.current_thread().name.endswith("(_worker)")

    return on_this_thread


@contextmanager
def intervene(
    layers: Sequence[LayerSpec],
    edit: EditFn,
    *,
    attribute_to_layer_input: bool = False,
    labels: Sequence[str] | None = None,
) -> Iterator[_CallCounter]:
    """Hook ``layers`` for the duration of one forward pass.

    For each intervention point, ``edit(position, activation)`` receives the layer's output
    tensor (its first tensor argument with ``attribute_to_layer_input=True``; the tensor
    element of a tuple output) and returns a tensor that replaces it downstream, or ``None`` to
    leave it unchanged. After a successful forward pass the context checks that every point ran
    as specified (a plain module exactly once, a :class:`LayerCall` at least
    ``call_index + 1`` times) and raises :class:`InterventionError` otherwise. Hooks are
    removed in all cases.

    Args:
        layers: Modules or :class:`LayerCall` objects, in any order; duplicates are allowed.
        edit: Callback ``(position in layers, activation) -> replacement or None``.
        attribute_to_layer_input: Intervene on the layer's input instead of its output.
        labels: Names used in error messages, one per layer.

    Yields:
        A call counter (``.calls`` maps ``(module id, on input)`` to the calls seen;
        ``.single_tensor`` maps a position in ``layers`` to whether the module's raw output, or
        its positional input, was one tensor, as Captum's layer methods need).
    """
    labels = list(labels) if labels is not None else [layer_label(layer) for layer in layers]
    sites: dict[tuple[int, bool], tuple[nn.Module, list[_Site]]] = {}
    for position, layer in enumerate(layers):
        module = module_of(layer)
        call_index = layer.call_index if isinstance(layer, (LayerCall, Heads)) else None
        heads = layer if isinstance(layer, Heads) else None
        key = (id(module), attribute_to_layer_input or heads is not None)  # (module, on input)
        sites.setdefault(key, (module, []))[1].append(_Site(position, call_index, heads))
    counter = _CallCounter(labels, sites)
    on_this_thread = _thread_filter()

    def make_hooks(key: tuple[int, bool], module_sites: list[_Site]):
        def apply(value: Any, where: str, single: bool) -> Any:
            if not on_this_thread():
                return None  # another thread runs the model: it sees it unmodified
            call = counter.calls[key]
            counter.calls[key] += 1
            for site in module_sites:
                counter.single_tensor.setdefault(site.position, single)
            active = [s for s in module_sites if s.call_index is None or s.call_index == call]
            if not active:
                return None
            tensor, rebuild = _get_activation(value, where)
            changed = False
            for site in active:
                if site.heads is None:
                    replacement = edit(site.position, tensor)
                else:
                    if not isinstance(tensor, Tensor):
                        raise InterventionError(
                            f"The {where} holds several tensors; Heads needs the output "
                            "projection's one input tensor."
                        )
                    split = site.heads.split(tensor, labels[site.position])
                    replacement = edit(site.position, split)
                    if replacement is not None:
                        replacement = replacement.flatten(-2)
                if replacement is not None:
                    tensor, changed = replacement, True
            return rebuild(tensor) if changed else None

        def output_hook(module: nn.Module, args: Any, output: Any) -> Any:
            where = f"output of layer '{labels[module_sites[0].position]}'"
            return apply(output, where, isinstance(output, Tensor))

        def input_hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            where = f"input of layer '{labels[module_sites[0].position]}'"
            if _first_tensor_index(args) is not None:
                single = len(args) == 1 and isinstance(args[0], Tensor)
                new_args = apply(args, where, single)
                return None if new_args is None else (new_args, kwargs)
            names = [k for k, v in kwargs.items() if isinstance(v, Tensor)]
            floats = [k for k in names if kwargs[k].is_floating_point()]
            names = floats or names[:1]
            if not names:
                raise InterventionError(f"The {where} holds no tensor to intervene on.")
            new_values = apply(tuple(kwargs[k] for k in names), where, False)
            if new_values is None:
                return None
            return args, {**kwargs, **dict(zip(names, new_values))}

        return output_hook, input_hook

    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for key, (module, module_sites) in sites.items():
            output_hook, input_hook = make_hooks(key, module_sites)
            if key[1]:
                handles.append(module.register_forward_pre_hook(input_hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(output_hook))
        yield counter
        counter.verify()
    finally:
        for handle in handles:
            handle.remove()


def count_calls(modules: Sequence[nn.Module], run: Callable[[], Any]) -> list[int]:
    """How often each module runs during ``run()``, with no check (hooks always removed).

    :func:`intervene` insists that a plain module runs once per forward pass; this counts calls
    of modules that may run any number of times (to find shared layers before choosing
    :class:`LayerCall` points).

    Args:
        modules: The modules to count.
        run: Runs the model once (e.g. ``lambda: model(x)``).

    Returns:
        One count per module, in the order given.

    Examples:
        >>> count_calls([model.fc], lambda: model(x))
        [1]
    """
    counts = [0] * len(modules)
    on_this_thread = _thread_filter()

    def counter(position: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if on_this_thread():
                counts[position] += 1

        return hook

    handles = [m.register_forward_hook(counter(i)) for i, m in enumerate(modules)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return counts
