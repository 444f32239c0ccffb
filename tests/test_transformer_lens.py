"""TransformerLens adapter: hook points of HookedTransformer (3.x) and TransformerBridge (3.x/4.x).

Models are built from configs (no network): a ``HookedTransformer`` from a
``HookedTransformerConfig`` where the installed TransformerLens has it (2.x/3.x), and a
``TransformerBridge`` booted from a locally built ``GPT2LMHeadModel`` with a local tokenizer
(``boot_transformers(name, hf_model=..., tokenizer=...)`` needs neither the Hub nor a
download). Tests that need TransformerLens skip when it is not importable; CI runs this file
with TransformerLens 3.x and 4.x from ``.ci/run``. The fake-API tests at the end need nothing.
"""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from captum_gndi import Heads, LayerGNDI, compute_gndi, find_layers, get_layer, verify_top_k
from captum_gndi.adapters import LayerNotFoundError, describe_layers
from captum_gndi.adapters.transformer_lens import (
    UnsupportedTransformerLens,
    is_transformer_lens_model,
    transformer_lens_api,
    transformer_lens_points,
)
from captum_gndi.interventions.patching import patch_heads, patch_heads_by_pos
from captum_gndi.tasks import PatchingTask

N_LAYERS, N_HEADS, D_HEAD, VOCAB = 2, 2, 8, 30
SKIP_REASON = (
    "TransformerLens is not installed (pip install 'captum_gndi[tl]'); CI runs this file with "
    "TransformerLens 3.x and 4.x from .ci/run"
)


def _require(api: str) -> None:
    pytest.importorskip("transformer_lens", reason=SKIP_REASON)
    if api not in transformer_lens_api():
        pytest.skip(f"the installed TransformerLens has no {api} (4.x removed HookedTransformer)")


def _hooked() -> nn.Module:
    _require("HookedTransformer")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS,
        d_model=N_HEADS * D_HEAD,
        n_heads=N_HEADS,
        d_head=D_HEAD,
        n_ctx=16,
        d_vocab=VOCAB,
        act_fn="gelu",
        seed=0,
        device="cpu",
    )
    return HookedTransformer(cfg).eval()


def _bridge() -> nn.Module:
    _require("TransformerBridge")
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from transformer_lens.model_bridge import TransformerBridge

    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    # add_bos_token and name_or_path keep TransformerLens from reloading it by name
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="w0",
        bos_token="w1",
        eos_token="w1",
        pad_token="w2",
        add_bos_token=True,
        name_or_path="local",
    )
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=N_LAYERS,
        n_embd=N_HEADS * D_HEAD,
        n_head=N_HEADS,
        n_positions=16,
        vocab_size=VOCAB,
        initializer_range=0.3,  # effects well above rounding
        attn_implementation="eager",
    )
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers(
            "gpt2", hf_model=hf_model, tokenizer=tokenizer, device="cpu"
        )
    return bridge.eval()


_BUILDERS = {"HookedTransformer": _hooked, "TransformerBridge": _bridge}
_CACHE: dict[str, nn.Module] = {}


@pytest.fixture(params=list(_BUILDERS))
def model(request: pytest.FixtureRequest) -> nn.Module:
    """A tiny HookedTransformer or TransformerBridge (skipped where the API is missing)."""
    api = request.param
    if api not in _CACHE:
        _CACHE[api] = _BUILDERS[api]()
    return _CACHE[api]


def _tokens() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (3, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, VOCAB, (3,), generator=g)  # one corrupted position
    return clean, corrupted


def _logit_difference(model: nn.Module) -> Callable[[Tensor], Tensor]:
    def metric(tokens: Tensor) -> Tensor:
        logits = model(tokens)
        return logits[:, -1, 3] - logits[:, -1, 7]

    return metric


def _attribution_patching(
    model: nn.Module, names: list[str], clean: Tensor, corrupted: Tensor
) -> list[Tensor]:
    """AtP with TransformerLens's own hooks: ``(a_corr - a_clean) * dm/da`` at the clean run."""
    metric = _logit_difference(model)
    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    model.reset_hooks()
    try:
        for name in names:
            model.add_hook(name, lambda a, hook, n=name: acts.__setitem__(n, a.detach()), dir="fwd")
            model.add_hook(
                name, lambda g, hook, n=name: grads.__setitem__(n, g.detach()), dir="bwd"
            )
        metric(clean).sum().backward()
    finally:
        model.reset_hooks()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted, names_filter=lambda n: n in names)
    return [(cache[n] - acts[n]) * grads[n] for n in names]


def test_find_layers_kinds(model: nn.Module) -> None:
    blocks = [f"blocks.{i}" for i in range(N_LAYERS)]
    assert list(find_layers(model, "block")) == [f"{b}.hook_resid_post" for b in blocks]
    assert list(find_layers(model, "attention")) == [f"{b}.hook_attn_out" for b in blocks]
    assert list(find_layers(model, "mlp")) == [f"{b}.hook_mlp_out" for b in blocks]
    sublayers = [f"{b}.{h}" for b in blocks for h in ("hook_attn_out", "hook_mlp_out")]
    assert list(find_layers(model, "auto")) == sublayers
    assert list(find_layers(model, "branch")) == sublayers
    heads = find_layers(model, "head")
    assert list(heads) == [f"{b}.attn.hook_z" for b in blocks]
    for name, layer in {**heads, **find_layers(model, "block")}.items():
        hook = model.hook_dict[name]
        if name.endswith("hook_z") and "TransformerBridge" in type(model).__name__:
            # the bridge hands hook_z over flattened: the point reshapes it into heads
            assert isinstance(layer, Heads) and layer.module is hook and layer.n_heads == N_HEADS
        else:
            assert layer is hook
    with pytest.raises(ValueError, match="hook points"):
        find_layers(model, "conv")


def test_wrapper_names_are_prefixed(model: nn.Module) -> None:
    wrapper = nn.Module()
    wrapper.model = model
    assert is_transformer_lens_model(wrapper)
    assert list(find_layers(wrapper, "block"))[0] == "model.blocks.0.hook_resid_post"


def test_describe_layers_shows_heads_as_a_dimension(model: nn.Module) -> None:
    clean, _ = _tokens()
    rows = describe_layers(model, "head", example_inputs=clean, print_table=False)
    assert [r["output_shape"] for r in rows] == [(3, 6, N_HEADS, D_HEAD)] * N_LAYERS
    assert all(r["calls"] == 1 and "head h" in r["meaning"] for r in rows)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_per_head_gndi_is_attribution_patching_with_the_sign_flipped(
    model: nn.Module, mode: str
) -> None:
    clean, corrupted = _tokens()
    heads = find_layers(model, "head")
    atp = _attribution_patching(model, list(heads), clean, corrupted)  # (N, T, H, d_head)
    gndi = LayerGNDI(_logit_difference(model), list(heads.values()))
    per_head = gndi.attribute(
        clean,
        baselines=corrupted,
        signed=True,
        granularity="channel",
        channel_dim=2,
        norm=1,
        mode=mode,
    )
    per_position = gndi.attribute(
        clean,
        baselines=corrupted,
        signed=True,
        granularity="channel",
        channel_dim=(1, 2),
        norm=1,
        mode=mode,
    )
    unsigned = gndi.attribute(
        clean, baselines=corrupted, granularity="channel", channel_dim=2, norm=1, mode=mode
    )
    for estimate, head, position, absolute in zip(atp, per_head, per_position, unsigned):
        assert head.shape == (3, N_HEADS) and position.shape == (3, 6, N_HEADS)
        assert estimate.sum((1, 3)).abs().max() > 1e-3  # a real effect, not rounding
        torch.testing.assert_close(head, -estimate.sum((1, 3)), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(position, -estimate.sum(3), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(absolute, head.abs(), rtol=1e-4, atol=1e-6)
        assert position[:, 0].abs().max() == 0  # position 0 precedes the corruption


@pytest.mark.parametrize("kind", ["block", "attention", "mlp"])
def test_layer_gndi_at_sublayer_points_is_attribution_patching(model: nn.Module, kind: str) -> None:
    clean, corrupted = _tokens()
    layers = find_layers(model, kind)
    atp = _attribution_patching(model, list(layers), clean, corrupted)
    scores = LayerGNDI(_logit_difference(model), list(layers.values())).attribute(
        clean, baselines=corrupted, signed=True, norm=1
    )
    for estimate, score in zip(atp, scores):
        torch.testing.assert_close(score, -estimate.flatten(1).sum(1), rtol=1e-4, atol=1e-6)


def test_attention_only_model_has_no_mlp_points() -> None:
    _require("HookedTransformer")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=8, n_heads=2, d_head=4, n_ctx=8, d_vocab=10, attn_only=True
    )
    model = HookedTransformer(cfg)
    assert list(find_layers(model)) == ["blocks.0.hook_attn_out"]
    with pytest.raises(ValueError, match="attention-only"):
        find_layers(model, "mlp")


# --- hook names through get_layer, and patching tasks (compute_gndi, result.stack()) ---


def test_get_layer_resolves_every_hook_name(model: nn.Module) -> None:
    bridge = "TransformerBridge" in type(model).__name__
    for name, hook in model.hook_dict.items():
        layer = get_layer(model, name)
        if bridge and name.endswith(("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v")):
            assert isinstance(layer, Heads) and layer.module is hook and layer.n_heads == N_HEADS
            assert layer.name == name
        else:
            assert layer is hook, name
    heads = find_layers(model, "head")
    z = get_layer(model, "blocks.1.attn.hook_z")
    assert getattr(z, "module", z) is getattr(heads["blocks.1.attn.hook_z"], "module", z)
    wrapper = nn.Module()
    wrapper.model = model
    assert (
        get_layer(wrapper, "model.blocks.0.hook_resid_pre")
        is model.hook_dict["blocks.0.hook_resid_pre"]
    )
    with pytest.raises(LayerNotFoundError, match="blocks.0.attn.hook_z") as error:
        get_layer(model, "blocks.0.attn.hook_zz")
    assert "_original_component" not in str(error.value)


def _task() -> PatchingTask:
    clean, corrupted = _tokens()
    return PatchingTask(clean, corrupted, torch.tensor([[3, 7]] * len(clean)))


def _metric(logits: Tensor, answers: Tensor) -> Tensor:
    last = logits[:, -1]
    return last.gather(1, answers[:, :1]) - last.gather(1, answers[:, 1:])


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_compute_gndi_on_a_patching_task_stacks_like_a_transformer_lens_sweep(
    model: nn.Module, direction: str
) -> None:
    task = _task()
    heads = find_layers(model, "head")
    result = compute_gndi(
        model,
        task,
        heads,
        granularity="channel",
        channel_dim=(1, 2),
        metric=_metric,
        direction=direction,
        progress=False,
    )
    run, source = (task.clean, task.corrupted)
    if direction == "denoising":
        run, source = source, run
    atp = _attribution_patching(model, list(heads), run, source)  # (N, T, H, d_head) per layer
    expected = -torch.stack([a.sum(3).mean(0) for a in atp])  # [layer, pos, head]
    stacked = result.stack()
    assert stacked.shape == (N_LAYERS, 6, N_HEADS)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(stacked.float(), expected, rtol=1e-4, atol=1e-6)
    assert result.settings["direction"] == direction


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_verify_top_k_on_a_patching_task_is_the_top_of_the_exact_sweep(
    model: nn.Module, direction: str
) -> None:
    task = _task()
    heads = find_layers(model, "head")
    swept = patch_heads_by_pos(model, task, heads, metric=_metric, direction=direction)
    result = verify_top_k(
        model, task, heads, k=3, channel_dim=(1, 2), metric=_metric, direction=direction,
        progress=False,
    )  # fmt: skip
    flat = swept.flatten()
    order = flat.abs().argsort(descending=True)[:3].tolist()
    per_layer = 6 * N_HEADS
    assert result.units == [(list(heads)[i // per_layer], i % per_layer) for i in order]
    torch.testing.assert_close(torch.tensor(result.effects), flat[order], rtol=1e-5, atol=1e-7)


def test_exact_sweeps_equal_transformer_lens_get_act_patch_attn_head_out_by_pos() -> None:
    model = _hooked()
    from transformer_lens import patching

    task = _task()
    heads = find_layers(model, "head")
    _, clean_cache = model.run_with_cache(task.clean)
    with torch.no_grad():
        corrupted_metric = _metric(model(task.corrupted), task.answers).mean()

    def mean_metric(logits: Tensor) -> Tensor:
        return _metric(logits, task.answers).mean()

    swept = patching.get_act_patch_attn_head_out_by_pos(
        model, task.corrupted, clean_cache, mean_metric
    )  # [layer, pos, head]: the patched metric, clean activations into the corrupted run
    effects = patch_heads_by_pos(model, task, heads, metric=_metric, direction="denoising")
    assert effects.shape == swept.shape == (N_LAYERS, 6, N_HEADS)
    assert effects.abs().max() > 1e-3
    torch.testing.assert_close(corrupted_metric - effects.float(), swept, rtol=1e-4, atol=1e-5)
    all_pos = patching.get_act_patch_attn_head_out_all_pos(
        model, task.corrupted, clean_cache, mean_metric
    )
    per_head = patch_heads(model, task, heads, metric=_metric, direction="denoising")
    torch.testing.assert_close(corrupted_metric - per_head.float(), all_pos, rtol=1e-4, atol=1e-5)
    # one call for the verified top k of the same sweep, and one for its first-order estimate
    result = verify_top_k(
        model, task, heads, k=4, channel_dim=(1, 2), metric=_metric, direction="denoising",
        progress=False,
    )  # fmt: skip
    tl_effects = (corrupted_metric - swept).flatten()  # units flattened layer, pos, head
    order = tl_effects.abs().argsort(descending=True)[:4].tolist()
    per_layer = 6 * N_HEADS
    assert result.units == [(list(heads)[i // per_layer], i % per_layer) for i in order]
    torch.testing.assert_close(
        torch.tensor(result.effects, dtype=torch.float32), tl_effects[order], rtol=1e-4, atol=1e-5
    )
    assert result.n_ablations < result.n_units


# --- TransformerLens APIs the adapter does not know (fakes: no TransformerLens needed) ---


def _tl_class(name: str, module: str = "transformer_lens.future", base: type = nn.Module) -> type:
    return type(name, (base,), {"__module__": module})


def test_unknown_model_class_from_transformer_lens_is_a_clear_error() -> None:
    model = _tl_class("ModelRunner")()
    assert is_transformer_lens_model(model)
    with pytest.raises(UnsupportedTransformerLens, match="not a TransformerLens model the"):
        find_layers(model)


def test_known_class_without_the_known_structure_is_a_clear_error() -> None:
    bare = _tl_class("HookedTransformer")()
    with pytest.raises(UnsupportedTransformerLens, match="HookedTransformer .*has no hook_dict"):
        find_layers(bare, "head")

    class Renamed(_tl_class("TransformerBridge")):  # hooks under other names
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Identity()])
            self.cfg = types.SimpleNamespace(n_heads=2)
            self.hook_dict = {"blocks.0.resid_out": nn.Identity()}

    with pytest.raises(UnsupportedTransformerLens, match="no hook point 'blocks.0.hook_resid"):
        transformer_lens_points(Renamed(), "block")


def test_own_hooked_root_module_gets_the_generic_walk() -> None:
    root = _tl_class("HookedRootModule", "transformer_lens.hook_points")

    class Toy(root):  # a user's toy model built on TransformerLens's HookedRootModule
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

    assert not is_transformer_lens_model(Toy())
    with pytest.warns(UserWarning, match="generic walk"):
        assert list(find_layers(Toy(), "linear")) == ["fc"]


def test_installation_without_a_known_api_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "transformer_lens", types.ModuleType("transformer_lens"))
    monkeypatch.delitem(sys.modules, "transformer_lens.model_bridge", raising=False)
    with pytest.raises(UnsupportedTransformerLens, match="neither HookedTransformer nor"):
        transformer_lens_api()


@pytest.mark.parametrize("hook", ["hook_z", "hook_v"])
def test_a_head_hook_point_passed_as_a_module_scores_heads(model: nn.Module, hook: str) -> None:
    # model.hook_dict[...] with channel_dim=2: heads on both APIs (a bridge hands these hook
    # points over flattened, (N, T, H * d_head); they are recognised as Heads points)
    clean, _ = _tokens()
    name = f"blocks.0.attn.{hook}"
    point = model.hook_dict[name]
    kwargs = dict(granularity="channel", channel_dim=2)
    scores = LayerGNDI(model, point).attribute(clean, **kwargs)
    assert scores.shape == (3, N_HEADS)
    by_name = LayerGNDI(model, get_layer(model, name)).attribute(clean, **kwargs)
    torch.testing.assert_close(scores, by_name)
    if "TransformerBridge" in type(model).__name__:
        explicit = LayerGNDI(model, Heads(point, N_HEADS)).attribute(clean, **kwargs)
        torch.testing.assert_close(scores, explicit)
    result = compute_gndi(
        model, [clean], {name: point}, progress=False, check_first_order=0, **kwargs
    )
    torch.testing.assert_close(result.mean[name].float(), scores.mean(0), rtol=1e-5, atol=1e-7)


def test_padded_positions_score_zero_on_both_apis(model: nn.Module) -> None:
    # the same padding rule on HookedTransformer (a raw (N, T, H, d_head) hook_z point) and on
    # a bridge (a Heads point): padded positions are not intervened on, so they score exactly 0
    clean, _ = _tokens()
    mask = torch.ones_like(clean)
    mask[1, 4:] = 0  # example 1 is right-padded
    heads = list(find_layers(model, "head").values())
    blocks = list(find_layers(model, "block").values())
    gndi = LayerGNDI(model, heads + blocks)
    scores = gndi.attribute(
        clean, forward_kwargs={"attention_mask": mask}, granularity="channel", channel_dim=1
    )
    for score in scores:
        assert score.shape[:2] == (3, 6)
        assert (score[1, 4:] == 0).all()
        assert (score[1, :4] > 0).any() and (score[0, 4:] > 0).any()
