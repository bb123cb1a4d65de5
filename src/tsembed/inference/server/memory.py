"""Give freed memory back to the operating system once the server goes idle (issue 24 D8).

A request's body, its decoded images, its tokenized text and its response are freed when it is answered, but
glibc keeps freed blocks in its heaps (one per thread that allocated: the event loop, the worker threads, the
model thread) and returns only what sits at the top of each. After a burst of large requests the server's RSS
stayed 300-400 MB above its warmed-up level for good, and a container's memory limit counts RSS.
``malloc_trim(0)`` hands every free page of every heap back; ``IdleTrim`` calls it in a worker thread when the
last request in flight has been answered, at most once per ``every_s`` seconds.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
from collections.abc import Callable
from functools import cache

logger = logging.getLogger(__name__)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on a C library without it (musl, macOS, Windows)."""
    try:  # the symbols already loaded (find_library would run ldconfig: a subprocess, descriptors)
        trim = ctypes.CDLL(None).malloc_trim  # CDLL releases the GIL for the call
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system; True if the allocator could (glibc only)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class IdleTrim:
    """Counts requests in flight; when the last one ends after work that allocated, releases free memory.

    Args:
        every_s: at most one release per this many seconds (a release that falls due while requests are in
            flight waits for the last of them); 0 turns releasing off.
        release: what releases (``release_free_memory``; tests pass their own).

    Runs on the event loop thread (no lock needed); the release itself runs in the loop's default executor, so
    a slow trim of a large heap never holds the loop.
    """

    def __init__(self, every_s: float, release: Callable[[], bool] = release_free_memory) -> None:
        self.every_s, self.release = every_s, release
        self.in_flight = 0
        self.releases = 0  # completed releases (``/metrics``: tsembed_memory_releases_total)
        self._dirty = False  # a request that may have allocated ended since the last release
        self._last = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def started(self, allocates: bool) -> None:
        """A request arrived; ``allocates``: it may hold more than a few bytes (a body, a model turn)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new serving loop (test clients): the old one's timer never fires
            self._loop, self._timer, self._running = loop, None, None
        self.in_flight += 1
        self._dirty |= allocates

    def finished(self) -> None:
        """A request was answered (or failed, or its client went away)."""
        self.in_flight -= 1
        self._schedule()

    def _schedule(self) -> None:
        """Arm the timer for the next release when idle after work and none is armed or running."""
        if (self.in_flight or not self._dirty or self.every_s <= 0 or self._timer is not None
                or self._running is not None):
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, self._last + self.every_s - loop.time()), self._due)

    def _due(self) -> None:
        self._timer = None
        if self.in_flight or not self._dirty or self._running is not None:
            return  # busy again: the last request in flight schedules the release when it ends
        loop = asyncio.get_running_loop()
        self._dirty, self._last = False, loop.time()
        self._running = loop.run_in_executor(None, self.release)
        self._running.add_done_callback(self._done)

    def _done(self, future: asyncio.Future) -> None:
        self._running = None
        if future.cancelled():
            return
        if future.exception() is not None:
            logger.warning("releasing free memory failed: %s", future.exception())
        else:
            self.releases += 1
        self._schedule()  # requests that came and went while it ran

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
