"""The FastAPI app: OpenAI-compatible ``/v1/embeddings``, TEI-compatible ``/embed``, plus ``/v1/models``,
``/health``, ``/ready``, ``/info``, ``/metrics``.

``create_app(model, settings)`` builds it around an already loaded model, so tests run it in-process
and ``tsembed serve`` hands it to uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from torch import nn

from tsembed.backbones.vision_cache import VisionFeatureCache
from tsembed.encoding import embed_items
from tsembed.errors import TaskError
from tsembed.inference.inputs import apply_instruction, instructed_length
from tsembed.inference.server.admission import RETRY_AFTER_S, PixelBudget, request_pixels_error
from tsembed.inference.server.batcher import MicroBatcher
from tsembed.inference.server.connections import install_loop_log_limit
from tsembed.inference.server.cost import TokenCounter, max_tokens
from tsembed.inference.server.errors import (
    APIError,
    error_body,
    install_error_handlers,
    shaped,
    validation_message,
)
from tsembed.inference.server.images import decode_images, image_pixels, open_data_url
from tsembed.inference.server.memory import IdleTrim
from tsembed.inference.server.metrics import Metrics
from tsembed.inference.server.schemas import EmbeddingRequest, InputItem, TEIEmbedRequest
from tsembed.inference.server.settings import ServerSettings
from tsembed.inference.server.tei import as_embedding_request, tei_vectors
from tsembed.inference.vectors import nonfinite_rows
from tsembed.inputs import EmbedInput
from tsembed.model import check_task

logger = logging.getLogger(__name__)

KNOWN_PATHS = ("/v1/embeddings", "/embed", "/v1/models", "/health", "/ready", "/info", "/metrics")
API_PATHS = ("/embed",)  # besides /v1/*: need the key like them
DOCS_AND_METRICS = ("/info", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
TRUNCATED_HEADER = "X-Truncated-Inputs"


class _BodyTooLarge(Exception):
    pass


class _BodyTimeout(Exception):
    pass


class GuardMiddleware:
    """Auth, the request-size limit, the slow-body timeout and request metrics, before any body is parsed; it
    also tells ``IdleTrim`` when requests start and end, so freed memory goes back once the server is idle."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, metrics: Metrics, trim: IdleTrim) -> None:
        self.app, self.settings, self.metrics, self.trim = app, settings, metrics, trim

    @staticmethod
    async def _reply(scope: Scope, send: Send, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        await JSONResponse(shaped(scope["path"], status, body), status, headers=headers)(scope, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        label = path if path in KNOWN_PATHS else "other"
        start = time.perf_counter()
        state = {"status": 500, "started": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            await send(message)

        self.trim.started(allocates=scope.get("method") not in ("GET", "HEAD"))
        try:
            rejection = self._check(scope)
            if rejection is not None:
                await self._reply(scope, send_wrapper, *rejection)
            else:
                await self.app(scope, self._limited(receive), send_wrapper)
        except _BodyTooLarge:
            if not state["started"]:
                await self._reply(scope, send_wrapper, *self._too_large())
        except _BodyTimeout as exc:
            if not state["started"]:
                await self._reply(scope, send_wrapper, 408, error_body(
                    str(exc), "invalid_request_error", None, "request_timeout"), {"Connection": "close"})
        finally:
            self.metrics.record_request(label, int(state["status"]), time.perf_counter() - start)
            self.trim.finished()

    def _too_large(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        limit = self.settings.max_request_bytes
        return 413, error_body(f"request body is larger than {limit} bytes", "invalid_request_error", None,
                               "request_too_large"), {}

    def _check(self, scope: Scope) -> tuple[int, dict[str, Any], dict[str, str]] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.settings.api_key and self._guarded(scope["path"]):
            scheme, _, token = headers.get("authorization", "").partition(" ")
            expected = self.settings.api_key.encode()
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
                return 401, error_body("missing or invalid API key; send 'Authorization: Bearer <key>'",
                                       "invalid_request_error", None, "invalid_api_key"), {"WWW-Authenticate": "Bearer"}
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.max_request_bytes:
            return self._too_large()
        return None

    def _guarded(self, path: str) -> bool:
        """Paths that need the key: the API (``/v1/*``, ``/embed``), and unless made public, ``/info`` (the model's
        configuration and the server's limits), metrics and the API docs. ``/health`` and ``/ready`` never do (load
        balancers)."""
        return (path.startswith("/v1/") or path in API_PATHS
                or (not self.settings.public_docs_and_metrics and path in DOCS_AND_METRICS))

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that counts body bytes and bounds how long each body chunk may take to arrive
        (``read_timeout_s``) and how long the whole body may take (``read_timeout_total_s``, from the headers on:
        a body trickled a byte at a time, each in time, is refused too)."""
        seen, body_done = 0, False
        limit, timeout = self.settings.max_request_bytes, self.settings.read_timeout_s
        total = self.settings.read_timeout_total_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total

        async def wrapped() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body only a disconnect can come: no timeout on waiting for it
                return await receive()
            left = deadline - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, min(timeout, left)))
            except TimeoutError:
                if left <= timeout:
                    raise _BodyTimeout(f"the request body did not arrive within {total:g} s "
                                       "(read_timeout_total_s)") from None
                raise _BodyTimeout(f"the request body did not arrive within {timeout:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if seen > limit:
                    raise _BodyTooLarge
            return message

        return wrapped


async def _no_receive() -> Message:  # pragma: no cover - never called for a plain response
    return {"type": "http.disconnect"}


Body = TypeVar("Body", bound=BaseModel)


async def parse_request(raw: Request, max_inputs: int = 256, schema: type[Body] = EmbeddingRequest) -> Body:  # type: ignore[assignment]
    """JSON body → ``schema`` (``EmbeddingRequest``, or ``TEIEmbedRequest``) whatever the Content-Type
    (``curl -d`` sends form encoding).

    Parsing, validation and the validation message run in a worker thread: a body of thousands of bad items
    costs that thread milliseconds, never the event loop (``/health`` and every other request) its time. A body
    holding more JSON values than ``max_inputs`` inputs can need is refused before it is parsed (see
    ``count_json_values``): parsing holds the GIL, so millions of tiny values would stall the loop anyway.
    """
    body = await raw.body()
    return await asyncio.to_thread(_parse_body, body, max_inputs, schema)


# a string (possessive, and one left open runs to the end: every match consumes what it scans, so the scan is
# linear whatever the body), or a separator / opening bracket
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)|[,\[{]', re.DOTALL)


def json_value_cap(max_inputs: int) -> int:
    """Separators and containers a valid request may hold: per input a comma, and an object with two fields
    (a brace and a comma), plus the top-level fields."""
    return 4 * max_inputs + 64


def count_json_values(body: bytes, cap: int) -> int:
    """Commas and opening brackets outside JSON strings (every value past the first in a container needs one),
    counted only as far as ``cap`` + 1: a 28 MB body of 6 million strings is judged after reading a few
    thousand of them, and a body whose commas all sit inside its strings costs a scan of C speed."""
    bound = body.count(b",") + body.count(b"[") + body.count(b"{")
    if bound <= cap:  # even counting those inside strings: no scan needed
        return bound
    structural = strings = 0
    for match in _JSON_TOKEN.finditer(body):
        if match.end() - match.start() == 1:  # , [ { (a string match is at least "")
            structural += 1
            if structural > cap:
                return structural
        else:
            strings += 1
            if strings > 2 * cap + 2:  # valid JSON holds at most two strings per separator
                return cap + 1
    return structural


def _parse_body(body: bytes, max_inputs: int = 256, schema: type[Body] = EmbeddingRequest) -> Body:  # type: ignore[assignment]
    cap = json_value_cap(max_inputs)
    if count_json_values(body, cap) > cap:
        raise APIError(400, f"the request body holds more than {cap} JSON values; a request may hold at most "
                       f"{max_inputs} inputs (max_inputs_per_request)", param="input", code="too_many_inputs")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON ({exc})", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "request body nests JSON too deeply", code="invalid_json") from None
    except ValueError:  # an integer past Python's digit limit (sys.get_int_max_str_digits)
        raise APIError(400, "request body holds a number with too many digits", code="invalid_json") from None
    _reject_lone_surrogates(data)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        errors = RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])
        message, param = validation_message(errors)  # here, in the worker thread, not in the loop's handler
        raise APIError(400, message, param=param, code="invalid_request") from None


def _reject_lone_surrogates(data: Any) -> None:
    """JSON may escape half a UTF-16 pair ("\\ud800"); such a str cannot be tokenized or echoed back as UTF-8."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:  # iterative: the body may nest as deep as json.loads allows
        path, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
            stack.extend((path or "body", k) for k in value)  # keys are text too
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise APIError(400, f"text contains a lone UTF-16 surrogate ({value[exc.start]!a}) at character "
                               f"{exc.start}; send valid Unicode", param=path or None, code="invalid_text") from None


def _to_inputs(request: EmbeddingRequest, model: nn.Module, settings: ServerSettings,
               count_tokens: TokenCounter | None = None,
               ) -> tuple[list[EmbedInput], list[tuple[str, Image.Image]], list[int]]:
    """Check limits, open images (headers only), apply the instruction and count tokens (runs in a thread:
    base64 and tokenizing are CPU).

    Returns:
        The inputs, the ``(param, image)`` pairs still to decode once the request is admitted, and each
        input's cost in tokens (``count_tokens``; a ``TokenCounter`` of ``model`` when None).

    Raises:
        APIError: 400 for a bad field, 413 when the images together pass ``max_request_pixels`` or the inputs
            together pass ``max_request_tokens``.
    """
    items = request.items()
    if len(items) > settings.max_inputs_per_request:
        raise APIError(400, f"{len(items)} inputs in one request; the limit is {settings.max_inputs_per_request}",
                       param="input", code="too_many_inputs")
    try:
        check_task(request.task, getattr(model, "task_hints", []))
    except TaskError as exc:
        raise APIError(400, str(exc), param="task", code=exc.code) from None
    instruction = request.instruction
    if instruction is not None and len(instruction) > settings.max_instruction_chars:
        raise APIError(400, f"instruction has {len(instruction)} characters; the limit is "
                       f"{settings.max_instruction_chars}", param="instruction", code="instruction_too_long")
    if request.input_type is not None:
        instruction = getattr(model.config, f"{request.input_type}_instruction", "") or None
    # the text the model reads is the content after the instruction is applied: bound that, not only the parts
    max_instructed = settings.max_text_chars + max(settings.max_instruction_chars, len(instruction or ""))
    inputs, images, pixels = [], [], 0
    for i, item in enumerate(items):
        where = "input" if isinstance(request.input, str) else f"input[{i}]"
        text, image = (item, None) if isinstance(item, str) else (item.text, item.image)
        if isinstance(item, str) and not item:
            raise APIError(400, "input text must not be empty", param=where, code="empty_input")
        if text is not None and len(text) > settings.max_text_chars:
            raise APIError(400, f"text has {len(text)} characters; the limit is {settings.max_text_chars}",
                           param=where if isinstance(item, str) else f"{where}.text", code="text_too_long")
        instructed = instructed_length(instruction, text)
        if instructed > max_instructed:
            raise APIError(400, f"with the instruction applied the text has {instructed} characters; the limit is "
                           f"{max_instructed} (--max-text-chars plus --max-instruction-chars); an instruction "
                           f"repeating {{text}} repeats the input each time", param="instruction",
                           code="text_too_long")
        pil = None
        if isinstance(item, InputItem) and image:
            pil = open_data_url(image, f"{where}.image", settings.max_image_bytes, settings.max_image_pixels,
                                settings.max_image_side)
            pixels += image_pixels(pil)
            if pixels > settings.max_request_pixels:
                raise request_pixels_error(pixels, settings.max_request_pixels)
            images.append((f"{where}.image", pil))
        inputs.append(apply_instruction(instruction, EmbedInput(text=text or None, image=pil, task=request.task)))
    costs = (count_tokens or TokenCounter(model))(inputs)
    total = sum(costs)
    if total > settings.max_request_tokens:
        raise APIError(413, f"the request's inputs hold {total} tokens with the instruction applied (each input "
                       f"counted up to the model's {max_tokens(model)}); the limit is {settings.max_request_tokens} "
                       "per request (max_request_tokens); send fewer or shorter inputs", param="input",
                       code="too_many_tokens")
    return inputs, images, costs


def truncated_inputs(token_counts: list[int], max_tokens: int | None) -> list[int]:
    """Inputs whose tokens reached the backbone's ``max_length``: their text was cut (or filled it exactly;
    the backbone keeps no record of which, so a limit reached counts as a cut)."""
    return [i for i, n in enumerate(token_counts) if max_tokens and n >= max_tokens]


def _model_not_found(name: str, served: str) -> APIError:
    return APIError(404, f"The model `{name}` does not exist; this server serves `{served}`", param="model",
                    code="model_not_found")


@dataclass
class Embedded:
    """A request's answer before it is written in a route's shape: vectors [n, D] float32 as the model made them,
    tokens per input, and the inputs cut at the model's token limit."""

    vectors: np.ndarray
    token_counts: list[int]
    cut: list[int]

    def headers(self) -> dict[str, str] | None:
        return {TRUNCATED_HEADER: ",".join(map(str, self.cut))} if self.cut else None


def _encode_vectors(vectors: np.ndarray, dimensions: int | None, fmt: str) -> list[Any]:
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    vectors = vectors.astype("<f4", copy=False)
    if fmt == "base64":
        return [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    return vectors.tolist()


def self_check(model: nn.Module, dimensions: int) -> str | None:
    """Why ``model`` must not serve, or None: weights with NaN/Inf, or a probe input that fails to embed or
    embeds to a non-finite or wrongly sized vector (what a corrupt or mis-converted checkpoint shows)."""
    bad = [n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        return f"parameters {bad[:5]} hold NaN or Inf"
    try:
        vectors = embed_items(model, [EmbedInput(text="tsembed self-check")], batch_size=1).embeddings.numpy()
    except Exception as exc:  # whatever breaks the probe would break every request
        return f"a probe input failed to embed ({type(exc).__name__}: {exc})"
    if dimensions and vectors.shape != (1, dimensions):
        return f"a probe input embedded to shape {tuple(vectors.shape)}, expected (1, {dimensions})"
    if nonfinite_rows(vectors):
        return "a probe input embedded to a vector holding NaN or Inf"
    return None


def configure_vision_cache(model: nn.Module, settings: ServerSettings) -> None:
    """Serving keeps client images off disk: the backbone's vision-feature cache (if it has one) becomes an
    in-memory LRU capped at ``vision_cache_mb``, on disk only with ``vision_disk_cache``."""
    cache = getattr(getattr(model, "backbone", None), "cache", None)
    if isinstance(cache, VisionFeatureCache):
        cache.configure(disk=settings.vision_disk_cache, memory_max_bytes=int(settings.vision_cache_mb * 2**20))


def model_info(model: nn.Module, settings: ServerSettings) -> dict[str, Any]:
    config = model.config
    return {
        "model": settings.model_name,
        "dimensions": int(getattr(model.backbone, "hidden_size", 0)),
        "max_tokens": getattr(model.backbone, "max_length", None),
        "backbone": config.backbone.get("kind"),
        "pooling": model.pooling,
        "num_experts": config.moe.num_experts if config.moe else 0,
        "num_null_experts": config.moe.num_null_experts if config.moe else 0,
        "routing": {"mode": config.moe.routing, "level": config.moe.level, "top_k": config.moe.top_k}
        if config.moe else None,
        "query_instruction": config.query_instruction,
        "document_instruction": config.document_instruction,
        "limits": {k: getattr(settings, k) for k in (
            "max_inputs_per_request", "max_text_chars", "max_instruction_chars", "max_image_bytes", "max_image_pixels",
            "max_image_side", "max_request_pixels", "max_request_bytes", "max_batch_size", "max_request_tokens",
            "max_batch_tokens")},
        "batching": settings.batching,
    }


def create_app(model: nn.Module, settings: ServerSettings | None = None) -> FastAPI:
    """Build the server app around a loaded ``TSEmbedModel``."""
    settings = settings or ServerSettings()
    model.eval()
    metrics = Metrics()
    batcher = MicroBatcher(model, settings.max_batch_size, settings.max_wait_ms / 1000.0, settings.batching,
                           settings.max_queue_inputs, metrics, settings.max_batch_tokens, settings.saturation_s)
    pixel_budget = PixelBudget(settings.max_inflight_pixels)
    trim = IdleTrim(settings.release_memory_s)
    metrics.memory_releases = lambda: trim.releases
    count_tokens = TokenCounter(model)
    configure_vision_cache(model, settings)
    created = int(time.time())
    info = model_info(model, settings)
    unhealthy = self_check(model, info["dimensions"]) if settings.self_check else None
    if unhealthy:
        logger.error("the model failed its self-check (%s): /health and /v1/embeddings answer 503", unhealthy)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        install_loop_log_limit(asyncio.get_running_loop())  # before the first accept can fail
        yield
        trim.close()
        await batcher.aclose()

    app = FastAPI(title="tsembed", version="1", lifespan=lifespan)
    app.state.batcher, app.state.metrics, app.state.settings = batcher, metrics, settings
    app.state.pixel_budget, app.state.trim = pixel_budget, trim
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, settings=settings, metrics=metrics, trim=trim)

    schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": EmbeddingRequest.model_json_schema()}}}}

    def check_healthy() -> None:
        if unhealthy:
            raise APIError(503, f"the model failed its self-check at start ({unhealthy}); see /health",
                           type="server_error", code="model_unhealthy", headers={"Retry-After": RETRY_AFTER_S})

    async def embed(request: EmbeddingRequest) -> Embedded:
        """The one request path of every embedding route: limits and costs (off the loop), the queue check, the
        pixel budget, decoding, the batcher's turns, then the checks of what came back."""
        if request.model is not None and request.model != settings.model_name:
            raise _model_not_found(request.model, settings.model_name)
        if request.dimensions is not None and request.dimensions > info["dimensions"]:
            raise APIError(400, f"dimensions must be at most {info['dimensions']}, got {request.dimensions}",
                           param="dimensions", code="invalid_dimensions")
        inputs, images, costs = await asyncio.to_thread(_to_inputs, request, model, settings, count_tokens)
        batcher.check_capacity(len(inputs))  # 429 before any pixel is decoded
        with pixel_budget.reserve(sum(image_pixels(image) for _, image in images)):  # 503 when full
            if images:
                await asyncio.to_thread(decode_images, images)
            result = await batcher.submit(inputs, costs)
        bad = nonfinite_rows(result.embeddings)
        if bad:  # never answer 200 with NaN: clients would index them and every score would be NaN
            logger.error("the model produced non-finite embeddings for inputs %s of a request", bad[:10])
            raise APIError(500, f"the model produced a non-finite embedding for input(s) {bad[:10]}",
                           type="server_error", code="nonfinite_embedding")
        cut = truncated_inputs(result.token_counts, info["max_tokens"])
        if cut and not request.truncate:
            where = "input" if isinstance(request.input, str) else f"input[{cut[0]}]"
            raise APIError(400, f"{len(cut)} input(s) {cut[:10]} reach the model's limit of {info['max_tokens']} "
                           "tokens and would be cut; shorten them or send truncate: true", param=where,
                           code="input_too_long")
        return Embedded(result.embeddings, result.token_counts, cut)

    @app.post("/v1/embeddings", openapi_extra=schema)
    async def embeddings(raw: Request) -> JSONResponse:
        check_healthy()
        request = await parse_request(raw, settings.max_inputs_per_request)
        done = await embed(request)
        vectors = _encode_vectors(done.vectors, request.dimensions, request.encoding_format)
        tokens = int(sum(done.token_counts))
        return JSONResponse({
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": settings.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "truncated": len(done.cut),
        }, headers=done.headers())

    tei_schema = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": TEIEmbedRequest.model_json_schema()}}}}

    @app.post("/embed", openapi_extra=tei_schema)
    async def tei_embed(raw: Request) -> JSONResponse:
        """text-embeddings-inference's route (see ``tei``): a bare list of vectors, TEI-shaped errors."""
        check_healthy()
        tei = await parse_request(raw, settings.max_inputs_per_request, TEIEmbedRequest)
        done = await embed(as_embedding_request(tei))
        return JSONResponse(tei_vectors(done.vectors, tei.normalize), headers=done.headers())

    card = {"id": settings.model_name, "object": "model", "created": created, "owned_by": "tsembed",
            "dimensions": info["dimensions"], "num_experts": info["num_experts"]}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{model_id:path}")  # :path: ids like "org/name" hold a slash
    async def model_card(model_id: str) -> dict[str, Any]:
        if model_id != settings.model_name:
            raise _model_not_found(model_id, settings.model_name)
        return card

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: 503 only for a model that failed its self-check. A busy model thread is still alive, so it
        answers 200 with ``"saturated": true`` (a liveness probe must not restart a server for being busy);
        load balancers that should send no new work to a saturated server probe ``/ready`` instead."""
        if unhealthy:
            return JSONResponse({"status": "unhealthy", "error": unhealthy}, 503)
        return JSONResponse({"status": "ok", **batcher.load()})

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """Readiness: 503 with ``Retry-After`` while the model thread is saturated (or unhealthy), else 200."""
        if unhealthy:
            return JSONResponse({"status": "unhealthy", "error": unhealthy}, 503)
        load = batcher.load()
        if load["saturated"]:
            return JSONResponse({"status": "saturated", **load}, 503, headers={"Retry-After": RETRY_AFTER_S})
        return JSONResponse({"status": "ok", **load})

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info

    @app.get("/metrics")
    async def get_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
