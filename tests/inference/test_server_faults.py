"""Fault injection against the server: broken and hostile images, budgets (413/429/503), slow bodies (408),
auth on docs and metrics, a model thread that raises; and the settings that bound them."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tsembed.backbones.vision_cache import VisionFeatureCache
from tsembed.errors import ConfigError
from tsembed.inference import encode
from tsembed.inference.server import ServerSettings, ServerThread, create_app
from tsembed.inference.server.admission import PixelBudget
from tsembed.inference.server.app import configure_vision_cache
from tsembed.inference.server.errors import APIError


def png_bytes(size: tuple[int, int] = (16, 16), colour: tuple[int, int, int] = (0, 200, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width``×``height`` but which carries no pixel data (what a bomb's header
    costs to send: a few dozen bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 8)[:6])


def as_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def post_images(client, *urls: str, **kw):
    return client.post("/v1/embeddings", json={"input": [{"image": u} for u in urls]}, **kw)


SETTINGS = dict(model_name="toy", max_image_pixels=100 * 100, max_request_pixels=150 * 100,
                max_inflight_pixels=300 * 100, max_image_bytes=50_000)


@pytest.fixture
def client(model):
    with TestClient(create_app(model, ServerSettings(**SETTINGS))) as c:
        yield c


def _error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    return error


@pytest.mark.parametrize("raw, what", [
    (png_bytes()[: len(png_bytes()) // 2], "truncated PNG"),
    (png_bytes()[:40] + bytes(range(256)) * 2, "garbled pixel data"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "garbled header"),
    (b"GIF89a" + b"\xff" * 20, "truncated GIF"),
])
def test_corrupt_images_are_400_naming_the_field(client, raw, what):
    r = client.post("/v1/embeddings", json={"input": [{"text": "ok"}, {"image": as_url(raw)}]})
    error = _error(r, 400, "invalid_image")
    assert error["param"] == "input[1].image" and "cannot be decoded" in error["message"], what
    assert client.post("/v1/embeddings", json={"input": "still fine"}).status_code == 200


@pytest.mark.parametrize("width, height", [(1, 20_000_000), (200_000, 200_000)])
def test_huge_dimension_headers_are_refused_before_decoding(client, width, height):
    error = _error(post_images(client, as_url(png_header_only(width, height))), 400, "image_too_large")
    assert "10000 pixels per image" in error["message"] and error["param"] == "input[0].image"


def test_long_thin_images_are_refused_by_side_length(model):
    settings = ServerSettings(max_image_side=1000)  # the default pixel limits would admit 1 x 20,000,000
    with TestClient(create_app(model, settings)) as c:
        error = _error(post_images(c, as_url(png_header_only(1, 20_000_000))), 400, "image_too_large")
        assert "1x20000000" in error["message"] and "max_image_side" in error["message"]
        assert post_images(c, as_url(png_bytes((1000, 10)))).status_code == 200


def test_request_pixel_budget_is_413_checked_from_headers_before_any_decode(client):
    # each header declares 100x100 (allowed alone) but carries no decodable data: a 413 (not a 400 "cannot be
    # decoded") shows the budget was charged from the headers before anything was decoded
    fake = as_url(png_header_only(100, 100))
    error = _error(post_images(client, fake, fake), 413, "request_too_large")
    assert "20000 pixels" in error["message"] and "limit of 15000" in error["message"]
    assert "max_request_pixels" in error["message"]
    ok = post_images(client, as_url(png_bytes((100, 100))), as_url(png_bytes((50, 50))))
    assert ok.status_code == 200, ok.text


def test_inflight_pixel_budget_is_503_with_retry_after(client, model):
    budget: PixelBudget = client.app.state.pixel_budget
    with budget.reserve(250 * 100):  # other requests hold most of the budget
        r = post_images(client, as_url(png_bytes((100, 100))))
        error = _error(r, 503, "overloaded")
        assert r.headers["Retry-After"] == "1" and "pixels in flight" in error["message"]
        assert client.post("/v1/embeddings", json={"input": "text needs no pixels"}).status_code == 200
    assert budget.in_use == 0
    r = post_images(client, as_url(png_bytes((100, 100))))
    assert r.status_code == 200 and budget.in_use == 0  # released after the request
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], encode(model, Image.open(
        io.BytesIO(png_bytes((100, 100))))), atol=1e-6)


def test_pixel_budget_is_released_when_decoding_fails(client):
    post_images(client, as_url(png_bytes((100, 100))[:60]))
    assert client.app.state.pixel_budget.in_use == 0


def test_full_queue_is_429_with_retry_after(client):
    batcher = client.app.state.batcher
    batcher.queued_inputs = batcher.max_queue_inputs  # as if the queue were full of other requests
    try:
        r = client.post("/v1/embeddings", json={"input": "x"})
        error = _error(r, 429, "queue_full")
        assert r.headers["Retry-After"] == "1" and "queue is full" in error["message"]
    finally:
        batcher.queued_inputs = 0
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "image/png", None])
def test_wrong_content_types_are_handled(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    good = client.post("/v1/embeddings", content=b'{"input": "x"}', headers=headers)
    assert good.status_code == 200  # curl -d sends form encoding: the body is what counts
    bad = client.post("/v1/embeddings", content=png_bytes(), headers=headers)
    _error(bad, 400, "invalid_json")


def test_a_model_thread_that_raises_answers_500_and_the_server_lives(model):
    real = model.prepare
    state = {"broken": True}

    def prepare(inputs):
        if state["broken"]:
            raise RuntimeError("worker exploded")
        return real(inputs)

    model.prepare = prepare
    with TestClient(create_app(model, ServerSettings(self_check=False))) as c:
        for _ in range(3):
            r = c.post("/v1/embeddings", json={"input": ["a", "b"]})
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            assert "worker exploded" not in r.text  # no internals to the client
        state["broken"] = False
        r = c.post("/v1/embeddings", json={"input": "a"})
        assert r.status_code == 200 and c.get("/health").status_code == 200


def test_key_guards_metrics_and_docs_but_not_health(model):
    with TestClient(create_app(model, ServerSettings(api_key="s3cret"))) as c:
        for path in ("/metrics", "/docs", "/openapi.json", "/redoc"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        assert c.get("/health").status_code == 200
    with TestClient(create_app(model, ServerSettings(api_key="s3cret", public_docs_and_metrics=True))) as c:
        assert c.get("/metrics").status_code == 200 and c.get("/docs").status_code == 200
        assert c.get("/v1/models").status_code == 401


def test_a_stalled_body_gets_408(model):
    app = create_app(model, ServerSettings(read_timeout_s=0.2))
    sent: list[dict] = []

    async def run():
        async def receive():
            await asyncio.sleep(30)  # the client sent headers, then nothing

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"100")], "query_string": b"",
            "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": ""}
        await asyncio.wait_for(app(scope, receive, send), 5)

    asyncio.run(run())
    assert sent[0]["status"] == 408 and b"request_timeout" in sent[1]["body"]


def test_idle_keep_alive_timeout_reaches_uvicorn(model):
    thread = ServerThread(create_app(model, ServerSettings(idle_timeout_s=2.5)))
    assert thread.server.config.timeout_keep_alive == 2.5


def test_serving_keeps_vision_features_off_disk_in_a_capped_memory_lru(tmp_path):
    cache = VisionFeatureCache(tmp_path, "ns", disk=True)
    configure_vision_cache(SimpleNamespace(backbone=SimpleNamespace(cache=cache)), ServerSettings(vision_cache_mb=1))
    assert cache.disk is False and cache.memory_max_bytes == 2**20
    configure_vision_cache(SimpleNamespace(backbone=SimpleNamespace(cache=cache)),
                           ServerSettings(vision_disk_cache=True))
    assert cache.disk is True


@pytest.mark.parametrize("bad, message", [
    ({"max_request_pixels": float("nan")}, "max_request_pixels must be a finite number > 0"),
    ({"read_timeout_s": 0}, "read_timeout_s must be a finite number > 0"),
    ({"vision_cache_mb": -1}, "vision_cache_mb must be a finite number >= 0"),
    ({"max_image_pixels": 100, "max_request_pixels": 50}, "raise max_request_pixels"),
    ({"max_request_pixels": 100, "max_inflight_pixels": 50, "max_image_pixels": 10}, "raise max_inflight_pixels"),
])
def test_settings_refuse_unusable_limits(bad, message):
    with pytest.raises(ConfigError, match=message):
        ServerSettings(**bad)


def test_pixel_budget_counts_and_refuses():
    budget = PixelBudget(100)
    with budget.reserve(60):
        with pytest.raises(APIError) as exc:
            with budget.reserve(50):
                pass
        assert exc.value.status == 503 and budget.in_use == 60
        with budget.reserve(40):
            assert budget.in_use == 100
    assert budget.in_use == 0
