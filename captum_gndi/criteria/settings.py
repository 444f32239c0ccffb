"""The criteria's options, written once: :class:`CriterionSettings`.

Every option the criteria read (which units, the baseline, the target, integration points,
seeds, device, progress, batch limit, ``layer_mask``) is a field of one frozen dataclass, with
its default and its check. :func:`~captum_gndi.criteria.build_context` and
:func:`~captum_gndi.criteria.score_criteria` take it as ``settings=``, or build it from their
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
        n_channels: Random sample size of channels (groups) (see
            :func:`~captum_gndi.interventions.selection.select_units`); ``None``: all.
        seed: Seed of the channel sample and of ``random``.
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
        ValueError: For ``n_steps`` or ``n_random`` below 1, an unknown target or an unknown
            integration rule.

    Examples:
        >>> settings = CriterionSettings(granularity="channel", n_steps=32)
        >>> scores, _ = score_criteria(model, loader, ["0", "2"], ["gndi_path"], settings=settings)
    """

    granularity: str = "layer"
    baseline: BaselineChoice = "zero"
    target: DataTarget = "label"
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
