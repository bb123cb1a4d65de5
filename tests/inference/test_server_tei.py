"""TEI's route (issue 24): ``POST /embed`` as text-embeddings-inference answers it, on the one request path of
``/v1/embeddings`` (same limits, cost bound, admission and batcher), with TEI-shaped errors."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tsembed.inference.server import ServerSettings, ServerThread, create_app

TEXTS = ["a red apple", "a small dog in the garden", "music at night"]


def settings(**kw) -> ServerSettings:  # type: ignore[no-untyped-def]
    return ServerSettings(model_name="toy", max_inputs_per_request=8, max_text_chars=200, **kw)


@pytest.fixture
def client(model):
    with TestClient(create_app(model, settings())) as c:
        yield c


def openai_vectors(client: TestClient, **body) -> np.ndarray:  # type: ignore[no-untyped-def]
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def tei_error(r, status: int, error_type: str) -> str:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return str(body["error"])


def test_embed_answers_a_bare_list_of_the_same_vectors(client):
    r = client.post("/embed", json={"inputs": TEXTS})
    assert r.status_code == 200, r.text
    got = np.array(r.json(), dtype=np.float32)
    assert got.shape == (3, 32)
    np.testing.assert_allclose(got, openai_vectors(client, input=TEXTS), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    one = client.post("/embed", json={"inputs": TEXTS[0]}).json()  # a string: still a list of one vector
    np.testing.assert_allclose(np.array(one), got[:1], atol=1e-6)


def test_prompt_name_applies_the_models_instruction(client):
    for name in ("query", "document"):
        got = np.array(client.post("/embed", json={"inputs": TEXTS, "prompt_name": name}).json(), dtype=np.float32)
        np.testing.assert_allclose(got, openai_vectors(client, input=TEXTS, input_type=name), atol=1e-6)
    message = tei_error(client.post("/embed", json={"inputs": "x", "prompt_name": "passage"}), 400, "Validation")
    assert "prompt_name 'passage' is not one of the model's prompts ['document', 'query']" in message


def test_normalize_false_gives_the_models_own_vectors(model):
    model.config.normalize = False  # a model saved without normalisation: its vectors are not unit length
    with TestClient(create_app(model, settings())) as c:
        raw = openai_vectors(c, input=TEXTS)
        assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
        as_is = np.array(c.post("/embed", json={"inputs": TEXTS, "normalize": False}).json(), dtype=np.float32)
        unit = np.array(c.post("/embed", json={"inputs": TEXTS}).json(), dtype=np.float32)
    np.testing.assert_allclose(as_is, raw, atol=1e-6)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_truncate_defaults_to_false_as_in_tei(client):
    long = " ".join(["word"] * 40)  # the toy backbone keeps 16 words
    message = tei_error(client.post("/embed", json={"inputs": ["short", long]}), 400, "Validation")
    assert "reach the model's limit of 16 tokens" in message and "truncate: true" in message
    r = client.post("/embed", json={"inputs": ["short", long], "truncate": True})
    assert r.status_code == 200 and r.headers["X-Truncated-Inputs"] == "1" and len(r.json()) == 2
    assert client.post("/embed", json={"inputs": "x", "truncation_direction": "Right"}).status_code == 200
    message = tei_error(client.post("/embed", json={"inputs": "x", "truncation_direction": "left"}), 400,
                        "Validation")
    assert "truncation_direction 'left' is not supported" in message


@pytest.mark.parametrize(("body", "status", "error_type", "says"), [
    (b'{"inputs": [', 400, "Validation", "not valid JSON"),
    ({"inputs": []}, 400, "Empty", "inputs must not be empty"),
    ({"inputs": ""}, 400, "Empty", "must not be empty"),
    ({"inputs": [[1, 2, 3]]}, 400, "Validation", "token-id arrays are not supported"),
    ({"inputs": "x", "normalise": True}, 400, "Validation", "normalise: unknown field"),
    ({"inputs": "x", "normalize": "yes"}, 400, "Validation", "normalize"),
    ({"inputs": ["x"] * 9}, 400, "Validation", "9 inputs in one request; the limit is 8"),
    ({"inputs": ["y" * 300]}, 400, "Validation", "text has 300 characters; the limit is 200"),
    (b'{"inputs": "\\ud800 x"}', 400, "Validation", "lone UTF-16 surrogate"),
])
def test_bad_bodies_get_tei_shaped_errors(client, body, status, error_type, says):
    r = (client.post("/embed", content=body, headers={"content-type": "application/json"}) if isinstance(body, bytes)
         else client.post("/embed", json=body))
    assert says in tei_error(r, status, error_type)


def test_the_shared_limits_and_admission_answer_in_tei_shape(model):
    """One request path: the token bound (413), the queue (429) and the body size (413, from the middleware)."""
    with TestClient(create_app(model, settings(max_request_tokens=20, max_request_bytes=2_000))) as c:
        message = tei_error(c.post("/embed", json={"inputs": ["one two three four five six seven"] * 4}), 413,
                            "Validation")
        assert "max_request_tokens" in message
        big = c.post("/embed", json={"inputs": "x", "pad": "p" * 3000})  # refused before it is read
        assert "larger than 2000 bytes" in tei_error(big, 413, "Validation")
        batcher = c.app.state.batcher
        batcher.queued_inputs = batcher.max_queue_inputs  # as if full of other requests
        try:
            r = c.post("/embed", json={"inputs": "x"})
            assert "queue is full" in tei_error(r, 429, "Overloaded") and r.headers["Retry-After"] == "1"
        finally:
            batcher.queued_inputs = 0
        assert c.post("/embed", json={"inputs": "x"}).status_code == 200


def test_embed_needs_the_key_like_the_v1_routes(model):
    with TestClient(create_app(model, settings(api_key="s3cret"))) as c:
        assert "missing or invalid API key" in tei_error(c.post("/embed", json={"inputs": "x"}), 401, "Validation")
        assert c.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/embeddings", json={"input": "x"}).json()["error"]["code"] == "invalid_api_key"


def test_an_unhealthy_model_is_503_unhealthy(model):
    import torch

    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with TestClient(create_app(model, settings())) as c:
        r = c.post("/embed", json={"inputs": "x"})
    assert "self-check" in tei_error(r, 503, "Unhealthy")


def test_huggingface_hubs_tei_client_reads_the_answer(model, monkeypatch):
    """The client TEI users already run: ``InferenceClient(<url>/embed).feature_extraction`` posts TEI's body."""
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)  # offline mode blocks loopback URLs too
    with ServerThread(create_app(model, settings())) as url, TestClient(create_app(model, settings())) as c:
        client = hub.InferenceClient(model=f"{url}/embed", timeout=60)
        got = client.feature_extraction(TEXTS[1], normalize=True, prompt_name="query", truncate=True)
        expected = openai_vectors(c, input=[TEXTS[1]], input_type="query")
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32).reshape(1, -1), expected, atol=1e-5)
