"""FAISS indexes: build, save/load, search with metadata; `tsembed index build` and `tsembed search`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tsembed.cli import main
from tsembed.errors import ConfigError, DataError
from tsembed.inference.index import IndexConfig, VectorIndex

pytest.importorskip("faiss")


def _vectors(n=600, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, d))
    x = centres[rng.integers(0, 12, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_build_save_load_search(tmp_path, kind):
    x = _vectors()
    meta = pa.table({"id": [f"v{i}" for i in range(len(x))], "text": [f"text {i}" for i in range(len(x))]})
    index = VectorIndex.build(x, meta, IndexConfig(kind=kind, nprobe=64), {"model": "m"})
    index.save(tmp_path / "idx")
    loaded = VectorIndex.load(tmp_path / "idx")
    assert loaded.info["kind"] == kind and loaded.info["count"] == 600 and loaded.info["model"] == "m"
    hits = loaded.search(x[:20], k=5)
    assert all(len(h) == 5 for h in hits)
    top = [h[0].position for h in hits]
    assert sum(t == i for i, t in enumerate(top)) >= (20 if kind != "ivfpq" else 15)
    assert hits[3][0].meta == {"id": "v3", "text": "text 3"} or kind == "ivfpq"
    assert hits[0][0].score >= hits[0][1].score


def test_ivfpq_needs_enough_vectors():
    x = _vectors(n=100)
    with pytest.raises(ConfigError, match="at least 256 vectors"):
        VectorIndex.build(x, pa.table({"id": list(range(100))}), IndexConfig(kind="ivfpq"), {})


def test_bad_kind_and_dimension():
    with pytest.raises(ConfigError, match="one of"):
        IndexConfig(kind="annoy")
    index = VectorIndex.build(_vectors(n=10), pa.table({"id": list(range(10))}), IndexConfig(), {})
    with pytest.raises(DataError, match="dimension"):
        index.search(np.zeros((1, 8), dtype=np.float32))


def test_cli_embed_index_search(model_dir, tmp_path, capsys):
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(["red apple", "green tree", "blue car", "red car"])]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    emb, idx = tmp_path / "emb.parquet", tmp_path / "idx"
    assert main(["embed", "-m", str(model_dir), "-i", str(path), "-o", str(emb), "--no-progress"]) == 0
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(idx), "--kind", "hnsw"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(idx), "--query", "red apple", "-k", "2", "--role", "document",
                 "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 2 and hits[0]["meta"]["id"] == "d0" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert main(["search", "--index", str(idx)]) == 1  # neither --query nor --image
