"""D8 (issue 24): the server's RSS stayed 300-400 MB above its warmed-up level after a burst of large requests,
because glibc keeps freed blocks in its per-thread heaps. Once idle, the server hands them back."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time

import pytest
from fastapi.testclient import TestClient

from tsembed.inference.server import ServerSettings, create_app
from tsembed.inference.server.memory import IdleTrim, _malloc_trim, release_free_memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm") or _malloc_trim() is None,
                    reason="needs glibc and /proc (Linux)")
def test_release_free_memory_hands_freed_heap_pages_back():
    """What a burst of requests leaves behind: a worker thread's heap full of freed 64 KiB blocks with a few still
    in use between them (glibc returns only a heap's free top). The release must give most of it back."""
    block, count, keep_every = 64 * 1024, 1600, 16  # 100 MiB, 1 block in 16 kept
    kept: list[bytes] = []

    def burst() -> None:
        blocks = [b"x" * block for _ in range(count)]  # filled: every page is touched
        kept.extend(blocks[::keep_every])
        del blocks

    release_free_memory()
    before = _rss_bytes()
    thread = threading.Thread(target=burst)
    thread.start()
    thread.join()
    freed = block * (count - count // keep_every)
    retained = _rss_bytes() - before
    if retained < freed // 2:
        pytest.skip(f"the allocator returned {freed - retained} of {freed} freed bytes by itself")
    assert release_free_memory()
    after = _rss_bytes() - before
    assert retained - after > freed // 2, (
        f"freed {freed >> 20} MiB, still held {retained >> 20} MiB, after the release {after >> 20} MiB")
    assert len(kept) == count // keep_every


def _run_trim(script):  # type: ignore[no-untyped-def]
    """Run ``script(trim, released)`` on an event loop, with a release that records each call."""
    released: list[float] = []

    def release() -> bool:
        released.append(time.monotonic())
        return True

    async def main() -> None:
        trim = IdleTrim(every_s=0.05, release=release)
        await script(trim, released)

    asyncio.run(main())
    return released


async def _settle(trim: IdleTrim, released: list[float], n: int, timeout: float = 30.0) -> None:
    """Wait until ``n`` releases happened (a generous deadline: only a failing test waits it out)."""
    deadline = time.monotonic() + timeout
    while (len(released) < n or trim.releases < n) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_idle_trim_releases_only_once_the_last_request_in_flight_ends():
    async def script(trim: IdleTrim, released: list[float]) -> None:
        trim.started(allocates=True)
        trim.started(allocates=True)
        trim.finished()
        await asyncio.sleep(0.3)  # whatever the time, one request is still in flight
        assert released == [] and trim.in_flight == 1
        trim.finished()
        await _settle(trim, released, 1)
        assert len(released) == 1 and trim.releases == 1
        await asyncio.sleep(0.3)  # idle and nothing new allocated: no second release
        assert len(released) == 1

    _run_trim(script)


def test_idle_trim_ignores_requests_that_allocate_nothing_and_can_be_turned_off():
    async def script(trim: IdleTrim, released: list[float]) -> None:
        for _ in range(5):  # /health polls
            trim.started(allocates=False)
            trim.finished()
        await asyncio.sleep(0.3)
        assert released == []
        off = IdleTrim(every_s=0, release=lambda: released.append(0.0) or True)
        off.started(allocates=True)
        off.finished()
        await asyncio.sleep(0.3)
        assert released == []

    _run_trim(script)


def test_idle_trim_waits_its_interval_between_releases():
    """A second burst right after a release is released again, but not before ``every_s`` has passed."""
    async def script(trim: IdleTrim, released: list[float]) -> None:
        trim.every_s = 0.5
        trim.started(allocates=True)
        trim.finished()
        await _settle(trim, released, 1)
        trim.started(allocates=True)
        trim.finished()
        await _settle(trim, released, 2)
        assert len(released) == 2 and released[1] - released[0] >= 0.45  # a lower bound: a busy machine only adds

    _run_trim(script)


def test_the_server_releases_memory_after_requests_and_counts_it(model):
    app = create_app(model, ServerSettings(model_name="toy", release_memory_s=0.05))
    calls: list[int] = []
    app.state.trim.release = lambda: calls.append(1) or True
    def releases(client: TestClient) -> int:
        return int(re.search(r"^tsembed_memory_releases_total (\d+)$", client.get("/metrics").text, re.M).group(1))

    with TestClient(app) as client:
        assert client.get("/health").status_code == 200 and releases(client) == 0  # GETs allocate nothing
        assert client.post("/v1/embeddings", json={"input": ["a cat", "a dog"]}).status_code == 200
        deadline = time.monotonic() + 30  # only a failing test waits it out
        while releases(client) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert releases(client) == 1 and calls == [1]


def test_release_memory_setting_is_checked_and_reaches_the_server(monkeypatch, tmp_path):
    import tsembed.inference.loading as loading
    import tsembed.inference.server as server_pkg
    from tsembed.cli import main
    from tsembed.errors import ConfigError

    assert ServerSettings().release_memory_s == 1.0 and ServerSettings(release_memory_s=0).release_memory_s == 0
    with pytest.raises(ConfigError, match="release_memory_s must be a finite number >= 0"):
        ServerSettings(release_memory_s=-1)
    seen = {}
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: object())
    monkeypatch.setattr(server_pkg, "create_app", lambda model, settings: seen.setdefault("settings", settings))
    monkeypatch.setattr(server_pkg, "serve", lambda app, **k: None)
    assert main(["serve", "--model", str(tmp_path), "--release-memory-s", "0"]) == 0
    assert seen["settings"].release_memory_s == 0
