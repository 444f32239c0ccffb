"""Pure computations of J_{>L}(x) (h_L - b_L) for one batch.

Everything here works on a :class:`Batch`: a zero-argument ``run`` that evaluates the model on a
fixed batch and returns its (target-selected) output flattened to ``(N, K)``, plus the
intervention points and their baselines. The results are *effects* with the output dimension
first: ``(K, N)`` per layer, ``(K, N, C)`` per channel, ``(K, N, *activation_shape)`` per unit.
Scores are p-norms of effects over ``K`` (:func:`effect_norms`).

Two engines compute the same numbers:

- forward mode (:func:`forward_effects`): a hook turns h into a dual tensor with tangent
  ``h - b``; one forward pass per layer (per channel for channel granularity, per integration
  point for path-integrated G-NDI);
- reverse mode (:func:`reverse_effects`): one forward pass that adds a zero leaf ``eps_L`` to
  every layer's activation, and ``K`` vector-Jacobian products (batched with
  ``is_grads_batched``) give dy_k/dh_L for all layers at once; ``J(h - b) = <dy/dh, h - b>``.

:func:`true_effects` computes the exact intervention effect ``f(x) - f(x; do(h_L := b_L))``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .baselines import LayerBaseline, resolve_layer_baseline
from .interventions import LayerSpec, intervene

__all__ = [
    "Batch",
    "Granularity",
    "Mode",
    "capture_activations",
    "choose_mode",
    "compute_effects",
    "effect_norms",
    "forward_effects",
    "reduce_granularity",
    "reverse_effects",
    "true_effects",
]

logger = logging.getLogger(__name__)

Granularity = Literal["layer", "channel", "unit"]
Mode = Literal["auto", "forward", "reverse"]
GRANULARITIES = ("layer", "channel", "unit")
MODES = ("auto", "forward", "reverse")


@dataclass
class Batch:
    """One batch to score.

    Attributes:
        run: Runs the model on the batch and returns the selected output as ``(N, K)``.
        layers: Intervention points.
        labels: One readable name per layer (used in errors).
        baselines: One layer-baseline specification per layer (see :mod:`captum_gndi.baselines`).
        on_input: Intervene on each layer's input instead of its output.
        channel_dim: Dimension of the activation that holds channels (1 for ``(N, C, H, W)``,
            -1 for ``(N, T, D)`` transformer states).
    """

    run: Callable[[], Tensor]
    layers: Sequence[LayerSpec]
    labels: Sequence[str]
    baselines: Sequence[LayerBaseline]
    on_input: bool = False
    channel_dim: int = 1

    def check_activation(self, position: int, h: Tensor) -> None:
        label = self.labels[position]
        if not h.is_floating_point():
            raise TypeError(
                f"Layer '{label}' produces a {h.dtype} tensor, which cannot be differentiated. "
                "Pick a layer with a floating-point activation (e.g. an embedding's output "
                "rather than token ids)."
            )
        if not torch.isfinite(h).all():
            raise ValueError(
                f"Layer '{label}' produced NaN or inf activations; G-NDI is undefined there. "
                "Check the inputs and the model's numerics (e.g. float16 overflow)."
            )

    def delta(self, position: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(b, h - b)`` for the activation ``h`` of layer ``position``."""
        self.check_activation(position, h)
        b = resolve_layer_baseline(self.baselines[position], h, self.labels[position])
        return b, h.detach() - b


def _hooks(batch: Batch, layers: Sequence[LayerSpec], positions: Sequence[int], edit):
    return intervene(
        layers,
        edit,
        on_input=batch.on_input,
        labels=[batch.labels[p] for p in positions],
    )


def capture_activations(batch: Batch) -> tuple[Tensor, list[Tensor]]:
    """Run the batch once (no gradients) and return its output and detached activations."""
    activations: list[Tensor | None] = [None] * len(batch.layers)

    def edit(position: int, h: Tensor) -> None:
        batch.check_activation(position, h)
        activations[position] = h.detach().clone()

    with torch.no_grad(), _hooks(batch, batch.layers, range(len(batch.layers)), edit):
        output = batch.run()
    return output.detach(), activations  # type: ignore[return-value]


def true_effects(batch: Batch) -> list[Tensor]:
    """Exact intervention effects ``f(x) - f(x; do(h_L := b_L))``, each of shape ``(K, N)``."""
    with torch.no_grad():
        reference = batch.run()
        effects = []
        for position, layer in enumerate(batch.layers):

            def edit(_: int, h: Tensor, position: int = position) -> Tensor:
                b, _delta = batch.delta(position, h)
                return b.clone()

            with _hooks(batch, [layer], [position], edit):
                intervened = batch.run()
            effects.append((reference - intervened).T)
    return effects


def reduce_granularity(contribution: Tensor, granularity: Granularity, channel_dim: int) -> Tensor:
    """Sum a per-unit contribution ``(K, N, *shape)`` to the requested granularity."""
    if granularity == "unit":
        return contribution
    if granularity == "layer":
        return contribution.flatten(2).sum(-1)
    dim = channel_dim if channel_dim < 0 else channel_dim + 1  # shift past the K dimension
    if contribution.dim() < 3 or not -contribution.dim() + 2 <= dim < contribution.dim():
        raise ValueError(
            f"channel_dim={channel_dim} does not exist in an activation of shape "
            f"{tuple(contribution.shape[1:])}; use 1 for (N, C, ...) or -1 for (N, T, D)."
        )
    moved = contribution.movedim(dim, -1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1, moved.shape[-1]).sum(2)


def forward_effects(
    batch: Batch,
    granularity: Granularity = "layer",
    alphas: Sequence[float] = (1.0,),
    weights: Sequence[float] = (1.0,),
) -> list[Tensor]:
    """G-NDI effects by forward-mode AD: ``sum_i w_i J(b + a_i (h - b)) (h - b)`` per layer.

    Returns:
        One tensor per layer, ``(K, N)`` for layer and ``(K, N, C)`` for channel granularity.

    Raises:
        NotImplementedError: When an operator after the layer has no forward-AD formula
            (for example CPU scaled-dot-product attention); use reverse mode then.
    """
    if granularity == "unit":
        raise ValueError(
            "granularity='unit' needs one forward pass per unit; use mode='reverse' or 'auto'."
        )
    effects = []
    for position, layer in enumerate(batch.layers):

        def integrated(channel: int | None, position: int = position, layer=layer):
            parts = [_one_jvp(batch, position, layer, a, channel) for a in alphas]
            tangent = sum(w * t for w, (t, _) in zip(weights, parts))
            return tangent, parts[0][1]

        if granularity == "layer":
            effects.append(integrated(None)[0].T)
            continue
        first, n_channels = integrated(0)
        columns = [first] + [integrated(c)[0] for c in range(1, n_channels)]
        effects.append(torch.stack(columns, dim=-1).transpose(0, 1))  # (K, N, C)
    return effects


def _one_jvp(
    batch: Batch, position: int, layer: LayerSpec, alpha: float, channel: int | None
) -> tuple[Tensor, int]:
    """One forward pass with a dual activation.

    Returns:
        The output tangent ``(N, K)`` and the number of channels of the activation.
    """
    n_channels = [0]

    def edit(_: int, h: Tensor) -> Tensor:
        b, delta = batch.delta(position, h)
        n_channels[0] = delta.shape[batch.channel_dim]
        tangent = delta
        if channel is not None:
            mask = torch.zeros_like(delta)
            mask.select(batch.channel_dim, channel).fill_(1)
            tangent = delta * mask
        primal = h.detach() if alpha == 1.0 else b + alpha * delta
        return fwAD.make_dual(primal, tangent)

    with torch.no_grad(), fwAD.dual_level(), _hooks(batch, [layer], [position], edit):
        output = batch.run()
        tangent = fwAD.unpack_dual(output).tangent
    if tangent is None:
        tangent = torch.zeros_like(output)
    return tangent.detach(), n_channels[0]


def _vjp_all(output: Tensor, leaves: list[Tensor], chunk: int) -> list[Tensor]:
    """``dy[:, k] / d leaf`` for every output column k: a list of ``(K, N, *shape)`` tensors."""
    n, k_total = output.shape
    per_leaf: list[list[Tensor]] = [[] for _ in leaves]
    eye = torch.eye(k_total, device=output.device, dtype=output.dtype)
    for start in range(0, k_total, chunk):
        rows = eye[start : start + chunk]  # (k, K)
        grad_outputs = rows[:, None, :].expand(rows.shape[0], n, k_total)
        last = start + chunk >= k_total
        try:
            grads = torch.autograd.grad(
                output,
                leaves,
                grad_outputs=grad_outputs,
                retain_graph=not last,
                is_grads_batched=True,
                allow_unused=True,
            )
        except RuntimeError as error:  # an operator without a batching rule: loop instead
            logger.debug("batched VJP failed (%s); looping over output columns", error)
            columns = [
                torch.autograd.grad(
                    output,
                    leaves,
                    grad_outputs=grad_outputs[j],
                    retain_graph=True,
                    allow_unused=True,
                )
                for j in range(rows.shape[0])
            ]
            grads = tuple(
                torch.stack([c[i] if c[i] is not None else torch.zeros_like(leaf) for c in columns])
                for i, leaf in enumerate(leaves)
            )
        for i, (grad, leaf) in enumerate(zip(grads, leaves)):
            if grad is None:
                grad = torch.zeros(
                    (rows.shape[0], *leaf.shape), device=leaf.device, dtype=leaf.dtype
                )
            per_leaf[i].append(grad.detach())
    return [torch.cat(parts, dim=0) for parts in per_leaf]


def reverse_effects(
    batch: Batch,
    granularity: Granularity = "layer",
    alphas: Sequence[float] = (1.0,),
    weights: Sequence[float] = (1.0,),
    vjp_chunk: int = 64,
) -> list[Tensor]:
    """G-NDI effects by reverse-mode AD (vector-Jacobian products).

    With ``alphas == (1.0,)`` (first-order G-NDI) all layers share one forward pass and ``K``
    batched VJPs. Path-integrated G-NDI needs one forward pass per layer and integration point,
    because the intervention on one layer changes every activation after it.

    Returns:
        One tensor per layer: ``(K, N)``, ``(K, N, C)`` or ``(K, N, *shape)`` by granularity.
    """
    if tuple(alphas) == (1.0,):
        return _first_order_reverse(batch, granularity, vjp_chunk, weights[0])
    effects = []
    for position, layer in enumerate(batch.layers):
        total: Tensor | None = None
        for alpha, weight in zip(alphas, weights):
            grads, delta = _reverse_at(batch, position, layer, alpha, vjp_chunk)
            part = reduce_granularity(grads * delta, granularity, batch.channel_dim) * weight
            total = part if total is None else total + part
        effects.append(total)
    return effects


def _reverse_at(
    batch: Batch, position: int, layer: LayerSpec, alpha: float, vjp_chunk: int
) -> tuple[Tensor, Tensor]:
    """Gradients ``(K, N, *shape)`` of the output at ``h := b + alpha (h - b)``, and ``h - b``."""
    state: dict[str, Tensor] = {}

    def edit(_: int, h: Tensor) -> Tensor:
        b, state["delta"] = batch.delta(position, h)
        state["eps"] = torch.zeros_like(h, requires_grad=True)
        return b + alpha * state["delta"] + state["eps"]

    with torch.enable_grad(), _hooks(batch, [layer], [position], edit):
        output = batch.run()
    (grads,) = _vjp_all(output, [state["eps"]], vjp_chunk)
    return grads, state["delta"]


def _first_order_reverse(
    batch: Batch, granularity: Granularity, vjp_chunk: int, weight: float
) -> list[Tensor]:
    deltas: list[Tensor | None] = [None] * len(batch.layers)
    leaves: list[Tensor | None] = [None] * len(batch.layers)

    def edit(position: int, h: Tensor) -> Tensor:
        _b, deltas[position] = batch.delta(position, h)
        leaves[position] = torch.zeros_like(h, requires_grad=True)
        return h + leaves[position]

    with torch.enable_grad(), _hooks(batch, batch.layers, range(len(batch.layers)), edit):
        output = batch.run()
    grads = _vjp_all(output, leaves, vjp_chunk)  # type: ignore[arg-type]
    return [
        reduce_granularity(g * d, granularity, batch.channel_dim) * weight
        for g, d in zip(grads, deltas)  # type: ignore[operator]
    ]


def choose_mode(mode: Mode, n_layers: int, n_outputs: int, granularity: Granularity) -> str:
    """Pick the engine: reverse when it needs fewer passes (K VJPs vs one JVP per layer)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode != "auto":
        return mode
    if granularity != "layer":
        chosen = "reverse"
    else:
        chosen = "reverse" if n_outputs <= n_layers else "forward"
    logger.debug(
        "mode='auto' chose %s (%d layers, %d output dims, granularity=%s)",
        chosen,
        n_layers,
        n_outputs,
        granularity,
    )
    return chosen


def _is_missing_forward_ad(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, NotImplementedError) or "forward ad" in text or "forward-mode" in text


def compute_effects(
    batch: Batch,
    mode: Mode = "auto",
    granularity: Granularity = "layer",
    alphas: Sequence[float] = (1.0,),
    weights: Sequence[float] = (1.0,),
    n_outputs: int | None = None,
) -> tuple[list[Tensor], str]:
    """Dispatch to the forward or reverse engine.

    Args:
        batch: The batch and its intervention points.
        mode: ``"forward"``, ``"reverse"`` or ``"auto"`` (the cheaper of the two; forward AD
            falls back to reverse with a warning when an operator has no forward-AD formula).
        granularity: ``"layer"``, ``"channel"`` or ``"unit"``.
        alphas: Integration points on [0, 1] (``(1.0,)``: first-order G-NDI).
        weights: Integration weights, one per point.
        n_outputs: The number of output dimensions K, if known (``auto`` runs a forward pass
            to find it otherwise).

    Returns:
        The effects (one tensor per layer, K first) and the mode that was used.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}.")
    if mode == "auto" and n_outputs is None:
        n_outputs = capture_activations(batch)[0].shape[1]
    chosen = choose_mode(mode, len(batch.layers), n_outputs or 0, granularity)
    if chosen == "reverse":
        return reverse_effects(batch, granularity, alphas, weights), "reverse"
    try:
        return forward_effects(batch, granularity, alphas, weights), "forward"
    except (NotImplementedError, RuntimeError) as error:
        if mode == "forward" or not _is_missing_forward_ad(error):
            raise
        warnings.warn(
            f"Forward-mode AD is not supported by an operator in this model ({error}); "
            "falling back to reverse mode. Load Hugging Face models with "
            "attn_implementation='eager' to keep forward mode.",
            stacklevel=3,
        )
        return reverse_effects(batch, granularity, alphas, weights), "reverse"


def effect_norms(effect: Tensor, p: float) -> Tensor:
    """The p-norm over the output dimension K (dim 0): the G-NDI score."""
    return torch.linalg.vector_norm(effect, ord=p, dim=0)
