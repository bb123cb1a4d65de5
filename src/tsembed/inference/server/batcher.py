"""Micro-batching in bounded turns: concurrent requests share model forwards, and no request holds the model.

Requests wait in a FIFO. One collector task builds each *turn* of the single model thread: it walks the
waiting requests in order and takes from each the next inputs that fit, up to ``max_batch_size`` inputs and
``max_batch_tokens`` tokens per turn (costs counted after the instruction is applied, see ``cost``). A
request with inputs left goes to the back of the line, so one request of 256 long texts runs in many short
turns with the requests behind it rather than holding the thread for seconds (the first request of an idle
model may wait ``max_wait`` for company). One thread: the model is never run concurrently, and the event
loop stays free meanwhile. If a turn fails, each request's share is retried alone, so one bad request never
fails its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from tsembed.encoding import embed_items
from tsembed.inference.server.admission import RETRY_AFTER_S
from tsembed.inference.server.cost import max_tokens, turn_costs
from tsembed.inference.server.errors import APIError
from tsembed.inference.server.metrics import Metrics
from tsembed.inputs import EmbedInput

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """One request's share of a forward: embeddings [n, D] float32 and real tokens per input."""

    embeddings: np.ndarray
    token_counts: list[int]


@dataclass
class _Job:
    items: list[EmbedInput]
    costs: list[int]
    future: asyncio.Future
    waiting_since: float  # monotonic time it last became ready for a turn
    next: int = 0  # first input not yet handed to a turn
    parts: list[BatchResult] = field(default_factory=list)


class MicroBatcher:
    """Waiting line + collector task + one model thread.

    Args:
        model: the embedding model (a ``TSEmbedModel``), in eval mode.
        max_batch_size: inputs per turn (forward).
        max_wait_s: how long the first request waits for others.
        enabled: False runs each turn on one request's inputs only (the no-batching baseline).
        max_queue_inputs: waiting inputs beyond which ``submit`` answers 429.
        metrics: where batch sizes and forward times go.
        max_batch_tokens: tokens per turn (a single input over it makes a turn of its own); a long text counts
            the characters its tokenizer reads too (``cost.turn_costs``).
        saturation_s: the model thread counts as saturated while a turn has run, or a request has waited for
            its next turn, longer than this (or the line is full); ``/health`` reports it.
    """

    def __init__(self, model: nn.Module, max_batch_size: int, max_wait_s: float, enabled: bool = True,
                 max_queue_inputs: int = 8192, metrics: Metrics | None = None, max_batch_tokens: int = 16_384,
                 saturation_s: float = 2.0) -> None:
        self.model = model
        self.max_batch_size, self.max_wait_s, self.enabled = max_batch_size, max_wait_s, enabled
        self.max_queue_inputs, self.max_batch_tokens = max_queue_inputs, max_batch_tokens
        self.saturation_s = saturation_s
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth = lambda: self.queued_inputs
        self.queued_inputs = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsembed-model")
        self._pending: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._turn_started: float | None = None

    def _ensure_started(self) -> asyncio.Event:
        """Start lazily in the serving loop (ASGI test clients may not send lifespan events)."""
        loop = asyncio.get_running_loop()
        if self._wake is None or self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._wake = loop, asyncio.Event()
            self._pending.clear()
            self._task = loop.create_task(self._collect_forever(), name="tsembed-batcher")
        return self._wake

    async def submit(self, items: list[EmbedInput], costs: list[int] | None = None) -> BatchResult:
        """Embed one request's inputs; resolves when its last turn has run.

        Args:
            items: the inputs.
            costs: tokens per input (``cost.TokenCounter``); None counts each as the backbone's ``max_length``.

        Raises:
            APIError: 429 when the line is full; the model's error (400 for a ``DataError``, else 500).
        """
        wake = self._ensure_started()
        self.check_capacity(len(items))
        if costs is None:
            costs = [max_tokens(self.model)] * len(items)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queued_inputs += len(items)
        self._pending.append(_Job(items, turn_costs(items, costs), future, time.monotonic()))
        wake.set()
        return await future

    def check_capacity(self, inputs: int) -> None:
        """Refuse a request the line cannot take now (call it before decoding, and again on submit).

        Raises:
            APIError: 429 ``queue_full`` with ``Retry-After``.
        """
        if self.queued_inputs + inputs > self.max_queue_inputs:
            raise APIError(429, f"the queue is full ({self.queued_inputs} inputs waiting, limit "
                           f"{self.max_queue_inputs}); retry later", type="server_error", code="queue_full",
                           headers={"Retry-After": RETRY_AFTER_S})

    def load(self) -> dict[str, float | int | bool]:
        """How busy the model thread is: ``saturated``, how long the running turn has run (``busy_s``), the
        longest wait of a request for its next turn (``waiting_s``), and the inputs waiting."""
        now = time.monotonic()
        busy = now - self._turn_started if self._turn_started is not None else 0.0
        waiting = max((now - j.waiting_since for j in self._pending if not j.future.done()), default=0.0)
        saturated = (busy > self.saturation_s or waiting > self.saturation_s
                     or self.queued_inputs >= self.max_queue_inputs)
        return {"saturated": saturated, "busy_s": round(busy, 3), "waiting_s": round(waiting, 3),
                "queued_inputs": self.queued_inputs}

    def _drop_done(self) -> None:
        """Forget requests whose client went away (their future was cancelled)."""
        for job in [j for j in self._pending if j.future.done()]:
            self._pending.remove(job)
            self.queued_inputs -= len(job.items) - job.next

    async def _wait_for_work(self, wake: asyncio.Event) -> None:
        while True:
            self._drop_done()
            if self._pending:
                break
            wake.clear()
            await wake.wait()
        if not self.enabled or self.max_wait_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while sum(len(j.items) - j.next for j in self._pending) < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), remaining)
            except TimeoutError:
                break

    def _next_turn(self) -> list[tuple[_Job, int, int]]:
        """``(job, start, end)`` slices for one turn: requests in line order, each its next inputs that fit."""
        turn: list[tuple[_Job, int, int]] = []
        size = tokens = 0
        for job in list(self._pending):
            if job.future.done():
                continue
            start = end = job.next
            while end < len(job.items):
                cost = job.costs[end]
                if (size or end > start) and (tokens + cost > self.max_batch_tokens or size >= self.max_batch_size):
                    break
                size, tokens, end = size + 1, tokens + cost, end + 1
            if end > start:
                turn.append((job, start, end))
                job.next = end
            if not self.enabled or size >= self.max_batch_size or tokens >= self.max_batch_tokens:
                break
        for job, _, _ in turn:  # served: out of the line; back at its end if it has inputs left
            self._pending.remove(job)
            if job.next < len(job.items):
                self._pending.append(job)
        return turn

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        while True:
            await self._wait_for_work(wake)
            turn = self._next_turn()
            self.queued_inputs -= sum(end - start for _, start, end in turn)
            if not turn:
                continue
            self._turn_started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self._run,
                                                     [job.items[start:end] for job, start, end in turn])
            except Exception as exc:  # the executor itself failed; never kill the collector
                results = [exc] * len(turn)
            finally:
                self._turn_started = None
            now = time.monotonic()
            for (job, _, end), result in zip(turn, results, strict=True):
                job.waiting_since = now
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(_as_api_error(result))
                    continue
                job.parts.append(result)
                if end == len(job.items):
                    job.future.set_result(_joined(job.parts))
            self._drop_done()  # a request failed half-way leaves the line with its remaining inputs

    def _forward(self, items: list[EmbedInput]) -> tuple[np.ndarray, list[int]]:
        start = time.perf_counter()
        out = embed_items(self.model, items, self.max_batch_size, on_batch=self.metrics.record_batch)
        self.metrics.record_forward(time.perf_counter() - start)
        return out.embeddings.numpy().astype(np.float32, copy=False), out.token_counts

    def _run(self, groups: list[list[EmbedInput]]) -> list[BatchResult | BaseException]:
        """Worker thread: one forward for all groups; on failure, each group alone to isolate the culprit."""
        try:
            embeddings, tokens = self._forward([item for group in groups for item in group])
        except Exception as exc:
            if len(groups) == 1:
                return [exc]
            return [r for group in groups for r in self._run([group])]
        results: list[BatchResult | BaseException] = []
        offset = 0
        for group in groups:
            end = offset + len(group)
            results.append(BatchResult(embeddings[offset:end], tokens[offset:end]))
            offset = end
        return results

    async def aclose(self) -> None:
        for job in self._pending:
            if not job.future.done():
                job.future.cancel()
        if self._task is not None and self._loop is asyncio.get_running_loop():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)


def _joined(parts: list[BatchResult]) -> BatchResult:
    if len(parts) == 1:
        return parts[0]
    return BatchResult(np.concatenate([p.embeddings for p in parts]), [n for p in parts for n in p.token_counts])


def _as_api_error(exc: BaseException) -> APIError:
    from tsembed.errors import DataError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, DataError):
        return APIError(400, str(exc), code="invalid_input")
    logger.error("model forward failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return APIError(500, f"model forward failed ({type(exc).__name__})", type="server_error")
