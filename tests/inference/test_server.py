"""The HTTP server: OpenAI-compatible payloads, multimodal inputs, every bad-input case, auth, metrics,
micro-batching, and real sockets (raw JSON over httpx, and the openai client when installed)."""

from __future__ import annotations

import asyncio
import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tsembed.errors import DataError
from tsembed.inference import encode, encode_query
from tsembed.inference.server import ServerSettings, ServerThread, create_app
from tsembed.inputs import EmbedInput


def data_url(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


RED = Image.new("RGB", (16, 16), (250, 0, 0))


@pytest.fixture
def client(model):
    settings = ServerSettings(model_name="toy", max_inputs_per_request=8, max_text_chars=200, max_instruction_chars=64,
                              max_image_bytes=20_000, max_image_pixels=128 * 128, max_request_bytes=200_000)
    with TestClient(create_app(model, settings)) as c:
        yield c


def _post(client, body, **kw):
    return client.post("/v1/embeddings", json=body, **kw)


def test_openai_shape_and_values(client, model):
    r = _post(client, {"model": "toy", "input": ["a red apple", "two words"]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["model"] == "toy"
    assert [d["index"] for d in body["data"]] == [0, 1] and body["data"][0]["object"] == "embedding"
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 5
    expected = encode(model, ["a red apple", "two words"])
    np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]]), expected, atol=1e-6)
    single = _post(client, {"input": "a red apple"}).json()
    assert len(single["data"]) == 1


def test_base64_dimensions_and_instructions(client, model):
    r = _post(client, {"input": ["a red apple"], "encoding_format": "base64", "dimensions": 8,
                       "input_type": "query"}).json()
    vec = np.frombuffer(base64.b64decode(r["data"][0]["embedding"]), dtype="<f4")
    full = encode_query(model, "a red apple")
    np.testing.assert_allclose(vec, full[:8] / np.linalg.norm(full[:8]), atol=1e-6)
    custom = _post(client, {"input": "apple", "instruction": "Find: {text}"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(custom, encode(model, "Find: apple"), atol=1e-6)


def test_multimodal_objects(client, model):
    r = _post(client, {"input": [{"image": data_url(RED)}, {"text": "a photo", "image": data_url(RED, "JPEG")},
                                 "plain text", {"text": "only text"}]})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got[0], encode(model, RED), atol=1e-6)
    np.testing.assert_allclose(got[3], encode(model, "only text"), atol=1e-6)


def _big_png() -> str:
    return data_url(Image.new("RGB", (200, 200), (1, 2, 3)))


def _noisy_png() -> str:
    rng = np.random.default_rng(0)
    return data_url(Image.fromarray(rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)))


BAD_CASES = [
    ({"input": ["x"], "temperature": 1}, "temperature", "unknown field"),
    ({"input": [{"text": "x", "audio": "y"}]}, "input[0].audio", "unknown field"),
    ({"input": [{"image": "data:image/png;base64,@@@notbase64"}]}, "input[0].image", "not valid base64"),
    ({"input": [{"image": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}]},
     "input[0].image", "cannot be decoded"),
    ({"input": [{"image": "https://example.com/cat.png"}]}, "input[0].image", "not fetched"),
    ({"input": [{"image": "iVBORw0KGgo="}]}, "input[0].image", "data URL"),
    ({"input": [{"image": "data:text/plain;base64,aGk="}]}, "input[0].image", "data:image"),
    ({"input": [{"image": _big_png()}]}, "input[0].image", "pixels"),
    ({"input": [{"image": _noisy_png()}]}, "input[0].image", "larger than the limit"),
    ({"input": ["x"] * 9}, "input", "limit is 8"),
    ({"input": ["y" * 201]}, "input[0]", "limit is 200"),
    ({"input": [{"text": "y" * 201}]}, "input[0].text", "limit is 200"),
    ({"input": ["y"] * 8, "instruction": "z" * 65}, "instruction", "limit is 64"),
    ({"input": []}, "input", "empty list"),
    ({"input": ""}, "input", "must not be empty"),
    ({"input": [{}]}, "input[0]", "needs `text`"),
    ({"input": [1, 2, 3]}, "input", "token-id arrays"),
    ({"input": [[1, 2], [3]]}, "input", "token-id arrays"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
    ({"input": "x", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
    ({"input": "x", "dimensions": 33}, "dimensions", "at most 32"),
    ({"input": "x", "instruction": "a", "input_type": "query"}, None, "not both"),
    ({"model": "m"}, "input", "Field required"),
]


@pytest.mark.parametrize("body, param, message", BAD_CASES)
def test_bad_requests_get_json_4xx(client, body, param, message):
    r = _post(client, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert "Value error" not in error["message"] and not error["message"].startswith("body")  # no pydantic words
    if param is not None:
        assert error["param"] == param
    assert client.get("/health").status_code == 200  # the server lives on


def test_malformed_json_and_size_and_routes(client):
    r = client.post("/v1/embeddings", content=b'{"input": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = client.post("/v1/embeddings", content=b"x" * 200_001, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert client.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/v1/embeddings").status_code == 405


HOSTILE_BODIES = [
    # refused before parsing (issue 24, D6): more brackets than a request of 8 inputs can need
    (b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "input", "more than 96 JSON values"),
    (b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}", None, "too many digits"),
    (b'{"input": "a\\ud800b"}', "input", "lone UTF-16 surrogate"),
    (b'{"input": ["ok", {"text": "\\udfff"}]}', "input[1].text", "lone UTF-16 surrogate"),
    (b'{"input": "x", "instruction": "\\ud800 {text}"}', "instruction", "lone UTF-16 surrogate"),
]


@pytest.mark.parametrize("content, param, message", HOSTILE_BODIES)
def test_hostile_json_gets_4xx_not_500(client, content, param, message):
    r = client.post("/v1/embeddings", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["param"] == param
    assert _post(client, {"input": "still fine"}).status_code == 200


def test_model_errors_are_isolated(model):
    real = model.prepare

    def prepare(inputs):
        if any(x.text == "boom" for x in inputs):
            raise DataError("input 0: cannot use 'boom'")
        if any(x.text == "crash" for x in inputs):
            raise RuntimeError("bug")
        return real(inputs)

    model.prepare = prepare
    app = create_app(model, ServerSettings(max_wait_ms=50))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            bodies = [{"input": t} for t in ("ok one", "boom", "crash", "ok two")]
            return await asyncio.gather(*(c.post("/v1/embeddings", json=b) for b in bodies))

    ok1, boom, crash, ok2 = asyncio.run(run())
    assert ok1.status_code == ok2.status_code == 200
    assert boom.status_code == 400 and "boom" in boom.json()["error"]["message"]
    assert crash.status_code == 500 and crash.json()["error"]["type"] == "server_error"


def test_concurrent_requests_are_batched(model):
    app = create_app(model, ServerSettings(max_wait_ms=100, max_batch_size=16))
    texts = [f"sentence number {i} " + "word " * (i % 5) for i in range(12)]

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            responses = await asyncio.gather(*(c.post("/v1/embeddings", json={"input": t}) for t in texts))
            metrics = (await c.get("/metrics")).text
            return responses, metrics

    responses, metrics = asyncio.run(run())
    got = np.array([r.json()["data"][0]["embedding"] for r in responses])
    np.testing.assert_allclose(got, encode(model, texts), atol=1e-5)
    counts = {line.split("{")[1].split("}")[0]: float(line.split()[-1])
              for line in metrics.splitlines() if line.startswith("tsembed_batch_size_bucket")}
    assert counts['le="1"'] < counts['le="+Inf"']  # at least one forward carried several requests
    assert 'tsembed_requests_total{path="/v1/embeddings",status="200"} 12' in metrics


def test_auth(model, monkeypatch):
    monkeypatch.setenv("TSEMBED_API_KEY", "s3cret")
    with TestClient(create_app(model, ServerSettings())) as c:
        assert _post(c, {"input": "x"}).status_code == 401
        wrong = _post(c, {"input": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
        assert c.post("/v1/embeddings", content=b"{bad").status_code == 401  # auth before parsing
        assert c.get("/v1/models").status_code == 401
        assert _post(c, {"input": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200


def test_info_models_metrics(client):
    _post(client, {"input": "x"})
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "toy" and models["data"][0]["dimensions"] == 32
    info = client.get("/info").json()
    assert info["num_experts"] == 4 and info["limits"]["max_inputs_per_request"] == 8
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for name in ("tsembed_requests_total", "tsembed_request_duration_seconds_bucket", "tsembed_batch_size_count",
                 "tsembed_inputs_total 1", "tsembed_queue_inputs"):
        assert name in text


def test_real_socket_raw_json_and_openai_client(model):
    app = create_app(model, ServerSettings(model_name="toy", api_key="k"))
    with ServerThread(app) as url:
        raw = json.dumps({"input": ["a red apple", {"text": "x", "image": data_url(RED)}], "model": "toy",
                          "encoding_format": "float", "user": "u1"})
        r = httpx.post(f"{url}/v1/embeddings", content=raw, headers={"Authorization": "Bearer k",
                                                                      "Content-Type": "application/json"})
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        bad = httpx.post(f"{url}/v1/embeddings", content='{"input": 5}', headers={"Authorization": "Bearer k"})
        assert bad.status_code == 400 and bad.json()["error"]["param"]
        openai = pytest.importorskip("openai")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        result = client.embeddings.create(model="toy", input=["a red apple", "two words"])  # base64 by default
        got = np.array([d.embedding for d in result.data])
        np.testing.assert_allclose(got, encode(model, ["a red apple", "two words"]), atol=1e-6)
        assert result.usage.total_tokens == 5
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).embeddings.create(model="t", input="x")


def test_task_reaches_the_router_and_unknown_tasks_are_4xx():
    from .conftest import build_model

    hinted = build_model(task_hints=("classification", "retrieval"))
    with TestClient(create_app(hinted, ServerSettings(model_name="toy"))) as c:
        got = _post(c, {"input": ["a red apple"], "task": "retrieval"}).json()["data"][0]["embedding"]
        np.testing.assert_allclose(got, encode(hinted, "a red apple", task="retrieval"), atol=1e-5)
        assert not np.allclose(got, encode(hinted, "a red apple"), atol=1e-3)
        r = _post(c, {"input": "x", "task": "vqa"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "task"


def test_serving_beyond_loopback_without_a_key_warns(model, monkeypatch, caplog):
    import uvicorn

    from tsembed.inference.server import serve

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    monkeypatch.delenv("TSEMBED_API_KEY", raising=False)
    open_app = create_app(model, ServerSettings())
    for host, warns in (("0.0.0.0", True), ("::", True), ("example.org", True), ("127.0.0.1", False),
                        ("localhost", False), ("::1", False)):
        caplog.clear()
        serve(open_app, host=host)
        assert ("TSEMBED_API_KEY" in caplog.text) == warns, host
    caplog.clear()
    serve(create_app(model, ServerSettings(api_key="k")), host="0.0.0.0")
    assert "without an API key" not in caplog.text


def test_non_finite_embeddings_are_a_500_never_a_vector(model):
    real = model.forward
    poison = model.prepare([EmbedInput(text="poison")])["input_ids"][0, 0]

    def forward(**batch):  # e.g. an fp16 overflow on one input
        out = real(**batch)
        out.embeddings[batch["input_ids"][:, 0] == poison] = float("nan")
        return out

    model.forward = forward
    with TestClient(create_app(model, ServerSettings())) as c:
        for fmt in ("float", "base64"):
            r = _post(c, {"input": ["fine", "poison"], "encoding_format": fmt})
            assert r.status_code == 500 and r.json()["error"]["code"] == "nonfinite_embedding", r.text
            assert "[1]" in r.json()["error"]["message"]
        assert _post(c, {"input": "fine"}).status_code == 200
        assert c.get("/health").json()["status"] == "ok"


def test_health_reports_a_model_that_fails_its_self_check(model, caplog):
    with torch.no_grad():
        model.backbone.proj.weight[0, 0] = float("nan")
    with TestClient(create_app(model, ServerSettings())) as c:
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert "backbone.proj.weight" in health.json()["error"]
        r = _post(c, {"input": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unhealthy"
    assert "self-check" in caplog.text
    with TestClient(create_app(model, ServerSettings(self_check=False))) as c:  # opt-out: health says ok
        assert c.get("/health").status_code == 200


def test_unknown_model_is_404_model_not_found_like_openai(client):
    r = _post(client, {"model": "text-embedding-3-small", "input": "x"})
    assert r.status_code == 404
    assert r.json()["error"] == {"message": "The model `text-embedding-3-small` does not exist; this server serves "
                                 "`toy`", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    card = client.get("/v1/models/toy")
    assert card.status_code == 200 and card.json()["id"] == "toy" and card.json()["object"] == "model"
    missing = client.get("/v1/models/org/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_task_on_a_model_without_task_hints_is_a_400(client):
    r = _post(client, {"input": "x", "task": "retrieval"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "task_not_supported"
    assert r.json()["error"]["param"] == "task"


def test_truncation_is_reported_or_refused(client, model):
    long = " ".join(f"w{i}" for i in range(40))  # the toy backbone keeps 16 words
    r = _post(client, {"input": ["short text", long]})
    assert r.status_code == 200 and r.json()["truncated"] == 1 and r.headers["X-Truncated-Inputs"] == "1"
    np.testing.assert_allclose(r.json()["data"][1]["embedding"], encode(model, long), atol=1e-6)
    short = _post(client, {"input": ["short text"]})
    assert short.json()["truncated"] == 0 and "X-Truncated-Inputs" not in short.headers
    refused = _post(client, {"input": ["short text", long], "truncate": False})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "input_too_long"
    assert refused.json()["error"]["param"] == "input[1]" and "limit of 16 tokens" in refused.json()["error"]["message"]
    assert _post(client, {"input": "short text", "truncate": False}).status_code == 200
    assert client.get("/info").json()["max_tokens"] == 16
