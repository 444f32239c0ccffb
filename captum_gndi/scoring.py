"""Whole-data-set G-NDI: ``compute_gndi`` and its result.

``compute_gndi`` streams a data loader with memory that stays constant in the number of examples
(running sums of scores and squared scores per layer; each batch is released before the next is
read), moves each batch to the model's device, optionally splits batches
(``internal_batch_size``), and under ``torch.distributed`` (e.g. ``torchrun``) scores each
rank's shard and all-reduces the sums, so that every rank returns the global result. A loader
with a ``DistributedSampler`` is already sharded and is used as is; any other iterable is
sharded by batches (rank r takes batches r, r + world_size, ...). Patching data (clean and
corrupted prompts with a metric model) is read through :mod:`captum_gndi.patching` into the
same loop. The module passes 500 lines because ``compute_gndi`` and ``GNDIResult`` document
every option where users read them; the logic itself is short.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ._captum_compat import path_points
from .baselines import LayerBaseline
from .engine import (
    Granularity,
    Mode,
    ScoringJob,
    capture_activations,
    compute_effects,
    signed_effect,
)
from .input_path import Path, check_path, input_path
from .interventions.model_state import preserve_model
from .padding import exclude_padding
from .patching import (
    check_direction,
    is_patching_data,
    metric_model_and_layers,
    patching_job,
    patching_runs,
    source_label,
)
from .readouts import make_readout
from .reliability import first_order_ratios, warn_first_order
from .runs import (
    DataTarget,
    Layers,
    RunningMoments,
    all_reduce,
    attention_mask_of,
    baseline_label,
    batch_target,
    check_data_target,
    check_inputs,
    chunks,
    iterate_batches,
    make_runner,
    map_inputs,
    resolve_device,
    resolve_layers,
    warn_if_training,
)
from .units import ChannelDim, layer_masks

__all__ = [
    "GNDIResult",
    "compute_gndi",
    "layer_baselines",
    "mean_activations",
    "resolve_layers",
]


@dataclass
class GNDIResult:
    """G-NDI over a data set: per-layer mean score and its standard error.

    Attributes:
        names: Layer names in the order given.
        mean: Mean score per layer: a float tensor of shape ``()`` (layer granularity),
            ``(C,)`` (channel) or the activation shape (unit).
        stderr: Standard error of the mean, same shapes.
        n_examples: Number of examples scored.
        settings: The options used (baseline, p, mode, granularity, n_steps; with patching
            data also signed and direction).
        probe_stderr: With random probes, the probes' own standard error of ``mean`` (the
            Monte-Carlo error, separate from the spread over examples in ``stderr``).
        first_order_ratio: The reliability check (:mod:`captum_gndi.reliability`): per layer,
            first-order G-NDI of the whole layer / the real intervention's effect on the first
            ``check_first_order`` examples (``None`` when not run).
    """

    names: list[str]
    mean: dict[str, Tensor]
    stderr: dict[str, Tensor]
    n_examples: int
    settings: dict[str, Any] = field(default_factory=dict)
    probe_stderr: dict[str, Tensor] | None = None
    first_order_ratio: dict[str, float] | None = None

    def layer_scores(self) -> dict[str, float]:
        """One number per layer (for channel/unit granularity: the sum over units)."""
        return {name: float(self.mean[name].sum()) for name in self.names}

    def ranking(self) -> list[str]:
        """Layer names sorted from most to least important (by absolute value when signed)."""
        scores = self.layer_scores()
        if self.settings.get("signed"):
            return sorted(self.names, key=lambda name: -abs(scores[name]))
        return sorted(self.names, key=lambda name: -scores[name])

    def stack(self, stderr: bool = False) -> Tensor:
        """The per-unit means stacked over layers, layer first, TransformerLens-style.

        Layers come in the order of ``layers`` as given to :func:`compute_gndi`. On head
        points ``(N, T, H, d_head)`` (``find_layers(model, "head")``), ``granularity="channel",
        channel_dim=2`` stacks to ``[layer, head]`` and ``channel_dim=(1, 2)`` to ``[layer,
        pos, head]``; on residual or block outputs ``(N, T, D)``, ``channel_dim=1`` gives
        ``[layer, pos]``: the shapes of ``transformer_lens.patching``'s sweeps
        (``get_act_patch_attn_head_out_all_pos``, ``get_act_patch_attn_head_out_by_pos``,
        ``get_act_patch_resid_pre``, ...). With patching data the values are signed effects
        ``f(x) - f(x; do(h_u := b_u))``: a TransformerLens sweep value is the run's metric minus
        the effect.

        Args:
            stderr: Stack the standard errors instead of the means.

        Returns:
            A float tensor ``(n_layers, *unit_shape)``.

        Raises:
            ValueError: When the layers' unit shapes differ (e.g. heads of layers with
                different head counts); index ``result.mean`` per layer instead.

        Examples:
            >>> result = compute_gndi(f, task, find_layers(model, "head"),
            ...                       granularity="channel", channel_dim=(1, 2))
            >>> result.stack().shape  # [layer, pos, head]
            torch.Size([30, 15, 9])
        """
        values = [(self.stderr if stderr else self.mean)[name] for name in self.names]
        shapes = {name: tuple(v.shape) for name, v in zip(self.names, values)}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                f"The layers have different unit shapes ({shapes}); stack() needs one shape. "
                "Index result.mean[name] per layer instead."
            )
        return torch.stack(values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return {
            "n_examples": self.n_examples,
            "settings": dict(self.settings),
            "first_order_ratio": self.first_order_ratio,
            "layers": {
                name: {
                    "mean": self.mean[name].tolist(),
                    "stderr": self.stderr[name].tolist(),
                    "rank": self.ranking().index(name) + 1,
                }
                for name in self.names
            },
        }

    def __str__(self) -> str:
        scores = self.layer_scores()
        ranking = self.ranking()
        width = max(len("layer"), *(len(n) for n in self.names))
        unit_note = "" if self.settings.get("granularity", "layer") == "layer" else " (sum)"
        lines = [
            f"G-NDI over {self.n_examples} examples "
            + ", ".join(f"{k}={v}" for k, v in self.settings.items()),
            f"{'rank':>4}  {'layer':<{width}}  {'G-NDI' + unit_note:>12}  {'std. err.':>10}",
        ]
        for name in ranking:
            stderr = float(self.stderr[name].pow(2).sum().sqrt())
            lines.append(
                f"{ranking.index(name) + 1:>4}  {name:<{width}}  {scores[name]:>12.5g}  "
                f"{stderr:>10.3g}"
            )
        return "\n".join(lines)

    __repr__ = __str__


@preserve_model
def mean_activations(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    attribute_to_layer_input: bool = False,
    on_input: bool | None = None,
) -> dict[str, Tensor]:
    """Each layer's mean activation over a data set (shape ``h.shape[1:]``), for mean baselines.

    With dict batches that carry an ``attention_mask`` (Hugging Face tokenizers), activations
    shaped ``(N, T, ...)`` like the mask are averaged over real tokens only, pooled over
    positions (shape ``h.shape[2:]``, which broadcasts to any padded length).

    Args:
        model: The model.
        data: A DataLoader or iterable of batches (tensor, ``(inputs, labels)``, or a dict of
            model inputs).
        layers: Dict name -> module, or list of dotted names / modules.
        device: Where to run (default: the model's device).
        progress: Show a progress bar.
        max_batches: Stop after this many batches.
        attribute_to_layer_input: Average the layers' inputs instead of their outputs.
        on_input: Deprecated spelling of ``attribute_to_layer_input``.

    Returns:
        Dict name -> mean activation.

    Examples:
        >>> means = mean_activations(model, loader, find_layers(model, "branch"))
        >>> compute_gndi(model, loader, layers, baseline=means)
    """
    if on_input is not None:
        warnings.warn(
            "mean_activations(on_input=...) is deprecated; use attribute_to_layer_input=...",
            DeprecationWarning,
            stacklevel=2,
        )
        attribute_to_layer_input = on_input
    named = resolve_layers(model, layers)
    names, specs = list(named), list(named.values())
    device = resolve_device(model, device)
    sums: list[Tensor | None] = [None] * len(specs)
    counts: list[Tensor] = [torch.zeros((), dtype=torch.float64, device=device) for _ in specs]
    dtypes = [torch.get_default_dtype()] * len(specs)
    for inputs, _labels in iterate_batches(data, device, max_batches, progress, "mean activations"):
        job = ScoringJob(
            run=make_runner(model, inputs, None, None),
            layers=specs,
            labels=names,
            baselines=[None] * len(specs),
            attribute_to_layer_input=attribute_to_layer_input,
        )
        _, activations = capture_activations(job)
        mask = attention_mask_of(inputs)
        for i, h in enumerate(activations):
            if isinstance(h, tuple):
                raise ValueError(
                    f"Layer '{names[i]}' has {len(h)} tensors (a joint intervention); mean "
                    "baselines need one tensor per layer. Pass a tuple of layer baselines, one "
                    "per tensor, or pick the submodule that produces the tensor you want."
                )
            if mask is not None and h.dim() >= 3 and tuple(h.shape[:2]) == tuple(mask.shape):
                # token activations under an attention mask: pooled over real tokens only, so
                # padding neither biases the mean nor ties it to one padded length
                weights = mask.to(torch.float64).reshape(*mask.shape, *([1] * (h.dim() - 2)))
                total = (h.to(device, torch.float64) * weights).sum((0, 1))
                counts[i] += mask.sum()
            else:
                total = h.to(device, torch.float64).sum(0)  # summed where the inputs are
                counts[i] += h.shape[0]
            if sums[i] is not None and sums[i].shape != total.shape:
                raise ValueError(
                    f"Layer '{names[i]}' changes shape between batches ({tuple(sums[i].shape)} vs "
                    f"{tuple(total.shape)}); a mean baseline needs fixed shapes (pad inputs to "
                    "one length, or pass an attention_mask so token positions are pooled)."
                )
            if sums[i] is None:
                sums[i] = total
            else:
                sums[i].add_(total)  # in place: no new long-lived tensor per batch
            dtypes[i] = h.dtype
    reduced = all_reduce([*sums, *counts], device)
    sums, counts = reduced[: len(specs)], reduced[len(specs) :]
    if any(c is None or c.item() == 0 for c in counts):
        raise ValueError("The data yielded no examples; pass a non-empty data loader.")
    return {n: (s / c).to(d) for n, s, c, d in zip(names, sums, counts, dtypes)}  # type: ignore[operator]


def layer_baselines(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    device: torch.device | str | None = None,
    progress: bool = False,
    max_batches: int | None = None,
    attribute_to_layer_input: bool = False,
) -> dict[str, LayerBaseline]:
    """Resolve a baseline choice into one layer baseline per layer.

    Args:
        model: The model.
        data: A data loader (read only for ``baseline="mean"``).
        layers: Dict name -> module, or a list of dotted names / modules.
        baseline: ``"zero"``, ``"mean"`` (each layer's mean activation over ``data``, from
            :func:`captum_gndi.scoring.mean_activations`), a number, or a dict name -> layer
            baseline (see :mod:`captum_gndi.baselines`); a tensor or a callable is used for
            every layer.
        device: Where to run.
        progress: Show a progress bar while averaging.
        max_batches: Average over at most this many batches.
        attribute_to_layer_input: Average the layers' inputs instead of their outputs.

    Returns:
        Dict name -> layer baseline (``None`` for zero, a number, or a tensor).

    Examples:
        >>> layer_baselines(model, loader, ["layer1.0.bn2"], "mean")["layer1.0.bn2"].shape
        torch.Size([16, 32, 32])
    """
    named = resolve_layers(model, layers)
    if isinstance(baseline, Tensor) or callable(baseline):
        return {name: baseline for name in named}  # the same layer baseline for every layer
    if isinstance(baseline, Mapping):
        missing = [name for name in named if name not in baseline]
        if missing:
            raise ValueError(f"The baseline dict has no entry for layers {missing}.")
        return {name: baseline[name] for name in named}
    if baseline == "mean":
        if isinstance(data, Iterator):
            raise ValueError(
                "baseline='mean' reads the data twice (means first, then scores), but the data "
                "is a one-pass iterator (e.g. a generator). Pass a DataLoader or a list of "
                "batches, or compute the means with mean_activations and pass them as a dict."
            )
        means = mean_activations(
            model,
            data,
            named,
            device,
            progress,
            max_batches,
            attribute_to_layer_input=attribute_to_layer_input,
        )
        return dict(means)
    if baseline in (None, "zero"):
        return {name: None for name in named}
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return {name: float(baseline) for name in named}
    raise ValueError(
        f"baseline must be 'zero', 'mean', a number or a dict name -> layer baseline, got "
        f"{baseline!r}."
    )


@preserve_model
def compute_gndi(
    model: nn.Module,
    data: Iterable[Any],
    layers: Layers,
    baseline: str | float | Mapping[str, LayerBaseline] = "zero",
    norm: str | float = "l2",
    target: DataTarget = None,
    mode: Mode = "auto",
    device: torch.device | str | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    granularity: Granularity = "layer",
    n_steps: int = 1,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    channel_dim: ChannelDim = 1,
    attribute_to_layer_input: bool = False,
    layer_mask: Tensor | Mapping[str, Tensor] | None = None,
    n_probes: int | None = None,
    probe_seed: int = 0,
    signed: bool | None = None,
    direction: str = "noising",
    metric: Callable[[Any, Tensor], Tensor] | None = None,
    path: Path = "unit",
    input_layer: nn.Module | str | None = None,
    probe_exact: int | None = None,
    check_first_order: int = 8,
) -> GNDIResult:
    """G-NDI of every layer, averaged over a data set.

    With patching data (a :class:`~captum_gndi.tasks.PatchingTask` or a loader of
    ``(clean, corrupted, answers)`` :class:`~captum_gndi.tasks.PatchingBatch` es), ``model`` is
    a metric model ``f(input_ids, answers) -> (N, 1)`` (e.g.
    ``captum_gndi.tasks.logit_diff(model)``, or the model with ``metric=``), the baseline of
    every unit is its activation on the other prompt of the pair (per example: the same as
    ``LayerGNDI.attribute(clean, baselines=corrupted, additional_forward_args=(answers,),
    signed=True)``), and the scores are signed first-order effects ``f(x) - f(x; do(h_u :=
    b_u))``, minus attribution patching (see :mod:`captum_gndi.patching`).

    Args:
        model: The model; it should be in eval mode. With patching data, the metric model.
        data: A DataLoader or iterable of batches: a tensor, ``(inputs, labels)`` or
            ``((input tensors...), labels)``; or patching data (above).
        layers: Dict name -> module (e.g. from :func:`captum_gndi.find_layers`) or a list of
            dotted names.
        baseline: ``"zero"``, ``"mean"`` (a first pass computes each layer's data-set mean
            activation), a number, or a dict name -> layer baseline.
        norm: ``"l1"``, ``"l2"``, ``"linf"``, a number p >= 1, or ``"fisher"`` (the Fisher
            norm of the softmax over the output's last dimension; see
            :mod:`captum_gndi.readouts`).
        target: ``None`` (norm over the whole output), an int class index, ``"label"`` (each
            example's label from the batch) or ``"predicted"`` (the model's top class).
        mode: ``"auto"``, ``"forward"`` or ``"reverse"``.
        device: Where to run (default: the model's device); batches are moved there.
        progress: Show a tqdm progress bar (on rank 0 only under ``torch.distributed``).
        max_batches: Stop after this many batches (in total over all ranks; with a
            ``DistributedSampler``, ``ceil(max_batches / world_size)`` per rank).
        granularity: ``"layer"``, ``"channel"`` or ``"unit"``.
        n_steps: Integration points (1: first-order G-NDI).
        method: Captum approximation method for ``n_steps > 1``.
        internal_batch_size: Split each batch into chunks of at most this many examples (the
            scores do not change; peak memory shrinks).
        channel_dim: Activation dimension(s) holding the units of ``"channel"`` granularity
            (a tuple such as ``(1, 2)`` for position x head).
        attribute_to_layer_input: Intervene on layer inputs instead of outputs.
        layer_mask: Groups (``"group"`` granularity, implied): one integer mask for every
            layer, or a dict name -> mask (see :meth:`LayerGNDI.attribute`).
        n_probes: Estimate the squared L2 / Fisher norm from this many random VJPs per batch
            (see :mod:`captum_gndi.readouts`); the probes' own standard error of the mean
            scores is in ``result.probe_stderr``.
        probe_seed: Seed of the probes (batch ``i`` uses ``probe_seed + i``).
        signed: Average the signed first-order effect ``J (h - b)`` (one output per example:
            a metric, or a scalar ``target``) instead of its norm. ``None``: signed for
            patching data, a norm otherwise; ``signed=False`` on patching data gives the
            absolute effect.
        direction: With patching data: ``"noising"`` (default: run the clean prompt, patch
            corrupted activations in) or ``"denoising"`` (run the corrupted prompt, patch
            clean activations in: TransformerLens's default).
        metric: With patching data: ``metric(output, answers)`` returning one number per
            example (``(N,)`` or ``(N, 1)``); the metric model is then ``metric(model(ids),
            answers)`` (:class:`~captum_gndi.patching.PatchingMetric`).

        path: Which path ``n_steps > 1`` integrates along: ``"unit"`` (each unit on its own
            path; ``units x n_steps`` passes) or ``"input"`` (EAP-IG: one path from the
            corrupted to the clean prompt through the input embeddings, ``n_steps`` forward
            and backward passes for all units; patching data only, see
            :meth:`LayerGNDI.attribute`). A progress bar counts the passes of either path.
        input_layer: For ``path="input"``: the module whose output is interpolated (default:
            the model's input embeddings).
        probe_exact: With ``n_probes``: read the ``probe_exact`` most probable classes of each
            example and position, and the mean of the rest, exactly; the probes cover the rest
            (a lower-variance unbiased estimate for full vocabularies; see
            :meth:`LayerGNDI.attribute` and :mod:`captum_gndi.readouts`).
        check_first_order: The reliability check of first-order G-NDI
            (:mod:`captum_gndi.reliability`): on the first this many examples, one real
            intervention per layer (``L + 1`` forward passes) against the layer's first-order
            score; a warning names the layers where they differ by more than a factor of 2 and
            recommends ``n_steps``, and ``result.first_order_ratio`` keeps the ratios. Runs with
            ``n_steps=1`` on non-patching data; 0 skips it.

    Returns:
        A :class:`GNDIResult` with per-layer mean, standard error and ranking. Under
        ``torch.distributed`` every rank returns the same global result (a
        ``DistributedSampler`` that pads its shards to equal length counts the padding
        examples twice; use ``drop_last=True`` or a data set size divisible by the world size
        for exactly the single-process numbers).

    Examples:
        >>> result = compute_gndi(model, test_loader, find_layers(model, "branch"))
        >>> print(result)
        >>> result.ranking()[:3]
        >>> # data-parallel: torchrun --nproc-per-node 4 score.py, with in score.py
        >>> torch.distributed.init_process_group("nccl")
        >>> result = compute_gndi(model, loader, layers)  # same numbers on every rank
    """
    readout = make_readout(norm, n_probes, probe_seed, probe_exact)
    alphas, weights = path_points(n_steps, method)
    patching = is_patching_data(data)
    signed = patching if signed is None else signed
    if signed and (n_probes is not None or readout.fisher):
        raise ValueError(
            "Signed scores are the exact first-order effect on one output per example; drop "
            "n_probes / norm='fisher', or pass signed=False."
        )
    if patching:
        check_direction(direction)
        if target is not None or baseline not in (None, "zero"):
            raise ValueError(
                "With patching data the baseline of every unit is its activation on the other "
                "prompt of the pair and the output is the metric model's one number per pair; "
                "drop target= and baseline=."
            )
        model, layers = metric_model_and_layers(model, layers, metric)
    elif metric is not None:
        raise ValueError(
            "metric= needs patching data (a PatchingTask or a loader of (clean, corrupted, "
            "answers) batches); for other data pass the metric as the model itself."
        )
    warn_if_training(model)
    named = resolve_layers(model, layers)
    names, specs = list(named), list(named.values())
    device = resolve_device(model, device)
    check_data_target(target)
    check_path(path)
    if path == "input" and not patching:
        raise ValueError(
            "path='input' integrates from input-space baselines to the inputs; compute_gndi "
            "takes them from patching data (a PatchingTask or a loader of (clean, corrupted, "
            "answers) batches). For other inputs use LayerGNDI.attribute(inputs, "
            "baselines=..., path='input'), or path='unit' here."
        )
    if patching:
        baselines: list[LayerBaseline] = []
    else:
        resolved = layer_baselines(
            model, data, named, baseline, device, progress, max_batches, attribute_to_layer_input
        )
        baselines = [resolved[n] for n in names]

    masks = layer_masks(layer_mask, names)
    if masks is not None:
        granularity = "group"
    moments = RunningMoments(names, device)
    probe_moments = RunningMoments(names, device)
    used_modes: set[str] = set()

    def jobs() -> Iterator[tuple[int, ScoringJob]]:
        if patching:
            for index, run in enumerate(
                patching_runs(
                    data, direction, device, max_batches, progress, "G-NDI", internal_batch_size
                )
            ):
                job = patching_job(
                    model, run, specs, names, attribute_to_layer_input, channel_dim, masks
                )
                if path == "input" and n_steps > 1:
                    job.input_path = input_path(
                        model, (run.inputs,), (run.source,), (run.answers,), None, input_layer
                    )
                yield index, job
            return
        batches = iterate_batches(data, device, max_batches, progress, "G-NDI")
        if isinstance(baseline, str) and baseline == "mean":
            batches = _second_pass(batches)
        for index, (inputs, labels) in enumerate(batches):
            for part, part_labels in chunks(inputs, labels, internal_batch_size):
                check_inputs(part)
                if check and not sample:  # the examples of the reliability check
                    sample.append(
                        batch_job(
                            map_inputs(part, lambda t: t[:check].clone()),  # not a view:
                            None if part_labels is None else part_labels[:check].clone(),
                        )
                    )
                yield index, batch_job(part, part_labels)

    def batch_job(part: tuple[Tensor, ...], part_labels: Tensor | None) -> ScoringJob:
        return ScoringJob(
            run=make_runner(model, part, None, batch_target(model, part, part_labels, target)),
            layers=specs,
            labels=names,
            baselines=exclude_padding(specs, baselines, attention_mask_of(part)),
            attribute_to_layer_input=attribute_to_layer_input,
            channel_dim=channel_dim,
            layer_masks=masks,
        )

    check = check_first_order if n_steps == 1 and not signed else 0
    sample: list[ScoringJob] = []

    for index, job in jobs():
        readout.seed = probe_seed + index
        effects, used = compute_effects(
            job,
            mode,
            granularity,
            alphas,
            weights,
            readout=readout,
            path=path,
            progress=progress,
            warn_cost=index == 0,
        )
        used_modes.add(used)
        mode = used  # decide (and warn about a fallback) once, not on every batch
        reference = readout.clean_output(job.run)
        for name, effect in zip(names, effects):
            if signed:
                moments.add(name, signed_effect(effect, name))
                continue
            moments.add(name, readout.scores(effect, reference))
            se = readout.probe_stderr(effect)
            if se is not None:
                probe_moments.add(name, se.pow(2))
    mean, stderr, n = moments.reduce()
    probe_stderr = None
    if n_probes is not None:
        # per-example probe variances add; the mean over n examples has variance sum / n^2,
        # and the score (a square root) has stderr / (2 score) by the delta method
        variances, _, _ = probe_moments.reduce()
        probe_stderr = {
            name: (variances[name] / n).sqrt() / (2 * mean[name].clamp_min(1e-30)) for name in names
        }
    settings = {
        "baseline": baseline_label(baseline),
        "p": readout.name if readout.fisher else readout.p,
        "target": target,
        "granularity": granularity,
        "n_steps": n_steps,
        "mode": "/".join(sorted(used_modes)) or mode,
    }
    if n_probes is not None:
        settings["n_probes"] = n_probes
    if probe_exact is not None:
        settings["probe_exact"] = probe_exact
    if path != "unit":
        settings["path"] = path
    if signed:
        settings["signed"] = True
    if patching:
        settings.update(baseline=source_label(direction), direction=direction)
    ratios = None
    if sample:
        ratios = first_order_ratios(
            sample[0], make_readout(norm, n_probes, probe_seed, probe_exact), mode
        )
        warn_first_order(ratios, sample[0].run.inputs[0].shape[0], stacklevel=4)
    return GNDIResult(names, mean, stderr, n, settings, probe_stderr, ratios)


def _second_pass(batches: Iterator[Any]) -> Iterator[Any]:
    """The scoring pass after ``baseline="mean"`` read the data once: data that yields nothing
    now (while the means pass found batches) is a one-pass iterable, and is told so."""
    try:
        first = next(batches)
    except ValueError as error:
        raise ValueError(
            "baseline='mean' reads the data twice, but the second pass (the scores) found no "
            "batches after the first (the means) did: the data is a one-pass iterable. Pass a "
            "DataLoader or a list of batches, or compute the means with mean_activations and "
            "pass them as a dict."
        ) from error
    yield first
    yield from batches
