"""The ground truth of group units: Captum's ``LayerFeatureAblation``, or the own intervention.

The damage of a *group* unit (a ``layer_mask`` group) is measured by an independent
implementation, Captum's own ``captum.attr.LayerFeatureAblation`` with the same ``layer_mask``
and ``layer_baselines`` equal to the ablation's baseline: the model is wrapped as a forward
function returning the per-example damage against the clean output, so that LFA's
``f(x) - f_do(x)`` is ``damage(clean) - damage(do)``, and each group's value is read at one of
its elements (per example). LFA runs once per damage metric (``G + 1`` forward passes each,
fewer when only a sample of the groups is scored: the other groups are then merged into one).
Points LFA cannot hook (a :class:`~captum_gndi.LayerCall`, a :class:`~captum_gndi.Heads` with
``call_index``, a module with a tuple output) fall back, with a warning, to the package's own
intervention (:func:`~captum_gndi.interventions.edits.set_units` through the hook back end),
which the tests check against LFA.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from captum.attr import LayerFeatureAblation
from torch import Tensor, nn

from ..baselines import LayerBaseline, resolve_layer_baseline
from ..model_calls import KeywordInputs, call_model, keyword_forward
from .damage import DamageMetric
from .edits import set_units
from .hooks import Heads, LayerCall, LayerSpec, intervene

__all__ = ["LFA", "OWN", "group_damage"]

LFA = "captum.attr.LayerFeatureAblation"
"""The ground truth of group units (recorded in :attr:`AblationResult.settings`)."""
OWN = "captum_gndi.interventions.intervene"
"""The fallback ground truth for points LFA cannot hook."""


def group_damage(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    labels: Tensor | None,
    clean: Tensor,
    spec: LayerSpec,
    label: str,
    baseline: LayerBaseline,
    mask: Tensor,
    groups: Sequence[int],
    metrics: Mapping[str, DamageMetric],
    run: Callable[[], Tensor],
) -> tuple[dict[str, Tensor], str]:
    """Per-example damage ``(n, len(groups))`` of each group's intervention, and its method.

    Args:
        model: The model.
        inputs: One batch of inputs.
        labels: Its labels, or ``None``.
        clean: The clean output ``(n, K)``.
        spec: The intervention point.
        label: Its name.
        baseline: Its layer baseline.
        mask: The batch's mask (as many dimensions as the activation).
        groups: The group ids to measure.
        metrics: Name -> damage metric.
        run: The model's run on ``inputs`` (``() -> (n, K)``).

    Returns:
        Metric -> ``(n, len(groups))`` damage, and :data:`LFA` or :data:`OWN` (how it was
        measured: Captum's ``LayerFeatureAblation`` where it can hook the point, else the own
        intervention).
    """
    h, hookable = _capture(model, inputs, spec, label)
    b = resolve_layer_baseline(baseline, h, label)
    if not hookable:
        warnings.warn(
            f"Captum's LayerFeatureAblation cannot hook '{label}' (a LayerCall, a Heads point "
            "with call_index, or a module whose output is not one tensor); its groups are "
            "ablated with the harness's own intervention instead.",
            stacklevel=4,
        )
        out: dict[str, list[Tensor]] = {m: [] for m in metrics}
        for g in groups:

            def edit(_: int, a: Tensor, g: int = g) -> Tensor:
                return set_units(a, resolve_layer_baseline(baseline, a, label), mask, [g])

            with torch.no_grad(), intervene([spec], edit, labels=[label]):
                intervened = run()
            for name, metric in metrics.items():
                out[name].append(metric(clean, intervened, labels))
        return {m: torch.stack(v, 1) for m, v in out.items()}, OWN
    # Groups that are not scored are merged into one extra group (ablated once, not read).
    n_groups = max(int(mask.max().item()), max(groups)) + 1
    if sorted(groups) != list(range(n_groups)):
        remap = torch.full((n_groups,), len(groups), dtype=torch.long, device=mask.device)
        remap[torch.as_tensor(list(groups), device=mask.device)] = torch.arange(
            len(groups), device=mask.device
        )
        lfa_mask, read = remap[mask.long()], list(range(len(groups)))
    else:
        lfa_mask, read = mask.long(), list(groups)
    module = spec.module if isinstance(spec, Heads) else spec
    lfa_mask = lfa_mask.to(h.device)
    lfa_baseline = torch.broadcast_to(b, h.shape).to(h.dtype)
    if isinstance(spec, Heads):  # LFA sees the projection's input (N, T, H * d)
        lfa_mask = torch.broadcast_to(lfa_mask, (lfa_mask.shape[0], *h.shape[1:])).flatten(-2)
        lfa_baseline = lfa_baseline.flatten(-2)
    forward = _damage_forward(model, inputs, clean, labels, metrics)
    with torch.no_grad():
        reference = forward(*inputs)  # f(x): the damage of the unperturbed model (0 up to rounding)
    ablation = LayerFeatureAblation(forward, module)
    n = clean.shape[0]
    out_damage: dict[str, Tensor] = {}
    for m, metric in enumerate(metrics):
        with torch.no_grad():
            attribution = ablation.attribute(
                tuple(inputs),
                layer_baselines=lfa_baseline,
                target=m,
                layer_mask=lfa_mask,
                attribute_to_layer_input=isinstance(spec, Heads),
            )
        flat = attribution.detach().reshape(n, -1)
        ids = torch.broadcast_to(lfa_mask, attribution.shape).reshape(n, -1)
        columns = []
        for g in read:
            hit = ids == g
            element = hit.to(torch.uint8).argmax(1, keepdim=True)
            value = flat.gather(1, element)[:, 0]
            # LFA: f(x) - f_do(x) with f = damage; a group absent from an example changes nothing
            columns.append(torch.where(hit.any(1), reference[:, m] - value, reference[:, m]))
        out_damage[metric] = torch.stack(columns, 1)
    return out_damage, LFA


def _capture(
    model: nn.Module, inputs: tuple[Tensor, ...], spec: LayerSpec, label: str
) -> tuple[Tensor, bool]:
    """The layer's activation on ``inputs``, and whether Captum's LFA can hook the point."""
    seen: dict[str, Any] = {}

    def edit(_: int, h: Tensor) -> None:
        seen.setdefault("h", h.detach())

    with torch.no_grad(), intervene([spec], edit, labels=[label]) as counter:
        call_model(model, inputs)
    h = seen["h"]
    if not isinstance(h, Tensor):
        raise ValueError(
            f"Layer '{label}' has several tensors that are intervened on jointly; a layer_mask "
            "needs a layer with one tensor. Pick the submodule that produces the tensor to split."
        )
    plain = not isinstance(spec, LayerCall) and not (
        isinstance(spec, Heads) and spec.call_index is not None
    )
    return h, plain and counter.single_tensor.get(0, False)


def _damage_forward(
    model: nn.Module,
    inputs: tuple[Tensor, ...],
    clean: Tensor,
    labels: Tensor | None,
    metrics: Mapping[str, DamageMetric],
) -> Callable[..., Tensor]:
    """``forward(*inputs) -> (n, M)``: each metric's per-example damage against ``clean``."""
    call: Callable[..., Any] = (
        keyword_forward(model, inputs.keys) if isinstance(inputs, KeywordInputs) else model
    )

    def forward(*args: Tensor) -> Tensor:
        output = call(*args).reshape(clean.shape)
        return torch.stack([metric(clean, output, labels) for metric in metrics.values()], 1)

    return forward
