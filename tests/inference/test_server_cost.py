"""Cheap requests that used to cost the server seconds (issue 24): D1 and D2."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from tsembed.inference.server import ServerSettings, create_app


@pytest.fixture
def client(model):
    settings = ServerSettings(model_name="toy", max_inputs_per_request=16, max_text_chars=200,
                              max_instruction_chars=2048, max_request_bytes=1_000_000)
    with TestClient(create_app(model, settings)) as c:
        yield c


def test_d1_ten_thousand_bad_items_are_refused_fast(client):
    """D1: 10 000 invalid items (97 kB) give 20 000 validation errors; the message builder compared every pair of
    locations (23 s on the event loop, /health included). Now linear: well under a second of work."""
    start = time.perf_counter()
    r = client.post("/v1/embeddings", json={"input": [{"x": 1}] * 10_000})
    elapsed = time.perf_counter() - start
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].x"
    assert "(and 9995 more)" in r.json()["error"]["message"]
    assert elapsed < 5.0, f"took {elapsed:.1f}s"


def test_d1_message_builder_is_linear():
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    from tsembed.inference.server.errors import validation_message
    from tsembed.inference.server.schemas import EmbeddingRequest

    with pytest.raises(ValidationError) as info:
        EmbeddingRequest.model_validate({"input": [{"x": 1}] * 20_000})
    exc = RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()])
    start = time.perf_counter()
    message, param = validation_message(exc)
    assert time.perf_counter() - start < 3.0  # quadratic: minutes
    assert param == "input[0].x" and message.endswith("(and 19995 more)")


def test_d2_length_limit_counts_the_instruction_applied(client):
    """D2: an instruction repeating {text} 341 times multiplied every input; the limit saw only the raw text."""
    body = {"input": ["x" * 200] * 16, "instruction": "{text}" * 341}
    start = time.perf_counter()
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "text_too_long" and error["param"] == "instruction"
    assert "with the instruction applied the text has 68200 characters; the limit is 2248" in error["message"]
    assert time.perf_counter() - start < 5.0
    # an ordinary template, and a short input under a repeating one, still pass
    assert client.post("/v1/embeddings", json={"input": ["x" * 200], "instruction": "Find: {text}"}).status_code == 200
    assert client.post("/v1/embeddings", json={"input": ["ab"], "instruction": "{text} " * 3}).status_code == 200


def test_d1_validation_runs_off_the_event_loop(model, monkeypatch):
    """However long validating a bad body takes, /health answers meanwhile: parsing, validation and the message
    run in a worker thread (made slow here on purpose, so the test does not depend on the machine's speed)."""
    import threading

    import httpx

    from tsembed.inference.server import ServerThread
    from tsembed.inference.server import app as app_module

    real = app_module.validation_message

    def slow(exc):
        time.sleep(1.5)
        return real(exc)

    monkeypatch.setattr(app_module, "validation_message", slow)
    monkeypatch.setattr("tsembed.inference.server.errors.validation_message", slow)  # the on-loop handler's path
    app = create_app(model, ServerSettings(model_name="toy", max_request_bytes=1_000_000))
    with ServerThread(app) as url:
        answers: list[int] = []
        bad = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{url}/v1/embeddings", json={"input": [{"x": 1}] * 1000}, timeout=30).status_code))
        bad.start()
        time.sleep(0.3)  # the bad request is being validated now
        start = time.perf_counter()
        health = httpx.get(f"{url}/health", timeout=30)
        waited = time.perf_counter() - start
        bad.join()
    assert health.status_code == 200 and answers == [400]
    assert waited < 1.0, f"/health waited {waited:.2f}s behind the validation"


@pytest.mark.parametrize("dimensions", [True, "8", 8.0])
def test_d12_dimensions_must_be_an_integer(client, dimensions):
    r = client.post("/v1/embeddings", json={"input": "x", "dimensions": dimensions})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions", r.text
