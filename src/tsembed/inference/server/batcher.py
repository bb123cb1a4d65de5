"""Micro-batching: concurrent requests share model forwards.

Requests wait in an asyncio queue. One collector task takes the first request, then keeps adding
queued requests until ``max_batch_size`` inputs or ``max_wait`` has passed (0: take what is queued),
and hands the batch to a single worker thread that runs the model (one thread: the model is never run
concurrently, and the event loop stays free to accept requests meanwhile). While a batch runs, the
next one fills up, so under load batches grow by themselves. If a batch fails, its requests are
retried one by one, so one bad request never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from torch import nn

from tsembed.encoding import embed_items
from tsembed.inference.server.admission import RETRY_AFTER_S
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
    future: asyncio.Future


class MicroBatcher:
    """Queue + collector task + one model thread.

    Args:
        model: the embedding model (a ``TSEmbedModel``), in eval mode.
        max_batch_size: inputs per forward.
        max_wait_s: how long the first request waits for others.
        enabled: False runs every request in a forward of its own (the no-batching baseline).
        max_queue_inputs: queued inputs beyond which ``submit`` answers 429.
        metrics: where batch sizes and forward times go.
    """

    def __init__(self, model: nn.Module, max_batch_size: int, max_wait_s: float, enabled: bool = True,
                 max_queue_inputs: int = 8192, metrics: Metrics | None = None) -> None:
        self.model = model
        self.max_batch_size, self.max_wait_s, self.enabled = max_batch_size, max_wait_s, enabled
        self.max_queue_inputs = max_queue_inputs
        self.metrics = metrics or Metrics()
        self.metrics.queue_depth = lambda: self.queued_inputs
        self.queued_inputs = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tsembed-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _ensure_started(self) -> asyncio.Queue[_Job]:
        """Start lazily in the serving loop (ASGI test clients may not send lifespan events)."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._collect_forever(self._queue), name="tsembed-batcher")
        return self._queue

    async def submit(self, items: list[EmbedInput]) -> BatchResult:
        """Embed one request's inputs; resolves when its batch has run.

        Raises:
            APIError: 429 when the queue is full; the model's error (400 for a ``DataError``, else 500).
        """
        queue = self._ensure_started()
        self.check_capacity(len(items))
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queued_inputs += len(items)
        await queue.put(_Job(items, future))
        return await future

    def check_capacity(self, inputs: int) -> None:
        """Refuse a request the queue cannot take now (call it before decoding, and again on submit).

        Raises:
            APIError: 429 ``queue_full`` with ``Retry-After``.
        """
        if self.queued_inputs + inputs > self.max_queue_inputs:
            raise APIError(429, f"the queue is full ({self.queued_inputs} inputs waiting, limit "
                           f"{self.max_queue_inputs}); retry later", type="server_error", code="queue_full",
                           headers={"Retry-After": RETRY_AFTER_S})

    async def _next_batch(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        jobs = [await queue.get()]
        if not self.enabled:
            return jobs
        size = len(jobs[0].items)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch_size:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            jobs.append(job)
            size += len(job.items)
        return jobs

    async def _collect_forever(self, queue: asyncio.Queue[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch(queue)
            self.queued_inputs -= sum(len(j.items) for j in jobs)
            live = [j for j in jobs if not j.future.done()]  # a client that went away was cancelled
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run, [j.items for j in live])
            except Exception as exc:  # the executor itself failed; never kill the collector
                results = [exc] * len(live)
            for job, result in zip(live, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(_as_api_error(result))
                else:
                    job.future.set_result(result)

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
        if self._task is not None and self._loop is asyncio.get_running_loop():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None
        self._executor.shutdown(wait=False, cancel_futures=True)


def _as_api_error(exc: BaseException) -> APIError:
    from tsembed.errors import DataError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, DataError):
        return APIError(400, str(exc), code="invalid_input")
    logger.error("model forward failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
    return APIError(500, f"model forward failed ({type(exc).__name__})", type="server_error")
