"""Vector-search benchmark: recall@10 of HNSW and IVF-PQ against exact (flat) search, and queries/s.

Synthetic clustered unit vectors (Gaussian blobs around random centres, like real embeddings cluster by
topic); queries come from the same distribution but are not in the index. Recall@10 is the share of
the exact top-10 that the approximate index returns. Indexes are built by ``tsembed.inference.index``,
exactly as ``tsembed index build`` builds them.

    python benchmarks/index_recall.py [--n 100000] [--dim 128] [--queries 1000]

``hnsw`` and ``ivfpq`` use the defaults of ``tsembed index build`` (IVF-PQ: 32 bytes per 128-d vector);
``ivfpq_tuned`` probes more lists and re-ranks 4·k candidates with the exact vectors
(``--nprobe 64 --refine 4``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pyarrow as pa

from tsembed.inference.index import IndexConfig, VectorIndex


def clustered(n: int, dim: int, clusters: int, spread: float, latent: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around ``clusters`` centres; within-cluster variation lives in a ``latent``-dim subspace
    (real embeddings have a far lower intrinsic dimension than D; isotropic noise would be the worst case)."""
    centres = rng.normal(size=(clusters, dim))
    basis = rng.normal(size=(latent, dim)) * np.sqrt(dim / latent)  # same noise energy as isotropic noise
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, latent)) @ basis
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def top_k(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Positions [Q, k] and queries/s of one batched search call (offline evaluation, mining)."""
    start = time.perf_counter()
    _, positions = index.index.search(queries, k)
    return positions, len(queries) / (time.perf_counter() - start)


def single_query_qps(index: VectorIndex, queries: np.ndarray, k: int) -> float:
    """Queries/s one query per call, as an interactive search or the server sees them."""
    start = time.perf_counter()
    for q in queries:
        index.index.search(q[None], k)
    return len(queries) / (time.perf_counter() - start)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx, exact, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--spread", type=float, default=0.35)
    parser.add_argument("--latent", type=int, default=24, help="Intrinsic dimension of within-cluster variation.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    data = clustered(args.n + args.queries, args.dim, args.clusters, args.spread, args.latent, rng)
    corpus, queries = data[: args.n], data[args.n :]
    meta = pa.table({"id": np.arange(args.n)})
    result: dict[str, float | int] = {"n": args.n, "dim": args.dim, "latent": args.latent, "queries": args.queries,
                                      "k": args.k}
    exact = None
    variants = {"flat": IndexConfig(kind="flat"), "hnsw": IndexConfig(kind="hnsw"), "ivfpq": IndexConfig(kind="ivfpq"),
                "ivfpq_tuned": IndexConfig(kind="ivfpq", nprobe=64, refine=4)}
    for kind, config in variants.items():
        start = time.perf_counter()
        index = VectorIndex.build(corpus, meta, config, {})
        build_s = time.perf_counter() - start
        positions, qps = top_k(index, queries, args.k)
        single = single_query_qps(index, queries[:200], args.k)
        if kind == "flat":
            exact = positions
        rec = recall(positions, exact)
        params = index.info["params"]
        print(f"{kind:11s} build {build_s:6.2f} s  recall@{args.k} {rec:.4f}  {qps:8.0f} queries/s batched  "
              f"{single:8.0f} queries/s one by one  {params}")
        result[f"{kind}_build_s"] = round(build_s, 3)
        result[f"{kind}_qps"] = round(qps, 1)
        result[f"{kind}_qps_single"] = round(single, 1)
        if kind != "flat":
            result[f"{kind}_recall_at_{args.k}"] = round(rec, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
