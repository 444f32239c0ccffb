"""Shared pytest fixtures."""

from pathlib import Path

import pytest

from captum_gndi.zoo import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (``$CAPTUM_GNDI_DATA`` or ``<repo>/../shared/data``), else skip."""
    root = shared_data_dir()
    if root is None or not root.is_dir():
        where = root or "<repo root>/../shared/data"
        pytest.skip(f"shared data folder not found at {where}; set CAPTUM_GNDI_DATA to its path")
    return root


@pytest.fixture(scope="session")
def smollm2():
    """``(model, tokenizer)`` of the real SmolLM2-135M-Instruct (dequantised once into the user
    cache on the first use, seconds later), else skip with the install command."""
    from captum_gndi.zoo import load_smollm2

    try:
        return load_smollm2()
    except (FileNotFoundError, ImportError) as err:  # not installed: the message says how
        pytest.skip(f"SmolLM2 is not available: {err}")
