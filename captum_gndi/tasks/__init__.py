"""Counterfactual patching tasks: clean / corrupted prompt pairs, answers and task metrics.

A :class:`PatchingTask` is what LLM interpretability calls a patching set-up: a clean prompt, a
corrupted prompt of the same token length, and the token ids of the correct and the distractor
answer. The generators (:func:`ioi`, :func:`factual_recall`, :func:`induction`) build tasks from
word lists shipped with the package (:mod:`captum_gndi.tasks.words`); :func:`logit_diff` wraps a
causal LM into the task metric and :func:`check_task` measures (and warns) whether a model does
a task.
"""

from .core import PatchingBatch, PatchingTask, check_patching_batches, is_patching_data
from .factual_recall import FACT_TEMPLATES, factual_recall
from .induction import induction
from .ioi import ioi
from .metrics import LogitDiff, TaskMetrics, check_task, logit_diff
from .prompts import PromptPair, build_task, single_tokens

__all__ = [
    "FACT_TEMPLATES",
    "LogitDiff",
    "PatchingBatch",
    "PatchingTask",
    "PromptPair",
    "TaskMetrics",
    "build_task",
    "check_patching_batches",
    "check_task",
    "factual_recall",
    "induction",
    "ioi",
    "is_patching_data",
    "logit_diff",
    "single_tokens",
]
