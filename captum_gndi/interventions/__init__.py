"""How captum_gndi intervenes on a network: the one package that edits activations.

Modules, from the bottom up:

- :mod:`~captum_gndi.interventions.hooks`: :func:`intervene`, the one hook helper (every hook
  the package registers), and the intervention points :class:`LayerCall` and :class:`Heads`.
- :mod:`~captum_gndi.interventions.model_state`: :func:`~.model_state.preserve_model`, the
  guard of every entry point (a module-global forward pre-hook on the calling thread: buffers
  restored, one warning naming the submodules in training mode whose flag matters).
- :mod:`~captum_gndi.interventions.suffix`: :class:`~.suffix.TracedModel`, a :mod:`torch.fx`
  trace split at each layer (the only use of :mod:`torch.fx`).
- :mod:`~captum_gndi.interventions.edits`: :func:`set_units`, what an intervention does to an
  activation (stacked copies, each with one unit set to its baseline).
- :mod:`~captum_gndi.interventions.damage`: the damage metrics' one registry
  (:data:`METRICS`, :func:`resolve_damage`).
- :mod:`~captum_gndi.interventions.backends`: the two back ends with one interface (hooks on
  the full forward pass, or the traced suffix) and :func:`~.backends.make_backend`.
- :mod:`~captum_gndi.interventions.selection`: :class:`~.selection.Unit`, the one unit type,
  and :func:`~.selection.select_units`.
- :mod:`~captum_gndi.interventions.lfa`: the ground truth of ``layer_mask`` groups (Captum's
  ``LayerFeatureAblation``).
- :mod:`~captum_gndi.interventions.ablation`: batched ablation (:func:`~.ablation.batch_damage`,
  :func:`~.ablation.ablate`, :func:`~.ablation.intervened_output`).
- :mod:`~captum_gndi.interventions.patching`: exact activation patching in TransformerLens's
  shapes, on :func:`~.ablation.batch_damage` with per-example baselines.

This package re-exports the public names of ``hooks``, ``edits`` and ``damage``, which import
nothing else of captum_gndi. ``selection``, ``lfa``, ``ablation`` and ``patching`` read data
and batches through :mod:`captum_gndi.runs` (which itself imports the hook helper), so they,
like ``suffix`` and ``backends``, are imported by their full path
(``from captum_gndi.interventions.ablation import ablate``) or through the public re-exports
of :mod:`captum_gndi.validation`; importing them here would be an import cycle.
"""

from .damage import (
    ALIASES,
    DAMAGE_METRICS,
    LABELLED_DEFAULT,
    LABELLED_METRICS,
    METRICS,
    UNLABELLED_DEFAULT,
    Damage,
    DamageMetric,
    default_damage,
    resolve_damage,
)
from .edits import set_units
from .hooks import (
    EditFn,
    Heads,
    InterventionError,
    LayerCall,
    LayerSpec,
    check_layers_in_model,
    count_calls,
    intervene,
    layer_label,
    module_of,
)

__all__ = [
    "ALIASES",
    "DAMAGE_METRICS",
    "LABELLED_DEFAULT",
    "LABELLED_METRICS",
    "METRICS",
    "UNLABELLED_DEFAULT",
    "Damage",
    "DamageMetric",
    "EditFn",
    "Heads",
    "InterventionError",
    "LayerCall",
    "LayerSpec",
    "check_layers_in_model",
    "count_calls",
    "default_damage",
    "intervene",
    "layer_label",
    "module_of",
    "resolve_damage",
    "set_units",
]
