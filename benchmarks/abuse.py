"""Abuse benchmark: the server under a bounded mix of valid, oversized, malformed and hostile requests.

Starts ``tsembed serve`` on a loopback port in a subprocess (so its memory is measured alone) on a tiny
model (the default MiniLM + EfficientNet-Lite0 backbone with a tiny random BERT text side: images really go
through the vision tower), with every server limit at its default. N concurrent clients then send a shuffled
mix: valid text, image and text+image requests (each checked against a solo ``Encoder.encode`` of the same
inputs in this process), large but admissible images, decompression-bomb headers, a request of sixteen
5000x5000 PNGs, truncated and garbled images, invalid JSON, deep nesting, huge integers, lone surrogates,
oversized fields, wrong content types, 10 000 invalid items, an instruction repeating ``{text}``, a 24 MB
body of 6 million strings, and (once each, checked against reference vectors) a request of 256 texts of 16 000
characters. Issue 24's later cases too: ``dimensions: true`` and ``"8"`` (D12), ``/info`` and the API without
the key or with a wrong one (D13: the server runs with a key), and TEI's route ``/embed``: valid requests
(checked vectors) and hostile ones, whose refusals must come in TEI's shape ``{"error", "error_type"}``.
A valid request answered 429/503 (busy) is retried after its ``Retry-After``. Meanwhile, on their own
connections: 64 clients that send half a request head and stall (the server must close them), one body
trickled at a byte per 2 s (the server must answer 408 at its total body deadline), and ``/health`` polled
every 0.25 s (it must answer within 1 s throughout). The header and body deadlines are lowered from their
defaults (``--header-timeout 4 --read-timeout 3 --read-timeout-total 8``) so the run stays short. After the
mix the server is left idle for a few seconds and its RSS read again (D8: it stayed 300-400 MB above its
warmed-up level; the server now hands freed memory back once idle).

    python benchmarks/abuse.py [--requests 400] [--concurrency 8] [--seed 0]
    python benchmarks/abuse.py --quick    # 60 requests, 16 stalled connections, 64 long texts: about a minute
    python benchmarks/abuse.py --quick --release-memory-s 0   # the server as before D8, for comparison

Reported: requests, status counts, unexpected 5xx (any 5xx but 503), wrong vectors, refusals on ``/embed``
not in TEI's shape, valid requests that never got through, transport errors, the server's peak RSS growth
over its warmed-up RSS (VmHWM after resetting it) and its RSS growth once idle after the mix, files the
server left in its vision cache directory, stalled connections the server closed, the trickled body's
answer, and the slowest ``/health``. The last line is one JSON object with ``unexpected_5xx``,
``wrong_vectors``, ``peak_rss_growth_mb``, ``max_health_latency_s`` and ``idle_rss_growth_mb`` (targets 0, 0,
<= 600, <= 1.0, well under D8's 300), ``wrong_error_shape`` (0), ``stalled_closed`` (all of them) and
``trickle_status`` (408).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import random
import struct
import subprocess
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

WORDS = ("red green blue small large happy sad cat dog fish tree house car sun moon star river mountain city "
         "bridge garden window music light shadow morning evening winter summer").split()


@dataclass
class Probe:
    """One request: its body (JSON-able, or raw bytes; None: a GET), and for a valid one the reference vectors."""

    name: str
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    reference: np.ndarray | None = None  # set: a valid request whose answer must match
    path: str = "/v1/embeddings"


API_KEY = "abuse-benchmark-key"
NO_KEY = {"Authorization": ""}  # replaces the client's key: the request goes without one


def tiny_model_dir(root: Path) -> Path:
    """Tiny BERT + real EfficientNet-Lite0 with MoE-LoRA, saved; the disk cache is *on* in its config, so
    the run also shows that serving keeps it off."""
    from tsembed.backbones.testing import build_tiny_minilm_effnet, save_tiny_bert
    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.moe import MoELoRAConfig

    backbone = build_tiny_minilm_effnet(save_tiny_bert(root / "bert"), disk_cache=True)
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=4, rank=4, top_k=1,
                        level="sequence", num_shared_experts=1)
    return Path(TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe)).save_pretrained(
        root / "tiny-model"))


def png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height with almost no data: what a decompression bomb's header costs."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))


def url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def valid_probes(model_dir: Path, rng: random.Random, long_texts: int = 256) -> list[Probe]:
    """Valid requests with their solo-request reference vectors (``long_texts``: how many texts of 16 000
    characters the one heavy request holds)."""
    from tsembed import Encoder
    from tsembed.inputs import EmbedInput

    encoder = Encoder.from_pretrained(model_dir)
    probes = []
    for i in range(16):
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 14))) for _ in range(rng.randint(1, 4))]
        probes.append(Probe(f"text{i}", {"input": texts}, reference=encoder.encode(texts)))
    for i in range(8):
        size = rng.choice([(16, 16), (64, 48), (300, 200)])
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        raw = png(size, colour)
        text = " ".join(rng.choices(WORDS, k=3))
        items = [{"image": url(raw)}, {"text": text, "image": url(raw)}, text]
        inputs = [EmbedInput(image=Image.open(io.BytesIO(raw))), EmbedInput(text=text, image=Image.open(
            io.BytesIO(raw))), EmbedInput(text=text)]
        probes.append(Probe(f"image{i}", {"input": items}, reference=encoder.encode(inputs)))
    for i in range(4):  # TEI's route: the same vectors as a bare list (the model normalises; normalize is a no-op)
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 14))) for _ in range(rng.randint(1, 4))]
        probes.append(Probe(f"tei{i}", {"inputs": texts, "normalize": True, "truncate": True},
                            reference=encoder.encode(texts), path="/embed"))
    # issue 24 D4: 256 texts of 16 000 characters, admitted (within max_request_tokens) and run in turns of
    # max_batch_tokens shared with every other request; the vectors must be those of one unsplit run
    texts = [f"{i} " + " ".join(rng.choices(WORDS, k=3_000))[:15_990] for i in range(long_texts)]
    probes.append(Probe(LONG_TEXTS, {"input": texts}, reference=encoder.encode(texts)))
    big = png((4000, 4000), (30, 120, 200))  # 16 Mpx: admitted, decoded within the budget
    probes.append(Probe("big-image", {"input": [{"image": url(big)}]},
                        reference=encoder.encode([EmbedInput(image=Image.open(io.BytesIO(big)))])))
    return probes


def hostile_probes() -> list[Probe]:
    """Requests the server must refuse with a 4xx (or answer 429/503 when busy), never a 500."""
    huge = url(png((5000, 5000), (0, 0, 0)))  # 25 Mpx each: allowed alone, sixteen are 400 Mpx
    truncated = png((64, 64), (1, 2, 3))
    json_body = {"content-type": "application/json"}
    return [
        Probe("bomb-1x20M", {"input": [{"image": url(png_header_only(1, 20_000_000))}]}),
        Probe("bomb-200kx200k", {"input": [{"image": url(png_header_only(200_000, 200_000))}]}),
        Probe("sixteen-25Mpx", {"input": [{"image": huge}] * 16}),
        Probe("truncated-png", {"input": [{"image": url(truncated[: len(truncated) // 2])}]}),
        Probe("garbled-png", {"input": [{"image": url(truncated[:40] + os.urandom(200))}]}),
        Probe("bad-base64", {"input": [{"image": "data:image/png;base64,@@@@"}]}),
        Probe("text-data-url", {"input": [{"image": "data:text/plain;base64,aGk="}]}),
        Probe("remote-url", {"input": [{"image": "http://169.254.169.254/latest/meta-data"}]}),
        Probe("invalid-json", b'{"input": [', json_body),
        Probe("deep-nesting", b'{"input": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", json_body),
        Probe("huge-int", b'{"input": "x", "dimensions": ' + b"9" * 50_000 + b"}", json_body),
        Probe("lone-surrogate", b'{"input": ["\\ud800 text"]}', json_body),
        Probe("unknown-field", {"input": "x", "temperature": 1}),
        Probe("too-many-inputs", {"input": ["x"] * 300}),
        Probe("text-too-long", {"input": ["y" * 20_000]}),
        Probe("instruction-too-long", {"input": ["x"] * 16, "instruction": "z" * 1_000_000}),
        Probe("png-as-body", png((8, 8), (9, 9, 9)), {"content-type": "image/png"}),
        Probe("empty-input", {"input": []}),
        Probe("bad-dimensions", {"input": "x", "dimensions": 99_999}),
        Probe("unknown-model", {"input": "x", "model": "gpt-4"}),
        Probe("token-ids", {"input": [[1, 2, 3]]}),
        # issue 24 D1: 10 000 invalid items (97 kB), 20 000 validation errors: refused without holding the loop
        Probe("ten-thousand-bad-items", {"input": [{"x": 1}] * 10_000}),
        # issue 24 D2: an instruction repeating {text} 341 times over 16 long inputs: refused by the length limit
        # counted after the instruction is applied, not run for minutes on gigabytes of text
        Probe("instruction-repeats-text", {"input": ["w " * 8_000] * 16, "instruction": "{text}" * 341}),
        # issue 24 D6: 24 MB of 6 million strings: refused by counting separators, before any parsing
        Probe("six-million-strings", b'{"input": [' + b'"a",' * 5_999_999 + b'"a"]}', json_body),
        # issue 24 D6: ten million empty lists (json.loads alone took 10 s holding the GIL)
        Probe("ten-million-lists", b'{"input": [' + b"[]," * 9_999_999 + b"[]]}", json_body),
        # issue 24 D12: dimensions must be a strict integer (true read as 1, "8" as 8 before)
        Probe("dimensions-true", {"input": "x", "dimensions": True}),
        Probe("dimensions-string", {"input": "x", "dimensions": "8"}),
        # issue 24 D13: the key guards /info and the API (the server runs with one)
        Probe("info-without-key", None, NO_KEY, path="/info"),
        Probe("metrics-without-key", None, NO_KEY, path="/metrics"),
        Probe("api-without-key", {"input": "x"}, NO_KEY),
        Probe("api-wrong-key", {"input": "x"}, {"Authorization": "Bearer wrong"}),
        Probe("tei-without-key", {"inputs": "x"}, NO_KEY, path="/embed"),
        # TEI's route: the same limits and checks, refusals in TEI's shape
        Probe("tei-six-million-strings", b'{"inputs": [' + b'"a",' * 5_999_999 + b'"a"]}', json_body, path="/embed"),
        Probe("tei-ten-thousand-bad-items", {"inputs": [{"x": 1}] * 10_000}, path="/embed"),
        Probe("tei-too-many-inputs", {"inputs": ["x"] * 300}, path="/embed"),
        Probe("tei-text-too-long", {"inputs": ["y" * 20_000]}, path="/embed"),
        Probe("tei-long-untruncated", {"inputs": [" ".join(["word"] * 400)]}, path="/embed"),  # truncate: false
        Probe("tei-unknown-prompt", {"inputs": "x", "prompt_name": "passage"}, path="/embed"),
        Probe("tei-left-truncation", {"inputs": "x", "truncation_direction": "left"}, path="/embed"),
        Probe("tei-token-ids", {"inputs": [[1, 2, 3]]}, path="/embed"),
        Probe("tei-empty", {"inputs": []}, path="/embed"),
        Probe("tei-lone-surrogate", b'{"inputs": ["\\ud800 text"]}', json_body, path="/embed"),
        Probe("tei-invalid-json", b'{"inputs": [', json_body, path="/embed"),
    ]


LONG_TEXTS = "long-texts"
ONCE = (LONG_TEXTS,)  # heavy valid requests sent once each, not drawn into the mix


async def stall_headers(host: str, port: int, n: int, wait_s: float) -> int:
    """Open ``n`` connections that send half a request head and stall (issue 24 D3); how many the server closed
    within ``wait_s`` seconds."""
    async def one() -> bool:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Ty")
        await writer.drain()
        try:
            closed = await asyncio.wait_for(reader.read(), wait_s) == b""
        except (TimeoutError, ConnectionError):
            closed = False
        writer.close()
        return closed

    return sum(await asyncio.gather(*(one() for _ in range(n))))


async def trickle_body(host: str, port: int, seconds_per_byte: float, limit_s: float) -> tuple[int, float]:
    """A body sent a byte per ``seconds_per_byte`` (issue 24 D7): the status it got and after how long."""
    reader, writer = await asyncio.open_connection(host, port)
    start = time.perf_counter()
    writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
    await writer.drain()

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            while time.perf_counter() - start < limit_s:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(seconds_per_byte)

    dripping = asyncio.create_task(drip())
    try:
        head = await asyncio.wait_for(reader.readline(), limit_s)
        status = int(head.split()[1]) if head.startswith(b"HTTP/") else 0
    except (TimeoutError, ConnectionError):
        status = 0
    dripping.cancel()
    writer.close()
    return status, time.perf_counter() - start


async def poll_health(base_url: str, stop: asyncio.Event, every_s: float = 0.25) -> dict[str, Any]:
    """``/health`` on its own connection every ``every_s`` until ``stop``: slowest answer, non-200s, saturated."""
    slowest, failures, saturated = 0.0, 0, 0
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                r = await http.get("/health")
                failures += r.status_code != 200
                saturated += bool(r.json().get("saturated"))
            except httpx.HTTPError:
                failures += 1
            slowest = max(slowest, time.perf_counter() - start)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    return {"max_health_latency_s": round(slowest, 3), "health_failures": failures, "saturated_seen": saturated}


async def run_all(base_url: str, plan: list[Probe], concurrency: int, stalled: int) -> dict[str, Any]:
    """The mix, with the stalled connections, the trickled body and the /health poll alongside it."""
    host, port = base_url.removeprefix("http://").split(":")
    stop = asyncio.Event()
    health = asyncio.create_task(poll_health(base_url, stop))
    stalls = asyncio.create_task(stall_headers(host, int(port), stalled, 30))
    trickle = asyncio.create_task(trickle_body(host, int(port), 2.0, 30))
    result = await run_mix(base_url, plan, concurrency)
    closed, (status, after) = await stalls, await trickle
    stop.set()
    return {**result, **await health, "stalled_closed": closed, "trickle_status": status,
            "trickle_answered_after_s": round(after, 1)}


IDLE_S = 4.0  # seconds the server is left idle after the mix before its RSS is read again
DEADLINES = ["--header-timeout", "4", "--read-timeout", "3", "--read-timeout-total", "8"]


def start_server(model_dir: Path, port: int, cache_dir: Path, extra: list[str]) -> subprocess.Popen:
    """The server with every limit at its default but the header and body deadlines (``DEADLINES``: shorter, so
    the run is short); its cache dir is watched for files it must not write."""
    from tsembed.inference.server.run import start_server_process

    args = ["--model", str(model_dir), "--log-level", "error", "--num-threads", "1", *DEADLINES, *extra]
    env = {"TSEMBED_API_KEY": API_KEY, "TSEMBED_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    return start_server_process(args, port, env)


def rss_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


async def send(http: httpx.AsyncClient, probe: Probe) -> httpx.Response:
    if probe.body is None:
        return await http.get(probe.path, headers=probe.headers)
    if isinstance(probe.body, bytes):
        return await http.post(probe.path, content=probe.body, headers=probe.headers)
    return await http.post(probe.path, json=probe.body, headers=probe.headers)


def vectors_match(response: httpx.Response, reference: np.ndarray) -> bool:
    body = response.json()
    rows = body if isinstance(body, list) else [d["embedding"] for d in body["data"]]  # TEI: a bare list
    got = np.array(rows, dtype=np.float32)
    return got.shape == reference.shape and bool(np.allclose(got, reference, atol=1e-4))


def error_shape_ok(probe: Probe, response: httpx.Response) -> bool:
    """A refusal in its route's shape: TEI's ``{"error": str, "error_type": str}`` on /embed, else OpenAI's."""
    try:
        body = response.json()
    except ValueError:
        return False
    if probe.path == "/embed":
        return isinstance(body, dict) and set(body) == {"error", "error_type"} and isinstance(body["error"], str)
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]


async def run_mix(base_url: str, plan: list[Probe], concurrency: int) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    report = {"unexpected_5xx": 0, "wrong_vectors": 0, "wrong_error_shape": 0, "valid_not_served": 0,
              "transport_errors": 0}
    unexpected: list[str] = []
    queue = list(reversed(plan))

    async def client(http: httpx.AsyncClient) -> None:
        while queue:
            probe = queue.pop()
            for attempt in range(6 if probe.reference is not None else 1):
                try:
                    r = await send(http, probe)
                except httpx.HTTPError as exc:
                    report["transport_errors"] += 1
                    unexpected.append(f"{probe.name}: {type(exc).__name__}")
                    break
                statuses[r.status_code] += 1
                if r.status_code >= 500 and r.status_code != 503:
                    report["unexpected_5xx"] += 1
                    unexpected.append(f"{probe.name}: {r.status_code} {r.text[:200]}")
                if r.status_code >= 400 and not error_shape_ok(probe, r):
                    report["wrong_error_shape"] += 1
                    unexpected.append(f"{probe.name}: error body {r.text[:200]}")
                if probe.reference is None:
                    if r.status_code == 200:
                        unexpected.append(f"{probe.name}: accepted")
                    break
                if r.status_code == 200:
                    if not vectors_match(r, probe.reference):
                        report["wrong_vectors"] += 1
                        unexpected.append(f"{probe.name}: wrong vectors")
                    break
                if r.status_code not in (429, 503) or attempt == 5:
                    report["valid_not_served"] += 1
                    unexpected.append(f"{probe.name}: {r.status_code} {r.text[:200]}")
                    break
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")) * (0.5 + random.random()))

    limits = httpx.Limits(max_connections=concurrency)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits, headers=auth) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return {**report, "statuses": dict(sorted(statuses.items())), "unexpected": unexpected[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=None, help="Requests in the mix (valid about half) "
                        "[default: 400; 60 with --quick].")
    parser.add_argument("--concurrency", type=int, default=None, help="[default: 8; 4 with --quick]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="A short run that still sends every case once or "
                        "more: fewer requests, 16 stalled connections, 64 long texts instead of 256.")
    parser.add_argument("--release-memory-s", type=float, default=None, help="Passed to the server (0: it never "
                        "hands freed memory back, as before D8) [default: the server's].")
    args = parser.parse_args()
    requests = args.requests or (60 if args.quick else 400)
    concurrency = args.concurrency or (4 if args.quick else 8)
    stalled, long_texts = (16, 64) if args.quick else (64, 256)
    rng = random.Random(args.seed)
    from tsembed.inference.server.run import free_port

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = tiny_model_dir(root)
        valid, hostile = valid_probes(model_dir, rng, long_texts), hostile_probes()
        once = [p for p in valid if p.name in ONCE]
        drawn = [p for p in valid if p.name not in ONCE]
        plan = [rng.choice(drawn) if i % 2 == 0 else rng.choice(hostile) for i in range(requests)] + once
        plan += hostile  # every hostile case at least once, however short the run
        rng.shuffle(plan)
        port, cache_dir = free_port(), root / "server-cache"
        extra = [] if args.release_memory_s is None else ["--release-memory-s", str(args.release_memory_s)]
        proc = start_server(model_dir, port, cache_dir, extra)
        base_url = f"http://127.0.0.1:{port}"
        try:
            warm = asyncio.run(run_mix(base_url, drawn, 1))  # every valid request once, alone: warmed up
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
            baseline_kb = rss_kb(proc.pid, "VmRSS")
            start = time.perf_counter()
            result = asyncio.run(run_all(base_url, plan, concurrency, stalled))
            seconds = time.perf_counter() - start
            peak_kb = rss_kb(proc.pid, "VmHWM")
            time.sleep(IDLE_S)  # D8: the server hands freed memory back once idle (--release-memory-s, 1 s)
            idle_kb = rss_kb(proc.pid, "VmRSS")
            healthy = httpx.get(f"{base_url}/health", timeout=5).status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        cache_files = [p for p in cache_dir.rglob("*") if p.is_file()] if cache_dir.exists() else []

    for key in ("unexpected_5xx", "wrong_vectors", "wrong_error_shape", "valid_not_served", "transport_errors"):
        result[key] += warm[key]
    print(f"requests {len(plan)} in {seconds:.1f} s at concurrency {concurrency}; statuses "
          f"{result['statuses']}")
    print(f"baseline RSS {baseline_kb / 1024:.0f} MB, peak {peak_kb / 1024:.0f} MB, {IDLE_S:g} s idle after "
          f"{idle_kb / 1024:.0f} MB; healthy after: {healthy}; files in the vision cache dir: {len(cache_files)}")
    print(f"/health: slowest {result['max_health_latency_s']} s, {result['health_failures']} non-200, saturated "
          f"{result['saturated_seen']} times; stalled connections closed {result['stalled_closed']}/{stalled}; "
          f"trickled body answered {result['trickle_status']} after {result['trickle_answered_after_s']} s")
    for line in result["unexpected"]:
        print("  unexpected:", line)
    print(json.dumps({
        "requests": len(plan),
        "quick": args.quick,
        "release_memory_s": args.release_memory_s,
        "unexpected_5xx": result["unexpected_5xx"],
        "wrong_vectors": result["wrong_vectors"],
        "wrong_error_shape": result["wrong_error_shape"],
        "valid_not_served": result["valid_not_served"],
        "transport_errors": result["transport_errors"],
        "peak_rss_growth_mb": round((peak_kb - baseline_kb) / 1024, 1),
        "idle_rss_growth_mb": round((idle_kb - baseline_kb) / 1024, 1),
        "healthy_after": healthy,
        "disk_cache_files": len(cache_files),
        "max_health_latency_s": result["max_health_latency_s"],
        "health_failures": result["health_failures"],
        "stalled_closed": result["stalled_closed"],
        "stalled": stalled,
        "trickle_status": result["trickle_status"],
    }))


if __name__ == "__main__":
    main()
