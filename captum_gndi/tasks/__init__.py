"""Counterfactual patching tasks: clean / corrupted prompt pairs, answers and task metrics.

A :class:`PatchingTask` is what LLM interpretability calls a patching set-up: a clean prompt, a
corrupted prompt of the same token length, and the token ids of the correct and the distractor
answer. The generators (:func:`ioi`, :func:`factual_recall`, :func:`induction`) build tasks from
word lists shipped with the package; :func:`logit_diff` wraps a causal LM into the task metric.
"""

from .core import PatchingBatch, PatchingTask, is_patching_data

__all__ = ["PatchingBatch", "PatchingTask", "is_patching_data"]
