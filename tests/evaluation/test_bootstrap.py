"""The hierarchical bootstrap against simple references and degenerate inputs."""

import numpy as np
import pytest

from tsembed.errors import DataError
from tsembed.evaluation.bootstrap import bootstrap_differences, paired_bootstrap
from tsembed.evaluation.hits import DatasetHits


def test_one_level_matches_a_plain_percentile_bootstrap():
    diff = np.random.default_rng(5).normal(0.3, 1.0, size=57)
    got = bootstrap_differences({0: {0: {"d": diff}}}, resamples=2000, seed=11)
    rng = np.random.default_rng(11)
    means = diff[rng.integers(0, diff.size, size=(2000, diff.size))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    assert got.mean == pytest.approx(diff.mean())
    assert (got.lo, got.hi) == (pytest.approx(lo), pytest.approx(hi))
    assert got.lo < got.mean < got.hi


def test_identical_methods_and_a_constant_shift_are_degenerate():
    rng = np.random.default_rng(0)
    hits = {(s, t): {"x": DatasetHits(rng.integers(0, 2, 40)), "y": DatasetHits(rng.integers(0, 2, 25))}
            for s in (0, 1) for t in (0, 1, 2)}
    same = paired_bootstrap(hits, hits, resamples=300)
    assert (same.mean, same.lo, same.hi) == (0.0, 0.0, 0.0)
    diffs = {s: {t: {"x": np.full(40, 0.25), "y": np.full(25, 0.25)} for t in range(3)} for s in range(2)}
    shift = bootstrap_differences(diffs, resamples=300, scale=100)
    assert shift.mean == pytest.approx(25) and shift.lo == pytest.approx(25) and shift.hi == pytest.approx(25)


def test_every_level_widens_the_interval_and_seeds_reproduce():
    rng = np.random.default_rng(1)
    # the training seeds disagree a lot, the queries little: one training seed hides that spread
    diffs = {0: {t: {"d": rng.normal(t - 2.0, 0.05, 200)} for t in range(5)}}
    wide = bootstrap_differences(diffs, resamples=1000, seed=3)
    narrow = bootstrap_differences({0: {0: diffs[0][2]}}, resamples=1000, seed=3)
    assert wide.hi - wide.lo > 10 * (narrow.hi - narrow.lo)
    assert bootstrap_differences(diffs, resamples=1000, seed=3) == wide
    assert bootstrap_differences(diffs, resamples=1000, seed=4) != wide
    suites = {s: {0: {"d": rng.normal(3.0 * s, 0.05, 200)}} for s in range(3)}
    across = bootstrap_differences(suites, resamples=1000, seed=0)
    assert across.mean == pytest.approx(3.0, abs=0.05) and across.hi - across.lo > 2.0


def test_clusters_are_drawn_whole():
    # two datasets whose rows move together by episode: clustered, the datasets' errors do not average out
    rng = np.random.default_rng(2)
    episode = rng.normal(0, 1, 100)
    diffs = {0: {0: {"a": episode, "b": episode}}}
    ids = [f"e{i}" for i in range(100)]
    clustered = bootstrap_differences(diffs, {0: {"a": ids, "b": ids}}, resamples=2000, seed=0)
    rows = bootstrap_differences(diffs, resamples=2000, seed=0)
    assert clustered.mean == pytest.approx(rows.mean)
    assert (clustered.hi - clustered.lo) > 1.2 * (rows.hi - rows.lo)


def test_bad_inputs_are_named():
    hits = {(0, 0): {"x": DatasetHits(np.array([1, 0]))}}
    with pytest.raises(DataError, match="share no"):
        paired_bootstrap(hits, {(1, 0): hits[(0, 0)]})
    with pytest.raises(DataError, match="different query rows"):
        paired_bootstrap(hits, {(0, 0): {"x": DatasetHits(np.array([1, 0, 1]))}})
    with pytest.raises(DataError, match="3 rows"):
        bootstrap_differences({0: {0: {"x": np.zeros(2)}, 1: {"x": np.zeros(3)}}})
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_differences({0: {0: {"x": np.zeros(2)}}}, resamples=0)
