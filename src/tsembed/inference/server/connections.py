"""Connection-level guards uvicorn lacks: a header deadline, a connection cap, and a rate-limited error log.

uvicorn arms its keep-alive timer only after a response, and cancels it on the first byte of the next
request, so a client that sends half a request line and stalls holds its connection (and a file descriptor)
forever; at the descriptor limit real clients starve, and asyncio logs an error with a traceback for every
failed ``accept``. Here every connection must deliver a complete request head within ``header_timeout_s``
of opening (or of its previous response), at most ``max_connections`` are open at once (the next one gets a
bare 503 and is closed), and the lines these events log are rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from typing import Any

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0
FD_RESERVE = 32  # descriptors kept, beyond those open at startup, for log files, checkpoints and the listener
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
           b"retry-after: 1\r\ncontent-length: 27\r\n\r\ntoo many open connections\r\n")


class RateLimitedLog:
    """Log a repeated event at most once per ``every_s`` seconds, saying how many were left out meanwhile."""

    def __init__(self, log: logging.Logger, every_s: float = LOG_EVERY_S) -> None:
        self.log, self.every_s = log, every_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def __call__(self, level: int, key: str, message: str, *args: Any) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than ``every_s`` ago; True if it logged."""
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.every_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return False
        skipped = self._skipped.pop(key, 0)
        self._last[key] = now
        suffix = f" ({skipped} more like it in the last {self.every_s:g} s not logged)" if skipped else ""
        try:
            self.log.log(level, message + suffix, *args)
        except OSError:  # a FileHandler reopening its file at the descriptor limit raises out of emit()
            return False
        return True


connection_log = RateLimitedLog(logger)


def _open_descriptors() -> int:
    """How many descriptors the process holds now (the model, libraries and log files count against the limit)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


def default_max_connections(requested: int) -> int:
    """``requested``, lowered to what the process's open-file limit leaves room for."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - platforms without the limit
        return requested
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return requested
    room = max(1, soft - _open_descriptors() - FD_RESERVE)
    if room < requested:
        logger.info("max_connections lowered from %d to %d: the open-file limit is %d, %d already open",
                    requested, room, soft, _open_descriptors())
    return min(requested, room)


def install_loop_log_limit(loop: asyncio.AbstractEventLoop) -> None:
    """Rate-limit asyncio's "socket.accept() out of system resource" error (one per failed accept, each with a
    traceback, while the process is at its descriptor limit: megabytes a second) and the failures of the accept
    retries each of them scheduled; everything else goes to the usual handler. Installed at startup, before the
    first accept can fail."""
    previous = loop.get_exception_handler()
    if getattr(previous, "_tsembed_rate_limited", False):
        return

    def handler(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio schedules the accept retry only after this handler returns: if it raised (a log handler that
        # cannot open its file at the descriptor limit does), the server would never accept again
        try:
            _handle(the_loop, context)
        except Exception:  # noqa: BLE001 - nothing may stop the retry
            pass

    def _handle(the_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept() out of system resource"):
            connection_log(logging.ERROR, "accept", "cannot accept connections: %s (%s)", message,
                           context.get("exception"))
            return
        if "_start_serving" in repr(context.get("handle")):  # each failed accept scheduled a retry; at shutdown
            connection_log(logging.WARNING, "retry", "a scheduled accept retry failed: %s (%s)", message,
                           context.get("exception"))  # every one of them fails on the closed socket
            return
        if previous is not None:
            previous(the_loop, context)
        else:
            the_loop.default_exception_handler(context)

    handler._tsembed_rate_limited = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a header deadline and a connection cap (pass as ``uvicorn.Config(http=...)``)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            install_loop_log_limit(self.loop)
            self._header_timer: asyncio.TimerHandle | None = None
            if len(self.connections) > max_connections:
                connection_log(logging.WARNING, "cap", "refused a connection: %d open, the limit is %d "
                               "(max_connections)", len(self.connections) - 1, max_connections)
                transport.write(REFUSED)
                transport.close()
                return
            self._arm_header_deadline()

        def _arm_header_deadline(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_deadline)

        def _header_deadline(self) -> None:
            self._header_timer = None
            waiting_for_head = self.conn.their_state is h11.IDLE and (
                self.cycle is None or self.cycle.response_complete)
            if waiting_for_head and not self.transport.is_closing():
                connection_log(logging.INFO, "header", "closed a connection that sent no complete request head "
                               "within %g s (header_timeout_s)", header_timeout_s)
                self.transport.close()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm_header_deadline()  # the next request's head has the same deadline
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            if getattr(self, "_header_timer", None) is not None:
                self._header_timer.cancel()  # type: ignore[union-attr]
                self._header_timer = None
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` that apply the app's connection settings."""
    if settings is None:
        return {}
    return {"http": guarded_protocol(float(settings.header_timeout_s),
                                     default_max_connections(int(settings.max_connections))),
            "timeout_keep_alive": float(settings.idle_timeout_s)}
