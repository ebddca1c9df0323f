"""Statistics over per-sample scores: SEM, bootstrap CIs, Wilcoxon, tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from xattr.metrics.stats import paired_comparison, results_table, summarize, summary_table


def test_summarize_by_hand():
    # finite [1,2,3,4]: mean 2.5; var (ddof=1) = (2.25+.25+.25+2.25)/3 = 5/3;
    # sem = sqrt(5/3)/sqrt(4) = 0.645497
    s = summarize([1.0, 2.0, math.nan, 3.0, 4.0])
    assert s.mean == 2.5
    assert s.sem == pytest.approx(math.sqrt(5 / 3) / 2)
    assert (s.n, s.skipped) == (4, 1)
    assert s.ci_low < 2.5 < s.ci_high


def test_summarize_ci_deterministic_and_seeded():
    x = np.random.default_rng(0).normal(size=50)
    a, b = summarize(x, seed=3), summarize(x, seed=3)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    c = summarize(x, seed=4)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_summarize_ci_width_matches_normal_theory():
    # For n=400 normal scores the 95% bootstrap CI is close to mean ± 1.96 sem.
    x = np.random.default_rng(1).normal(loc=3.0, size=400)
    s = summarize(x)
    assert s.ci_low < s.mean < s.ci_high
    assert (s.ci_high - s.ci_low) == pytest.approx(2 * 1.96 * s.sem, rel=0.15)
    assert (s.mean - s.ci_low) == pytest.approx(s.ci_high - s.mean, rel=0.25)


def test_summarize_small_and_empty():
    one = summarize([0.5, math.nan, math.inf])
    assert (one.mean, one.n, one.skipped) == (0.5, 1, 2)
    assert math.isnan(one.sem) and math.isnan(one.ci_low)
    assert one.format() == "0.500 (n=1, skipped 2)"
    none = summarize([math.nan])
    assert none.n == 0 and none.skipped == 1 and math.isnan(none.mean)
    no_boot = summarize([1.0, 2.0], n_boot=0)
    assert math.isnan(no_boot.ci_low) and no_boot.sem == pytest.approx(0.5)


def test_paired_comparison_wilcoxon_by_hand():
    # d = a - b = [1, -2, 3, .5, 4]; |d| ranks: .5->1, 1->2, 2->3, 3->4, 4->5
    # R+ = 1+2+4+5 = 12, R- = 3 -> statistic 3; exact two-sided p: subsets of {1..5} with
    # rank sum <= 3 are {}, {1}, {2}, {3}, {1,2} -> 2 * 5/32 = 0.3125
    b = np.array([0.0, 2.0, 1.0, 0.5, 1.0])
    d = np.array([1.0, -2.0, 3.0, 0.5, 4.0])
    r = paired_comparison(b + d, b)
    assert r.statistic == 3.0
    assert r.p_value == pytest.approx(0.3125)
    ref = stats.wilcoxon(d)
    assert (r.statistic, r.p_value) == pytest.approx((ref.statistic, ref.pvalue))
    assert r.mean_diff == pytest.approx(6.5 / 5)
    assert r.ci_low < r.mean_diff < r.ci_high
    assert (r.n, r.skipped) == (5, 0)


def test_paired_comparison_drops_non_finite_pairs():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=30), rng.normal(size=30)
    a[3], b[7] = math.nan, math.inf
    r = paired_comparison(a, b, seed=1)
    keep = np.isfinite(a) & np.isfinite(b)
    ref = stats.wilcoxon(a[keep] - b[keep])
    assert (r.n, r.skipped) == (28, 2)
    assert r.p_value == pytest.approx(ref.pvalue)
    assert r.mean_diff == pytest.approx((a[keep] - b[keep]).mean())
    again = paired_comparison(a, b, seed=1)
    assert (r.ci_low, r.ci_high) == (again.ci_low, again.ci_high)


def test_paired_comparison_zero_differences_follow_scipy_default():
    # one zero difference among non-zero ones: scipy's default ("wilcox") drops it
    d = np.array([0.0, 1.0, 2.0, -0.5, 3.0, 4.0, -6.0])
    r = paired_comparison(d, np.zeros_like(d))
    ref = stats.wilcoxon(d)
    assert (r.statistic, r.p_value) == pytest.approx((ref.statistic, ref.pvalue))
    assert r.p_value != pytest.approx(stats.wilcoxon(d, zero_method="pratt").pvalue)
    assert r.n == 7


def test_paired_bootstrap_resamples_pairs():
    # b = a + 1 exactly: every paired difference is -1, so the paired CI collapses to -1
    # (an unpaired bootstrap would be wide because a itself varies a lot).
    a = np.random.default_rng(5).normal(scale=10, size=40)
    r = paired_comparison(a, a + 1.0)
    assert r.ci_low == pytest.approx(-1.0) and r.ci_high == pytest.approx(-1.0)
    assert r.p_value < 1e-6


def test_paired_comparison_all_zero_and_errors():
    r = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (r.statistic, r.p_value, r.mean_diff) == (0.0, 1.0, 0.0)
    empty = paired_comparison([math.nan], [1.0])
    assert empty.n == 0 and empty.skipped == 1 and math.isnan(empty.p_value)
    with pytest.raises(ValueError, match="pair"):
        paired_comparison([1.0, 2.0], [1.0])


RECORDS = [
    {"method": "glimpse", "sample_id": 1, "nss": 1.0, "kl": 0.5, "custom": 1.0},
    {"method": "glimpse", "sample_id": 2, "nss": 2.0, "kl": 0.7, "custom": 1.0},
    {"method": "glimpse", "sample_id": 3, "nss": 3.0, "kl": 0.9, "custom": 1.0},
    {"method": "rollout", "sample_id": 1, "nss": 1.0, "kl": 1.0},
    {"method": "rollout", "sample_id": 2, "nss": math.nan, "kl": 1.0},
    {"method": "rollout", "sample_id": 3, "nss": 3.0, "kl": 1.0},
]


def test_summary_table_nested_dict():
    t = summary_table(RECORDS, n_boot=100)
    assert list(t) == ["glimpse", "rollout"]
    assert list(t["glimpse"]) == ["nss", "kl", "custom"]
    assert t["glimpse"]["nss"].mean == 2.0
    assert t["rollout"]["nss"].n == 2 and t["rollout"]["nss"].skipped == 1
    # missing metric key counts as skipped
    assert t["rollout"]["custom"].n == 0 and t["rollout"]["custom"].skipped == 3
    sub = summary_table(RECORDS, metrics=["kl"], methods=["rollout"])
    assert list(sub) == ["rollout"] and list(sub["rollout"]) == ["kl"]


def test_summary_table_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicate"):
        summary_table([*RECORDS, {"method": "glimpse", "sample_id": 2, "nss": 0.0}])


def test_results_table_markdown():
    md = results_table(RECORDS)
    lines = md.splitlines()
    assert lines[0] == "| method | nss ↑ | kl ↓ | custom |"
    assert lines[1] == "|---|---|---|---|"
    # glimpse nss [1,2,3]: mean 2, sem = 1/sqrt(3) = 0.577; kl [.5,.7,.9]: sem = .2/sqrt(3)
    assert lines[2] == (
        "| glimpse | 2.000 ± 0.577 (n=3) | 0.700 ± 0.115 (n=3) | 1.000 ± 0.000 (n=3) |"
    )
    # rollout nss [1, 3] (one NaN): mean 2, sem = sqrt(2)/sqrt(2) = 1
    assert lines[3] == (
        "| rollout | 2.000 ± 1.000 (n=2, skipped 1) | 1.000 ± 0.000 (n=3) | n/a (n=0, skipped 3) |"
    )
    assert results_table(RECORDS, metrics=["nss"], methods=["rollout"], digits=1) == (
        "| method | nss ↑ |\n|---|---|\n| rollout | 2.0 ± 1.0 (n=2, skipped 1) |"
    )


def test_summary_table_infers_only_numeric_columns():
    """Answers and warning lists in the rows are not metrics; missing values are NaN."""
    rows = [
        {"sample_id": "a", "method": "m", "nss": 1.0, "answer": "red", "warnings": ["w"]},
        {"sample_id": "b", "method": "m", "nss": 3.0, "answer": "blue", "warnings": []},
    ]
    table = summary_table(rows, n_boot=0)
    assert list(table["m"]) == ["nss"]
    assert table["m"]["nss"].mean == 2.0 and table["m"]["nss"].n == 2


def test_accuracy_and_costs_are_tabled_apart_from_the_scores():
    from xattr.metrics.stats import results_tables, split_columns

    columns = ["nss", "faithfulness_passes", "deletion_auc", "correct"]
    assert split_columns(columns) == (["nss", "deletion_auc"], ["faithfulness_passes", "correct"])
    rows = [
        {"method": "m", "nss": 1.0, "deletion_auc": 0.2, "faithfulness_passes": 11, "correct": 1},
        {"method": "m", "nss": 3.0, "deletion_auc": 0.4, "faithfulness_passes": 11, "correct": 0},
    ]
    lines = results_tables(rows, columns).splitlines()
    assert lines[0] == "| method | nss ↑ | deletion_auc ↓ |"
    assert lines[2] == "| m | 2.000 ± 1.000 (n=2) | 0.300 ± 0.100 (n=2) |"
    assert lines[4] == "Accuracy and costs (not scores of the maps):"
    assert lines[6] == "| method | faithfulness_passes | correct |"
    assert lines[8] == "| m | 11.000 ± 0.000 (n=2) | 0.500 ± 0.500 (n=2) |"
