"""Heads and positions: ``find_layers(model, "head")`` for every attention family the adapters know.

Each family's per-head ``(N, H)`` and position x head ``(N, T, H)`` G-NDI is compared with a
hand-written head intervention computed without the package's hooks: Hugging Face models through
a forward pre-hook of our own on the output projection (that head's slice of the projection's
input moved towards its baseline), torchvision's ViT and Swin, whose projections run
functionally, through the attention module's *original* forward (a head's contribution to the
attention output, ``W[:, head] c_head``, obtained by zeroing that head's columns of the
projection weight), first order with ``torch.func.jvp``. Tiny random float64 models, no network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from captum_gndi import Heads, InterventionError, LayerGNDI, find_layers
from captum_gndi.adapters import describe_layers, expose_heads, get_layer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
N, T = 2, 5
TOL = dict(rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------------


def _hf_configs() -> dict[str, Callable[[], object]]:
    tf = pytest.importorskip("transformers")
    small = dict(vocab_size=50, max_position_embeddings=16)
    return {
        "gpt2": lambda: tf.GPT2Config(
            n_embd=16, n_layer=2, n_head=4, n_positions=16, vocab_size=50
        ),
        "bert": lambda: tf.BertConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=20,
            **small,
        ),
        "llama": lambda: tf.LlamaConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=20,
            **small,
        ),
        "distilbert": lambda: tf.DistilBertConfig(
            dim=16, n_layers=2, n_heads=4, hidden_dim=20, **small
        ),
        "albert": lambda: tf.AlbertConfig(
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=20,
            embedding_size=8,
            **small,
        ),
    }


HF_FAMILIES = ("gpt2", "bert", "llama", "distilbert", "albert")
N_LAYERS = {"gpt2": 2, "bert": 2, "llama": 2, "distilbert": 2, "albert": 3}


class Hidden(nn.Module):
    """A Hugging Face base model whose output is its last hidden state, flattened."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return output.last_hidden_state.flatten(1)


def _hf_model(family: str) -> Hidden:
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = _hf_configs()[family]()
    model = tf.AutoModel.from_config(config, attn_implementation="eager")
    return Hidden(model).double().eval()


def _hand_effect(
    run: Callable[[], Tensor],
    heads: Heads,
    unit: Tensor,
    baseline: Tensor,
) -> Tensor:
    """First-order effect ``J (1[unit] (c - b))`` at the projection's input ``c``, ``(N, K)``.

    ``unit`` is a 0/1 mask broadcastable to ``(N, T, H, 1)``; our own forward pre-hook moves the
    selected slices of ``c`` towards ``b`` by ``s`` and ``torch.func.jvp`` differentiates at 0.
    """

    def f(s: Tensor) -> Tensor:
        calls = [0]

        def hook(module: nn.Module, args: tuple) -> tuple:
            call = calls[0]
            calls[0] += 1
            if heads.call_index is not None and call != heads.call_index:
                return args
            c = args[0]
            split = c.unflatten(-1, (heads.n_heads, -1))
            moved = split - s * unit * (split.detach() - baseline)
            return (moved.flatten(-2), *args[1:])

        handle = heads.module.register_forward_pre_hook(hook)
        try:
            return run()
        finally:
            handle.remove()

    zero = torch.zeros((), dtype=torch.float64)
    _, tangent = torch.func.jvp(f, (zero,), (torch.ones_like(zero),))
    return -tangent  # f(x) - f_do(x) to first order


def _hand_scores(run, heads: Heads, mask: Tensor, baseline: Tensor, n_tokens: int):
    """Hand-written ``(N, H)`` and ``(N, T, H)`` L2 scores (padding left out via ``mask``)."""
    real = mask.to(torch.float64).reshape(N, n_tokens, 1, 1)
    per_head = torch.zeros(N, heads.n_heads, dtype=torch.float64)
    per_position = torch.zeros(N, n_tokens, heads.n_heads, dtype=torch.float64)
    for h in range(heads.n_heads):
        unit = torch.zeros(1, 1, heads.n_heads, 1, dtype=torch.float64)
        unit[0, 0, h] = 1
        per_head[:, h] = _hand_effect(run, heads, unit * real, baseline).norm(dim=1)
        for t in range(n_tokens):
            at = torch.zeros(1, n_tokens, 1, 1, dtype=torch.float64)
            at[0, t] = 1
            per_position[:, t, h] = _hand_effect(run, heads, unit * at * real, baseline).norm(dim=1)
    return per_head, per_position


@pytest.mark.hf
@pytest.mark.parametrize("family", HF_FAMILIES)
def test_hf_heads_match_a_hand_written_head_intervention(family):
    wrapper = _hf_model(family)
    points = find_layers(wrapper.model, "head")
    assert len(points) == N_LAYERS[family]
    assert all(isinstance(p, Heads) and p.n_heads == 4 for p in points.values())
    assert all(name.endswith(".heads" if family != "albert" else "]") for name in points)
    if family == "albert":
        assert [p.call_index for p in points.values()] == [0, 1, 2]
    assert not any(isinstance(p, Heads) for p in find_layers(wrapper.model, "auto").values())

    torch.manual_seed(1)
    ids = torch.randint(0, 50, (N, T))
    mask = torch.ones(N, T, dtype=torch.long)
    mask[1, -2:] = 0  # right padding in example 1
    baseline = 0.1 * torch.randn(4, 4, dtype=torch.float64)  # (H, d_head), broadcast
    mode = "reverse" if family in ("bert", "albert") else "forward"

    def run() -> Tensor:
        return wrapper(ids, mask)

    for name, heads in points.items():
        gndi = LayerGNDI(wrapper, heads)
        common = dict(layer_baselines=baseline, forward_kwargs={"attention_mask": mask}, mode=mode)
        per_head = gndi.attribute(ids, granularity="channel", channel_dim=2, **common)
        per_position = gndi.attribute(ids, granularity="channel", channel_dim=(1, 2), **common)
        assert per_head.shape == (N, 4) and per_position.shape == (N, T, 4), name
        expected_head, expected_position = _hand_scores(run, heads, mask, baseline, T)
        torch.testing.assert_close(per_head, expected_head, **TOL)
        torch.testing.assert_close(per_position, expected_position, **TOL)
        # padded positions are not intervened on: exactly 0
        assert torch.equal(per_position[1, -2:], torch.zeros(2, 4, dtype=torch.float64))
        assert (per_position[mask.bool()] > 0).all()


@pytest.mark.hf
def test_hf_heads_path_integrated_converge_to_true_head_ablation():
    wrapper = _hf_model("gpt2")
    torch.manual_seed(2)
    ids = torch.randint(0, 50, (N, T))
    heads = find_layers(wrapper.model, "head")["h.0.attn.heads"]
    scores = LayerGNDI(wrapper, heads).attribute(
        ids, granularity="channel", channel_dim=2, n_steps=12
    )
    with torch.no_grad():
        clean = wrapper(ids)
        for h in range(heads.n_heads):

            def ablate(module, args, h=h):
                split = args[0].unflatten(-1, (heads.n_heads, -1)).clone()
                split[:, :, h] = 0
                return (split.flatten(-2),)

            handle = heads.module.register_forward_pre_hook(ablate)
            try:
                ablated = wrapper(ids)
            finally:
                handle.remove()
            torch.testing.assert_close(
                scores[:, h], (clean - ablated).norm(dim=1), rtol=1e-6, atol=1e-9
            )


@pytest.mark.hf
def test_hf_head_groups_and_other_families():
    tf = pytest.importorskip("transformers")
    wrapper = _hf_model("gpt2")
    ids = torch.randint(0, 50, (N, T))
    heads = find_layers(wrapper.model, "head")["h.1.attn.heads"]
    gndi = LayerGNDI(wrapper, heads)
    by_head = torch.arange(4).reshape(1, 1, 4, 1)  # a layer_mask on (N, T, H, d_head)
    torch.testing.assert_close(
        gndi.attribute(ids, layer_mask=by_head),
        gndi.attribute(ids, granularity="channel", channel_dim=2),
        **TOL,
    )
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=20)
    text = dict(small, vocab_size=50, max_position_embeddings=16)
    configs = {
        "roberta": tf.RobertaConfig(**text),
        "electra": tf.ElectraConfig(**text, embedding_size=8),
        "deberta-v2": tf.DebertaV2Config(**text),
        "mistral": tf.MistralConfig(**text, num_key_value_heads=2),
        "qwen2": tf.Qwen2Config(**text, num_key_value_heads=2),
    }
    for family, config in configs.items():
        model = tf.AutoModel.from_config(config).eval()
        rows = describe_layers(model, "head", example_inputs=(ids,), print_table=False)
        assert [r["output_shape"] for r in rows] == [(N, T, 4, 4)] * 2, family
    vit = tf.ViTModel(tf.ViTConfig(**small, image_size=8, patch_size=4)).eval()
    rows = describe_layers(vit, "head", torch.randn(1, 3, 8, 8), print_table=False)
    assert [r["output_shape"] for r in rows] == [(1, 5, 4, 4)] * 2


@pytest.mark.hf
def test_hf_head_names_resolve_and_describe_layers_explains_them(capsys):
    wrapper = _hf_model("albert")
    name = "encoder.albert_layer_groups.0.albert_layers.0.attention.heads[call 2]"
    heads = get_layer(wrapper.model, name)
    assert isinstance(heads, Heads) and heads.call_index == 2 and heads.n_heads == 4
    gpt2 = _hf_model("gpt2").model
    heads = get_layer(gpt2, "h[1].attn.heads")
    assert heads.module is gpt2.h[1].attn.c_proj
    rows = describe_layers(gpt2, "head", example_inputs=(torch.zeros(1, 3, dtype=torch.long),))
    assert [r["output_shape"] for r in rows] == [(1, 3, 4, 4)] * 2
    assert "setting head h of h.0 to its baseline" in rows[0]["meaning"]
    assert "h.0.attn.heads" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
        num_classes=3,
    )
    return model.double().eval()


def _swin(v2: bool = False, window: int = 3) -> nn.Module:
    from torchvision.models import swin_transformer as sw

    torch.manual_seed(0)
    extra = dict(block=sw.SwinTransformerBlockV2, downsample_layer=sw.PatchMergingV2) if v2 else {}
    model = sw.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=8,
        depths=[2, 2],
        num_heads=[2, 4],
        window_size=[window] * 2,
        stochastic_depth_prob=0.0,
        num_classes=3,
        **extra,
    )
    return model.double().eval()


TORCHVISION = {
    "vit": (_vit, "out_proj"),
    "swin": (lambda: _swin(window=3), "proj"),  # 8x8 stage: windows padded and shifted
    "swin_v2": (lambda: _swin(v2=True, window=2), "proj"),
}


def _head_contributions(model: nn.Module, attention: nn.Module, proj: str, x: Tensor, n_heads: int):
    """``W[:, head] c_head`` at every position, from the attention's original forward."""
    captured = {}

    def capture(module: nn.Module, args: tuple, output: object) -> None:
        captured["args"] = args

    handle = attention.register_forward_hook(capture)
    with torch.no_grad():
        model(x)
    handle.remove()
    args = captured["args"]
    weight_name = f"{proj}.weight"
    weight = dict(attention.named_parameters())[weight_name]
    d = weight.shape[1] // n_heads

    def output(w: Tensor) -> Tensor:
        out = torch.func.functional_call(attention, {weight_name: w}, args)
        return out[0] if isinstance(out, tuple) else out

    contributions = []
    with torch.no_grad():
        full = output(weight)
        for h in range(n_heads):
            w = weight.clone()
            w[:, h * d : (h + 1) * d] = 0
            contributions.append(full - output(w))  # W[:, head h] c_h, layer-shaped
    return contributions


def _added_effect(model: nn.Module, attention: nn.Module, x: Tensor, added: Tensor) -> Tensor:
    """First-order change of the logits when ``-s * added`` is added to the attention output."""

    def f(s: Tensor) -> Tensor:
        def hook(module, args, out):
            if isinstance(out, tuple):
                return (out[0] - s * added, *out[1:])
            return out - s * added

        handle = attention.register_forward_hook(hook)
        try:
            return model(x)
        finally:
            handle.remove()

    zero = torch.zeros((), dtype=torch.float64)
    return -torch.func.jvp(f, (zero,), (torch.ones_like(zero),))[1]


@pytest.mark.parametrize("family", list(TORCHVISION))
def test_torchvision_heads_match_a_hand_written_head_intervention(family):
    build, proj = TORCHVISION[family]
    model = build()
    points = find_layers(model, "head")
    assert len(points) == (2 if family == "vit" else 4)
    assert not any(isinstance(p, Heads) for p in find_layers(model, "auto").values())
    torch.manual_seed(3)
    x = torch.randn(N, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        reference = model(x)
        with expose_heads(model):
            exposed = model(x)
    torch.testing.assert_close(exposed, reference, rtol=0, atol=1e-12)
    assert not any("forward" in vars(m) for m in model.modules())  # restored

    name, heads = list(points.items())[-1]
    attention = next(m for m in model.modules() if getattr(m, proj, None) is heads.module)
    contributions = _head_contributions(model, attention, proj, x, heads.n_heads)
    with expose_heads(model):
        gndi = LayerGNDI(model, heads)
        per_head = gndi.attribute(x, granularity="channel", channel_dim=2)
        per_position = gndi.attribute(x, granularity="channel", channel_dim=(1, 2))
        signed = gndi.attribute(x, target=1, granularity="channel", channel_dim=(1, 2), signed=True)
        signed_head = gndi.attribute(x, target=1, granularity="channel", channel_dim=2, signed=True)
    n_tokens = per_position.shape[1]
    for h, added in enumerate(contributions):
        expected = _added_effect(model, attention, x, added).norm(dim=1)
        torch.testing.assert_close(per_head[:, h], expected, **TOL)
        positions = added.reshape(N, n_tokens, -1)  # Swin: (B, H, W, C) row-major
        for t in range(n_tokens):
            one = torch.zeros_like(positions)
            one[:, t] = positions[:, t]
            expected = _added_effect(model, attention, x, one.reshape(added.shape)).norm(dim=1)
            torch.testing.assert_close(per_position[:, t, h], expected, **TOL)
    torch.testing.assert_close(signed.sum(1), signed_head, **TOL)  # linear in the tangent


def test_torchvision_heads_need_expose_heads_and_it_restores_after_errors():
    model = _vit()
    heads = find_layers(model, "head")["encoder.layers.encoder_layer_0.self_attention.heads"]
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with pytest.raises(InterventionError, match="never called"):
        LayerGNDI(model, heads).attribute(x, granularity="channel", channel_dim=2)
    with pytest.raises(RuntimeError, match="boom"), expose_heads(model), expose_heads(model):
        raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in model.modules())
    rows = describe_layers(_swin(), "head", example_inputs=x, print_table=False)
    assert rows[0]["calls"] == 0 and "expose_heads" in rows[0]["meaning"]
    with expose_heads(model):
        rows = describe_layers(model, "head", example_inputs=x, print_table=False)
    assert [r["output_shape"] for r in rows] == [(1, 17, 2, 4)] * 2


def test_head_kind_is_refused_where_there_are_no_heads():
    torchvision = pytest.importorskip("torchvision")
    with pytest.raises(ValueError, match="no attention heads"):
        find_layers(torchvision.models.resnet18(), "head")


# ---------------------------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------------------------


@pytest.mark.hf
def test_readme_heads_example_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(# per-head G-NDI.*?)```", readme, re.S)
    assert block, "the heads example is missing from the README"
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    per_head, per_position = namespace["per_head"], namespace["per_position"]
    assert list(per_head) == ["h.0.attn.heads", "h.1.attn.heads"]
    assert per_head["h.0.attn.heads"].shape == (2, 4)
    assert per_position["h.0.attn.heads"].shape == (2, 6, 4)
    assert (per_position["h.0.attn.heads"][1, -2:] == 0).all()  # padding
