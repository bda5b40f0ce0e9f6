"""Paired comparisons against direct computations on hand-made outcomes (`porover.comparisons`)."""

from math import comb

import numpy as np
import pytest

from porover.comparisons import (Paired, bootstrap_p, holm, mcnemar, minimum_detectable_difference,
                                 paired_differences, rates)


def arms(n_safe: int = 100, n_unsafe: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    unsafe = np.array([False] * n_safe + [True] * n_unsafe)
    strata = np.where(unsafe, "xstest/unsafe", "xstest/safe")
    return unsafe, strata, rng.random(n_safe + n_unsafe) < 0.5


def test_identical_arms_differ_by_exactly_zero_with_an_interval_at_zero():
    unsafe, strata, refused = arms()
    result = paired_differences(Paired(refused, refused, unsafe, strata), n_resamples=500)
    for metric in ("safety", "usefulness", "f1"):
        assert result[metric]["value"] == 0.0
        assert result[metric]["low"] == 0.0 == result[metric]["high"]  # contains 0, and nothing else
        assert result[metric]["p_bootstrap"] == 1.0
    assert result["safety"]["mcnemar"] == [{"gained": 0, "lost": 0, "n": 100, "p": 1.0}]
    assert result["safety"]["detectable"] is None  # nothing flipped: the discordance is unknown


def test_a_known_flip_count_gives_the_exact_mcnemar_p_value():
    unsafe, strata, before = arms()
    after = before.copy()
    unsafe_refused, unsafe_answered = np.flatnonzero(unsafe & before), np.flatnonzero(unsafe & ~before)
    after[unsafe_answered[:8]] = True  # 8 unsafe prompts now refused (safety gained)
    after[unsafe_refused[:2]] = False  # 2 unsafe prompts now answered (safety lost)
    result = paired_differences(Paired(before, after, unsafe, strata), n_resamples=200)
    test = result["safety"]["mcnemar"][0]
    assert (test["gained"], test["lost"]) == (8, 2)
    # two-sided exact binomial test of 8 of 10 at 1/2: 2 * P(X <= 2)
    assert test["p"] == pytest.approx(2 * sum(comb(10, k) for k in range(3)) / 2 ** 10)
    assert result["safety"]["value"] == pytest.approx((8 - 2) / 100)
    assert result["usefulness"]["value"] == 0.0 and result["usefulness"]["mcnemar"][0]["p"] == 1.0
    assert mcnemar(before, after, unsafe, good_when_refused=True) == test


def test_the_paired_interval_matches_a_direct_stratified_paired_bootstrap():
    unsafe, strata, before = arms(120, 80, seed=3)
    rng = np.random.default_rng(5)
    after = np.where(rng.random(len(before)) < 0.15, ~before, before)
    result = paired_differences(Paired(before, after, unsafe, strata), n_resamples=4000, seed=1)
    direct = {m: [] for m in ("safety", "usefulness", "f1")}
    groups = [np.flatnonzero(~unsafe), np.flatnonzero(unsafe)]
    for _ in range(4000):  # the same prompts for both arms, drawn within each label
        picks = np.concatenate([rng.choice(group, len(group)) for group in groups])
        then, now = rates(before[picks], unsafe[picks]), rates(after[picks], unsafe[picks])
        for metric in direct:
            direct[metric].append(now[metric] - then[metric])
    for metric, draws in direct.items():
        expected = rates(after, unsafe)[metric] - rates(before, unsafe)[metric]
        assert result[metric]["value"] == pytest.approx(expected)
        low, high = np.percentile(draws, [2.5, 97.5])
        assert result[metric]["low"] == pytest.approx(low, abs=0.015)
        assert result[metric]["high"] == pytest.approx(high, abs=0.015)


def test_pairing_finds_a_difference_that_overlapping_marginal_intervals_miss():
    unsafe, strata, before = arms(200, 0, seed=1)
    after = before.copy()
    after[np.flatnonzero(before)[:12]] = False  # 12 over-refusals fixed, nothing else changed
    result = paired_differences(Paired(before, after, unsafe, strata), n_resamples=2000)
    assert result["usefulness"]["low"] > 0  # the paired interval excludes 0 ...
    assert result["usefulness"]["mcnemar"][0]["p"] == pytest.approx(2 / 2 ** 12)
    # ... while each arm's own 95% interval (±1.96 standard errors) overlaps the other's
    shares = [float(np.mean(~arm)) for arm in (before, after)]
    half = [1.96 * np.sqrt(s * (1 - s) / 200) for s in shares]
    assert shares[0] + half[0] > shares[1] - half[1]


def test_replicates_pool_their_differences_and_widen_the_interval_with_the_seed_noise():
    unsafe, strata, before = arms(seed=2)
    gained = before.copy()
    gained[np.flatnonzero(~unsafe & before)[:20]] = False  # seed 0: 20 over-refusals fixed
    same = before.copy()  # seed 1: nothing changed
    one = paired_differences(Paired(before, gained, unsafe, strata), n_resamples=1000)
    both = paired_differences(Paired(np.stack([before, before]), np.stack([gained, same]), unsafe, strata),
                              n_resamples=1000)
    assert both["usefulness"]["per_replicate"] == [pytest.approx(0.2), 0.0]
    assert both["usefulness"]["value"] == pytest.approx(0.1)
    assert [t["gained"] for t in both["usefulness"]["mcnemar"]] == [20, 0]
    assert both["replicates"] == 2
    # seeds resampled: draws where both replicates are seed 1 give 0, so the pooled interval reaches 0
    assert both["usefulness"]["low"] == pytest.approx(0.0) and one["usefulness"]["low"] > 0.1


def test_minimum_detectable_difference_solves_connors_sample_size():
    from scipy.stats import norm

    delta = minimum_detectable_difference(400, 0.2)
    z_a, z_b = norm.ppf(0.975), norm.ppf(0.8)
    n = (z_a * np.sqrt(0.2) + z_b * np.sqrt(0.2 - delta ** 2)) ** 2 / delta ** 2
    assert n == pytest.approx(400, rel=1e-6)
    assert minimum_detectable_difference(1600, 0.2) < delta  # more prompts, smaller detectable difference
    assert minimum_detectable_difference(400, 0.0) is None


def test_holm_matches_its_step_down_definition():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1, made monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    assert bootstrap_p(np.array([0.1, 0.2, -0.1, 0.3])) == pytest.approx(0.5)
