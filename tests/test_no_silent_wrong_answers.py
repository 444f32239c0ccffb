"""Issue #24: each case that gave a wrong or misleading result without an error now ends with a
correct answer or a clear error naming the problem and the fix. One test per case, as written
in the issue."""

from __future__ import annotations

import warnings

import pytest
import torch
from captum.testing.helpers.basic_models import BasicModel_MultiLayer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_gndi import LayerGNDI, compute_gndi, model_logits


@pytest.fixture
def model():
    return BasicModel_MultiLayer().double().eval()


@pytest.fixture
def x():
    return torch.tensor([[3.0, 4.0, 0.0], [1.0, -2.0, 0.5], [0.5, 1.0, 2.0]], dtype=torch.float64)


class Exp(nn.Module):
    def forward(self, h):
        return torch.exp(h)


class TokenModel(nn.Module):
    """Token ids (N, T) -> embedding -> mean over positions -> 3 logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(1))


# ---------------------------------------------------------------------------------------------
# 4. NaN or inf after the layer
# ---------------------------------------------------------------------------------------------


def test_nan_weight_after_the_layer_is_an_error_naming_layers_and_examples(model, x):
    with torch.no_grad():
        model.linear2.weight[0, 0] = float("nan")
    # reverse mode used to return finite scores here (the NaN weight sits behind a dead ReLU
    # unit, whose backward is 0), forward mode NaN: both are now the same clear error
    for mode in ("forward", "reverse"):
        with pytest.raises(
            ValueError, match=r"output is NaN or inf for examples 0, 1, 2 .*'linear1'"
        ):
            LayerGNDI(model, model.linear1).attribute(x, mode=mode)


def test_overflow_after_the_layer_names_only_the_overflowing_example():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
        layer.bias.zero_()
    head = nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.fill_(1.0)  # exp(100) overflows float32 to +inf
    model = nn.Sequential(layer, Exp(), head).eval()
    x = torch.tensor([[0.0, 1.0], [100.0, 100.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"output is NaN or inf for examples 1 of the batch"):
        LayerGNDI(model, model[0]).attribute(x)


class Sqrt(nn.Module):
    def forward(self, h):
        return h.sqrt()  # the inputs of the test keep h >= 0


def test_non_finite_effect_with_a_finite_output_names_layer_and_example():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
        layer.bias.zero_()
    model = nn.Sequential(layer, Sqrt(), nn.Linear(2, 1)).eval()
    x = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # sqrt'(0) = inf on example 1
    for mode in ("forward", "reverse"):
        with pytest.raises(ValueError, match=r"NaN or inf for layer\(s\) '0' \(examples 1 of"):
            LayerGNDI(model, model[0]).attribute(x, layer_baselines=1.0, mode=mode)


def test_compute_gndi_ranking_never_ranks_nan_layers(model, x):
    with torch.no_grad():
        model.linear2.weight[0, 0] = float("nan")
    loader = DataLoader(TensorDataset(x, torch.zeros(3, dtype=torch.long)), batch_size=2)
    with pytest.raises(ValueError, match=r"NaN or inf .*'linear1', 'relu'"):
        compute_gndi(model, loader, ["linear1", "relu"], progress=False).ranking()


# ---------------------------------------------------------------------------------------------
# 5. Arguments of the wrong type
# ---------------------------------------------------------------------------------------------


def test_target_true_is_an_error_not_none(model, x):
    with pytest.raises(TypeError, match="booleans and floats are not output indices"):
        LayerGNDI(model, model.linear1).attribute(x, target=True)
    with pytest.raises(ValueError, match="target must be None, an int"):
        compute_gndi(model, [x], ["linear1"], target=True, progress=False)


def test_norm_true_is_an_error(model, x):
    with pytest.raises(TypeError, match="norm=True is a bool"):
        LayerGNDI(model, model.linear1).attribute(x, norm=True)
    with pytest.raises(TypeError, match="norm=True is a bool"):
        compute_gndi(model, [x], ["linear1"], norm=True, progress=False)


@pytest.mark.parametrize("n_steps", [True, 2.5])
def test_n_steps_must_be_an_integer(model, x, n_steps):
    with pytest.raises(TypeError, match="n_steps must be an integer >= 1"):
        LayerGNDI(model, model.linear1).attribute(x, n_steps=n_steps)
    with pytest.raises(TypeError, match="n_steps must be an integer >= 1"):
        compute_gndi(model, [x], ["linear1"], n_steps=n_steps, progress=False)


def test_unknown_method_is_an_error_with_n_steps_1(model, x):
    with pytest.raises(ValueError, match="Unknown integration method 'simpson'"):
        LayerGNDI(model, model.linear1).attribute(x, method="simpson")
    with pytest.raises(ValueError, match="Unknown integration method 'simpson'"):
        compute_gndi(model, [x], ["linear1"], method="simpson", progress=False)


def test_float_input_baseline_on_token_ids_is_an_error():
    model = TokenModel().eval()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    gndi = LayerGNDI(model, model.head)
    with pytest.raises(TypeError, match="0.5 becomes token 0"):
        gndi.attribute(ids, baselines=0.5)
    with pytest.raises(TypeError, match="Input baseline 0 is floating point"):
        gndi.attribute(ids, baselines=torch.zeros(2, 3))
    # an integer token-id baseline is the Captum way and works
    assert gndi.attribute(ids, baselines=0).shape == (2,)


def test_token_id_baseline_outside_the_vocabulary_is_a_clear_error():
    model = TokenModel().eval()
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with pytest.raises(ValueError, match=r"span 50\.\.50\. A token-id baseline must be a valid id"):
        LayerGNDI(model, model.head).attribute(ids, baselines=50)


def test_empty_batch_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"inputs\[0\] has shape \(0, 3\): no examples"):
        LayerGNDI(model, model.linear1).attribute(torch.zeros(0, 3, dtype=torch.float64))


def test_empty_batch_inside_a_loader_is_a_clear_error(model, x):
    batches = [x, x[:0]]
    with pytest.raises(ValueError, match=r"Batch 1 of the data \(G-NDI\) holds no examples"):
        compute_gndi(model, batches, ["linear1"], progress=False)


def test_one_pass_iterable_with_mean_baseline_is_a_clear_error(model, x):
    class OnePass:  # iterable, not an iterator: only iterating tells that it is one-pass
        def __init__(self, batches):
            self.batches = iter(batches)

        def __iter__(self):
            return self.batches

    with pytest.raises(ValueError, match="the data is a one-pass iterable"):
        compute_gndi(model, OnePass([x, x]), ["linear1"], baseline="mean", progress=False)
    # the same batches in a list: fine
    assert compute_gndi(model, [x, x], ["linear1"], baseline="mean", progress=False).n_examples == 6


# ---------------------------------------------------------------------------------------------
# 14. Captum keywords; print of a compute_gndi result
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["layer", "channel", "unit"])
def test_internal_batch_size_chunks_the_work_with_equal_results(model, granularity):
    torch.manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64)
    gndi = LayerGNDI(model, [model.linear1, model.relu])
    target = [0, 1, 1, 0, 0, 1, 0]
    kwargs = dict(target=target, granularity=granularity, layer_baselines=torch.randn(7, 4))
    whole = gndi.attribute(x, **kwargs)
    chunked = gndi.attribute(x, internal_batch_size=3, **kwargs)
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=0, rtol=1e-12)
    one_layer = LayerGNDI(model, model.linear1)
    scores, delta = one_layer.attribute(x, target=1, baselines=0.5, return_convergence_delta=True)
    scores2, delta2 = one_layer.attribute(
        x, target=1, baselines=0.5, return_convergence_delta=True, internal_batch_size=2
    )
    assert torch.allclose(scores, scores2) and torch.allclose(delta, delta2)
    with pytest.raises(ValueError, match="internal_batch_size must be an integer >= 1"):
        one_layer.attribute(x, internal_batch_size=0)


def test_multiply_by_inputs_false_says_why_it_does_not_apply(model):
    with pytest.raises(ValueError, match="multiply_by_inputs=False does not apply to G-NDI"):
        LayerGNDI(model, model.linear1, multiply_by_inputs=False)
    assert LayerGNDI(model, model.linear1, multiply_by_inputs=True).multiplies_by_inputs


def test_print_of_compute_gndi_result_is_ranked(model, x):
    result = compute_gndi(model, [x], ["linear1", "linear2"], progress=False)
    ranking = result.ranking()
    assert ranking == ["linear1", "linear2"] or ranking == ["linear2", "linear1"]
    rows = str(result).splitlines()[2:]
    assert [row.split()[1] for row in rows] == ranking
    assert [row.split()[0] for row in rows] == ["1", "2"]


# ---------------------------------------------------------------------------------------------
# 3. torch.compile
# ---------------------------------------------------------------------------------------------


class SmallNet(nn.Module):  # not a Sequential: no __len__, the case of the issue
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.relu, self.b = nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4)

    def forward(self, x):
        return self.b(self.relu(self.a(x)))


def test_compiled_model_scores_equal_the_uncompiled_ones():
    net = SmallNet().eval()
    compiled = torch.compile(net)  # the default backend (Inductor)
    x = torch.randn(5, 3)
    for mode in ("forward", "reverse"):
        for granularity in ("layer", "channel"):
            kwargs = dict(target=1, mode=mode, granularity=granularity)
            plain = LayerGNDI(net, [net.a, net.relu]).attribute(x, **kwargs)
            again = LayerGNDI(compiled, [net.a, net.relu]).attribute(x, **kwargs)
            for p, c in zip(plain, again):
                assert torch.allclose(p, c, atol=1e-6)
    result = compute_gndi(compiled, [x], {"a": net.a, "b": net.b}, progress=False)
    plain = compute_gndi(net, [x], {"a": net.a, "b": net.b}, progress=False)
    assert torch.allclose(result.mean["a"], plain.mean["a"], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 7. The memory guard: every engine and granularity refuses before allocating
# ---------------------------------------------------------------------------------------------


def test_memory_guard_in_every_engine_and_granularity(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1000))
    x = torch.randn(8, 3, 6, 6)
    model(x)
    model.eval()
    gndi = LayerGNDI(model, model[0])
    # channel effects: 1000 logits x 8 examples x 64 channels x 4 bytes = 2,048,000 bytes
    monkeypatch.setenv("CAPTUM_GNDI_MAX_EFFECT_BYTES", "2000000")
    for mode in ("forward", "auto"):  # auto picks forward at channel granularity here
        with pytest.raises(MemoryError, match=r"forward mode would allocate about 5\.9 MiB"):
            gndi.attribute(x, mode=mode, granularity="channel")
    with pytest.raises(MemoryError, match=r"reverse mode .*'0', 64 units\)\. Split the batch"):
        gndi.attribute(x, mode="reverse", granularity="channel")
    with pytest.raises(MemoryError, match="reverse mode"):  # 1000 x 8 x 2304 units
        gndi.attribute(x, granularity="unit")
    with pytest.raises(MemoryError, match="forward mode"):  # path integration, per unit
        gndi.attribute(x, granularity="channel", n_steps=2)
    with pytest.raises(MemoryError, match="internal_batch_size"):
        compute_gndi(model, [x], {"conv": model[0]}, granularity="channel", progress=False)
    # chunks of 2 examples fit (0.5 MB of effects + 1 MB of tangent columns)
    scores = gndi.attribute(x, mode="forward", granularity="channel", internal_batch_size=2)
    monkeypatch.delenv("CAPTUM_GNDI_MAX_EFFECT_BYTES")
    assert torch.allclose(scores, gndi.attribute(x, mode="forward", granularity="channel"))


# ---------------------------------------------------------------------------------------------
# 9. target, norm and n_probes reach every entry point: the pruning scorer, the criteria,
#    validate and the CLI; the pass count covers the criteria and probe_exact
# ---------------------------------------------------------------------------------------------


def test_channel_importance_takes_target_norm_and_n_probes():
    from captum_gndi.cli import build_parser
    from captum_gndi.pruning import channel_importance
    from captum_gndi.pruning.layers import find_prunable

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Linear(20, 6)
    ).eval()
    x = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    data = DataLoader(TensorDataset(x, labels), batch_size=3)
    layers = find_prunable(model, x[:2], keep_stem=False)
    assert [layer.name for layer in layers] == ["0", "2"]
    gndi = LayerGNDI(model, [model[0], model[2]])
    # independent computation: LayerGNDI per batch, averaged over the six examples
    for kwargs, attribute_kwargs in [
        (dict(target="label"), dict(target=labels)),
        (dict(target=2, norm="l1"), dict(target=2, norm=1)),
        (dict(norm="fisher"), dict(norm="fisher")),
    ]:
        scores = channel_importance(model, data, layers, "gndi", **kwargs)
        expected = gndi.attribute(x, granularity="channel", **attribute_kwargs)
        for name, e in zip(["0", "2"], expected):
            torch.testing.assert_close(scores[name], e.mean(0).double(), rtol=1e-5, atol=1e-7)
    # probes: the same numbers as compute_gndi with the same probes, per batch
    probed = channel_importance(model, data, layers, "gndi", n_probes=4)
    direct = compute_gndi(
        model, data, {"0": model[0]}, granularity="channel", n_probes=4, progress=False
    )
    torch.testing.assert_close(probed["0"], direct.mean["0"].double())
    with pytest.raises(ValueError, match="criterion 'taylor' has its own definition"):
        channel_importance(model, data, layers, "taylor", n_probes=4)
    with pytest.raises(ValueError, match="target must be None, an int"):
        channel_importance(model, data, layers, "gndi", target="logits")
    args = build_parser().parse_args(
        ["prune", "--model", "digits-resnet", "--target", "label", "--norm", "fisher"]
        + ["--n-probes", "16"]
    )
    assert (args.target, args.norm, args.n_probes) == ("label", "fisher", 16)
    assert build_parser().parse_args(["prune", "--model", "m", "--target", "3"]).target == 3


def _conv_model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Linear(20, 6)
    )
    x = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    return model.double().eval(), DataLoader(TensorDataset(x.double(), labels), batch_size=3)


@pytest.mark.filterwarnings("ignore:Per-unit path integration")
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize(
    "options, keywords",
    [
        (dict(norm="fisher", n_probes=8), dict(norm="fisher", n_probes=8)),
        (dict(norm="fisher"), dict(norm="fisher")),
        (dict(gndi_target="label", norm="l1"), dict(target="label", norm="l1")),
        (dict(gndi_target=3, n_probes=2), dict(target=3, n_probes=2)),
        (dict(n_probes=3, seed=5), dict(n_probes=3, probe_seed=5)),
    ],
)
def test_criteria_take_gndi_target_norm_and_n_probes(granularity, options, keywords):
    from captum_gndi.criteria import CriterionSettings, score_criteria

    model, data = _conv_model_and_data()
    layers = ["0", "2"]
    settings = CriterionSettings(granularity=granularity, n_steps=4, progress=False, **options)
    scores, per_example = score_criteria(
        model, data, layers, ["gndi", "gndi_path"], settings=settings
    )
    for criterion, n_steps in [("gndi", 1), ("gndi_path", 4)]:
        direct = compute_gndi(
            model, data, layers, granularity=granularity, n_steps=n_steps, progress=False,
            check_first_order=0, **keywords,
        )  # fmt: skip
        expected = torch.cat([direct.mean[name].reshape(-1) for name in layers])
        assert expected.shape == scores[criterion].shape and expected.abs().min() > 0
        torch.testing.assert_close(torch.as_tensor(scores[criterion]), expected.double())
        assert per_example[criterion].shape == (6, len(expected))


def test_criteria_options_of_gndi_are_checked_once_with_the_fix():
    from captum_gndi.criteria import CriterionSettings, score_criteria

    with pytest.raises(ValueError, match="use norm=2 or norm='fisher' with n_probes"):
        CriterionSettings(norm="l1", n_probes=4)
    with pytest.raises(ValueError, match="n_probes must be an integer >= 1"):
        CriterionSettings(n_probes=0)
    with pytest.raises(TypeError, match="is a bool, not a norm"):
        CriterionSettings(norm=True)
    with pytest.raises(ValueError, match="drop gndi_target"):
        CriterionSettings(norm="fisher", gndi_target=2)
    with pytest.raises(ValueError, match="gndi_target .the output G-NDI measures. must be None"):
        CriterionSettings(gndi_target="logits")
    model, data = _conv_model_and_data()
    unlabelled = [x for x, _ in data]
    with pytest.raises(ValueError, match="gndi_target='label' .* the batches have no labels"):
        score_criteria(model, unlabelled, ["0"], "gndi", gndi_target="label", progress=False)


def test_validate_takes_gndi_target_norm_and_n_probes():
    from captum_gndi.validation import validate

    model, data = _conv_model_and_data()
    report = validate(
        model, data, ["0", "2"], ["gndi"], damage=["output_delta"], granularity="channel",
        progress=False, n_boot=20, norm="fisher", n_probes=4, gndi_target=None,
    )  # fmt: skip
    direct = compute_gndi(
        model, data, ["0", "2"], granularity="channel", norm="fisher", n_probes=4,
        progress=False, check_first_order=0,
    )  # fmt: skip
    expected = torch.cat([direct.mean["0"], direct.mean["2"]]).double()
    torch.testing.assert_close(torch.as_tensor(report.scores["gndi"]), expected)
    assert report.metadata["norm"] == "fisher" and report.metadata["n_probes"] == 4
    with pytest.raises(ValueError, match="use norm=2 or norm='fisher' with n_probes"):
        validate(model, data, ["0"], ["gndi"], norm="linf", n_probes=4, progress=False)
    from captum_gndi.tasks import PatchingTask

    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    task = PatchingTask(ids, ids.flip(1), torch.tensor([[0, 1], [1, 2]]))
    with pytest.raises(ValueError, match="drop gndi_target=, norm= and n_probes="):
        validate(TokenModel().eval(), task, ["head"], norm="fisher")


def test_probe_exact_rows_count_in_the_pass_estimate(model, x, monkeypatch):
    import captum_gndi.engine as engine

    bars = []

    class Bar:
        def __init__(self, total, desc, disable):
            self.total, self.done = total, 0
            bars.append(self)

        def update(self, n=1):
            self.done += n

        def close(self):
            pass

    monkeypatch.setattr(engine, "tqdm", Bar)
    gndi = LayerGNDI(model, model.linear1)  # 4 channels, 3 logits (one output position)
    with pytest.warns(UserWarning, match="about 40 passes in reverse mode") as caught:
        gndi.attribute(
            x, granularity="channel", n_steps=2, n_probes=2, probe_exact=1, mode="reverse"
        )
    # 4 channels x 2 steps, each one recorded pass and (1 + 1) exact rows + 2 probes
    assert sum("passes" in str(w.message) for w in caught) == 1
    assert [(bar.total, bar.done) for bar in bars] == [(4 * 2 * (1 + 2 + 2), 40)]


def test_criteria_path_warns_about_its_passes_once():
    from captum_gndi.criteria import score_criteria

    model, data = _conv_model_and_data()  # two batches
    with pytest.warns(UserWarning, match="Per-unit path integration") as caught:
        score_criteria(
            model, data, ["0"], "gndi_path", granularity="channel", n_steps=4, progress=False
        )
    assert sum("Per-unit path integration" in str(w.message) for w in caught) == 1


# ---------------------------------------------------------------------------------------------
# 10. First order where it cannot see: the built-in reliability check
# ---------------------------------------------------------------------------------------------


def test_reliability_check_names_a_layer_before_a_normalisation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)).eval()
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(4))
    layers = {"stream": model[0], "normed": model[1]}
    with pytest.warns(UserWarning, match=r"off by more than a factor of 2 on 8 examples for 'str"):
        result = compute_gndi(model, [x], layers, progress=False)
    ratios = result.first_order_ratio
    assert ratios["stream"] < 1e-3  # LayerNorm is scale invariant: J h = 0 to first order
    assert ratios["normed"] == pytest.approx(1.0, rel=1e-5)  # only a linear layer after it
    # the ratio against an independent computation on the same 8 examples
    exact = (model(x[:8]) - model[2](model[1](torch.zeros(8, 8)))).norm(dim=1).mean()
    first = LayerGNDI(model, model[0]).attribute(x[:8]).mean()
    assert ratios["stream"] == pytest.approx(float(first / exact), rel=1e-4)
    assert result.to_dict()["first_order_ratio"] == ratios
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        skipped = compute_gndi(model, [x], layers, progress=False, check_first_order=0)
        compute_gndi(model, [x], {"normed": model[1]}, progress=False)  # reliable: no warning
    assert skipped.first_order_ratio is None


def test_reliability_check_on_gpt2s_last_block():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=2, vocab_size=40, attn_implementation="eager"
    )
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 40, (4, 6), generator=torch.Generator().manual_seed(5))
    logits = model_logits(gpt2, token_index=-1)  # next-token logits
    with pytest.warns(UserWarning, match=r"'last block' \(\d"):
        result = compute_gndi(
            logits, [ids], {"last block": gpt2.transformer.h[-1]}, target=0, progress=False
        )
    assert result.first_order_ratio["last block"] < 0.05  # 0.009: ln_f is scale invariant


def test_reliability_check_with_probes_and_the_fisher_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 5)).eval()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(6))
    for kwargs in (dict(norm="fisher"), dict(n_probes=64), dict(norm="fisher", n_probes=64)):
        with pytest.warns(UserWarning, match="'stream'"):
            result = compute_gndi(model, [x], {"stream": model[0]}, progress=False, **kwargs)
        assert result.first_order_ratio["stream"] < 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compute_gndi(model, [x], {"normed": model[1]}, progress=False, n_probes=4096)
    assert result.first_order_ratio["normed"] == pytest.approx(1.0, rel=0.1)  # probe estimate


# ---------------------------------------------------------------------------------------------
# 6. The attention mask the Captum way (additional_forward_args), and padding without a mask
# ---------------------------------------------------------------------------------------------


def test_attention_mask_in_additional_forward_args_is_recognised():
    pytest.importorskip("transformers")
    from captum_gndi import find_layers, zoo

    lm, tokenizer = zoo.load_polarity_lm()
    batch = tokenizer(
        ["a gripping , funny and moving film", "dull"], return_tensors="pt", padding=True
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any() and (ids == tokenizer.pad_token_id).any()
    heads = list(find_layers(lm, "head").values())[1]

    def first_logits(input_ids, attention_mask=None):
        return lm(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0, :16]

    gndi = LayerGNDI(first_logits, heads)
    kwargs = dict(granularity="channel", channel_dim=(1, 2))
    by_keyword = gndi.attribute(ids, forward_kwargs={"attention_mask": mask}, **kwargs)
    captum_way = gndi.attribute(ids, additional_forward_args=(mask,), **kwargs)
    torch.testing.assert_close(captum_way, by_keyword, rtol=0, atol=0)
    assert (captum_way[mask == 0] == 0).all() and (captum_way[mask == 1] > 0).any()
    # the Hugging Face model itself: its forward's attention_mask is its 4th parameter
    direct = LayerGNDI(lm, heads)
    probes = dict(target=0, n_probes=4, granularity="channel", channel_dim=2)
    hf_keyword = direct.attribute(ids, forward_kwargs={"attention_mask": mask}, **probes)
    hf_positional = direct.attribute(ids, additional_forward_args=(None, None, mask), **probes)
    torch.testing.assert_close(hf_positional, hf_keyword, rtol=0, atol=0)
    # no mask at all, and pad ids in the inputs: a warning
    with pytest.warns(UserWarning, match=r"contain the pad id 1 but no attention_mask"):
        direct.attribute(ids, **probes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        direct.attribute(ids[:1], **probes)  # the longest sentence has no padding


# ---------------------------------------------------------------------------------------------
# 13. Per-token G-NDI of a generated sequence, as Captum's LLMAttributionResult
# ---------------------------------------------------------------------------------------------


def test_llm_gndi_on_the_shipped_polarity_lm():
    pytest.importorskip("transformers")
    from captum.attr import LayerGradientXActivation, LLMAttributionResult

    from captum_gndi import llm_gndi, zoo

    lm, tokenizer = zoo.load_polarity_lm()
    result = llm_gndi(lm, tokenizer, "a gripping , funny", " and moving film")
    assert isinstance(result, LLMAttributionResult)
    assert result.input_tokens == ["<|endoftext|>", "Ġa", "Ġgripping", "Ġ,", "Ġfunny"]
    assert result.output_tokens == ["Ġand", "Ġmoving", "Ġfilm"]
    assert result.token_attr.shape == (3, 5)
    torch.testing.assert_close(result.seq_attr, result.token_attr.sum(0))
    # independent: signed first-order G-NDI with a zero baseline on the embeddings is Captum's
    # LayerGradientXActivation summed over the embedding dimension, per prompt position
    prompt = torch.tensor([[0, 259, 2852, 269, 637]])
    target = [290, 1346, 337]
    for i, token in enumerate(target):
        sequence = torch.cat([prompt, torch.tensor([target[:i]], dtype=torch.long)], dim=1)

        def log_prob(ids, token=token):
            return torch.log_softmax(lm(input_ids=ids).logits[:, -1].float(), -1)[:, token]

        gxa = LayerGradientXActivation(log_prob, lm.get_input_embeddings()).attribute(sequence)
        torch.testing.assert_close(result.token_attr[i], gxa[0, :5].sum(-1), rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            assert float(result.output_probs[i]) == pytest.approx(float(log_prob(sequence).exp()))
    figure, _ = result.plot_token_attr()  # Captum's own plotting works on it
    assert figure is not None
    generated = llm_gndi(lm, tokenizer, "a gripping , funny", max_new_tokens=2)
    assert generated.token_attr.shape == (2, 5) and len(generated.output_tokens) == 2


# ---------------------------------------------------------------------------------------------
# 11. Multi-tensor layers at channel and unit granularity: one score tensor per tensor
# ---------------------------------------------------------------------------------------------


def test_multi_tensor_layers_return_one_score_tensor_per_tensor():
    from captum.attr import LayerGradientXActivation

    model = BasicModel_MultiLayer(multi_input_module=True).double().eval()
    x = torch.tensor([[3.0, 4.0, 0.0], [1.0, -2.0, 0.5], [0.5, 1.0, 2.0]], dtype=torch.float64)
    for on_input in (False, True):  # MultiRelu returns two tensors and takes two
        gndi = LayerGNDI(model, model.multi_relu)
        kwargs = dict(target=0, attribute_to_layer_input=on_input)
        units = gndi.attribute(x, granularity="unit", signed=True, **kwargs)
        captum = LayerGradientXActivation(model, model.multi_relu).attribute(x, **kwargs)
        assert isinstance(units, tuple) and len(units) == 2
        for ours, theirs in zip(units, captum):  # zero baseline: J_u h_u, per tensor
            torch.testing.assert_close(ours, theirs)
        channels = gndi.attribute(x, granularity="channel", **kwargs)
        assert [c.shape for c in channels] == [(3, 4), (3, 4)]
        for c, u in zip(channels, units):
            torch.testing.assert_close(c, u.abs())  # a channel of an (N, C) tensor is a unit
        # each unit intervened on alone: brute force on tensor 1, unit 2
        if not on_input:
            reference = model(x)[:, 0]

            def zero_unit(module, args, output):
                second = output[1].clone()
                second[:, 2] = 0
                return output[0], second

            handle = model.multi_relu.register_forward_hook(zero_unit)
            try:
                effect = reference - model(x)[:, 0]
            finally:
                handle.remove()
            path = gndi.attribute(x, granularity="channel", n_steps=1, **kwargs)
            assert torch.allclose(path[1][:, 2], effect.abs().detach())  # ReLU-linear after
    # layer granularity stays one joint score; lists of layers hold the tuples
    assert gndi.attribute(x, target=0).shape == (3,)
    listed = LayerGNDI(model, [model.linear0, model.multi_relu]).attribute(x, granularity="unit")
    assert isinstance(listed[0], torch.Tensor) and isinstance(listed[1], tuple)
    chunked = LayerGNDI(model, model.multi_relu).attribute(
        x, granularity="unit", internal_batch_size=2
    )
    for a, b in zip(chunked, LayerGNDI(model, model.multi_relu).attribute(x, granularity="unit")):
        torch.testing.assert_close(a, b)
