"""The criteria's options, written once: :class:`CriterionSettings`.

Every option the criteria read (which units, the baseline, the target, how G-NDI reads the
output, integration points, seeds, device, progress, batch limit, ``layer_mask``) is a field of
one frozen dataclass, with its default and its check. :func:`~captum_gndi.criteria.build_context`
and :func:`~captum_gndi.criteria.score_criteria` take it as ``settings=``, or build it from their
keyword arguments (:meth:`CriterionSettings.from_options`), so an option is added here and
nowhere else. The validation harness and the command line pass the same keywords on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch

from .._captum_compat import integration_points
from ..baselines import LayerBaseline
from ..readouts import make_readout
from ..runs import DataTarget, check_data_target
from ..units import LayerMask

__all__ = ["BaselineChoice", "CriterionSettings"]

BaselineChoice = Union[str, float, Mapping[str, LayerBaseline]]
"""``"zero"``, ``"mean"``, a number, or a dict layer name -> layer baseline."""


@dataclass(frozen=True)
class CriterionSettings:
    """How the criteria run: the options of every criterion, with their defaults, checked once.

    Attributes:
        granularity: ``"layer"``, ``"channel"`` or ``"group"`` (ignored when units are passed;
            ``"group"`` is implied by ``layer_mask``).
        baseline: ``"zero"``, ``"mean"``, a number, or a dict name -> layer baseline; used by
            G-NDI, gradient x activation and activation change.
        target: Output of the loss- and logit-based criteria: ``"label"``, ``"predicted"``, a
            class index, or ``None`` (embedding models: those criteria are then undefined).
        gndi_target: The output(s) the G-NDI criteria (``gndi``, ``gndi_path``) take the norm
            over: ``None`` (the whole output, default), a class index, ``"label"`` or
            ``"predicted"`` (one output per example: one backward pass instead of one per
            output); ``compute_gndi``'s ``target``.
        norm: G-NDI's norm over the output: ``"l1"``, ``"l2"`` (default), ``"linf"``, a number
            ``p >= 1`` or ``"fisher"`` (see :mod:`captum_gndi.readouts`); ``compute_gndi``'s
            ``norm``.
        n_probes: Estimate G-NDI's squared L2 / Fisher norm from this many random
            vector-Jacobian products per batch (``None``: exact); ``compute_gndi``'s
            ``n_probes``, with ``seed`` as its ``probe_seed``.
        n_channels: Random sample size of channels (groups) (see
            :func:`~captum_gndi.interventions.selection.select_units`); ``None``: all.
        seed: Seed of the channel sample, of ``random`` and of G-NDI's probes (batch ``i``
            uses ``seed + i``, as ``compute_gndi(probe_seed=seed)`` does).
        n_random: Seeds of the ``random`` control (one row each).
        n_steps: Integration points of ``gndi_path``, ``layer_conductance`` and
            ``layer_integrated_gradients``.
        method: Captum's integration rule of those (``"gausslegendre"``, ...).
        channel_dim: Activation dimension holding channels.
        device: Where to run (``None``: the model's device; a context holds the resolved
            ``torch.device``).
        progress: Show progress bars.
        max_batches: Use at most this many batches.
        layer_mask: Groups as units, with Captum's ``LayerFeatureAblation`` semantics (one mask
            for every layer or a dict name -> mask; see :mod:`captum_gndi.criteria.groups`).

    Raises:
        ValueError: For ``n_steps`` or ``n_random`` below 1, an unknown target or
            ``gndi_target``, a norm that is none, ``n_probes`` below 1 or with a norm other than
            L2 / Fisher, the Fisher norm with a ``gndi_target``, or an unknown integration rule.

    Examples:
        >>> settings = CriterionSettings(granularity="channel", n_steps=32)
        >>> scores, _ = score_criteria(model, loader, ["0", "2"], ["gndi_path"], settings=settings)
        >>> fisher = CriterionSettings(norm="fisher", n_probes=8)  # compute_gndi's numbers
    """

    granularity: str = "layer"
    baseline: BaselineChoice = "zero"
    target: DataTarget = "label"
    gndi_target: DataTarget = None
    norm: str | float = "l2"
    n_probes: int | None = None
    n_channels: int | None = None
    seed: int = 0
    n_random: int = 10
    n_steps: int = 16
    method: str = "gausslegendre"
    channel_dim: int = 1
    device: torch.device | str | None = None
    progress: bool = True
    max_batches: int | None = None
    layer_mask: LayerMask | None = None

    def __post_init__(self) -> None:
        if self.n_steps < 1 or self.n_random < 1:
            raise ValueError(
                f"n_steps and n_random must be >= 1, got {self.n_steps} and {self.n_random}."
            )
        check_data_target(self.target)
        try:
            check_data_target(self.gndi_target)
        except ValueError as error:
            raise ValueError(
                f"gndi_target (the output G-NDI measures) must be None (the whole output), a "
                f"class index, 'label' or 'predicted', got {self.gndi_target!r}."
            ) from error
        readout = make_readout(self.norm, self.n_probes)  # the norm's and the probes' checks
        if readout.fisher and self.gndi_target is not None:
            raise ValueError(
                f"norm='fisher' reads the softmax over every class, but gndi_target="
                f"{self.gndi_target!r} keeps one output per example; drop gndi_target (the whole "
                "output) or use a p-norm such as norm='l2'."
            )
        integration_points(self.n_steps, self.method)  # validates the rule's name

    @classmethod
    def from_options(
        cls, settings: CriterionSettings | None = None, **options: Any
    ) -> CriterionSettings:
        """``settings`` (default: all defaults) with the given options replaced.

        Args:
            settings: Settings to start from.
            **options: Fields of :class:`CriterionSettings`.

        Returns:
            The (checked) settings.

        Raises:
            TypeError: For a keyword that is no field (the message lists the fields).

        Examples:
            >>> CriterionSettings.from_options(n_steps=8).n_steps
            8
        """
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise TypeError(f"Unknown criterion option(s) {unknown}; the options are {fields}.")
        return dataclasses.replace(settings or cls(), **options)
