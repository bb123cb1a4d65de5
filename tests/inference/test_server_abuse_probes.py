"""Every hostile case of ``benchmarks/abuse.py``, in-process on the toy model: each is refused with a 4xx in its
route's error shape (the benchmark sends them to a subprocess server under load; this keeps the set honest on
every test run)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from tests.benchmark_scripts import benchmark_module
from tsembed.inference.server import ServerSettings, create_app


@pytest.fixture(scope="module")
def abuse() -> Iterator[ModuleType]:
    with benchmark_module("abuse") as module:
        yield module


def test_every_hostile_case_is_refused_in_its_routes_shape(model, abuse):
    app = create_app(model, ServerSettings(model_name="toy", api_key=abuse.API_KEY))
    probes = abuse.hostile_probes()
    assert {p.path for p in probes} == {"/v1/embeddings", "/embed", "/info", "/metrics"}
    refused = {}
    with TestClient(app, headers={"Authorization": f"Bearer {abuse.API_KEY}"}) as client:
        for probe in probes:
            if probe.body is None:
                r = client.get(probe.path, headers=probe.headers)
            elif isinstance(probe.body, bytes):
                r = client.post(probe.path, content=probe.body, headers=probe.headers)
            else:
                r = client.post(probe.path, json=probe.body, headers=probe.headers)
            assert 400 <= r.status_code < 500, f"{probe.name}: {r.status_code} {r.text[:300]}"
            assert abuse.error_shape_ok(probe, r), f"{probe.name}: {r.text[:300]}"
            refused[probe.name] = r.status_code
        assert client.post("/embed", json={"inputs": "still serving"}).status_code == 200
    assert refused["info-without-key"] == refused["tei-without-key"] == 401
    assert refused["dimensions-true"] == refused["dimensions-string"] == 400
