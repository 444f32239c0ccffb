"""Statistics of scores against damage: hand-computed values on small arrays."""

import numpy as np
import pytest
from scipy import stats as sps

from captum_gndi.validation import stats


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_hand_computed_correlations():
    x, y = np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])
    # one adjacent swap: sum d^2 = 2 -> rho = 1 - 6 * 2 / (4 * 15) = 0.8; 5 concordant, 1 discordant
    assert stats.correlation(x, y, "spearman", n_boot=0, n_perm=0).value == pytest.approx(0.8)
    assert stats.correlation(x, y, "kendall", n_boot=0, n_perm=0).value == pytest.approx(4 / 6)
    assert stats.correlation(x, y, "pearson", n_boot=0, n_perm=0).value == pytest.approx(0.8)


@pytest.mark.parametrize("seed", range(4))
def test_point_values_equal_scipy_with_ties(seed):
    rng = _rng(seed)
    n = int(rng.integers(5, 60))
    x = rng.integers(0, 6, n).astype(float)  # many ties
    y = x + rng.integers(0, 4, n)
    expected = {
        "pearson": sps.pearsonr(x, y).statistic,
        "spearman": sps.spearmanr(x, y).statistic,
        "kendall": sps.kendalltau(x, y).statistic,  # tau-b
    }
    for kind, value in expected.items():
        got = stats.correlation(x, y, kind, n_boot=0, n_perm=0).value
        assert got == pytest.approx(value, abs=1e-11), kind


def test_runs_are_averaged():
    y = np.arange(6.0)
    runs = np.stack([y, y[::-1]])  # Spearman +1 and -1
    assert stats.correlation(runs, y, n_boot=0, n_perm=0).value == 0.0
    assert stats.top_k_overlap(runs, y, 2) == 0.5  # 1 and 0


@pytest.mark.parametrize("transform", [lambda d: d, lambda d: d.max() - d, lambda d: d**2 + 3])
def test_score_equal_to_depth_has_partial_correlation_exactly_zero(transform):
    depth = np.arange(12.0)
    damage = _rng(1).random(12)
    est = stats.partial_spearman(transform(depth), damage, depth, n_boot=200)
    assert est.value == 0.0
    assert (est.ci_low, est.ci_high) == (0.0, 0.0)


def test_partial_spearman_hand_example():
    # ranks: x = [1,3,2,5,4], y = [2,1,4,3,5], z = [1..5]; rho_xz = rho_yz = 0.8, rho_xy = 0.3
    # partial = (0.3 - 0.8 * 0.8) / (1 - 0.8^2) = -0.34 / 0.36 = -17/18
    x = np.array([10.0, 30, 20, 50, 40])
    y = np.array([0.2, 0.1, 0.4, 0.3, 0.5])
    z = np.array([1.0, 2, 3, 4, 5])
    assert stats.partial_spearman(x, y, z, n_boot=0).value == pytest.approx(-17 / 18)


def test_partial_spearman_equals_the_first_order_partial_formula():
    rng = _rng(2)
    z = rng.normal(size=40)
    x, y = z + rng.normal(size=40), z + rng.normal(size=40)
    r = {
        k: sps.spearmanr(*v).statistic
        for k, v in {"xy": (x, y), "xz": (x, z), "yz": (y, z)}.items()
    }
    expected = (r["xy"] - r["xz"] * r["yz"]) / np.sqrt((1 - r["xz"] ** 2) * (1 - r["yz"] ** 2))
    assert stats.partial_spearman(x, y, z, n_boot=0).value == pytest.approx(expected, abs=1e-11)


def test_score_equal_to_damage_has_spearman_one_and_its_interval_includes_one():
    damage = _rng(3).random(10)
    est = stats.correlation(damage, damage, "spearman", n_boot=300, n_perm=0)
    assert est.value == 1.0
    assert est.ci_low <= 1.0 <= est.ci_high
    assert est.ci_method == "percentile"  # BCa is undefined on a degenerate distribution


def test_interval_is_seeded_and_contains_the_estimate():
    rng = _rng(4)
    x = rng.normal(size=25)
    y = x + rng.normal(size=25)
    a = stats.correlation(x, y, "kendall", n_boot=300, n_perm=0, seed=7)
    b = stats.correlation(x, y, "kendall", n_boot=300, n_perm=0, seed=7)
    assert a == b
    assert a.ci_method == "BCa"
    assert a.ci_low < a.value < a.ci_high


def test_tied_scores_with_constant_resamples_still_get_an_interval():
    # a two-valued score: some resamples draw one value only and are undefined (dropped)
    x = np.repeat([1.0, 2.0], 3)
    y = np.arange(6.0)
    est = stats.correlation(x, y, "pearson", n_boot=400, n_perm=0)
    assert np.isfinite([est.ci_low, est.ci_high]).all()
    assert est.ci_method == "percentile"


def test_paired_difference_verdicts():
    rng = _rng(5)
    damage = rng.random(30)
    good = damage + 0.01 * rng.normal(size=30)
    poor = damage + 0.5 * rng.normal(size=30)
    better = stats.spearman_difference(good, poor, damage, n_boot=300)
    assert better.value > 0 and stats.verdict(better) == "beats"
    assert stats.verdict(stats.spearman_difference(poor, good, damage, n_boot=300)) == "loses to"
    same = stats.spearman_difference(good, good.copy(), damage, n_boot=300)
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    assert stats.verdict(same) == "does not beat"


def test_difference_point_value():
    y = np.array([1.0, 2, 3, 4])
    est = stats.spearman_difference(y, np.array([1.0, 3, 2, 4]), y, n_boot=0)
    assert est.value == pytest.approx(0.2)  # 1 - 0.8
    assert stats.verdict(est) is None  # no interval, no verdict


def test_constant_score_has_no_correlation():
    damage = np.arange(8.0)
    synflow = 5.0 + 1e-9 * _rng(6).random(8)  # equal up to float noise
    assert stats.is_constant(synflow)
    for kind in stats.CORRELATIONS:
        est = stats.correlation(synflow, damage, kind, n_boot=100, n_perm=100)
        assert est.value is None and est.ci_low is None and est.p_value is None
        assert est.note == "constant score: no correlation"
    assert stats.partial_spearman(synflow, damage, damage, n_boot=100).value is None
    assert stats.spearman_difference(damage, synflow, damage, n_boot=100).value is None
    assert stats.top_k_overlap(synflow, damage, 3) is None
    assert stats.correlation(damage, np.zeros(8), n_boot=0).note == (
        "constant damage: no correlation"
    )


def test_permutation_p_values():
    x = np.arange(8.0)
    # perfectly correlated: 2/8! exactly; with 2000 random permutations (+1) about 2/2001
    assert stats.correlation(x, 2 * x + 1, "spearman", n_boot=0).p_value < 0.01
    assert stats.correlation(x, x**3, "kendall", n_boot=0).p_value < 0.01
    rng = _rng(7)
    independent = stats.correlation(rng.random(20), rng.random(20), "pearson", n_boot=0)
    assert independent.p_value > 0.1


def test_exact_permutation_p_value_by_hand():
    # n = 5: 5! = 120 <= n_perm, so all permutations are enumerated. rho = 0.9 is one adjacent
    # swap (sum d^2 = 2); |rho| >= 0.9 for the identity, the 4 adjacent swaps and their 5
    # reversals: p = 10 / 120.
    est = stats.correlation(np.arange(5.0), np.array([1.0, 2, 3, 5, 4]), n_boot=0, n_perm=200)
    assert est.value == pytest.approx(0.9)
    assert est.p_value == pytest.approx(10 / 120)


def test_top_k_overlap_hand_example():
    scores = np.array([5.0, 4, 3, 2, 1, 0])
    damage = np.array([5.0, 1, 4, 0, 3, 2])
    assert stats.top_k_overlap(scores, damage, 2) == 0.5  # {0, 1} vs {0, 2}
    assert stats.top_k_overlap(scores, damage, 3) == pytest.approx(2 / 3)  # {0,1,2} vs {0,2,4}
    assert stats.top_k_overlap(scores, damage, 6) == 1.0
    with pytest.raises(ValueError, match="k must be between 1"):
        stats.top_k_overlap(scores, damage, 0)


def test_per_example_agreement_hand_example():
    damage = np.tile([1.0, 2, 3, 4], (4, 1))
    scores = np.array([[1.0, 2, 3, 4], [1, 3, 2, 4], [4, 3, 2, 1], [2, 2, 2, 2]])
    # rho per example: 1, 0.8, -1, constant (skipped); quartiles of [-1, 0.8, 1] by interpolation
    got = stats.per_example_agreement(scores, damage)
    assert got.median == pytest.approx(0.8)
    assert (got.q25, got.q75) == (pytest.approx(-0.1), pytest.approx(0.9))
    assert (got.n_used, got.n_skipped) == (3, 1)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="NaN or inf"):
        stats.correlation(np.array([1.0, np.nan, 3]), np.arange(3.0))
    with pytest.raises(ValueError, match="same U units"):
        stats.correlation(np.arange(4.0), np.arange(5.0))
    with pytest.raises(ValueError, match="at least 3 units"):
        stats.correlation(np.arange(2.0), np.arange(2.0))
    with pytest.raises(ValueError, match="Unknown correlation"):
        stats.correlation(np.arange(4.0), np.arange(4.0), "cosine")
    with pytest.raises(ValueError, match="ci_method"):
        stats.correlation(np.arange(4.0), np.arange(4.0), ci_method="basic")
