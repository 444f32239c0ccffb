"""Resolving layer-space baselines b_L.

A layer baseline says what the layer's activation is set to by the intervention do(h_L := b_L):

- ``None`` or ``"zero"``: zeros,
- a number: a constant,
- a tensor broadcastable to the activation (for example a mean activation of shape ``h.shape[1:]``),
- a callable ``h -> b`` (for example ``lambda h: h.mean(0, keepdim=True)``).

Data-set baselines (``"mean"`` over a data loader) are estimated by
:func:`captum_gndi.scoring.mean_activations` and passed on as tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Union

import torch
from torch import Tensor

__all__ = ["LayerBaseline", "resolve_layer_baseline", "per_layer"]

LayerBaseline = Union[None, str, float, int, Tensor, Callable[[Tensor], Tensor]]


def resolve_layer_baseline(spec: LayerBaseline, activation: Tensor, label: str) -> Tensor:
    """Turn a baseline specification into a tensor of the activation's shape.

    Args:
        spec: The baseline specification (see the module docstring).
        activation: The layer activation h, shape ``(N, ...)``.
        label: The layer's name, used in error messages.

    Returns:
        A tensor b with ``b.shape == activation.shape`` (an expanded view where possible),
        on the activation's device and dtype.

    Raises:
        ValueError: For an unknown string, a shape that does not broadcast, or NaN/inf values.
    """
    h = activation.detach()
    if spec is None or (isinstance(spec, str) and spec == "zero"):
        return torch.zeros_like(h)
    if isinstance(spec, str):
        raise ValueError(
            f"Unknown layer baseline {spec!r} for layer '{label}'. Use None/'zero', a number, a "
            "tensor, or a callable h -> b. A data-set mean needs data: use "
            "compute_gndi(..., baseline='mean') or pass the mean activation as a tensor."
        )
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if not math.isfinite(spec):
            raise ValueError(f"Layer baseline for '{label}' is {spec}; give a finite number.")
        return torch.full_like(h, float(spec))
    if callable(spec) and not isinstance(spec, Tensor):
        value = spec(h)
        if not isinstance(value, Tensor):
            raise TypeError(
                f"The baseline callable for layer '{label}' returned {type(value).__name__}; "
                "it must return a tensor broadcastable to the activation."
            )
        return _broadcast(value, h, label)
    if isinstance(spec, Tensor):
        return _broadcast(spec, h, label)
    raise TypeError(
        f"Layer baseline for '{label}' has unsupported type {type(spec).__name__}; use None, "
        "'zero', a number, a tensor or a callable."
    )


def _broadcast(value: Tensor, h: Tensor, label: str) -> Tensor:
    value = value.detach().to(device=h.device, dtype=h.dtype)
    try:
        expanded = value.expand_as(h)
    except RuntimeError:
        expanded = None
    if expanded is None and value.dim() == h.dim() - 1:
        # a per-example activation shape h.shape[1:] given without the batch dimension
        expanded = value.unsqueeze(0).expand_as(h) if value.shape == h.shape[1:] else None
    if expanded is None:
        raise ValueError(
            f"Layer baseline of shape {tuple(value.shape)} does not broadcast to the activation "
            f"of layer '{label}' with shape {tuple(h.shape)}. Give a tensor of shape "
            f"{tuple(h.shape[1:])} (one activation) or {tuple(h.shape)} (one per example)."
        )
    if not torch.isfinite(expanded).all():
        raise ValueError(f"Layer baseline for '{label}' contains NaN or inf values.")
    return expanded


def per_layer(spec: LayerBaseline | Sequence[LayerBaseline], n_layers: int) -> list[LayerBaseline]:
    """Broadcast one baseline specification to all layers, or check a per-layer list.

    A list gives one specification per layer. A tuple is per layer too when its length equals
    the number of layers (several layers); otherwise (one layer) it is one specification per
    tensor of a multi-tensor layer, used for every layer.
    """
    if isinstance(spec, list) or (isinstance(spec, tuple) and n_layers > 1):
        if len(spec) != n_layers:
            raise ValueError(
                f"Got {len(spec)} layer baselines for {n_layers} layers; give one per layer "
                "or a single specification for all."
            )
        return list(spec)
    return [spec] * n_layers
