"""Server load benchmark: requests/s and latency percentiles with micro-batching on and off.

Starts ``tsembed serve`` on a loopback port in a subprocess (so clients and server do not share a GIL),
sends a fixed number of single-input ``/v1/embeddings`` requests from N concurrent asyncio clients,
and reports requests/s, p50/p95/p99 latency and errors per concurrency level. Then the same with
``--no-batching`` (one request per forward). The default model is the offline default backbone
(MiniLM + EfficientNet-Lite0) with untrained MoE-LoRA adapters: speed does not depend on training.

    python benchmarks/serve_load.py [--model DIR] [--requests 320] [--concurrency 1 16]

The last line is one JSON object with ``batching_speedup_c16`` (requests/s on / off at 16 clients),
``errors`` (all runs) and ``p99_ms_c16`` (batching on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

WORDS = ("red green blue small large happy sad cat dog fish tree house car sun moon star river mountain city "
         "bridge garden window music light shadow morning evening winter summer").split()


def default_model_dir(root: Path) -> Path:
    """An untrained default model (MiniLM + EfficientNet-Lite0, MoE-LoRA attached), saved for the server."""
    from tsembed.backbones import build_backbone
    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.moe import MoELoRAConfig

    backbone = build_backbone({"kind": "minilm-effnet"})
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=4, rank=8, top_k=1,
                        level="sequence", num_shared_experts=1)
    model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe))
    return Path(model.save_pretrained(root / "untrained-default"))


def sentence(i: int) -> str:
    rng = np.random.default_rng(i)
    return " ".join(rng.choice(WORDS, size=int(rng.integers(8, 20))))


def start_server(model_dir: Path, port: int, batching: bool, args: argparse.Namespace) -> subprocess.Popen:
    from tsembed.inference.server.run import start_server_process

    cmd = ["--model", str(model_dir), "--log-level", "warning", "--max-batch-size", str(args.max_batch_size),
           "--max-wait-ms", str(args.max_wait_ms)]
    if args.num_threads:
        cmd += ["--num-threads", str(args.num_threads)]
    if not batching:
        cmd.append("--no-batching")
    return start_server_process(cmd, port, {"TSEMBED_API_KEY": ""})


async def run_load(url: str, requests: int, concurrency: int, offset: int) -> dict[str, float]:
    """``requests`` requests over ``concurrency`` clients; each client sends its next request when one returns."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            start = time.perf_counter()
            try:
                r = await http.post("/v1/embeddings", json={"input": sentence(offset + i)})
                ok = r.status_code == 200 and len(r.json()["data"]) == 1
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"rps": requests / elapsed, "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="Model directory [default: untrained default].")
    parser.add_argument("--requests", type=int, default=320, help="Requests per run.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=0.0)
    parser.add_argument("--num-threads", type=int, default=None, help="Server torch threads.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    from tsembed.inference.server.run import free_port

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or default_model_dir(Path(tmp))
        results: dict[str, dict[int, dict[str, float]]] = {}
        for mode, batching in (("batching", True), ("no_batching", False)):
            port = args.port or free_port()
            proc = start_server(model_dir, port, batching, args)
            try:
                url = f"http://127.0.0.1:{port}"
                asyncio.run(run_load(url, 32, 4, offset=10**6))  # warm-up
                results[mode] = {}
                for c in args.concurrency:
                    stats = asyncio.run(run_load(url, args.requests, c, offset=c * 10_000))
                    results[mode][c] = stats
                    print(f"{mode:12s} c={c:<3d} {stats['rps']:7.1f} req/s  p50 {stats['p50_ms']:7.1f} ms  "
                          f"p95 {stats['p95_ms']:7.1f} ms  p99 {stats['p99_ms']:7.1f} ms  errors {stats['errors']}",
                          flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    top = max(args.concurrency)
    summary = {
        f"batching_speedup_c{top}": round(results["batching"][top]["rps"] / results["no_batching"][top]["rps"], 3),
        "errors": int(sum(s["errors"] for mode in results.values() for s in mode.values())),
        f"p99_ms_c{top}": round(results["batching"][top]["p99_ms"], 1),
        **{f"rps_{mode}_c{c}": round(s["rps"], 1) for mode, runs in results.items() for c, s in runs.items()},
        **{f"p50_ms_{mode}_c{c}": round(s["p50_ms"], 1) for mode, runs in results.items() for c, s in runs.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
