"""Loading state dicts from a local file, a URL or a mapping, with one-line errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch
from torch import Tensor, nn

__all__ = ["WeightsSource", "read_state_dict", "load_weights"]

WeightsSource = Union[str, os.PathLike, Mapping[str, Tensor]]
"""A checkpoint path, an ``http(s)://`` URL, or an already loaded state dict."""


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def _read_file(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path}; check the path or pass a URL or a state dict instead"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"could not read checkpoint {path} ({reason}); the file is corrupt or not a "
            "PyTorch checkpoint: download it again"
        ) from err


def read_state_dict(source: WeightsSource) -> dict[str, Tensor]:
    """Read a state dict and normalise its layout.

    Accepts a plain state dict or a training checkpoint that wraps one under ``"state_dict"`` (the
    layout of akamaster's ``.th`` files) and strips the ``module.`` prefix that
    ``nn.DataParallel`` adds to every key. Files are read with ``weights_only=True`` on the CPU.

    Args:
        source: Path to a local checkpoint, an ``http(s)://`` URL (downloaded once into the
            ``torch.hub`` cache with :func:`torch.hub.load_state_dict_from_url`; a file name of
            the form ``name-<sha256 prefix>.ext`` is checked against its hash), or a mapping from
            parameter names to tensors.

    Returns:
        A new ``dict`` from parameter/buffer names (without ``module.``) to tensors.

    Raises:
        FileNotFoundError: If a local path does not exist.
        ValueError: If the file cannot be read or holds no state dict.

    Examples:
        >>> sd = read_state_dict("../shared/data/cifar_resnets/resnet20-12fca82f.th")
        >>> sd["conv1.weight"].shape
        torch.Size([16, 3, 3, 3])
    """
    if isinstance(source, Mapping):
        loaded: object = source
        origin = "the given mapping"
    elif _is_url(source):
        loaded = torch.hub.load_state_dict_from_url(
            source, map_location="cpu", check_hash=True, weights_only=True
        )
        origin = str(source)
    elif isinstance(source, (str, os.PathLike)):
        loaded = _read_file(Path(source).expanduser())
        origin = str(source)
    else:
        raise TypeError(
            f"weights must be a path, a URL or a state dict, got {type(source).__name__}"
        )
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(
            f"{origin} holds no state dict (expected a mapping of names to tensors, "
            "optionally under 'state_dict'); save one with torch.save(model.state_dict(), path)"
        )
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_weights(model: nn.Module, source: WeightsSource, model_name: str) -> nn.Module:
    """Load weights into ``model`` strictly, explaining a mismatch in one line.

    Args:
        model: The freshly built model.
        source: See :func:`read_state_dict`.
        model_name: Human-readable name of the architecture, used in error messages.

    Returns:
        ``model`` itself, with the weights loaded.

    Raises:
        ValueError: If keys or shapes do not match the architecture.

    Examples:
        >>> load_weights(captum_cifar_cnn(), "captum_cifar_torchvision.pt", "captum-cifar-cnn")
    """
    state = read_state_dict(source)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint does not fit {model_name}: {_mismatch(model.state_dict(), state)}; "
            "pass the checkpoint made for this architecture"
        ) from err
    return model


def _mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str:
    # Old checkpoints lack BatchNorm's num_batches_tracked, which load_state_dict tolerates.
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(state) if expected[k].shape != state[k].shape
    )
    problems = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong_shape),
    ):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label} keys ({shown})")
    return "; ".join(problems) or "keys do not match"
