"""``LayerGNDI``: G-NDI as a Captum layer attribution method.

The module passes 500 lines because Captum's API is wide: the three typing overloads of
``attribute`` repeat its parameters, its docstring documents every Captum argument, and the
argument handling that serves only ``attribute`` (input baselines, ``internal_batch_size``
chunks) stays next to it.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import torch
from captum.attr import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from ._captum_compat import TargetType, as_forward_args, as_input_tuple, path_points
from .baselines import LayerBaseline, per_layer
from .engine import (
    Granularity,
    Mode,
    ScoringJob,
    capture_activations,
    compute_effects,
    signed_effect,
    true_effects,
)
from .input_path import Path, check_path, expand_input_baselines, input_path
from .interventions import Heads, LayerCall, LayerSpec, check_layers_in_model, layer_label
from .interventions.model_state import preserve_model
from .job import per_tensor
from .layer_names import point_layout
from .padding import attention_mask_argument, exclude_padding, warn_unmasked_padding
from .readouts import make_readout
from .runs import KeywordInputs, check_inputs, make_runner, unwrap_model, warn_if_training
from .units import ChannelDim, layer_masks

__all__ = ["LayerGNDI"]

InputBaselines = Any  # Captum's BaselineType: None, a number, a tensor, or a tuple of them
Scores = Tensor | list[Tensor]  # one tensor per layer: a list for a list of layers


class LayerGNDI(LayerAttribution, GradientAttribution):
    r"""General Neuro-Dynamic Importance of one or more layers.

    For each example x, G-NDI scores a layer L by

    .. math::
        \mathrm{G\text{-}NDI}_L(x) = \| J_{>L}(x)\,(h_L(x) - b_L) \|_p,

    the first-order estimate of how far the model output moves under the intervention
    do(h_L := b_L), where ``h_L`` is the layer's activation, ``b_L`` a baseline activation and
    ``J_{>L}`` the Jacobian of everything after the layer. With ``n_steps > 1`` the Jacobian is
    integrated along the straight path from ``b_L`` to ``h_L``, which converges to the exact
    intervention effect ``f(x) - f(x; do(h_L := b_L))``.

    Unlike most Captum layer methods, :meth:`attribute` returns one score per example (shape
    ``(N,)``) rather than a layer-shaped tensor, because G-NDI scores a whole layer (compare
    ``LayerGradCam``, which also sums over the layer). ``granularity="channel"`` and ``"unit"``
    give per-channel ``(N, C)`` and layer-shaped scores.

    Args:
        forward_func: The model (or any function of the inputs) returning a tensor whose first
            dimension indexes examples.
        layer: A module, a :class:`~captum_gndi.LayerCall` (one call of a module that runs
            several times per forward pass), or a list of them.
        device_ids: Captum's ``device_ids`` for ``DataParallel`` forward functions (unused by
            the hook-based engine; kept for signature compatibility).
        multiply_by_inputs: Captum's flag of its layer methods; G-NDI always multiplies the
            Jacobian by ``h - b`` (``True`` is accepted; ``False`` is a ``ValueError`` that says
            why and which Captum method gives local attributions).

    Examples:
        >>> from captum.attr import IntegratedGradients
        >>> from captum_gndi import LayerGNDI
        >>> gndi = LayerGNDI(model, model.layer3)
        >>> scores = gndi.attribute(images, target=labels)  # (N,)
        >>> scores = LayerGNDI(model, [model.layer1, model.layer2]).attribute(images)  # list
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: LayerSpec | Sequence[LayerSpec],
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool | None = None,
    ) -> None:
        if multiply_by_inputs is not None and not multiply_by_inputs:
            raise ValueError(
                "multiply_by_inputs=False does not apply to G-NDI: its score is the norm of "
                "J (h - b), the Jacobian times the activation change, by definition (there is no "
                "local, Jacobian-only variant of an intervention effect). For local layer "
                "attributions use Captum's LayerGradientXActivation(..., multiply_by_inputs="
                "False) or LayerIntegratedGradients(..., multiply_by_inputs=False)."
            )
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self._layers: list[LayerSpec] = (
            list(layer) if isinstance(layer, (list, tuple)) else [layer]  # type: ignore[list-item]
        )
        if not self._layers:
            raise ValueError("LayerGNDI needs at least one layer.")
        for item in self._layers:
            if not isinstance(item, (nn.Module, LayerCall, Heads)):
                raise TypeError(
                    f"layer must be an nn.Module, a LayerCall or a list of them, got "
                    f"{type(item).__name__}. Resolve names with captum_gndi.get_layer."
                )
        check_layers_in_model(forward_func, self._layers)
        model = forward_func if isinstance(forward_func, nn.Module) else None
        if model is not None:  # a module in its model's layout (a bridge's flattened heads)
            self._layers = [
                point_layout(unwrap_model(model), item) if isinstance(item, nn.Module) else item
                for item in self._layers
            ]
        self._labels = [layer_label(item, model) for item in self._layers]
        self.probe_stderr: Tensor | list[Tensor] | None = None

    @classmethod
    def get_name(cls) -> str:
        """The method's display name."""
        return "Layer G-NDI"

    def has_convergence_delta(self) -> bool:
        """G-NDI reports the Taylor remainder against a real intervention as its delta."""
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: G-NDI multiplies the Jacobian by ``h - b`` (a global attribution in Captum's
        sense, like ``LayerIntegratedGradients`` with ``multiply_by_inputs=True``)."""
        return True

    # The overloads only tell type checkers that the return type follows
    # ``return_convergence_delta``; keep their parameters in step with the implementation.
    @overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: InputBaselines = ...,
        target: TargetType = ...,
        additional_forward_args: Any = ...,
        layer_baselines: LayerBaseline | Sequence[LayerBaseline] = ...,
        norm: float | str = ...,
        attribute_to_layer_input: bool = ...,
        return_convergence_delta: Literal[False] = ...,
        mode: Mode = ...,
        granularity: Granularity = ...,
        n_steps: int = ...,
        method: str = ...,
        channel_dim: ChannelDim = ...,
        layer_mask: Tensor | Sequence[Tensor] | None = ...,
        signed: bool = ...,
        grad_kwargs: dict[str, Any] | None = ...,
        forward_kwargs: dict[str, Any] | None = ...,
        n_probes: int | None = ...,
        probe_seed: int = ...,
        internal_batch_size: int | None = ...,
        p: float | str | None = ...,
        path: Path = ...,
        input_layer: nn.Module | str | None = ...,
        probe_exact: int | None = ...,
    ) -> Scores: ...

    @overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: InputBaselines = ...,
        target: TargetType = ...,
        additional_forward_args: Any = ...,
        layer_baselines: LayerBaseline | Sequence[LayerBaseline] = ...,
        norm: float | str = ...,
        attribute_to_layer_input: bool = ...,
        *,
        return_convergence_delta: Literal[True],
        mode: Mode = ...,
        granularity: Granularity = ...,
        n_steps: int = ...,
        method: str = ...,
        channel_dim: ChannelDim = ...,
        layer_mask: Tensor | Sequence[Tensor] | None = ...,
        signed: bool = ...,
        grad_kwargs: dict[str, Any] | None = ...,
        forward_kwargs: dict[str, Any] | None = ...,
        n_probes: int | None = ...,
        probe_seed: int = ...,
        internal_batch_size: int | None = ...,
        p: float | str | None = ...,
        path: Path = ...,
        input_layer: nn.Module | str | None = ...,
        probe_exact: int | None = ...,
    ) -> tuple[Scores, Scores]: ...

    @overload
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: InputBaselines = ...,
        target: TargetType = ...,
        additional_forward_args: Any = ...,
        layer_baselines: LayerBaseline | Sequence[LayerBaseline] = ...,
        norm: float | str = ...,
        attribute_to_layer_input: bool = ...,
        return_convergence_delta: bool = ...,
        mode: Mode = ...,
        granularity: Granularity = ...,
        n_steps: int = ...,
        method: str = ...,
        channel_dim: ChannelDim = ...,
        layer_mask: Tensor | Sequence[Tensor] | None = ...,
        signed: bool = ...,
        grad_kwargs: dict[str, Any] | None = ...,
        forward_kwargs: dict[str, Any] | None = ...,
        n_probes: int | None = ...,
        probe_seed: int = ...,
        internal_batch_size: int | None = ...,
        p: float | str | None = ...,
        path: Path = ...,
        input_layer: nn.Module | str | None = ...,
        probe_exact: int | None = ...,
    ) -> Scores | tuple[Scores, Scores]: ...

    @log_usage()
    @preserve_model
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        baselines: InputBaselines = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        layer_baselines: LayerBaseline | Sequence[LayerBaseline] = None,
        norm: float | str = 2,
        attribute_to_layer_input: bool = False,
        return_convergence_delta: bool = False,
        mode: Mode = "auto",
        granularity: Granularity = "layer",
        n_steps: int = 1,
        method: str = "gausslegendre",
        channel_dim: ChannelDim = 1,
        layer_mask: Tensor | Sequence[Tensor] | None = None,
        signed: bool = False,
        grad_kwargs: dict[str, Any] | None = None,
        forward_kwargs: dict[str, Any] | None = None,
        n_probes: int | None = None,
        probe_seed: int = 0,
        internal_batch_size: int | None = None,
        p: float | str | None = None,
        path: Path = "unit",
        input_layer: nn.Module | str | None = None,
        probe_exact: int | None = None,
    ) -> Tensor | list[Tensor] | tuple[Tensor | list[Tensor], Tensor | list[Tensor]]:
        r"""Compute G-NDI scores for each example.

        Args:
            inputs: Input tensor or tuple of tensors; dimension 0 indexes examples.
            baselines: Input-space baselines in Captum's convention (a number, a tensor
                broadcastable to the input, or a tuple of them). The layer baseline is then the
                layer's activation at these inputs. Give either this or ``layer_baselines``.
            target: Output indices in Captum's ``TargetType`` semantics. ``None`` takes the
                p-norm over each example's whole flattened output; a scalar target gives
                ``|J (h - b)|``.
            additional_forward_args: Extra arguments passed to ``forward_func`` after inputs.
            layer_baselines: Layer-space baseline: ``None``/``"zero"``, a number, a tensor
                broadcastable to the activation, or a callable ``h -> b``; a list gives one per
                layer, a tuple one per tensor of a multi-tensor layer (a layer whose output is a
                tuple of several floating-point tensors of one shape, or several such inputs
                with ``attribute_to_layer_input``: all of them are intervened on jointly).
            norm: How the output change is measured: any order ``p >= 1``, ``math.inf``,
                ``"l1"``, ``"l2"``, ``"linf"``, or ``"fisher"``: ``sqrt(dz^T (diag(pi) -
                pi pi^T) dz)`` for the softmax ``pi`` over the output's last dimension
                (``sqrt(2 KL)`` to second order; see :mod:`captum_gndi.readouts`).
            attribute_to_layer_input: Intervene on the layer's input instead of its output.
            return_convergence_delta: Also return, per example, the Taylor remainder
                ``|| (f(x) - f_do(x)) - J_{>L}(x)(h - b) ||_p`` against a real intervention
                (layer granularity only).
            mode: ``"forward"`` (forward-mode AD, one pass per layer), ``"reverse"``
                (vector-Jacobian products, all layers from one forward pass) or ``"auto"``
                (the cheaper one; falls back to reverse with a warning where an operator has no
                forward-AD formula, e.g. CPU SDPA attention).
            granularity: ``"layer"`` (N,), ``"channel"`` (N, *channel sizes): the G-NDI of
                intervening on each channel alone, ``"unit"``: layer-shaped, one score per
                neuron, or ``"group"`` (N, G) with ``layer_mask`` (implied by it).
            n_steps: Integration points for path-integrated G-NDI; 1 is the paper's
                first-order G-NDI (the Jacobian at the actual activation). With ``n_steps > 1``
                and ``path="unit"`` every unit is integrated along its own path
                ``b_u + a (h - b)_u`` with the rest of the layer at ``h``, so each score
                converges to the effect of intervening on that unit alone (``units x n_steps``
                tangent passes); ``path="input"`` is EAP-IG (below).
            method: Captum approximation method for ``n_steps > 1`` (``"gausslegendre"``,
                ``"riemann_trapezoid"``, ...).
            channel_dim: Activation dimension(s) holding the units of ``"channel"``
                granularity: 1 for CNNs, -1 for ``(N, T, D)`` transformer states, a tuple such
                as ``(1, 2)`` for position x head on ``(N, T, H, d)`` (scores ``(N, T, H)``).
            layer_mask: Groups with Captum's ``LayerFeatureAblation`` semantics: an integer
                tensor broadcastable to the activation (batch dimension 1 or N) holding group
                ids ``0..G-1``; the score of group g is ``|| J (1[M = g] (h - b)) ||``, shape
                ``(N, G)``. A list gives one mask per layer.
            signed: With a scalar output per example (a target selecting one output), return
                the signed first-order effect ``J (h - b)`` (``f(x) - f_do(x)`` to first order)
                instead of its absolute value. With ``baselines`` a corrupted input this is
                attribution patching's estimate with the sign flipped.
            grad_kwargs: Keyword arguments for every ``torch.autograd.grad`` call (Captum's
                layer-method argument, e.g. ``{"materialize_grads": True}``).
            forward_kwargs: Keyword inputs for the model, e.g. ``{"attention_mask": mask}``
                for Hugging Face models (``forward_func(*inputs, *additional_forward_args,
                **forward_kwargs)``). An ``(N, T)`` ``attention_mask`` here also keeps padded
                positions of :class:`~captum_gndi.Heads` points out of the intervention
                (``h - b = 0`` there, so their position x head scores are exactly 0; see
                :func:`captum_gndi.adapters.exclude_padding`).
            n_probes: Estimate the squared L2 or Fisher norm from this many random
                vector-Jacobian products (Rademacher rows; classes drawn from the model's own
                softmax for ``"fisher"``) instead of one per output dimension: unbiased for the
                squared norm, ``n_probes`` backward passes whatever the output size. The
                per-example standard errors of the squared scores are left in
                ``self.probe_stderr`` (same structure as the scores).
            probe_seed: Seed of the probes.
            probe_exact: With ``n_probes``, a lower-variance unbiased estimate for full
                vocabularies: per example and output position the ``probe_exact`` most
                probable classes of the clean output (largest entries of the last dimension)
                and the (softmax-weighted, for ``"fisher"``) mean of the rest are read out
                exactly, and the probes cover only the rest (``(probe_exact + 1) x positions``
                extra backward passes; see :mod:`captum_gndi.readouts`). ``self.probe_stderr``
                is then the standard error of the probe part.
            internal_batch_size: Score at most this many examples per pass (Captum's
                argument): the inputs and every per-example argument (tensors and target lists
                with N rows in ``baselines``, ``target``, ``additional_forward_args``,
                ``forward_kwargs``, ``layer_baselines``, ``layer_mask``) are split into chunks
                and the results concatenated; the scores equal one call's (random probes are
                drawn per chunk). Peak memory shrinks with the chunk.
            p: Deprecated spelling of ``norm`` (kept for one release).
            path: Which path ``n_steps > 1`` integrates along. ``"unit"`` (default): each unit
                on its own path ``b_u + a (h - b)_u`` (converges to the effect of intervening
                on that unit alone; ``units x n_steps`` passes, more than exact ablation of
                every unit). ``"input"``: one path in input space from ``baselines`` to
                ``inputs`` (token ids through the input embeddings, as
                ``LayerIntegratedGradients`` on the embedding layer); the gradient with
                respect to every unit, averaged over that path, times ``h(x) - h(baselines)``:
                EAP-IG (Hanna et al. 2024), ``n_steps`` forward passes and ``n_steps x K``
                backward passes for all units of all layers (reverse mode). It converges to
                the unit's integrated-gradients share of ``f(x) - f(baselines)`` (summing to
                it over a complete cut), not to a single-unit patching effect. It needs
                ``baselines``. With ``n_steps=1`` both paths are first-order G-NDI (the
                Jacobian at the inputs themselves; Captum's one-point Gauss-Legendre rule
                would evaluate at the midpoint instead).
            input_layer: For ``path="input"``: the module (or submodule name) whose output
                is interpolated. Default: the model's ``get_input_embeddings()`` (or that of
                its first submodule that has one) for integer inputs; float inputs are
                interpolated directly.

        Returns:
            Scores of shape ``(N,)`` per layer (a list for a list of layers; ``(N, C)`` or
            layer-shaped for other granularities), and with ``return_convergence_delta`` a
            second value of the same structure holding the per-example remainders.

        Examples:
            >>> gndi = LayerGNDI(model, [model.layer1, model.layer2])
            >>> scores, delta = gndi.attribute(x, target=0, return_convergence_delta=True)
        """
        if p is not None:
            warnings.warn(
                "LayerGNDI.attribute(p=...) is deprecated; use norm=... (same values).",
                DeprecationWarning,
                stacklevel=2,
            )
            norm = p
        if internal_batch_size is not None:
            return self._attribute_in_chunks(
                internal_batch_size,
                dict(
                    inputs=inputs,
                    baselines=baselines,
                    target=target,
                    additional_forward_args=additional_forward_args,
                    layer_baselines=layer_baselines,
                    norm=norm,
                    attribute_to_layer_input=attribute_to_layer_input,
                    return_convergence_delta=return_convergence_delta,
                    mode=mode,
                    granularity=granularity,
                    n_steps=n_steps,
                    method=method,
                    channel_dim=channel_dim,
                    layer_mask=layer_mask,
                    signed=signed,
                    grad_kwargs=grad_kwargs,
                    forward_kwargs=forward_kwargs,
                    n_probes=n_probes,
                    probe_seed=probe_seed,
                    probe_exact=probe_exact,
                    path=path,
                    input_layer=input_layer,
                ),
            )
        readout = make_readout(norm, n_probes, probe_seed, probe_exact)
        if signed and n_probes is not None:
            raise ValueError("signed=True needs the exact effect; drop n_probes.")
        if return_convergence_delta and n_probes is not None:
            raise ValueError(
                "return_convergence_delta compares exact effects with a real intervention; "
                "drop n_probes (or estimate scores with probes and deltas without)."
            )
        alphas, weights = path_points(n_steps, method)
        check_path(path)
        if path == "input" and baselines is None:
            raise ValueError(
                "path='input' integrates from input-space baselines to the inputs; pass "
                "Captum's `baselines` (e.g. the corrupted prompt's token ids, or a number), "
                "or use path='unit' with layer_baselines."
            )
        masks = layer_masks(layer_mask, self._labels)
        if masks is not None:
            if granularity not in ("layer", "group"):
                raise ValueError(
                    f"layer_mask defines the units itself; it cannot be combined with "
                    f"granularity={granularity!r}. Drop one of them."
                )
            granularity = "group"
        if return_convergence_delta and granularity != "layer":
            raise ValueError("return_convergence_delta needs granularity='layer'.")
        if baselines is not None and layer_baselines is not None:
            raise ValueError(
                "Give either input-space `baselines` or `layer_baselines`, not both: the layer "
                "baseline is the activation at the input baselines."
            )
        input_tuple = as_input_tuple(inputs)
        check_inputs(input_tuple)
        forward_args = as_forward_args(additional_forward_args)
        warn_if_training(self.forward_func)
        forward_func = self.forward_func
        if forward_kwargs:
            forward_func = functools.partial(self.forward_func, **forward_kwargs)

        if baselines is not None:
            layer_specs = self._activations_at(
                forward_func, input_tuple, baselines, forward_args, attribute_to_layer_input
            )
        else:
            layer_specs = per_layer(layer_baselines, len(self._layers))
        # padded token positions of Heads points are not intervened on; the mask may come by
        # keyword or, the Captum way, in additional_forward_args (found by the signature)
        mask = attention_mask_argument(
            self.forward_func, len(input_tuple), forward_args, forward_kwargs
        )
        if mask is None:
            warn_unmasked_padding(unwrap_model(self.forward_func), input_tuple, stacklevel=4)
        layer_specs = exclude_padding(self._layers, layer_specs, mask)
        job = ScoringJob(
            run=make_runner(forward_func, input_tuple, forward_args, target),
            layers=self._layers,
            labels=self._labels,
            baselines=layer_specs,
            attribute_to_layer_input=attribute_to_layer_input,
            channel_dim=channel_dim,
            layer_masks=masks,
            grad_kwargs=grad_kwargs,
        )
        if path == "input" and n_steps > 1:
            job.input_path = input_path(
                forward_func,
                input_tuple,
                expand_input_baselines(input_tuple, baselines),
                forward_args,
                target,
                input_layer,
                model=self.forward_func,
            )
        groups = [[p] for p in range(len(self._layers))]
        if granularity != "layer":  # a multi-tensor layer: one score tensor per tensor
            job, groups = per_tensor(job)
        effects, _ = compute_effects(
            job, mode, granularity, alphas, weights, readout=readout, path=path
        )
        reference = readout.clean_output(job.run)
        if signed:
            scores = [signed_effect(effect, label) for effect, label in zip(effects, job.labels)]
        else:
            scores = [readout.scores(effect, reference) for effect in effects]
        scores = _per_layer(scores, groups)
        self.probe_stderr = (
            self._format(_per_layer([readout.probe_stderr(e) for e in effects], groups))
            if n_probes is not None
            else None
        )
        if not return_convergence_delta:
            return self._format(scores)
        exact = true_effects(job)
        deltas = [readout.scores(e - pred, reference) for e, pred in zip(exact, effects)]
        return self._format(scores), self._format(deltas)

    @log_usage()
    def compute_convergence_delta(
        self,
        attributions: Tensor | Sequence[Tensor],
        start_point: InputBaselines,
        end_point: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        layer_baselines: LayerBaseline | Sequence[LayerBaseline] = None,
        norm: float | str = 2,
        attribute_to_layer_input: bool = False,
        mode: Mode = "auto",
        n_steps: int = 1,
        method: str = "gausslegendre",
        grad_kwargs: dict[str, Any] | None = None,
        forward_kwargs: dict[str, Any] | None = None,
    ) -> Scores:
        r"""G-NDI's convergence delta: the remainder of its estimate against a real intervention.

        Replaces Captum's inherited completeness check ``sum(attributions) - (F(end_point) -
        F(start_point))``, which is meaningless for norm-valued scores. For each example x it is

        .. math::
            \| (f(x) - f(x; \mathrm{do}(h_L := b_L))) - J_{>L}(x)\,(h_L(x) - b_L) \|_p,

        the same numbers that ``attribute(..., return_convergence_delta=True)`` returns as its
        second value (0 when everything after the layer is affine; it shrinks as ``n_steps``
        grows, since path-integrated G-NDI converges to the exact effect).

        Args:
            attributions: Layer-granularity scores of ``end_point`` from :meth:`attribute`: a
                tensor ``(N,)``, or a list of them for a list of layers. They are only checked
                against ``end_point`` (one row per example): a norm does not determine the
                vector ``J_{>L}(x)(h_L(x) - b_L)``, so the remainder is recomputed.
            start_point: Where the intervention moves the layer, in input space (Captum's
                ``baselines``): the layer baseline ``b_L`` is the layer's activation at
                ``start_point``, a number, a tensor or a tuple of them broadcastable to
                ``end_point``. ``None`` uses ``layer_baselines`` instead (zero by default),
                as :meth:`attribute` does with ``baselines=None``.
            end_point: The inputs x (a tensor or a tuple of tensors; dimension 0 indexes
                examples) whose activation ``h_L(x)`` is intervened on.
            target: Output indices in Captum's ``TargetType`` semantics, as in
                :meth:`attribute`.
            additional_forward_args: Extra arguments passed to ``forward_func`` after the
                inputs, for both the clean and the intervened forward pass.
            layer_baselines: Layer-space baseline used when ``start_point`` is ``None``.
            norm: Norm over the output (as in :meth:`attribute`).
            attribute_to_layer_input: Intervene on the layer's input instead of its output.
            mode: ``"forward"``, ``"reverse"`` or ``"auto"`` (as in :meth:`attribute`).
            n_steps: Integration points of the estimate whose remainder is wanted.
            method: Captum approximation method for ``n_steps > 1``.
            grad_kwargs: Keyword arguments for every ``torch.autograd.grad`` call.
            forward_kwargs: Keyword inputs for the model.

        Returns:
            The per-example remainders, shape ``(N,)`` (a list for a list of layers).

        Raises:
            ValueError: If ``attributions`` do not hold one tensor per layer with one row per
                example of ``end_point``.

        Examples:
            >>> gndi = LayerGNDI(model, model.layer3)
            >>> scores = gndi.attribute(images, target=labels)
            >>> delta = gndi.compute_convergence_delta(scores, 0.0, images, target=labels)
        """
        n_examples = as_input_tuple(end_point)[0].shape[0]
        given = [attributions] if isinstance(attributions, Tensor) else list(attributions)
        n_layers = len(self._layers) if isinstance(self.layer, (list, tuple)) else 1
        if len(given) != n_layers or any(
            not isinstance(a, Tensor) or a.dim() == 0 or a.shape[0] != n_examples for a in given
        ):
            shapes = [tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__ for a in given]
            raise ValueError(
                f"attributions must be {n_layers} tensor(s) with one row per example of "
                f"end_point ({n_examples}), got {shapes}. Pass the scores that attribute "
                "returned for end_point."
            )
        _, deltas = self.attribute(
            end_point,
            baselines=start_point,
            target=target,
            additional_forward_args=additional_forward_args,
            layer_baselines=layer_baselines,
            norm=norm,
            attribute_to_layer_input=attribute_to_layer_input,
            return_convergence_delta=True,
            mode=mode,
            n_steps=n_steps,
            method=method,
            grad_kwargs=grad_kwargs,
            forward_kwargs=forward_kwargs,
        )
        return deltas

    def _activations_at(
        self,
        forward_func: Callable[..., Any],
        inputs: tuple[Tensor, ...],
        baselines: InputBaselines,
        forward_args: Any,
        attribute_to_layer_input: bool,
    ) -> list[Tensor]:
        """Layer activations at Captum-style input baselines (one per example)."""
        expanded = expand_input_baselines(inputs, baselines)
        check_inputs(expanded)
        job = ScoringJob(
            run=make_runner(forward_func, expanded, forward_args, None),
            layers=self._layers,
            labels=self._labels,
            baselines=[None] * len(self._layers),
            attribute_to_layer_input=attribute_to_layer_input,
        )
        try:
            return capture_activations(job)[1]
        except IndexError as error:
            ids = [t for t in expanded if not t.is_floating_point() and t.numel()]
            if not ids:
                raise
            ranges = ", ".join(f"{int(t.min())}..{int(t.max())}" for t in ids)
            raise ValueError(
                f"The model failed on the input baselines with an index error ({error}); their "
                f"integer values span {ranges}. A token-id baseline must be a valid id of the "
                "model's vocabulary (0 <= id < vocab_size, e.g. tokenizer.pad_token_id)."
            ) from error

    def _format(self, values: list[Tensor]) -> Tensor | list[Tensor]:
        return values if isinstance(self.layer, (list, tuple)) else values[0]

    def _attribute_in_chunks(self, size: int, arguments: dict[str, Any]) -> Any:
        """``attribute(**arguments)`` on consecutive chunks of at most ``size`` examples,
        concatenated (``internal_batch_size``)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"internal_batch_size must be an integer >= 1, got {size!r}.")
        n = as_input_tuple(arguments["inputs"])[0].shape[0]
        results, stderrs = [], []
        for start in range(0, max(n, 1), size):
            part = {
                key: _examples(value, n, slice(start, start + size), key == "target")
                if key in _PER_EXAMPLE
                else value
                for key, value in arguments.items()
            }
            results.append(self.attribute(**part))
            stderrs.append(self.probe_stderr)
        if stderrs[0] is not None:
            self.probe_stderr = _concat(stderrs)
        if arguments["return_convergence_delta"]:
            return _concat([r[0] for r in results]), _concat([r[1] for r in results])
        return _concat(results)


_PER_EXAMPLE = (
    "inputs",
    "baselines",
    "target",
    "additional_forward_args",
    "layer_baselines",
    "forward_kwargs",
    "layer_mask",
)
"""The arguments of :meth:`LayerGNDI.attribute` that may hold one row per example."""


def _examples(value: Any, n: int, rows: slice, is_target: bool = False) -> Any:
    """The rows ``rows`` of every per-example part of ``value``: tensors with ``n`` rows (and a
    target list of ``n`` entries) are sliced, containers mapped, everything else kept."""
    if isinstance(value, Tensor):
        return value[rows] if value.dim() > 0 and value.shape[0] == n else value
    if is_target and isinstance(value, list) and len(value) == n:
        return value[rows]
    if isinstance(value, KeywordInputs):
        return value.map(lambda t: _examples(t, n, rows))
    if isinstance(value, (tuple, list)):
        return type(value)(_examples(v, n, rows) for v in value)
    if isinstance(value, dict):
        return {key: _examples(v, n, rows) for key, v in value.items()}
    return value


def _per_layer(values: list[Tensor], groups: list[list[int]]) -> list[Any]:
    """Per layer: its value, or a tuple with one per tensor of a split multi-tensor layer."""
    return [values[g[0]] if len(g) == 1 else tuple(values[i] for i in g) for g in groups]


def _concat(chunks: list[Any]) -> Any:
    """Per-chunk results (a tensor, a tuple per tensor of a layer, or a list per layer) joined
    along examples."""
    if isinstance(chunks[0], Tensor):
        return torch.cat(chunks)
    joined = [_concat(list(parts)) for parts in zip(*chunks)]
    return tuple(joined) if isinstance(chunks[0], tuple) else joined
