"""Server settings, validated once when the server starts."""

from __future__ import annotations

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
        max_queue_inputs: inputs waiting for the model before new requests get 503.
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
    max_queue_inputs: int = 8192
    self_check: bool = True

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("model_name", "api_key", "batching", "self_check"):
                continue
            minimum_ok = value >= 0 if f.name == "max_wait_ms" else value > 0
            if value is None or not minimum_ok:
                raise ConfigError(f"server setting {f.name} must be {'>= 0' if f.name == 'max_wait_ms' else '> 0'}, "
                                  f"got {value!r}")
        if not self.model_name:
            raise ConfigError("server setting model_name must not be empty")
