"""``path="input"`` (EAP-IG) and the pass count of path integration (issues #22 item 4, #24 item 8).

``path="input"`` is checked against an EAP-IG written here from scratch (LayerIntegratedGradients-
style interpolation of the input embeddings, ``torch.autograd.grad`` of the metric with respect
to each head's activation at each point, the average times ``h_clean - h_corrupted``) on tiny
random float64 GPT-2 and Llama models, and against a path-averaged Jacobian from
``torch.func.jacrev`` for vector outputs. The cost checks assert the counts of the engine's cost
model, the warning and the progress bar's total, never timings.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from captum_gndi import LayerGNDI, compute_gndi, find_layers
from captum_gndi.engine import input_path_passes, pass_counts

os.environ.setdefault("HF_HUB_OFFLINE", "1")

N, T = 3, 6
VOCAB = 50


def gauss_legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights on [0, 1], from numpy (independent of Captum)."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2


class LogitDiff(nn.Module):
    """Correct minus distractor logit at the last position, ``(N, 1)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, answers: Tensor) -> Tensor:
        logits = self.model(input_ids).logits[:, -1]
        return logits.gather(1, answers[:, :1]) - logits.gather(1, answers[:, 1:])


def tiny_lm(family: str) -> nn.Module:
    tf = pytest.importorskip("transformers")
    if family == "gpt2":
        config = tf.GPT2Config(n_embd=16, n_layer=2, n_head=4, n_positions=16, vocab_size=VOCAB)
    else:
        config = tf.LlamaConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=20,
            vocab_size=VOCAB,
            max_position_embeddings=16,
        )
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.double().eval()


def prompts() -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (N, T), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1:3] = torch.randint(0, VOCAB, (N, 2), generator=generator)
    answers = torch.randint(0, VOCAB, (N, 2), generator=generator)
    return clean, corrupted, answers


def hand_written_eap_ig(
    model: nn.Module,
    projections: list[nn.Module],
    n_heads: int,
    clean: Tensor,
    corrupted: Tensor,
    answers: Tensor,
    n_steps: int,
) -> list[Tensor]:
    """EAP-IG per head and position, ``(N, T, H)`` per layer, with our own hooks."""
    embedding = model.get_input_embeddings()

    def head_inputs(ids: Tensor) -> list[Tensor]:
        store: dict[int, Tensor] = {}
        hooks = [
            p.register_forward_pre_hook(lambda m, args, i=i: store.__setitem__(i, args[0]))
            for i, p in enumerate(projections)
        ]
        try:
            with torch.no_grad():
                model(ids)
        finally:
            for hook in hooks:
                hook.remove()
        return [store[i] for i in range(len(projections))]

    h_clean, h_corrupted = head_inputs(clean), head_inputs(corrupted)
    with torch.no_grad():
        e_clean, e_corrupted = embedding(clean), embedding(corrupted)
    grads = [torch.zeros_like(h) for h in h_clean]
    for alpha, weight in zip(*gauss_legendre(n_steps)):
        point = e_corrupted + float(alpha) * (e_clean - e_corrupted)
        acts: dict[int, Tensor] = {}
        hooks = [embedding.register_forward_hook(lambda m, args, out, e=point: e)]
        hooks += [
            p.register_forward_pre_hook(lambda m, args, i=i, a=acts: a.__setitem__(i, args[0]))
            for i, p in enumerate(projections)
        ]
        try:
            logits = model(clean).logits[:, -1]
        finally:
            for hook in hooks:
                hook.remove()
        metric = logits.gather(1, answers[:, :1]) - logits.gather(1, answers[:, 1:])
        step = torch.autograd.grad(metric.sum(), [acts[i] for i in range(len(projections))])
        grads = [g + float(weight) * s for g, s in zip(grads, step)]
    return [
        (g * (hc - hb)).reshape(*g.shape[:2], n_heads, -1).sum(-1)
        for g, hc, hb in zip(grads, h_clean, h_corrupted)
    ]


@pytest.mark.hf
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_signed_input_path_equals_hand_written_eap_ig(family: str) -> None:
    model = tiny_lm(family)
    metric = LogitDiff(model).eval()
    heads = list(find_layers(model, "head").values())
    clean, corrupted, answers = prompts()
    expected = hand_written_eap_ig(
        model, [h.module for h in heads], heads[0].n_heads, clean, corrupted, answers, 5
    )
    gndi = LayerGNDI(metric, heads)
    common = dict(baselines=corrupted, additional_forward_args=(answers,), n_steps=5)
    scores = gndi.attribute(
        clean, **common, path="input", signed=True, granularity="channel", channel_dim=(1, 2)
    )
    assert expected[0].abs().max() > 1e-4  # a real signal, not zeros on both sides
    for got, want in zip(scores, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)
    # per head (N, H), unsigned: |sum over positions|
    per_head = gndi.attribute(clean, **common, path="input", granularity="channel", channel_dim=2)
    for got, want in zip(per_head, expected):
        torch.testing.assert_close(got, want.sum(1).abs(), rtol=1e-6, atol=1e-10)
    # the estimator is not the per-unit path: different numbers at the same n_steps
    unit_path = gndi.attribute(clean, **common, signed=True, granularity="channel", channel_dim=2)
    assert not torch.allclose(unit_path[1], expected[1].sum(1), rtol=1e-3)


@pytest.mark.hf
def test_every_granularity_is_a_sum_of_unit_scores() -> None:
    model = tiny_lm("gpt2")
    metric = LogitDiff(model).eval()
    head = find_layers(model, "head")["transformer.h.1.attn.heads"]
    clean, corrupted, answers = prompts()
    gndi = LayerGNDI(metric, head)
    common = dict(
        baselines=corrupted,
        additional_forward_args=(answers,),
        n_steps=4,
        path="input",
        signed=True,
    )
    unit = gndi.attribute(clean, **common, granularity="unit")  # (N, T, H, d)
    assert unit.shape == (N, T, 4, 4)
    layer = gndi.attribute(clean, **common)
    channel = gndi.attribute(clean, **common, granularity="channel", channel_dim=2)
    position_head = gndi.attribute(clean, **common, granularity="channel", channel_dim=(1, 2))
    mask = torch.arange(4).reshape(1, 1, 4, 1)  # one group per head
    group = gndi.attribute(clean, **common, layer_mask=mask)
    torch.testing.assert_close(layer, unit.sum((1, 2, 3)))
    torch.testing.assert_close(channel, unit.sum((1, 3)))
    torch.testing.assert_close(position_head, unit.sum(3))
    torch.testing.assert_close(group, unit.sum((1, 3)))


@pytest.mark.hf
def test_compute_gndi_passes_the_input_path_through() -> None:
    from captum_gndi.tasks import PatchingTask

    model = tiny_lm("gpt2")
    metric = LogitDiff(model).eval()
    heads = find_layers(model, "head")
    clean, corrupted, answers = prompts()
    task = PatchingTask(clean, corrupted, answers)
    options = dict(granularity="channel", channel_dim=2, n_steps=4)
    result = compute_gndi(metric, task.loader(2), heads, path="input", progress=False, **options)
    expected = LayerGNDI(metric, list(heads.values())).attribute(
        clean, baselines=corrupted, additional_forward_args=(answers,), path="input",
        signed=True, **options,
    )  # fmt: skip
    for name, want in zip(heads, expected):
        torch.testing.assert_close(result.mean[name], want.mean(0))
    assert result.settings["path"] == "input"
    with pytest.raises(ValueError, match="takes them from patching data"):
        compute_gndi(model, [clean], heads, n_steps=4, path="input", progress=False)


class MLP(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin1, self.act1 = nn.Linear(5, 8), nn.Tanh()
        self.lin2, self.act2 = nn.Linear(8, 6), nn.Tanh()
        self.head = nn.Linear(6, k)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act2(self.lin2(self.act1(self.lin1(x)))))


def test_vector_output_is_the_path_averaged_jacobian_times_the_change() -> None:
    model = MLP().double().eval()
    x, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    tail: Callable[[Tensor], Tensor] = lambda h: model.head(model.act2(model.lin2(h)))  # noqa: E731
    with torch.no_grad():
        h_x, h_b = model.act1(model.lin1(x)), model.act1(model.lin1(b))
    alphas, weights = gauss_legendre(6)
    effect = torch.zeros(3, 4, 8, dtype=torch.float64)  # (K, N, units)
    for alpha, weight in zip(alphas, weights):
        h = model.act1(model.lin1(b + float(alpha) * (x - b)))
        for n in range(4):
            jac = torch.func.jacrev(tail)(h[n])  # (K, units)
            effect[:, n] += float(weight) * jac * (h_x - h_b)[n]
    gndi = LayerGNDI(model, model.act1)
    common = dict(baselines=b, n_steps=6, path="input")
    unit = gndi.attribute(x, **common, granularity="unit")
    torch.testing.assert_close(unit, effect.norm(dim=0))
    torch.testing.assert_close(gndi.attribute(x, **common), effect.sum(-1).norm(dim=0))
    linf = gndi.attribute(x, **common, granularity="unit", norm="linf")
    torch.testing.assert_close(linf, effect.abs().amax(0))
    # with a scalar target: the signed row of that output
    signed = gndi.attribute(x, **common, granularity="unit", target=2, signed=True)
    torch.testing.assert_close(signed, effect[2])


def test_probes_project_every_point_on_the_clean_outputs_rows() -> None:
    """With n_probes, each point of the path is projected on the same rows, drawn from the clean
    output (for the Fisher norm: classes from the clean softmax), so the estimate is that of the
    exact path-averaged effect."""
    from captum_gndi.readouts import make_readout

    model = MLP().double().eval()
    x, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    gndi = LayerGNDI(model, model.act1)
    common = dict(baselines=b, n_steps=3, path="input", granularity="unit")
    effect = torch.stack(
        [gndi.attribute(x, **common, target=k, signed=True) for k in range(3)]
    )  # (K, N, units), exact
    readout = make_readout("fisher", n_probes=5, seed=7)
    with torch.no_grad():
        rows = readout.rows(0, 5, model(x))  # (m, N, K)
    expected = torch.einsum("mnk,knu->mnu", rows, effect).norm(dim=0)
    got = gndi.attribute(x, **common, norm="fisher", n_probes=5, probe_seed=7)
    torch.testing.assert_close(got, expected)


def test_layer_affine_in_the_input_completes_to_the_total_change() -> None:
    """Where the layer moves linearly along the input path (here the first Linear), the signed
    unit scores sum to f(x) - f(b): the integrated-gradients decomposition."""
    model = MLP(k=1).double().eval()
    x, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    gndi = LayerGNDI(model, model.lin1)
    scores = gndi.attribute(
        x, baselines=b, n_steps=40, path="input", signed=True, granularity="unit"
    )
    with torch.no_grad():
        total = (model(x) - model(b))[:, 0]
    torch.testing.assert_close(scores.sum(1), total, rtol=1e-9, atol=1e-12)
    # the per-unit path of the same units converges to each unit's own patching effect instead
    per_unit = gndi.attribute(
        x, baselines=b, n_steps=40, granularity="unit", signed=True, mode="forward"
    )
    assert not torch.allclose(per_unit.sum(1), total, rtol=1e-3)


def test_one_step_is_first_order_gndi_on_either_path() -> None:
    model = MLP().double().eval()
    x, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    gndi = LayerGNDI(model, [model.act1, model.act2])
    for granularity in ("layer", "unit"):
        unit = gndi.attribute(x, baselines=b, granularity=granularity)
        inputs = gndi.attribute(x, baselines=b, granularity=granularity, path="input")
        for got, want in zip(inputs, unit):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


class TokenModel(nn.Module):
    """Token ids -> embedding -> MLP; no get_input_embeddings()."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(VOCAB, 5)
        self.body = MLP(k=2)

    def forward(self, ids: Tensor) -> Tensor:
        return self.body(self.embedding(ids).sum(1))


def test_integer_inputs_need_an_embedding_layer() -> None:
    model = TokenModel().double().eval()
    clean, corrupted, _ = prompts()
    gndi = LayerGNDI(model, model.body.act1)
    with pytest.raises(ValueError, match="input_layer=model.embedding"):
        gndi.attribute(clean, baselines=corrupted, n_steps=3, path="input")
    by_module = gndi.attribute(
        clean, baselines=corrupted, n_steps=3, path="input", input_layer=model.embedding
    )
    by_name = gndi.attribute(
        clean, baselines=corrupted, n_steps=3, path="input", input_layer="embedding"
    )
    # the same path on the embeddings themselves, as float inputs of the rest of the model
    rest = nn.Sequential()
    rest.forward = lambda e: model.body(e.sum(1))  # type: ignore[method-assign]
    with torch.no_grad():
        e_clean, e_corrupted = model.embedding(clean), model.embedding(corrupted)
    on_floats = LayerGNDI(model.body, model.body.act1).attribute(
        e_clean.sum(1), baselines=e_corrupted.sum(1), n_steps=3, path="input"
    )
    torch.testing.assert_close(by_module, on_floats)
    torch.testing.assert_close(by_name, on_floats)


def test_input_path_errors() -> None:
    model = MLP().double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    gndi = LayerGNDI(model, model.act1)
    with pytest.raises(ValueError, match="pass Captum's `baselines`"):
        gndi.attribute(x, n_steps=4, path="input")
    with pytest.raises(ValueError, match="path must be 'unit'"):
        gndi.attribute(x, baselines=0.0, n_steps=4, path="inputs")
    with pytest.raises(ValueError, match="use mode='reverse' or 'auto'"):
        gndi.attribute(x, baselines=0.0, n_steps=4, path="input", mode="forward")


# ---------------------------------------------------------------------------------------------
# The cost of path integration, told before the work (issue #24 item 8)
# ---------------------------------------------------------------------------------------------


def cost_warnings(call: Callable[[], object]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "exact ablation" in str(w.message)]


def test_per_unit_path_warns_with_its_pass_count() -> None:
    model = MLP(k=1).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    gndi = LayerGNDI(model, model.act1)  # 8 channels, one output
    # forward mode: 8 units x 4 steps = 32 tangents in one vectorised group: 33 passes
    assert pass_counts(1, 1, 32, True) == {"forward": 33, "reverse": 64}
    call = lambda: gndi.attribute(x, n_steps=4, granularity="channel", mode="forward")  # noqa: E731
    (message,) = cost_warnings(call)
    assert "about 33 passes in forward mode (8 units x 4 steps" in message
    assert "(9 forward passes for 8 units)" in message
    assert "path='input'" in message and "verify_top_k" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    assert {w.filename for w in caught if "exact ablation" in str(w.message)} == {__file__}
    (message,) = cost_warnings(
        lambda: gndi.attribute(x, n_steps=4, granularity="channel", mode="reverse")
    )
    assert "about 64 passes in reverse mode" in message
    # first order and the input path (1 + 4 x 2 = 9 passes, not more than 9) stay quiet
    assert input_path_passes(4, 1) == 9
    assert not cost_warnings(lambda: gndi.attribute(x, granularity="channel"))
    assert not cost_warnings(
        lambda: gndi.attribute(x, baselines=0.0, n_steps=4, granularity="channel", path="input")
    )


def test_input_path_warns_when_many_outputs_cost_more() -> None:
    model = MLP(k=3).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    gndi = LayerGNDI(model, model.act1)
    (message,) = cost_warnings(
        lambda: gndi.attribute(x, baselines=0.0, n_steps=4, granularity="layer", path="input")
    )
    assert "about 17 passes" in message and "(2 forward passes for 1 units)" in message
    assert "n_probes" in message and "target" in message


def test_progress_bar_total_is_the_pass_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import captum_gndi.engine as engine

    bars: list[dict[str, int]] = []
    real = engine.tqdm

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            bars.append({"total": kwargs["total"]})

        def close(self) -> None:
            bars[-1]["done"] = self.n
            super().close()

    monkeypatch.setattr(engine, "tqdm", Recording)
    model = MLP(k=1).double().eval()
    x = torch.randn(8, 5, dtype=torch.float64)
    data = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(4))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        compute_gndi(model, data, {"act1": model.act1}, n_steps=4, granularity="channel",
                     mode="forward", progress=True)  # fmt: skip
    assert bars == [{"total": 33, "done": 33}, {"total": 33, "done": 33}]
