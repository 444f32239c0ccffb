"""captum_gndi: G-NDI (General Neuro-Dynamic Importance) layer importance for Captum.

G-NDI scores a layer L by ``E_x || J_{>L}(x) (h_L(x) - b_L) ||_p``, the first-order estimate of
how far the model output moves under the intervention do(h_L := b_L).
"""

from . import zoo
from .adapters import (
    describe_layers,
    eager_attention,
    expose_heads,
    find_layers,
    get_layer,
    model_logits,
    register_adapter,
    sentence_embedding,
)
from .attr import LayerGNDI
from .captum_metrics import explanation_func, layer_forward_func
from .interventions import Heads, InterventionError, LayerCall
from .llm import llm_gndi
from .scoring import GNDIResult, compute_gndi, mean_activations
from .verify import verify_top_k

__all__ = [
    "GNDIResult",
    "Heads",
    "InterventionError",
    "LayerCall",
    "LayerGNDI",
    "compute_gndi",
    "describe_layers",
    "eager_attention",
    "explanation_func",
    "expose_heads",
    "find_layers",
    "get_layer",
    "layer_forward_func",
    "llm_gndi",
    "mean_activations",
    "model_logits",
    "register_adapter",
    "sentence_embedding",
    "verify_top_k",
    "zoo",
]

__version__ = "0.1.0"
