"""Where to intervene: intervention points of common model families, by name.

:func:`find_layers` returns a model's intervention points of a chosen ``kind`` (residual
blocks, residual branches, attention/MLP sublayers, attention heads, convolutions, linear
layers), :func:`describe_layers` prints them with what an intervention there means,
:func:`get_layer` resolves a dotted name, and :func:`register_adapter` teaches all three a
model class of your own (:func:`register_residual_block` / :func:`register_plain_model` teach the
torchvision adapter a block or a plain CNN; the project's zoo registers its models this way).
torchvision and transformers are imported only when a model from them is passed in.
``docs/adapters.md`` has the table of points per family.
"""

from .describe import describe_layers
from .generic import (
    GRANULARITIES,
    KINDS,
    LayerNotFoundError,
    Point,
    UnsupportedKind,
    check_kind,
    get_layer,
)
from .registry import Adapter, find_layers, find_points, register_adapter, unregister_adapter
from .torchvision import expose_heads, register_plain_model, register_residual_block
from .transformers import (
    ModelLogits,
    SentenceEmbedding,
    eager_attention,
    exclude_padding,
    model_logits,
    sentence_embedding,
)

__all__ = [
    "GRANULARITIES",
    "KINDS",
    "Adapter",
    "LayerNotFoundError",
    "ModelLogits",
    "Point",
    "SentenceEmbedding",
    "UnsupportedKind",
    "check_kind",
    "describe_layers",
    "eager_attention",
    "exclude_padding",
    "expose_heads",
    "find_layers",
    "find_points",
    "get_layer",
    "model_logits",
    "register_adapter",
    "register_plain_model",
    "register_residual_block",
    "sentence_embedding",
    "unregister_adapter",
]
