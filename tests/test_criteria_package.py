"""captum_gndi.criteria as a package: the registry, the keyword-built context, the old names
(deprecated aliases that still work) and the report's computing/rendering split."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import captum_gndi.validation as validation
from captum_gndi import criteria
from captum_gndi.criteria import (
    CONTROL_CRITERIA,
    CRITERIA,
    CriterionSettings,
    available_criteria,
    build_context,
    channel_scores,
    check_criteria,
    score_criteria,
    score_each,
)
from captum_gndi.validation import export, render
from captum_gndi.validation.report import build_report


@pytest.fixture
def setup() -> tuple[nn.Module, DataLoader]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).eval()
    x = torch.randn(10, 4)
    return model, DataLoader(TensorDataset(x, torch.arange(10) % 3), batch_size=4)


def test_registry_lists_every_criterion_in_order_with_a_description():
    assert list(available_criteria()) == list(CRITERIA)
    assert set(CONTROL_CRITERIA) <= set(CRITERIA)
    assert all(available_criteria().values())
    assert check_criteria(None) == list(CRITERIA)
    assert check_criteria("gndi") == ["gndi"]
    with pytest.raises(ValueError, match="Unknown method"):
        check_criteria(["gndi", "shapley"])


def test_context_is_built_from_keywords_with_defaults(setup):
    model, loader = setup
    ctx = build_context(model, loader, ["0", "2"], progress=False)
    assert (
        ctx.settings.n_steps,
        ctx.settings.n_random,
        ctx.settings.method,
        ctx.settings.target,
    ) == (  # fmt: skip
        16,
        10,
        "gausslegendre",
        "label",
    )
    assert [u.name for u in ctx.units] == ["0", "2"]
    channels = build_context(model, loader, ["2"], granularity="channel", progress=False)
    assert [u.name for u in channels.units] == ["2[0]", "2[1]", "2[2]"]
    with pytest.raises(ValueError, match="n_steps and n_random"):
        build_context(model, loader, ["0"], n_steps=0)
    with pytest.raises(ValueError, match="target must be"):
        build_context(model, loader, ["0"], target="logits")  # type: ignore[arg-type]
    results = dict(score_each(ctx, ["depth", "param_count"]))
    assert results["depth"][0].tolist() == [1.0, 0.0]
    assert results["param_count"][0].tolist() == [25.0, 18.0]


def test_settings_object_is_the_one_place_of_the_options(setup):
    model, loader = setup
    settings = CriterionSettings(granularity="channel", n_steps=4, seed=3, n_random=2)
    by_object, rows = score_criteria(model, loader, ["1"], ["gndi_path", "random"],
                                     settings=settings, progress=False)  # fmt: skip
    by_keywords, same_rows = score_criteria(model, loader, ["1"], ["gndi_path", "random"],
                                            granularity="channel", n_steps=4, seed=3,
                                            n_random=2, progress=False)  # fmt: skip
    assert by_object["gndi_path"].shape == (5,) and by_object["random"].shape == (2, 5)
    for name in by_object:
        assert np.array_equal(by_object[name], by_keywords[name])
    assert np.array_equal(rows["gndi_path"], same_rows["gndi_path"])
    ctx = build_context(model, loader, ["1"], settings=settings, n_steps=8, progress=False)
    assert (ctx.settings.n_steps, ctx.settings.seed, settings.n_steps) == (8, 3, 4)
    assert ctx.settings.device == torch.device("cpu") and settings.device is None
    with pytest.raises(TypeError, match="n_step.*the options are"):
        build_context(model, loader, ["1"], n_step=8)
    with pytest.raises(ValueError, match="integration|method|rule"):
        CriterionSettings(method="simpson")
    with pytest.raises(AttributeError):
        settings.n_steps = 2  # type: ignore[misc]


def test_batches_carry_their_own_mask_rows():
    # a per-example mask over batches of 4 and 3: each batch sums over its own rows, also when
    # the batches are used after the loop (no per-batch state on the shared context)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).eval()
    x = torch.randn(7, 3)
    data = [(x[:4], torch.zeros(4, dtype=torch.long)), (x[4:], torch.zeros(3, dtype=torch.long))]
    mask = torch.randint(0, 3, (7, 6))
    mask[:, :3] = torch.tensor([0, 1, 2])
    ctx = build_context(model, data, ["1"], layer_mask=mask, progress=False)
    batches = list(ctx.batches("test"))
    assert [b.inputs[0].shape[0] for b in batches] == [4, 3]
    rows = [ctx.sums(b, "1", torch.ones(len(b.inputs[0]), 6), [0, 1, 2]) for b in batches]
    counts = torch.stack([(mask == g).sum(1) for g in range(3)], 1).float()
    torch.testing.assert_close(torch.cat(rows), counts)
    first_masks, _ = ctx.engine_masks(batches[0])
    assert torch.equal(first_masks[0], mask[:4])
    with pytest.raises(AttributeError):
        ctx.units = []  # type: ignore[misc]


def test_old_keywords_warn_and_give_the_same_numbers(setup):
    model, loader = setup
    new, _ = score_criteria(model, loader, ["0", "2"], criteria=["magnitude"], progress=False)
    with pytest.warns(DeprecationWarning, match="methods="):
        old, _ = score_criteria(model, loader, ["0", "2"], methods=["magnitude"], progress=False)
    assert np.array_equal(new["magnitude"], old["magnitude"])
    with pytest.raises(TypeError, match="both"):
        score_criteria(model, loader, ["0"], criteria=["gndi"], methods=["gndi"])
    with pytest.warns(DeprecationWarning, match="method="):
        by_keyword = channel_scores(
            method="magnitude", model=model, data=loader, layers=["2"], progress=False
        )
    positional = channel_scores("magnitude", model, loader, ["2"], progress=False)
    assert np.array_equal(by_keyword["2"], positional["2"])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("score_methods", "score_criteria"),
        ("available_methods", "available_criteria"),
        ("CONTROL_METHODS", "CONTROL_CRITERIA"),
    ],
)
def test_old_names_are_deprecated_aliases(old, new):
    with pytest.warns(DeprecationWarning, match=new):
        assert getattr(validation, old) is getattr(criteria, new)
    shim = importlib.import_module("captum_gndi.validation.criteria")
    with pytest.warns(DeprecationWarning, match="captum_gndi.criteria"):
        assert getattr(shim, old) is getattr(criteria, new)
    with pytest.warns(DeprecationWarning):
        assert shim.UndefinedCriterion is criteria.UndefinedCriterion
    assert getattr(validation, new) is getattr(criteria, new)  # new names: no warning
    with pytest.raises(AttributeError):
        validation.no_such_name  # noqa: B018


def test_report_methods_render_through_the_render_and_export_modules(tmp_path):
    rng = np.random.default_rng(0)
    damage = rng.gamma(2.0, 1.0, 16)
    report = build_report(
        [f"u{i}" for i in range(16)],
        np.arange(16.0),
        {"kl": damage},
        {"gndi": damage + 0.1 * rng.normal(size=16), "depth": np.arange(16.0)[::-1]},
        n_boot=50,
        n_perm=0,
    )
    assert report.criteria == ["gndi"] and report.controls == ["depth"]
    with pytest.warns(DeprecationWarning, match="criteria"):
        assert report.methods == ["gndi"]
    assert report.to_markdown() == render.render_markdown(report) == str(report)
    assert report.verdicts() == render.render_verdicts(report)
    assert report.to_dict() == export.report_dict(report)
    assert report.to_dict()["methods"] == ["gndi"]  # the saved JSON keeps its keys
    assert report.runs("gndi").shape == (1, 16)
    paths = report.save(tmp_path)
    assert {"markdown", "json", "correlations", "units", "scatter", "bars"} == set(paths)


def test_score_criteria_integration_is_a_deprecated_spelling_of_method():
    import pytest
    import torch
    from torch import nn

    from captum_gndi.criteria import score_criteria

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    new, _ = score_criteria(
        model,
        data,
        {"t": model[1]},
        criteria=["gndi_path"],
        n_steps=3,
        method="riemann_middle",
        progress=False,
    )
    with pytest.warns(DeprecationWarning, match="method="):
        old, _ = score_criteria(
            model,
            data,
            {"t": model[1]},
            criteria=["gndi_path"],
            n_steps=3,
            integration="riemann_middle",
            progress=False,
        )
    assert (new["gndi_path"] == old["gndi_path"]).all()
