"""ValidationReport: the statistics it holds, the words it prints and the files it writes."""

import csv
import json

import numpy as np
import pytest
from scipy import stats as sps

from captum_gndi.validation import stats
from captum_gndi.validation.report import build_report

N_UNITS = 16


def _inputs(n_units: int = N_UNITS, seed: int = 0):
    rng = np.random.default_rng(seed)
    depth = np.arange(float(n_units))
    damage = rng.gamma(2.0, 1.0, n_units)  # unrelated to depth
    scores = {
        "gndi": damage + 0.01 * rng.normal(size=n_units),
        "synflow": 7.0 + 1e-9 * rng.random(n_units),  # constant up to float noise
        "depth": depth.max() - depth,
        "random_seed0": rng.random(n_units),
        "random_seed1": rng.random(n_units),
        "grad_x_activation": damage + 0.01 * rng.normal(size=n_units),
    }
    return [f"block{i}" for i in range(n_units)], depth, damage, scores


@pytest.fixture(scope="module")
def report():
    units, depth, damage, scores = _inputs()
    rng = np.random.default_rng(1)
    per_example = damage * rng.gamma(3.0, 1.0, (6, N_UNITS))
    per_example[0] = 1.0  # a constant row: skipped
    return build_report(
        units,
        depth,
        {"loss_increase": damage, "output_delta": damage**2},
        scores,
        damage_per_example={"loss_increase": per_example},
        scores_per_example={"gndi": per_example + 0.001 * rng.random((6, N_UNITS))},
        metadata={"model": "toy", "layers": ("a", "b")},
        n_boot=200,
        n_perm=999,
    )


def test_correlations_match_scipy_and_runs_are_averaged(report):
    _, _, damage, scores = _inputs()
    got = report.correlations["gndi"]["loss_increase"]
    assert got["spearman"].value == pytest.approx(sps.spearmanr(scores["gndi"], damage)[0])
    assert got["kendall"].value == pytest.approx(sps.kendalltau(scores["gndi"], damage)[0])
    assert got["pearson"].value == pytest.approx(sps.pearsonr(scores["gndi"], damage)[0])
    assert report.groups["random"] == ["random_seed0", "random_seed1"]
    mean = np.mean([sps.spearmanr(scores[k], damage)[0] for k in report.groups["random"]])
    assert report.correlations["random"]["loss_increase"]["spearman"].value == pytest.approx(mean)
    assert report.controls == ["depth", "random", "grad_x_activation"]
    assert report.methods == ["gndi", "synflow"]


def test_depth_control_has_zero_partial_correlation(report):
    assert report.correlations["depth"]["loss_increase"]["partial_spearman"].value == 0.0


def test_verdicts_in_plain_words(report):
    (gndi, synflow) = report.verdicts()
    # G-NDI equals the damage up to noise: it beats depth and random, not gradient x activation
    assert gndi.startswith("**G-NDI** (Spearman ")
    assert "beats depth (ΔSpearman +" in gndi
    assert "random averaged over 2 runs (ΔSpearman +" in gndi
    assert "but not gradient x activation (ΔSpearman " in gndi
    assert report.comparisons["gndi"]["depth"]["loss_increase"].ci_low > 0
    assert synflow == "**SynFlow**: constant score: no correlation; no verdict."


def test_markdown_leads_with_verdicts_then_tables(report):
    md = str(report)
    assert md == report.to_markdown()
    assert md.index("## Verdicts") < md.index("## Correlations with `loss_increase`")
    assert md.index("## Correlations") < md.index("## Per-example agreement") < md.index("Top-k")
    assert "constant score: no correlation" in md
    assert "nan" not in md.lower()
    assert "cannot separate methods" not in md  # 16 units: no small-sample warning
    assert "| `depth` (control) |" in md
    assert "| layers | a, b |" in md


def test_small_number_of_units_warns():
    units, depth, damage, scores = _inputs(n_units=8)
    small = build_report(units, depth, {"kl": damage}, scores, n_boot=50, n_perm=99)
    warning = "with 8 units the correlations cannot separate methods; validate at channel level"
    assert warning in small.warnings[0]
    assert warning in small.to_markdown()


def test_damage_ranked_like_depth_is_flagged():
    units, depth, _, scores = _inputs(n_units=6)
    report = build_report(units, depth, {"kl": 10 - depth}, scores, n_boot=0, n_perm=0)
    assert any("depth ranks the units exactly like `kl`" in w for w in report.warnings)
    assert report.correlations["gndi"]["kl"]["partial_spearman"].value == 0.0


def test_top_k_and_per_example(report):
    assert report.top_k_sizes == {"top-5": 5, "top-10%": 2}
    _, _, damage, scores = _inputs()
    expected = stats.top_k_overlap(scores["gndi"], damage, 5)
    assert report.top_k["gndi"]["loss_increase"]["top-5"] == expected
    assert report.top_k["synflow"]["loss_increase"]["top-5"] is None
    agreement = report.per_example["gndi"]["loss_increase"]
    assert (agreement.n_used, agreement.n_skipped) == (5, 1)
    assert agreement.median > 0.99  # scores equal the per-example damage up to noise
    assert list(report.per_example) == ["gndi"]


def test_save_writes_everything_and_json_round_trips(report, tmp_path):
    paths = report.save(tmp_path / "out")
    assert set(paths) == {"markdown", "json", "correlations", "units", "scatter", "bars"}
    for path in paths.values():
        assert path.exists() and path.stat().st_size > 0
    for kind in ("scatter", "bars"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["markdown"].read_text().startswith(report.to_markdown())
    loaded = json.loads(paths["json"].read_text())
    assert loaded == report.to_dict()
    assert loaded["correlations"]["synflow"]["loss_increase"]["spearman"]["value"] is None
    assert loaded["metadata"]["layers"] == ["a", "b"]
    verdict = loaded["comparisons"]["gndi"]["depth"]["loss_increase"]["verdict"]
    assert verdict == "beats"
    with paths["correlations"].open() as f:
        rows = list(csv.DictReader(f))
    # 5 methods x 2 metrics x 4 statistics, and 2 methods x 3 controls x 2 metrics differences
    assert len(rows) == 5 * 2 * 4 + 2 * 3 * 2
    with paths["units"].open() as f:
        units = list(csv.DictReader(f))
    assert [row["unit"] for row in units] == report.units
    assert float(units[3]["score:random_seed1"]) == report.scores["random_seed1"][3]


def test_bad_inputs_raise_clear_errors():
    units, depth, damage, scores = _inputs()
    with pytest.raises(ValueError, match=r"damage\['kl'\] must have shape \(16,\)"):
        build_report(units, depth, {"kl": damage[:5]}, scores)
    with pytest.raises(ValueError, match="not in scores"):
        build_report(
            units,
            depth,
            {"kl": damage},
            scores,
            damage_per_example={"kl": np.ones((2, 16))},
            scores_per_example={"snip": np.ones((2, 16))},
        )
    with pytest.raises(ValueError, match="damage is empty"):
        build_report(units, depth, {}, scores)
