"""Output wrappers for Hugging Face models: a tensor-valued model from a ``ModelOutput``.

G-NDI needs a model whose forward returns a tensor. :func:`sentence_embedding` wraps an encoder
as its attention-masked mean-pooled embedding ``(N, D)``; :func:`model_logits` wraps a model whose
output has a ``logits`` field (optionally at one token position, the last *real* token for
next-token logits of a padded batch). ``transformers`` is never imported here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ModelLogits", "SentenceEmbedding", "model_logits", "sentence_embedding"]


class SentenceEmbedding(nn.Module):
    """Mean-pooled sentence embedding of a Hugging Face encoder, as a tensor-valued model.

    ``forward(input_ids, attention_mask=None)`` returns the mean of the last hidden state over
    the tokens where ``attention_mask`` is 1 (all tokens without a mask), shape ``(N, D)``: the
    pooling of sentence-transformers models such as all-MiniLM-L6-v2. The encoder is kept as
    ``self.model``, so ``find_layers(wrapper.model)`` returns modules that are submodules of the
    wrapper, and the names of ``find_layers(wrapper)`` are those names prefixed with
    ``"model."``.

    Args:
        model: The encoder (for example a ``BertModel``).
        normalize: L2-normalise the embeddings, as the full all-MiniLM-L6-v2 pipeline
            (Transformer, Pooling, Normalize) does.

    Examples:
        >>> embed = SentenceEmbedding(bert).eval()
        >>> points = find_layers(embed.model, "mlp")
        >>> LayerGNDI(embed, list(points.values())).attribute(ids, additional_forward_args=mask)
    """

    def __init__(self, model: nn.Module, normalize: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalize = normalize

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """Embed a batch of token ids.

        Args:
            input_ids: Token ids, ``(N, T)``.
            attention_mask: 1 for real tokens and 0 for padding, ``(N, T)``.
            **kwargs: Passed on to the encoder (e.g. ``token_type_ids``).

        Returns:
            The pooled embeddings, ``(N, D)``.
        """
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            hidden = output[0]
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1) if self.normalize else pooled


class ModelLogits(nn.Module):
    """A Hugging Face model whose forward returns ``.logits`` instead of a ``ModelOutput``.

    The model is kept as ``self.model`` (see :class:`SentenceEmbedding` for what that means for
    layer names).

    Args:
        model: A model whose output has a ``logits`` field (a ``...ForSequenceClassification``,
            ``...ForCausalLM``, ``ViTForImageClassification``, ...).
        token_index: For per-token logits ``(N, T, V)``, keep only this position (``-1``: the
            next-token prediction, at the last real token of each row when an
            ``attention_mask`` is passed, so right-padded batches score no pad position),
            giving ``(N, V)``; ``None`` keeps all logits.

    Examples:
        >>> clf = ModelLogits(vit_classifier).eval()
        >>> LayerGNDI(clf, find_layers(clf.model)["vit.encoder.layer.0.output.dense"])
    """

    def __init__(self, model: nn.Module, token_index: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.token_index = token_index

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Run the model and return its logits.

        Args:
            *args: Positional inputs of the model (``input_ids``, ``pixel_values``, ...).
            **kwargs: Keyword inputs of the model.

        Returns:
            The logits (at ``token_index`` if one was given).

        Raises:
            ValueError: If ``token_index`` is set and the logits are not ``(N, T, V)``.
        """
        output = self.model(*args, **kwargs)
        logits = getattr(output, "logits", None)
        if logits is None:
            logits = output[0]
        if self.token_index is None:
            return logits
        if logits.dim() != 3:
            raise ValueError(
                f"token_index needs per-token logits (N, T, V); the model returned shape "
                f"{tuple(logits.shape)}. Use model_logits(model) without token_index."
            )
        mask = kwargs.get("attention_mask")
        if mask is None or self.token_index != -1:
            return logits[:, self.token_index]
        # the last *real* token of each row (right or left padding), not a pad position
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, -1).max(1).values.clamp_min(0)
        return logits[torch.arange(logits.shape[0], device=logits.device), last]


def sentence_embedding(model: nn.Module, normalize: bool = False) -> SentenceEmbedding:
    """Wrap an encoder as a model returning attention-masked mean-pooled embeddings ``(N, D)``.

    Args:
        model: A Hugging Face encoder (``BertModel``, ...).
        normalize: L2-normalise the embeddings (the last step of all-MiniLM-L6-v2's pipeline).

    Returns:
        A :class:`SentenceEmbedding` in the encoder's training mode.

    Examples:
        >>> embed = sentence_embedding(AutoModel.from_pretrained(path)).eval()
        >>> vectors = embed(batch["input_ids"], batch["attention_mask"])
    """
    return SentenceEmbedding(model, normalize=normalize).train(model.training)


def model_logits(model: nn.Module, token_index: int | None = None) -> ModelLogits:
    """Wrap a Hugging Face model so that its forward returns ``.logits``.

    Args:
        model: A model whose output has a ``logits`` field.
        token_index: Keep only this sequence position of ``(N, T, V)`` logits (``-1``: next
            token); ``None`` keeps everything.

    Returns:
        A :class:`ModelLogits` in the model's training mode.

    Examples:
        >>> lm = model_logits(gpt2_lm_head_model, token_index=-1).eval()
        >>> LayerGNDI(lm, find_layers(lm.model)["transformer.h.0.mlp.c_proj"]).attribute(
        ...     input_ids, target=next_token_ids)
    """
    return ModelLogits(model, token_index=token_index).train(model.training)
