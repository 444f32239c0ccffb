"""Models dispatched by accelerate with a ``device_map`` (layers kept in CPU memory or offloaded
to disk and loaded by accelerate's hooks on every call): G-NDI, compute_gndi, validate and
verify_top_k give the undispatched model's numbers, and accelerate's hooks are left exactly as
they were."""

from __future__ import annotations

import pytest
import torch

accelerate = pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from captum_gndi import LayerGNDI, compute_gndi, find_layers, verify_top_k  # noqa: E402
from captum_gndi.adapters import model_logits  # noqa: E402
from captum_gndi.validation import validate  # noqa: E402

VOCAB, TOKENS = 64, 6


CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB,
    max_position_embeddings=32,
)


def dispatch(folder, attention: str):
    """The saved Llama loaded with a ``max_memory`` that keeps the embedding and two layers in
    CPU memory and offloads the rest to disk."""
    config = transformers.LlamaConfig(**CONFIG, attn_implementation=attention)
    with accelerate.init_empty_weights():
        empty = transformers.LlamaForCausalLM(config)
    device_map = accelerate.infer_auto_device_map(
        empty,
        max_memory={"cpu": 60_000, "disk": 10**9},
        no_split_module_classes=["LlamaDecoderLayer"],
    )
    return accelerate.load_checkpoint_and_dispatch(
        empty, str(folder), device_map=device_map, offload_folder=str(folder / attention)
    ).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**CONFIG, attn_implementation="eager")
    plain = transformers.LlamaForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("llama")
    plain.save_pretrained(folder)
    return plain, folder


@pytest.fixture(scope="module")
def llamas(saved):
    """A random 4-layer Llama (eager attention) and the same weights dispatched with offload."""
    plain, folder = saved
    return plain, dispatch(folder, "eager")


def hook_state(model: torch.nn.Module) -> dict[str, tuple]:
    """Every module's accelerate hook, its replaced forward and its torch hooks (by identity)."""
    return {
        name: (
            id(getattr(module, "_hf_hook", None)),
            id(module.__dict__.get("forward")),
            tuple(module._forward_hooks),
            tuple(module._forward_pre_hooks),
        )
        for name, module in model.named_modules()
    }


def next_token(model):
    return lambda ids: model(ids).logits[:, -1]


def test_the_device_map_offloads_to_disk_and_keeps_layers_in_memory(llamas):
    _, dispatched = llamas
    places = set(dispatched.hf_device_map.values())
    assert places == {"cpu", "disk"}, dispatched.hf_device_map
    meta = [n for n, p in dispatched.named_parameters() if p.device.type == "meta"]
    assert meta and len(meta) < len(list(dispatched.parameters()))


@pytest.mark.parametrize(
    "options",
    [
        dict(mode="reverse"),
        dict(mode="forward"),  # accelerate's hooks defeat vmap: one forward-AD pass per tangent
        dict(norm="fisher", n_probes=8),
    ],
    ids=["reverse", "forward", "fisher-probes"],
)
def test_head_scores_equal_the_plain_model(llamas, options):
    plain, dispatched = llamas
    ids = torch.randint(0, VOCAB, (2, TOKENS), generator=torch.Generator().manual_seed(1))
    before = hook_state(dispatched)
    scores = []
    for model in (plain, dispatched):
        heads = list(find_layers(model, "head").values())
        gndi = LayerGNDI(next_token(model), heads)
        scores.append(
            torch.stack(gndi.attribute(ids, granularity="channel", channel_dim=2, **options))
        )
    assert hook_state(dispatched) == before
    assert scores[0].shape == (4, 2, 4) and scores[0].abs().max() > 0
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-5, atol=1e-7)


def test_patching_with_corrupted_prompts_equals_the_plain_model(llamas):
    """Signed G-NDI of a logit difference, from the corrupted prompt's activations (attribution
    patching with the sign flipped)."""
    plain, dispatched = llamas
    generator = torch.Generator().manual_seed(2)
    clean = torch.randint(0, VOCAB, (3, TOKENS), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1] = torch.randint(0, VOCAB, (3,), generator=generator)
    answers = torch.tensor([[3, 5], [7, 11], [13, 17]])
    before = hook_state(dispatched)
    scores = []
    for model in (plain, dispatched):

        def logit_difference(ids, answers, model=model):
            logits = model(ids).logits[:, -1]
            return logits.gather(1, answers).diff(dim=1)[:, 0] * -1

        heads = list(find_layers(model, "head").values())
        scores.append(
            torch.stack(
                LayerGNDI(logit_difference, heads).attribute(
                    clean,
                    baselines=corrupted,
                    additional_forward_args=(answers,),
                    signed=True,
                    granularity="channel",
                    channel_dim=2,
                )
            )
        )
    assert hook_state(dispatched) == before
    assert (scores[0] < 0).any() and (scores[0] > 0).any()
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-5, atol=1e-7)


def loader():
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(0, VOCAB, (2, TOKENS), generator=generator) for _ in range(2)]


def test_compute_gndi_and_verify_top_k_equal_the_plain_model(llamas):
    plain, dispatched = llamas
    before = hook_state(dispatched)
    results, verified = [], []
    for model in (plain, dispatched):
        lm = model_logits(model, token_index=-1).eval()
        heads = find_layers(model, "head")
        results.append(
            compute_gndi(lm, loader(), heads, granularity="channel", channel_dim=2, progress=False)
        )
        verified.append(
            verify_top_k(lm, loader(), heads, k=3, channel_dim=2, engine="hooks", progress=False)
        )
    assert hook_state(dispatched) == before
    for name in results[0].names:
        torch.testing.assert_close(results[1].mean[name], results[0].mean[name], rtol=1e-5, atol=0)
    assert verified[1].units == verified[0].units
    assert verified[1].n_ablations == verified[0].n_ablations
    torch.testing.assert_close(
        torch.tensor(verified[1].damages), torch.tensor(verified[0].damages), rtol=1e-5, atol=0
    )


def test_validate_equals_the_plain_model(llamas):
    plain, dispatched = llamas
    before = hook_state(dispatched)
    reports = []
    for model in (plain, dispatched):
        lm = model_logits(model, token_index=-1).eval()
        mlps = find_layers(model, "mlp")
        reports.append(
            validate(
                lm,
                loader(),
                mlps,
                criteria=["gndi"],
                damage=["output_delta"],
                target=None,
                n_boot=10,
                progress=False,
            )
        )
    assert hook_state(dispatched) == before
    expected, got = reports[0].to_dict(), reports[1].to_dict()
    assert got["units"] == expected["units"] and len(expected["units"]) == 4
    assert got["damage"]["output_delta"] == pytest.approx(expected["damage"]["output_delta"], 1e-5)
    assert got["scores"]["gndi"] == pytest.approx(expected["scores"]["gndi"], rel=1e-5)


def test_forward_mode_where_attention_lacks_forward_ad_names_reverse_mode(saved):
    """CPU scaled-dot-product attention has no forward-AD formula: mode='forward' on the
    dispatched SDPA model is a clear error naming mode='reverse', which works; hooks kept."""
    plain, folder = saved
    dispatched = dispatch(folder, "sdpa")
    before = hook_state(dispatched)
    ids = torch.randint(0, VOCAB, (2, TOKENS), generator=torch.Generator().manual_seed(4))
    heads = list(find_layers(dispatched, "head").values())
    gndi = LayerGNDI(next_token(dispatched), heads)
    with pytest.raises(
        NotImplementedError, match="(?s)mode='forward' needs forward-mode AD.*'reverse'"
    ):
        gndi.attribute(ids, mode="forward", granularity="channel", channel_dim=2)
    assert hook_state(dispatched) == before
    scores = torch.stack(gndi.attribute(ids, mode="reverse", granularity="channel", channel_dim=2))
    plain_heads = list(find_layers(plain, "head").values())
    expected = LayerGNDI(next_token(plain), plain_heads).attribute(
        ids, mode="reverse", granularity="channel", channel_dim=2
    )
    torch.testing.assert_close(scores, torch.stack(expected), rtol=1e-5, atol=1e-7)


def test_a_layer_on_another_device_than_the_inputs_is_a_clear_error():
    """The last layer's weights left on the meta device (loaded with init_empty_weights and
    never dispatched): PyTorch's device error becomes one that names the devices and the fix,
    and no hook is left behind."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model[2].to("meta")
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="different devices.*inputs are on cpu.*meta"):
        LayerGNDI(model, model[0]).attribute(x)
    with pytest.raises(RuntimeError, match="Move the inputs to the device"):
        compute_gndi(model, [x], [model[0]], progress=False)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_patching_tasks_equal_the_plain_model(llamas):
    """compute_gndi and verify_top_k on a PatchingTask (each head's baseline its activation on
    the corrupted prompt) through accelerate's hooks."""
    from captum_gndi import tasks

    plain, dispatched = llamas
    generator = torch.Generator().manual_seed(5)
    clean = torch.randint(0, VOCAB, (4, TOKENS), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(0, VOCAB, (4,), generator=generator)
    task = tasks.PatchingTask(
        clean, corrupted, torch.randint(0, VOCAB, (4, 2), generator=generator)
    )
    before = hook_state(dispatched)
    estimates, verified = [], []
    for model in (plain, dispatched):
        f, heads = tasks.logit_diff(model), find_layers(model, "head")
        options = dict(channel_dim=2, progress=False)
        estimates.append(compute_gndi(f, task, heads, granularity="channel", **options).stack())
        verified.append(verify_top_k(f, task, heads, k=3, screen="first_order", **options))
    assert hook_state(dispatched) == before
    torch.testing.assert_close(estimates[1], estimates[0], rtol=1e-5, atol=1e-7)
    assert verified[1].units == verified[0].units
    assert verified[1].n_ablations == verified[0].n_ablations
    torch.testing.assert_close(
        torch.tensor(verified[1].damages), torch.tensor(verified[0].damages), rtol=1e-5, atol=0
    )


def test_forward_mode_runs_one_pass_per_tangent_through_accelerate_hooks(llamas, caplog):
    """What docs/design.md says: torch.func.vmap cannot transform accelerate's weight loading,
    so forward mode falls back to one forward-AD pass per tangent there (not on the plain
    model), with the same scores."""
    import logging

    ids = torch.randint(0, VOCAB, (1, TOKENS), generator=torch.Generator().manual_seed(6))
    fell_back = []
    for model in llamas:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="captum_gndi.engine"):
            heads = list(find_layers(model, "head").values())
            LayerGNDI(next_token(model), heads).attribute(ids, mode="forward")
        fell_back.append("could not vectorise" in caplog.text)
    assert fell_back == [False, True]
