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
    import importlib.util

    from captum_gndi.zoo import SMOLLM2_INSTALL, load_smollm2, smollm2_cache_dir, smollm2_gguf_file
    from captum_gndi.zoo.smollm2 import SOURCE_FILE

    cached = (smollm2_cache_dir() / SOURCE_FILE).is_file()
    if not cached:
        try:
            smollm2_gguf_file()
        except FileNotFoundError:
            pytest.skip(f"SmolLM2 is neither cached nor installed: {SMOLLM2_INSTALL}")
        missing = [
            n for n in ("transformers", "gguf", "accelerate") if not importlib.util.find_spec(n)
        ]
        if missing:
            pytest.skip(f"dequantising SmolLM2 needs {', '.join(missing)}: {SMOLLM2_INSTALL}")
    return load_smollm2()
