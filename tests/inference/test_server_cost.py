"""Cheap requests that used to cost the server seconds (issue 24): D1, D2, D4 and D12."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tsembed.inference.server import ServerSettings, create_app


@pytest.fixture
def client(model):
    settings = ServerSettings(model_name="toy", max_inputs_per_request=16, max_text_chars=200,
                              max_instruction_chars=2048, max_request_bytes=1_000_000)
    with TestClient(create_app(model, settings)) as c:
        yield c


def test_d1_ten_thousand_bad_items_are_refused_fast(model):
    """D1: 10 000 invalid items (97 kB) give 20 000 validation errors; the message builder compared every pair of
    locations (23 s on the event loop, /health included). Now linear: well under a second of work. (With the
    default 256 inputs per request such a body is now refused before parsing: D6.)"""
    settings = ServerSettings(model_name="toy", max_inputs_per_request=10_000, max_request_bytes=1_000_000)
    with TestClient(create_app(model, settings)) as client:  # its speed: benchmarks/abuse.py, and the test below
        r = client.post("/v1/embeddings", json={"input": [{"x": 1}] * 10_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].x"
    assert "(and 9995 more)" in r.json()["error"]["message"]


def test_d1_message_builder_is_linear():
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    from tsembed.inference.server.errors import validation_message
    from tsembed.inference.server.schemas import EmbeddingRequest

    def timed(n: int) -> tuple[float, str, str]:
        with pytest.raises(ValidationError) as info:
            EmbeddingRequest.model_validate({"input": [{"x": 1}] * n})
        exc = RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in info.value.errors()])
        best = math.inf
        for _ in range(3):  # the fastest of three: other jobs on the machine only ever add time
            start = time.perf_counter()
            message, param = validation_message(exc)
            best = min(best, time.perf_counter() - start)
        return best, message, param

    small, _, _ = timed(2_500)
    large, message, param = timed(20_000)
    assert param == "input[0].x" and message.endswith("(and 19995 more)")
    # 8x the errors: about 8x the time when linear, 64x when quadratic (a ratio, not a wall-clock bound)
    assert large / max(small, 1e-6) < 24, f"8x the errors took {large / small:.0f}x the time"


def test_d2_length_limit_counts_the_instruction_applied(client):
    """D2: an instruction repeating {text} 341 times multiplied every input; the limit saw only the raw text."""
    body = {"input": ["x" * 200] * 16, "instruction": "{text}" * 341}
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "text_too_long" and error["param"] == "instruction"
    assert "with the instruction applied the text has 68200 characters; the limit is 2248" in error["message"]
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

    release = threading.Event()

    def slow(exc):  # validation holds its worker thread until the test has asked /health
        release.wait(30)
        return real(exc)

    monkeypatch.setattr(app_module, "validation_message", slow)
    monkeypatch.setattr("tsembed.inference.server.errors.validation_message", slow)  # the on-loop handler's path
    app = create_app(model, ServerSettings(model_name="toy", max_request_bytes=1_000_000, max_inputs_per_request=1000))
    with ServerThread(app) as url:
        answers: list[int] = []
        bad = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{url}/v1/embeddings", json={"input": [{"x": 1}] * 1000}, timeout=30).status_code))
        bad.start()
        time.sleep(0.3)  # the bad request is being validated now, and stays so until released
        health = httpx.get(f"{url}/health", timeout=10)  # on the event loop, this would wait for the release
        pending = list(answers)
        release.set()
        bad.join()
    assert health.status_code == 200 and pending == [] and answers == [400]


@pytest.mark.parametrize("dimensions", [True, "8", 8.0])
def test_d12_dimensions_must_be_an_integer(client, dimensions):
    r = client.post("/v1/embeddings", json={"input": "x", "dimensions": dimensions})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions", r.text


def _slow_forward(monkeypatch, seconds_per_input: float) -> None:
    """The model thread's forward, made slow per input (so the tests do not depend on the machine's speed)."""
    from tsembed.inference.server import batcher as batcher_module

    real = batcher_module.embed_items

    def slow(model, items, *args, **kwargs):
        time.sleep(seconds_per_input * len(items))
        return real(model, items, *args, **kwargs)

    monkeypatch.setattr(batcher_module, "embed_items", slow)


def test_d4_request_cost_is_bounded_in_tokens_after_the_instruction(model):
    """D4: a request's cost counts tokens with the instruction applied (each input up to the model's max_length,
    16 for the toy); over max_request_tokens it is refused before it is queued."""
    settings = ServerSettings(model_name="toy", max_request_tokens=64, max_batch_tokens=32)
    with TestClient(create_app(model, settings)) as c:
        r = c.post("/v1/embeddings", json={"input": ["ab"] * 8, "instruction": "Represent this text: {text}"})
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert error["code"] == "too_many_tokens" and error["param"] == "input"
        assert "128 tokens" in error["message"] and "the limit is 64" in error["message"]
        assert c.post("/v1/embeddings", json={"input": ["ab"] * 8}).status_code == 200  # 8 × 2 tokens
        assert c.get("/info").json()["limits"]["max_request_tokens"] == 64


def test_d4_a_large_request_takes_turns_with_the_requests_behind_it(model, monkeypatch):
    """D4: 40 long inputs took the only model thread for one long run (14-26 s for 256 × 16k characters) while
    every request behind them waited; now they run in turns of max_batch_tokens and a small request slips in
    between. The large request's vectors are those of one unsplit run."""
    import threading

    import httpx

    from tsembed.inference import encode
    from tsembed.inference.server import ServerThread
    from tsembed.inference.server import batcher as batcher_module

    _slow_forward(monkeypatch, 0.05)
    turns: list[list[str]] = []  # the texts of each turn, in order (no wall-clock bound: CI machines are busy)
    timed = batcher_module.embed_items

    def recorded(model, items, *args, **kwargs):
        turns.append([item.text for item in items])
        return timed(model, items, *args, **kwargs)

    monkeypatch.setattr(batcher_module, "embed_items", recorded)
    texts = [f"text number {i} " + "word " * 20 for i in range(40)]  # 16 tokens each (the toy's max_length)
    app = create_app(model, ServerSettings(model_name="toy", max_batch_tokens=32, max_request_tokens=10_000))
    with ServerThread(app) as url:
        big: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: big.append(
            httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60)))
        thread.start()
        while not turns:  # the large request is being embedded now (20 turns of 2 inputs)
            time.sleep(0.01)
        small = httpx.post(f"{url}/v1/embeddings", json={"input": "a short one"}, timeout=60)
        thread.join()
    assert small.status_code == 200 and big[0].status_code == 200
    # the small request got a turn while the large one still had turns to go: it slipped in between
    small_turn = next(i for i, texts in enumerate(turns) if "a short one" in texts)
    assert sum(map(len, turns)) == 41 and small_turn < len(turns) - 5, turns
    got = np.array([d["embedding"] for d in big[0].json()["data"]])
    np.testing.assert_allclose(got, encode(model, texts), atol=1e-5)
    assert big[0].json()["usage"]["total_tokens"] == 40 * 16


def test_d4_health_reports_a_saturated_model_thread(model, monkeypatch):
    """/health stays 200 (a liveness probe must not restart a busy server) with "saturated": true while a turn has
    run past saturation_s; /ready answers 503 with Retry-After meanwhile, 200 again after."""
    import threading

    import httpx

    from tsembed.inference.server import ServerThread
    from tsembed.inference.server import batcher as batcher_module

    started, release = threading.Event(), threading.Event()
    real = batcher_module.embed_items

    def held(model, items, *args, **kwargs):  # the turn runs until the test has looked (no wall-clock race)
        started.set()
        release.wait(30)
        return real(model, items, *args, **kwargs)

    monkeypatch.setattr(batcher_module, "embed_items", held)
    app = create_app(model, ServerSettings(model_name="toy", saturation_s=0.3, max_wait_ms=0))
    with ServerThread(app) as url:
        assert httpx.get(f"{url}/health").json()["saturated"] is False
        assert httpx.get(f"{url}/ready").status_code == 200
        thread = threading.Thread(target=lambda: httpx.post(f"{url}/v1/embeddings", json={"input": ["a"] * 4},
                                                            timeout=60))
        thread.start()
        assert started.wait(30)
        time.sleep(0.4)  # the turn has now run past saturation_s
        health, ready = httpx.get(f"{url}/health"), httpx.get(f"{url}/ready")
        release.set()
        thread.join()
        after = httpx.get(f"{url}/ready")
    assert health.status_code == 200 and health.json()["saturated"] is True and health.json()["busy_s"] > 0.3
    assert ready.status_code == 503 and ready.json()["status"] == "saturated" and ready.headers["Retry-After"]
    assert after.status_code == 200 and after.json()["saturated"] is False


def test_d6_millions_of_tiny_values_are_refused_before_parsing(client, monkeypatch):
    """D6: 6 M strings (28 MB) took 2.3 s of parsing and walking before the 256-input check; 10 M empty lists
    took json.loads alone 10 s, holding the GIL (so the loop too). Separators outside strings are counted first,
    stopping at the cap: the body is refused without being parsed."""
    import json

    from tsembed.inference.server import app as app_module

    parsed: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(app_module.json, "loads", lambda body, *a, **k: parsed.append(len(body)) or real_loads(body))
    for value in (["a"] * 1_000_000, [[]] * 1_000_000):
        body = json.dumps({"input": value}).encode()
        with pytest.raises(app_module.APIError) as info:
            app_module._parse_body(body, 16)
        assert info.value.code == "too_many_inputs" and "more than 128 JSON values" in info.value.message
    assert parsed == []
    # commas inside strings are not separators: 16 texts of commas parse
    ok = app_module._parse_body(json.dumps({"input": [", " * 100] * 16, "instruction": "a, b: {text}"}).encode(), 16)
    assert len(ok.items()) == 16 and parsed
    # end to end: the server answers 400, and a string left open is still just invalid JSON
    r = client.post("/v1/embeddings", content=json.dumps({"input": ["a"] * 50_000}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_inputs", r.text
    r = client.post("/v1/embeddings", content=b'{"input": ["a' + b'\\",' * 5000)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text


def test_d6_the_separator_scan_is_linear_on_hostile_escapes():
    from tsembed.inference.server.app import count_json_values

    def timed(n: int) -> float:
        body = b'"' + b'\\"' * n + b"," * 2000  # one string left open: every quote after it is escaped
        best = math.inf
        for _ in range(3):  # the fastest of three: other jobs on the machine only ever add time
            start = time.perf_counter()
            assert count_json_values(body, 100) == 0
            best = min(best, time.perf_counter() - start)
        return best

    # 10x the escapes: about 10x the time when linear, 100x when quadratic (a ratio, not a wall-clock bound)
    assert timed(1_000_000) / max(timed(100_000), 1e-6) < 30
    assert count_json_values(b'{"a":[1,2,{"b":"x,y,z"}],"c":"\\\\"}', 7) == 6  # 9 counting the quoted


def test_d4_tokens_are_counted_with_a_private_copy_of_the_tokenizer(tiny_bert_dir):
    """Costs come from the backbone's own tokenizer, truncated at max_length; the counter uses its own copy (a fast
    tokenizer shared with the model thread raises "Already borrowed" under concurrent calls); an image costs
    max_length; without a tokenizer a text counts one token per character."""
    from types import SimpleNamespace

    from PIL import Image
    from transformers import AutoTokenizer

    from tsembed.inference.server.cost import TokenCounter
    from tsembed.inputs import EmbedInput

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    counter = TokenCounter(SimpleNamespace(backbone=SimpleNamespace(tokenizer=tokenizer, max_length=8)))
    assert counter.tokenizer is not tokenizer
    items = [EmbedInput(text="the"), EmbedInput(text="the " * 50), EmbedInput(image=Image.new("RGB", (4, 4)))]
    assert counter(items) == [len(tokenizer("the")["input_ids"]), 8, 8]
    assert counter([EmbedInput(text="x " * 100)]) == [8]  # past 8 × max_length characters: not tokenized
    plain = TokenCounter(SimpleNamespace(backbone=SimpleNamespace(max_length=16)))
    assert plain([EmbedInput(text="abc"), EmbedInput(text="x" * 100)]) == [3, 16]


def test_d4_a_turn_counts_the_characters_its_tokenizer_reads():
    """The model thread tokenizes the whole text however little of it is kept: 256 texts of 16k characters at 128
    tokens each still cost seconds of tokenizing, so for turns a long text weighs one token per 8 characters."""
    from tsembed.inference.server.cost import turn_costs
    from tsembed.inputs import EmbedInput

    items = [EmbedInput(text="x" * 16_000), EmbedInput(text="a short one"), EmbedInput(text="y" * 800)]
    assert turn_costs(items, [128, 3, 128]) == [2000, 3, 128]
