"""Server settings, validated once when the server starts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from tsembed.errors import ConfigError

API_KEY_ENV = "TSEMBED_API_KEY"


@dataclass
class ServerSettings:
    """How the embedding server batches, limits and authenticates.

    Args:
        model_name: the id reported in responses and ``/v1/models``.
        api_key: require ``Authorization: Bearer <key>`` on ``/v1/*``; None reads ``TSEMBED_API_KEY``
            (empty: no auth).
        batching: micro-batch concurrent requests into one forward; off runs one request per forward.
        max_batch_size: inputs per forward pass.
        max_wait_ms: how long the first request of an idle model waits for company. 0 (the default) is
            usually best: batches fill by themselves while the model is busy, and a wait only delays
            lone requests.
        max_inputs_per_request, max_text_chars, max_image_bytes, max_image_pixels, max_request_bytes:
            request limits; over them the request gets a 4xx, never the server a crash.
        max_instruction_chars: limit of a request's ``instruction``; it is prepended to every input, so
            without a bound one request could make the model tokenise megabytes per input.
        max_image_side: longest side of an image, in pixels. Resizing a long thin strip costs memory in
            proportion to its length, not its pixels (a 1x20,000,000 PNG of 26 kB took ~600 MB).
        max_request_pixels: decoded image pixels one request may hold (read from the headers before any
            decoding); over it the request gets 413.
        max_inflight_pixels: decoded image pixels all admitted requests together may hold; a request that
            would pass it gets 503 with Retry-After. With ``max_queue_inputs`` this bounds server memory.
        max_queue_inputs: inputs waiting for the model before new requests get 429 with Retry-After.
        max_request_tokens: tokens one request may hold, counted after the instruction is applied and each
            input capped at the model's ``max_length`` (like TEI's ``--max-batch-tokens``); over it: 413.
        max_batch_tokens: tokens per turn of the model thread; a larger request runs in several turns, taking
            turns with the requests behind it, so it cannot hold the model for seconds. A long text weighs one
            token per 8 characters when that is more: the tokenizer reads all of it, however little is kept.
        saturation_s: ``/health`` reports ``"saturated": true`` (and ``/ready`` answers 503) while a turn has run,
            or a request has waited for its next turn, longer than this, or the queue is full.
        read_timeout_s: a client that stalls this long while sending its body gets 408 (slow-client guard).
        read_timeout_total_s: the whole body must arrive within this many seconds of the request's headers
            (else 408), however steadily it trickles.
        header_timeout_s: a connection must deliver a request's complete headers within this many seconds of
            opening (or of the previous response); else it is closed without an answer (so it also bounds how long
            an idle keep-alive connection stays open when ``idle_timeout_s`` is longer).
        max_connections: open connections beyond this are closed at once (their error log line rate-limited).
        idle_timeout_s: keep-alive connections idle this long are closed (uvicorn's ``timeout_keep_alive``).
        public_docs_and_metrics: with an API key set, ``/info``, ``/metrics``, ``/docs``, ``/redoc`` and
            ``/openapi.json`` need it too unless this is True (``/health`` and ``/ready`` are always open, for load
            balancers).
        vision_cache_mb: in-memory LRU of vision features (for backbones that cache them), capped at this many
            MiB; 0 turns it off.
        vision_disk_cache: keep the vision-feature cache on disk. Off by default: a server writes no client
            data to disk.
        release_memory_s: once the last request in flight is answered, hand the memory freed meanwhile back to
            the operating system (glibc's ``malloc_trim``), at most once per this many seconds; without it RSS
            stayed hundreds of MB above its idle level after a burst of large requests. 0 turns it off.
        self_check: at start, check the weights are finite and a probe input embeds to a finite vector;
            a model that fails answers 503 on ``/health`` and ``/v1/embeddings``.
    """

    model_name: str = "tsembed"
    api_key: str | None = None
    batching: bool = True
    max_batch_size: int = 32
    max_wait_ms: float = 0.0
    max_inputs_per_request: int = 256
    max_text_chars: int = 16_384
    max_instruction_chars: int = 2048
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    max_request_bytes: int = 64 * 1024 * 1024
    max_image_side: int = 16_384
    max_request_pixels: int = 40_000_000
    max_inflight_pixels: int = 64_000_000
    max_queue_inputs: int = 8192
    max_request_tokens: int = 131_072
    max_batch_tokens: int = 16_384
    saturation_s: float = 2.0
    read_timeout_s: float = 30.0
    read_timeout_total_s: float = 60.0
    header_timeout_s: float = 10.0
    max_connections: int = 1024
    idle_timeout_s: float = 5.0
    public_docs_and_metrics: bool = False
    vision_cache_mb: float = 64.0
    vision_disk_cache: bool = False
    release_memory_s: float = 1.0
    self_check: bool = True

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NOT_NUMERIC:
                continue
            zero_ok = f.name in _ZERO_OK
            finite = isinstance(value, int | float) and math.isfinite(value)
            if not finite or not (value >= 0 if zero_ok else value > 0):
                raise ConfigError(f"server setting {f.name} must be a finite number {'>= 0' if zero_ok else '> 0'}, "
                                  f"got {value!r}")
        if not self.model_name:
            raise ConfigError("server setting model_name must not be empty")
        for small, large in (("max_image_pixels", "max_request_pixels"), ("max_request_pixels", "max_inflight_pixels")):
            if getattr(self, small) > getattr(self, large):
                raise ConfigError(f"server setting {small}={getattr(self, small)} is over "
                                  f"{large}={getattr(self, large)}: no request could use it; raise {large} too")


_NOT_NUMERIC = ("model_name", "api_key", "batching", "self_check", "public_docs_and_metrics", "vision_disk_cache")
_ZERO_OK = ("max_wait_ms", "vision_cache_mb", "release_memory_s")
