"""Models, weights and data used by captum_gndi's tests, benchmarks and tutorials.

All loaders work offline from local files (by default the project's shared data folder, see
:func:`shared_data_dir`) and accept the same files from any other path.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial

from torch import nn

from captum_gndi.zoo.captum_cnn import (
    CAPTUM_CIFAR_MEAN,
    CAPTUM_CIFAR_STD,
    CaptumCifarNet,
    captum_cifar_cnn,
)
from captum_gndi.zoo.cifar_resnet import (
    CIFAR_RESNET_DEPTHS,
    CIFAR_RESNET_MEAN,
    CIFAR_RESNET_STD,
    CIFAR_RESNET_URLS,
    BasicBlock,
    CifarResNet,
    PadShortcut,
    cifar_resnet,
)
from captum_gndi.zoo.data import (
    CIFAR10_CLASSES,
    CIFAR10_EXACT_PREFIXES,
    NORMALIZATIONS,
    cifar10_classes,
    cifar10_loader,
    load_cifar10,
    normalize_images,
    shared_data_dir,
)
from captum_gndi.zoo.digits import (
    DigitsResNet,
    digits_resnet,
    load_digits_dataset,
    train_digits_resnet,
)
from captum_gndi.zoo.polarity_lm import (
    POLARITY_LM_DIR,
    load_polarity_lm,
    load_polarity_sentences,
    polarity_lm_perplexity,
)
from captum_gndi.zoo.resnet18_cifar import TorchvisionBasicBlock, resnet18_cifar
from captum_gndi.zoo.smollm2 import (
    SMOLLM2_DISTRIBUTION,
    SMOLLM2_INSTALL,
    load_smollm2,
    smollm2_cache_dir,
    smollm2_gguf_file,
)
from captum_gndi.zoo.weights import WeightsSource, load_weights, read_state_dict

__all__ = [
    "BasicBlock",
    "CAPTUM_CIFAR_MEAN",
    "CAPTUM_CIFAR_STD",
    "CIFAR10_CLASSES",
    "CIFAR10_EXACT_PREFIXES",
    "CIFAR_RESNET_DEPTHS",
    "CIFAR_RESNET_MEAN",
    "CIFAR_RESNET_STD",
    "CIFAR_RESNET_URLS",
    "CaptumCifarNet",
    "CifarResNet",
    "DigitsResNet",
    "MODEL_NAMES",
    "NORMALIZATIONS",
    "POLARITY_LM_DIR",
    "PadShortcut",
    "SMOLLM2_DISTRIBUTION",
    "SMOLLM2_INSTALL",
    "TorchvisionBasicBlock",
    "WeightsSource",
    "captum_cifar_cnn",
    "cifar10_classes",
    "cifar10_loader",
    "cifar_resnet",
    "digits_resnet",
    "get_model",
    "load_cifar10",
    "load_digits_dataset",
    "load_polarity_lm",
    "load_polarity_sentences",
    "load_smollm2",
    "load_weights",
    "normalize_images",
    "polarity_lm_perplexity",
    "read_state_dict",
    "resnet18_cifar",
    "shared_data_dir",
    "smollm2_cache_dir",
    "smollm2_gguf_file",
    "train_digits_resnet",
]

_CONSTRUCTORS: dict[str, Callable[..., nn.Module]] = {
    **{f"cifar-resnet{d}": partial(cifar_resnet, d) for d in CIFAR_RESNET_DEPTHS},
    "cifar-resnet18": resnet18_cifar,
    "captum-cifar-cnn": captum_cifar_cnn,
    "digits-resnet": digits_resnet,
}
MODEL_NAMES = tuple(_CONSTRUCTORS)
"""Names accepted by :func:`get_model`."""


def get_model(name: str, weights: WeightsSource | None = None) -> nn.Module:
    """Build a zoo model by name.

    Args:
        name: One of :data:`MODEL_NAMES`: ``"cifar-resnet20"``, ``"cifar-resnet32"``,
            ``"cifar-resnet44"``, ``"cifar-resnet56"``, ``"cifar-resnet18"``,
            ``"captum-cifar-cnn"``, ``"digits-resnet"``.
        weights: Optional path, URL or state dict loaded strictly into the model.

    Returns:
        The model in eval mode.

    Raises:
        ValueError: For an unknown name (the message lists the known names and close matches).

    Examples:
        >>> model = get_model("cifar-resnet20", CIFAR_RESNET_URLS[20])
    """
    if name not in _CONSTRUCTORS:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(f"unknown model {name!r}; {hint}known models: {', '.join(MODEL_NAMES)}")
    return _CONSTRUCTORS[name](weights=weights)


def __getattr__(name: str) -> object:
    """``train_polarity_lm`` moved to ``experiments/train_polarity_lm.py`` (deprecated here)."""
    if name == "train_polarity_lm":
        from captum_gndi.zoo import polarity_lm

        return getattr(polarity_lm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
