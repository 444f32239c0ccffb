"""Per-token G-NDI of a generated sequence, as Captum's ``LLMAttributionResult``.

Captum's ``LLMAttribution`` / ``LLMGradientAttribution`` accept only their own lists of
attribution methods, so ``LayerGNDI`` cannot be plugged into them. :func:`llm_gndi` does what
``LLMGradientAttribution`` does with a layer method on the input embeddings: for every token
``y_i`` of the target sequence it scores each prompt token by the G-NDI of intervening on that
token's embedding (``do(e_t := b)``) on the output ``log p(y_i | prompt, y_<i)``, and returns
an ``LLMAttributionResult`` (``seq_attr`` over prompt tokens, ``token_attr`` per target token,
``output_probs``), so Captum's ``plot_token_attr`` / ``plot_seq_attr`` work unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import LLMAttributionResult
from torch import Tensor, nn

from .attr import LayerGNDI
from .interventions.model_state import preserve_model

__all__ = ["llm_gndi"]


class _TargetLogProb(nn.Module):
    """``log p(target_token | ids)`` at the last position, per example: ``(N, 1)``."""

    def __init__(self, model: nn.Module, token: int) -> None:
        super().__init__()
        self.model, self.token = model, token

    def forward(self, input_ids: Tensor) -> Tensor:
        logits = self.model(input_ids=input_ids).logits[:, -1]
        return torch.log_softmax(logits.float(), dim=-1)[:, self.token : self.token + 1]


@preserve_model
@torch.no_grad()
def _generate(model: Any, ids: Tensor, max_new_tokens: int) -> Tensor:
    output = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, ids.shape[1] :]


def llm_gndi(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    target: str | Tensor | None = None,
    *,
    max_new_tokens: int = 8,
    layer: nn.Module | None = None,
    layer_baselines: Any = None,
    signed: bool = True,
) -> LLMAttributionResult:
    """Per-token G-NDI of a target sequence, in Captum's ``LLMAttributionResult``.

    Args:
        model: A Hugging Face causal LM (its output has ``logits``; ``generate`` for
            ``target=None``), in eval mode.
        tokenizer: Its tokenizer (``prompt`` is encoded with its special tokens, a string
            ``target`` without).
        prompt: The input text.
        target: The target sequence (text or token ids); ``None`` generates ``max_new_tokens``
            tokens greedily, as Captum's ``LLMAttribution`` does.
        max_new_tokens: Tokens to generate when ``target`` is ``None``.
        layer: Where the prompt tokens are intervened on (default: the model's input
            embeddings, one unit per token position).
        layer_baselines: The value a token's embedding is set to (default zero; see
            :meth:`LayerGNDI.attribute`).
        signed: The signed first-order effect on the log probability (as Captum's gradient
            methods); ``False`` gives its absolute value.

    Returns:
        ``LLMAttributionResult`` with ``input_tokens`` (the prompt's), ``output_tokens``,
        ``seq_attr`` ``(P,)`` (summed over target tokens), ``token_attr`` ``(n_target, P)``
        and ``output_probs`` (the probability of each target token).

    Raises:
        ValueError: For an empty target.

    Examples:
        >>> lm, tokenizer = captum_gndi.zoo.load_polarity_lm()
        >>> result = llm_gndi(lm, tokenizer, "a gripping , funny", " and moving film")
        >>> result.token_attr.shape  # (3 target tokens, 5 prompt tokens)
        >>> fig, ax = result.plot_token_attr()
    """
    device = next(model.parameters()).device
    ids = torch.as_tensor(tokenizer(prompt)["input_ids"], device=device)[None]
    if target is None:
        target_ids = _generate(model, ids, max_new_tokens)
    elif isinstance(target, str):
        target_ids = torch.as_tensor(
            tokenizer(target, add_special_tokens=False)["input_ids"], device=device
        )
    else:
        target_ids = torch.as_tensor(target, device=device).flatten()
    if target_ids.numel() == 0:
        raise ValueError("The target sequence is empty; give a target or max_new_tokens >= 1.")
    layer = model.get_input_embeddings() if layer is None else layer
    n_prompt = ids.shape[1]
    rows, probs = [], []
    for i, token in enumerate(target_ids.tolist()):
        sequence = torch.cat([ids, target_ids[:i][None]], dim=1)
        log_prob = _TargetLogProb(model, token)
        scores = LayerGNDI(log_prob, layer).attribute(
            sequence,
            layer_baselines=layer_baselines,
            granularity="channel",
            channel_dim=1,  # one unit per token position
            signed=signed,
        )
        rows.append(scores[0, :n_prompt].detach())
        with torch.no_grad():
            probs.append(float(log_prob(sequence).exp()))
    token_attr = torch.stack(rows).cpu()
    return LLMAttributionResult(
        input_tokens=tokenizer.convert_ids_to_tokens(ids[0].tolist()),
        output_tokens=tokenizer.convert_ids_to_tokens(target_ids.tolist()),
        seq_attr=token_attr.sum(0),
        token_attr=token_attr,
        output_probs=torch.tensor(probs),
    )
