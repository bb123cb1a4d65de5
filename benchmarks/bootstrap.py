"""Hierarchical bootstrap benchmark: seconds per paired interval at a study's sizes.

The issue-22 comparison reads the conflict suite at 2 suite seeds × 5 training seeds, 10 datasets of ~300
query rows each, clustered by episode (two datasets share one); a summary computes one interval overall and
one per condition. Random 0/1 hits stand in for two methods (the timing does not depend on the values).

    python benchmarks/bootstrap.py [--suites 2] [--seeds 5] [--datasets 10] [--rows 300] [--resamples 10000]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tsembed.evaluation.bootstrap import paired_bootstrap
from tsembed.evaluation.hits import DatasetHits


def fake_runs(suites: int, seeds: int, datasets: int, rows: int, p: float, rng: np.random.Generator,
              clustered: bool) -> dict:
    episodes = [tuple(f"pair{d // 2}:e{i}" for i in range(rows)) for d in range(datasets)]  # pairs share
    return {(s, t): {f"d{d}": DatasetHits(rng.random(rows) < p, episodes[d] if clustered else None)
                     for d in range(datasets)} for s in range(suites) for t in range(seeds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report = {"sizes": vars(args)}
    for clustered in (False, True):
        rng = np.random.default_rng(0)
        a = fake_runs(args.suites, args.seeds, args.datasets, args.rows, 0.35, rng, clustered)
        b = fake_runs(args.suites, args.seeds, args.datasets, args.rows, 0.40, rng, clustered)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            interval = paired_bootstrap(a, b, resamples=args.resamples)
            times.append(time.perf_counter() - start)
        name = "episode_clusters" if clustered else "row_clusters"
        report[name] = {"seconds_median": round(float(np.median(times)), 3), "interval": interval.to_dict()}
        print(f"{name:17s} {np.median(times):7.3f} s   {interval.mean:+.2f} [{interval.lo:+.2f}, {interval.hi:+.2f}]")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
