"""Hierarchical bootstrap of paired differences (method B − method A) from per-query hits.

A study evaluates both methods on the same suites (one per suite seed) after training at the same seeds, so
every query row has a paired difference ``b − a`` per (suite seed, training seed). The statistic is the
mean over suite seeds of the mean over training seeds of the mean over datasets of the mean row difference
(MMEB's overall: datasets weigh equally, whatever their size).

One bootstrap resample draws, with replacement:

1. as many suite seeds as there are (skipped when there is one);
2. for each drawn suite seed, independently: as many training seeds as that suite seed has, and as many query
   clusters as it has. The cluster draw is shared by its training seeds, because every training seed is
   evaluated on the same queries (queries are crossed with training seeds, nested in suite seeds). A level
   with one unit draws nothing.

A cluster groups rows that are not independent (e.g. the two datasets of a conflict pair asking about one
episode): drawn together, in every dataset they appear in. Without cluster ids each row is its own cluster.
A dataset left without rows by a draw is left out of that resample's mean over datasets.

The interval is the percentile interval of the resampled statistic (numpy's linear percentiles). Random
numbers come from ``numpy.random.default_rng(seed)`` in a fixed order: per chunk of resamples, the suite
draws, then for each position and each suite seed the training-seed and the cluster draws of the resamples
that drew that suite seed there. With one suite seed, chunks do not change the stream; a result depends only
on its inputs and seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsembed.errors import DataError
from tsembed.evaluation.hits import DatasetHits

#: Resamples computed together: bounds memory at CHUNK × clusters counts.
CHUNK = 512

#: (suite seed, training seed) -> dataset -> per-query hits of one method.
Runs = Mapping[tuple[int, int], Mapping[str, DatasetHits]]


@dataclass(frozen=True)
class Interval:
    """Point estimate and percentile interval of a paired difference (in the caller's scale, e.g. points)."""

    mean: float
    lo: float
    hi: float
    level: float
    resamples: int

    def to_dict(self, digits: int = 2) -> dict[str, Any]:
        return {"mean": round(self.mean, digits), "ci": [round(self.lo, digits), round(self.hi, digits)],
                "level": self.level, "resamples": self.resamples}


@dataclass(frozen=True)
class _Block:
    """One suite seed: per training seed, cluster and dataset the sum of row differences, and the row counts."""

    sums: np.ndarray  # [T, C, D]
    counts: np.ndarray  # [C, D]

    def statistic(self, cluster_weights: np.ndarray, seed_weights: np.ndarray) -> np.ndarray:
        """[K] statistic for K weightings: cluster_weights [K, C] and seed_weights [K, T] (draw counts)."""
        t, c, d = self.sums.shape
        num = (cluster_weights @ self.sums.transpose(1, 0, 2).reshape(c, t * d)).reshape(-1, t, d)  # [K, T, D]
        den = cluster_weights @ self.counts  # [K, D]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_dataset = np.where(den[:, None, :] > 0, num / np.where(den > 0, den, 1)[:, None, :], np.nan)
        present = ~np.isnan(per_dataset)
        per_seed = np.where(present, per_dataset, 0).sum(2) / np.maximum(present.sum(2), 1)  # [K, T]
        return (per_seed * seed_weights).sum(1) / seed_weights.sum(1)


def _counts(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """[k, n] how often each of n units is drawn in k resamples of n draws with replacement."""
    if n == 1:
        return np.ones((k, 1))
    idx = rng.integers(0, n, size=(k, n))
    return np.bincount((idx + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n).astype(np.float64)


def _blocks(diffs: Mapping[Any, Mapping[Any, Mapping[str, np.ndarray]]],
            clusters: Mapping[Any, Mapping[str, Sequence[Any] | None]] | None,
            datasets: Sequence[str] | None) -> list[_Block]:
    blocks = []
    for suite_seed, by_seed in diffs.items():
        if not by_seed:
            raise DataError(f"suite seed {suite_seed}: no training seed to bootstrap")
        first = next(iter(by_seed.values()))
        names = list(datasets) if datasets is not None else list(first)
        ids: dict[Any, int] = {}
        rows: list[np.ndarray] = []  # per dataset: the cluster index of each row
        for name in names:
            if name not in first:
                raise DataError(f"suite seed {suite_seed}: no dataset {name!r} in the hits; have {sorted(first)}")
            n = len(first[name])
            own = (clusters or {}).get(suite_seed, {}).get(name)
            keys = [(name, i) for i in range(n)] if own is None else [("cluster", c) for c in own]
            if len(keys) != n:
                raise DataError(f"suite seed {suite_seed}, {name}: {len(keys)} cluster ids for {n} rows")
            rows.append(np.array([ids.setdefault(key, len(ids)) for key in keys], dtype=np.int64))
        sums = np.zeros((len(by_seed), len(ids), len(names)))
        counts = np.zeros((len(ids), len(names)))
        for j, index in enumerate(rows):
            np.add.at(counts[:, j], index, 1.0)
        for t, (train_seed, per_dataset) in enumerate(by_seed.items()):
            for j, (name, index) in enumerate(zip(names, rows, strict=True)):
                values = np.asarray(per_dataset.get(name, ()), dtype=np.float64)
                if values.shape != index.shape:
                    raise DataError(f"suite seed {suite_seed}, training seed {train_seed}, {name}: "
                                    f"{values.size} rows, other runs of this suite have {index.size}")
                np.add.at(sums[t, :, j], index, values)
        blocks.append(_Block(sums, counts))
    if not blocks:
        raise DataError("nothing to bootstrap: no suite seed")
    return blocks


def bootstrap_differences(diffs: Mapping[Any, Mapping[Any, Mapping[str, np.ndarray]]],
                          clusters: Mapping[Any, Mapping[str, Sequence[Any] | None]] | None = None,
                          datasets: Sequence[str] | None = None, *, resamples: int = 10_000, seed: int = 0,
                          level: float = 0.95, scale: float = 1.0) -> Interval:
    """Hierarchical bootstrap of per-row differences (see the module's docstring).

    Args:
        diffs: suite seed -> training seed -> dataset -> [N] per-row difference (b − a), in file order.
        clusters: suite seed -> dataset -> [N] cluster id per row (ids shared across datasets group their rows);
            a missing entry or None: each row its own cluster.
        datasets: Average over these datasets (default: those of the first run of each suite seed).
        resamples: Bootstrap resamples.
        seed: Seed of ``numpy.random.default_rng``.
        level: Coverage of the interval (0.95: the 2.5th and 97.5th percentiles).
        scale: Multiplies the results (100: fractions to points).

    Raises:
        DataError: No suite seed or training seed, a dataset missing or of another length in one run.
        ValueError: resamples < 1 or level outside (0, 1).
    """
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
    blocks = _blocks(diffs, clusters, datasets)
    point = float(np.mean([b.statistic(np.ones((1, b.counts.shape[0])), np.ones((1, b.sums.shape[0])))[0]
                           for b in blocks]))
    rng = np.random.default_rng(seed)
    n = len(blocks)
    stats = []
    for start in range(0, resamples, CHUNK):
        k = min(CHUNK, resamples - start)
        picks = rng.integers(0, n, size=(k, n)) if n > 1 else np.zeros((k, 1), dtype=np.int64)  # [k, n]
        total = np.zeros(k)
        for position in range(n):
            for j, block in enumerate(blocks):
                chosen = picks[:, position] == j
                m = int(chosen.sum())
                if m:
                    seed_weights = _counts(rng, m, block.sums.shape[0])
                    total[chosen] += block.statistic(_counts(rng, m, block.counts.shape[0]), seed_weights)
        stats.append(total / n)
    samples = np.concatenate(stats)
    lo, hi = np.nanpercentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return Interval(scale * point, scale * float(lo), scale * float(hi), level, resamples)


def paired_bootstrap(a: Runs, b: Runs, datasets: Sequence[str] | None = None, *, resamples: int = 10_000,
                     seed: int = 0, level: float = 0.95, scale: float = 100.0) -> Interval:
    """B − A hit@1 (points by default) over the (suite seed, training seed) runs both methods have.

    Row clusters come from the hits (``DatasetHits.clusters``); both methods must agree on them.

    Raises:
        DataError: the methods share no run, or a shared run's datasets differ in rows or clusters.
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        raise DataError(f"the two methods share no (suite seed, training seed) run: {sorted(a)} vs {sorted(b)}")
    diffs: dict[Any, dict[Any, dict[str, np.ndarray]]] = {}
    clusters: dict[Any, dict[str, Sequence[str] | None]] = {}
    for key in shared:
        suite_seed, train_seed = key
        names = list(datasets) if datasets is not None else [n for n in a[key] if n in b[key]]
        row: dict[str, np.ndarray] = {}
        for name in names:
            ha, hb = a[key].get(name), b[key].get(name)
            if ha is None or hb is None:
                raise DataError(f"run {key}: dataset {name!r} is missing from one method's hits")
            if len(ha) != len(hb) or ha.clusters != hb.clusters:
                raise DataError(f"run {key}, {name}: the two methods were scored on different query rows")
            row[name] = hb.hits.astype(np.float64) - ha.hits.astype(np.float64)
            clusters.setdefault(suite_seed, {})[name] = ha.clusters
        diffs.setdefault(suite_seed, {})[train_seed] = row
    return bootstrap_differences(diffs, clusters, datasets, resamples=resamples, seed=seed, level=level,
                                 scale=scale)
