"""Attention-backend switching: eager, forward-differentiable attention inside a ``with`` block.

:func:`eager_attention` switches Hugging Face models to their eager attention, restricts
``scaled_dot_product_attention`` to its math backend and turns off ``nn.MultiheadAttention``'s
fast path, restoring all three on exit. ``transformers`` is never imported here: models are
recognised by the module path of their classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["eager_attention"]


def _is_pretrained(module: nn.Module) -> bool:
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
        for cls in type(module).__mro__
    )


def _can_switch(module: nn.Module) -> bool:
    if not hasattr(module, "set_attn_implementation"):
        return False
    check = getattr(module, "_can_set_attn_implementation", None)
    try:
        return check() if callable(check) else True
    except OSError:  # transformers 4.x reads the model's source file to decide
        return False


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Make attention forward-mode differentiable on CPU for the duration of a ``with`` block.

    PyTorch has no forward-AD formula for the fused CPU kernels of
    ``scaled_dot_product_attention`` (SDPA) or for ``nn.MultiheadAttention``'s fast path, so
    forward-mode G-NDI fails on them (``mode="auto"`` then falls back to reverse mode). Inside
    the block:

    - every Hugging Face ``PreTrainedModel`` in ``model`` that can switch its attention at run
      time is set to ``"eager"`` with ``set_attn_implementation`` and restored afterwards.
      transformers 5 models and the 4.x models written against ``AttentionInterface`` (GPT-2,
      Llama, Mistral, Qwen2, ViT in 4.57) switch; 4.x models that pick an attention class when
      they are built (BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA in 4.57) do not;
    - SDPA is restricted to its math backend (``torch.nn.attention.sdpa_kernel``), which has
      forward AD, so the models that could not switch work too;
    - the ``nn.MultiheadAttention`` fast path (torchvision's ViT) is turned off.

    All three are restored on exit, also after an exception. The numbers are the same up to
    floating-point rounding.

    Args:
        model: The model, or a wrapper containing it.

    Yields:
        The model.

    Examples:
        >>> with eager_attention(model):
        ...     scores = LayerGNDI(model, layers).attribute(ids, mode="forward")
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    switched: list[tuple[nn.Module, str]] = []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        for module in model.modules():
            current = getattr(getattr(module, "config", None), "_attn_implementation", None)
            if _is_pretrained(module) and current not in (None, "eager") and _can_switch(module):
                module.set_attn_implementation("eager")
                switched.append((module, current))
        torch.backends.mha.set_fastpath_enabled(False)
        with sdpa_kernel(SDPBackend.MATH):
            yield model
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, implementation in reversed(switched):
            module.set_attn_implementation(implementation)
