"""The screens of :func:`captum_gndi.verify_top_k`: every unit's predicted damage before verifying.

A screen orders the units for verification and gives the stopping rule
(:mod:`captum_gndi.verify.rule`) its predicted damages ``s_u``. On patching data (a
:class:`~captum_gndi.tasks.PatchingTask`) five screens are offered, each the absolute mean over
prompt pairs of a signed estimate of the patching effect ``f(x) - f(x; do(h_u := b_u))`` (or the
larger of two such), so every one is on the metric's scale and the stopping rule's calibration
ratio (true / predicted) keeps its meaning:

- ``"first_order"`` (the default, ``"auto"``): first-order G-NDI, ``J (h - b)`` (minus
  attribution patching, AtP): one forward and one backward pass for every unit of every layer;
- ``"input"``: ``path="input"`` (EAP-IG, Hanna et al. 2024) at ``n_steps`` points: the gradient
  averaged along the input-space path from the corrupted to the clean prompt, times ``h - b``;
  ``n_steps`` forward and backward passes;
- ``"combined"``: ``max(|first order|, |input|)`` per unit. First order misses units whose effect
  cancels or saturates along the way (attention patterns), the input path misses others whose
  gradient is small in the middle of the path;
- ``"graddrop"``: AtP*'s GradDrop (Kramár et al. 2024, :mod:`captum_gndi.verify.graddrop`): the
  largest ``|mean first-order estimate|`` over ``1 + B`` backward passes, each with the gradient
  through one residual block's branches dropped (``B`` blocks; needs the adapters to find the
  branches), against cancellation;
- ``"combined_graddrop"``: ``max(|input|, graddrop)`` per unit (GradDrop's first row is first
  order).

Why ``"first_order"`` is the default (``docs/results.md``, "A real LLM: screen and verify"; the
rule: recall first, then the fewest ablations plus screen cost). On SmolLM2-135M no screen finds
the exact top k in every cell, and recall does not separate the candidates: over 30 task x k
cells (10 of heads: IOI and factual recall on two prompt versions and induction, k = 10, 20; 20
of MLP neurons: the final and subject positions of every task, sampled and full brute force)
first order, ``"combined"``, ``"graddrop"`` and ``"combined_graddrop"`` each leave out 8 true
top-k units in total (cells with recall 1.0: 23, 23, 24 and 20 of the 26 where the last was
run; GradDrop's extra cell is a neuron cell, and on IOI it misses the rank-2 head). First order
then costs least: the same ablations (17.4% of brute force on heads on average, ``"combined"``
17.2%) for a screen of 0.014-0.022 of exact patching of every head (``"combined"``
0.068-0.095, GradDrop 0.14-0.19).

Other data (zero, mean or given baselines) has one screen, ``"first_order"``: the norm of the
first-order G-NDI effect; ``path="input"`` needs input-space baselines that such data lacks.
Nor can a model without ``get_input_embeddings()`` (on itself or a submodule) be screened along
the input path, whose token ids are interpolated in the embedding space.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..baselines import LayerBaseline
from ..runs import DataTarget
from ..scoring import compute_gndi
from ..units import ChannelDim
from .graddrop import graddrop_effects

__all__ = ["INPUT_PATH_SCREENS", "PATCHING_SCREENS", "SCREENS", "check_screen", "screen_scores"]

SCREENS = ("first_order", "input", "combined", "graddrop", "combined_graddrop")
"""The screens of :func:`captum_gndi.verify_top_k` (``"auto"`` picks one)."""

PATCHING_SCREENS = SCREENS
"""The screens available on patching data; other data has ``"first_order"`` only."""

INPUT_PATH_SCREENS = ("input", "combined", "combined_graddrop")
"""The screens that integrate along the input path (``n_steps`` points, input embeddings)."""


def check_screen(screen: str, patching: bool, n_steps: int, embeddings: bool = True) -> str:
    """The screen to run: ``"auto"`` is ``"first_order"`` (the module docstring says why).

    Args:
        screen: ``"auto"`` or one of :data:`SCREENS`.
        patching: Whether the data is patching data.
        n_steps: Input-path points of the path screens.
        embeddings: Whether the model's input embeddings were found (the input path of token
            ids runs through them).

    Raises:
        ValueError: For an unknown screen, a path screen without patching data or without input
            embeddings, or ``n_steps`` below 2 for a screen that integrates.
    """
    if screen == "auto":
        screen = "first_order"
    if screen not in SCREENS:
        raise ValueError(
            f"screen must be 'auto' or one of {SCREENS} (first-order G-NDI, path='input' "
            "G-NDI, GradDrop, or the larger of first order and the input path / of the input "
            f"path and GradDrop per unit), got {screen!r}."
        )
    if screen == "graddrop" and not patching:
        raise ValueError(
            "screen='graddrop' estimates the signed patching effect of every unit with one "
            "block's gradient dropped, which needs patching data (a PatchingTask); use "
            "screen='first_order'."
        )
    if screen != "first_order" and not patching:
        raise ValueError(
            f"screen={screen!r} integrates along the input path from the corrupted to the clean "
            "prompt, which needs patching data (a PatchingTask); use screen='first_order'."
        )
    if screen in INPUT_PATH_SCREENS and not embeddings:
        raise ValueError(
            f"screen={screen!r} interpolates the token embeddings from the corrupted to the "
            "clean prompt, but the model has no get_input_embeddings() (nor has any submodule); "
            "use screen='first_order'."
        )
    if screen in INPUT_PATH_SCREENS and (
        isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 2
    ):
        raise ValueError(
            f"n_steps is the number of input-path points of screen={screen!r} and must be an "
            f"integer >= 2, got {n_steps!r}."
        )
    return screen


def screen_scores(
    model: nn.Module,
    data: Iterable[Any],
    layers: Mapping[str, Any],
    screen: str,
    *,
    n_steps: int = 4,
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    target: DataTarget = None,
    device: torch.device | None = None,
    progress: bool = False,
    max_batches: int | None = None,
    granularity: str = "channel",
    channel_dim: ChannelDim = 1,
    layer_mask: Mapping[str, Tensor] | None = None,
    direction: str = "noising",
) -> dict[str, Tensor]:
    """Every unit's predicted damage (``>= 0``) per layer, from the screen ``screen``.

    Args:
        model: The model (with patching data, the metric model).
        data: The data, as :func:`captum_gndi.compute_gndi` reads it.
        layers: Name -> layer.
        screen: One of :data:`SCREENS` (already checked by :func:`check_screen`).
        n_steps: Input-path points of ``"input"`` and ``"combined"``.
        baseline: The layer baselines of non-patching data.
        target: G-NDI's target (non-patching data).
        device: Where to run.
        progress: Show progress bars.
        max_batches: Use at most this many batches.
        granularity: ``"channel"`` or ``"layer"`` (ignored with ``layer_mask``).
        channel_dim: The channel dimension(s).
        layer_mask: Groups, one mask per layer name.
        direction: The patching direction.

    Returns:
        Name -> the absolute mean estimate of every unit of the layer (the shape
        :func:`captum_gndi.compute_gndi` gives).
    """
    common: dict[str, Any] = {
        "baseline": baseline,
        "target": target,
        "device": device,
        "progress": progress,
        "max_batches": max_batches,
        "granularity": granularity,
        "channel_dim": channel_dim,
        "layer_mask": layer_mask,
        "direction": direction,
    }
    runs: list[Mapping[str, Tensor]] = []
    if screen in ("first_order", "combined"):
        runs.append(compute_gndi(model, data, layers, **common).mean)
    if screen in INPUT_PATH_SCREENS:
        runs.append(compute_gndi(model, data, layers, n_steps=n_steps, path="input", **common).mean)
    if screen in ("graddrop", "combined_graddrop"):  # row 0 of GradDrop is first order
        del common["baseline"], common["target"]
        rows = graddrop_effects(model, data, layers, **common)
        runs.append({name: r.abs().amax(0) for name, r in rows.items()})
    return {
        name: torch.stack([run[name].detach().double().abs() for run in runs]).amax(0)
        for name in layers
    }
