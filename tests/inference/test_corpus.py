"""`tsembed embed`: output, resume, rank sharding, and bad rows named by file/row/field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tsembed.cli import main
from tsembed.errors import ConfigError, DataError, TsembedError
from tsembed.inference import corpus as corpus_mod
from tsembed.inference import encode_document
from tsembed.inference.corpus import CorpusFields, EmbedJobConfig, read_corpus, run_embed_job, shard_path
from tsembed.inference.vectors import read_embeddings

from .conftest import make_image


def _rows(tmp_path, n=7):
    make_image(tmp_path / "img" / "red.png", (250, 10, 10))
    rows = [{"id": f"doc{i}", "text": f"document number {i} about things", "lang": "en"} for i in range(n)]
    rows[2] = {"id": "doc2", "image": "img/red.png", "lang": "xx"}
    rows[3] = {"id": "doc3", "text": "a red square", "image": "img/red.png"}
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows



def _count_embed_calls(monkeypatch) -> list[int]:
    """Spy on the corpus embedder: the returned list gets the item count of every call."""
    calls: list[int] = []
    real = corpus_mod.embed_items
    monkeypatch.setattr(corpus_mod, "embed_items", lambda m, items, *a, **k: calls.append(len(items)) or real(
        m, items, *a, **k))
    return calls

def test_cli_embed_writes_parquet_with_metadata(model_dir, model, tmp_path):
    path, rows = _rows(tmp_path)
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--model", str(model_dir), "--input", str(path), "--out", str(out), "--shard-size", "3",
                 "--batch-size", "2", "--no-progress"]) == 0
    vectors, meta, info = read_embeddings(out)
    assert vectors.shape == (7, 32)
    assert meta.column("id").to_pylist() == [r["id"] for r in rows]
    assert meta.column("lang").to_pylist()[:3] == ["en", "en", "xx"]
    assert info["model"] == str(model_dir.resolve()) and info["instruction"] == "passage:"
    expected = encode_document(model, [{"text": r.get("text"), "image": tmp_path / r["image"]} if "image" in r
                                       else r["text"] for r in rows], show_progress_bar=False)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert not (tmp_path / "emb.parquet.shards").exists()


def test_resume_skips_finished_shards(model, tmp_path, monkeypatch):
    path, _ = _rows(tmp_path)
    cfg = EmbedJobConfig(input=path, out=tmp_path / "o.parquet", shard_size=2, keep_shards=True, show_progress=False)
    run_embed_job(model, cfg)
    first = read_embeddings(cfg.out)[0]
    shard_path(cfg, 1).unlink()
    cfg.out.unlink()
    calls = _count_embed_calls(monkeypatch)
    run_embed_job(model, cfg)
    assert calls == [2]  # only the missing shard ran again
    np.testing.assert_allclose(read_embeddings(cfg.out)[0], first)


def test_shards_of_another_run_are_refused(model, tmp_path):
    path, _ = _rows(tmp_path)
    cfg = EmbedJobConfig(input=path, out=tmp_path / "o.parquet", shard_size=2, keep_shards=True, show_progress=False)
    run_embed_job(model, cfg)
    other = EmbedJobConfig(input=path, out=cfg.out, shard_size=3, show_progress=False)
    with pytest.raises(ConfigError, match="another run"):
        run_embed_job(model, other)


def _embed_cli(model_dir, path, out, *extra):
    return main(["embed", "--model", str(model_dir), "--input", str(path), "--out", str(out), "--shard-size", "2",
                 "--keep-shards", "--no-progress", *extra])


def test_a_changed_model_is_refused_or_restarted(model, tmp_path, capsys):
    path, _ = _rows(tmp_path)
    model_dir = model.save_pretrained(tmp_path / "model")
    out = tmp_path / "o.parquet"
    assert _embed_cli(model_dir, path, out) == 0
    first = read_embeddings(out)[0]
    assert len(read_embeddings(out)[2]["model_sha256"]) == 64
    with torch.no_grad():  # same path, other weights: e.g. a newer checkpoint copied over the old one
        model.backbone.proj.weight.mul_(-1)
    model.save_pretrained(model_dir)
    assert _embed_cli(model_dir, path, out) == 1
    err = capsys.readouterr().err
    assert "holds shards embedded by another model (weights sha256" in err and "--restart" in err
    assert _embed_cli(model_dir, path, out, "--restart") == 0
    assert not np.allclose(read_embeddings(out)[0], first, atol=1e-3)
    np.testing.assert_allclose(read_embeddings(out)[0], encode_document(model, read_corpus(path).inputs,
                                                                        show_progress_bar=False), atol=1e-5)


@pytest.mark.parametrize("damage", ["truncate", "garble", "nan", "no checksum"])
def test_damaged_shards_are_embedded_again_never_merged(model, tmp_path, monkeypatch, damage):
    path, _ = _rows(tmp_path)
    cfg = EmbedJobConfig(input=path, out=tmp_path / "o.parquet", shard_size=2, keep_shards=True, show_progress=False)
    run_embed_job(model, cfg)
    good = read_embeddings(cfg.out)[0]
    shard = shard_path(cfg, 1)
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-40])
    elif damage == "garble":  # same size, still a valid .npy: only the checksum can tell
        vectors = np.load(shard)
        vectors[0, :4] = 0.5
        np.save(shard, vectors)
    elif damage == "nan":
        vectors = np.load(shard)
        vectors[:] = np.nan
        np.save(shard, vectors)
    else:
        shard.with_name(shard.name + ".sha256").unlink()
    calls = _count_embed_calls(monkeypatch)
    run_embed_job(model, cfg)
    assert calls == [2]  # only the damaged shard ran again
    np.testing.assert_allclose(read_embeddings(cfg.out)[0], good, atol=1e-6)
    calls.clear()
    np.save(shard, np.full((2, 32), np.nan, dtype=np.float32))  # damaged after this rank's pass: the merge re-embeds
    corpus_mod.merge_shards(cfg, read_corpus(path), model)
    assert calls == [2] and np.isfinite(read_embeddings(cfg.out)[0]).all()


def test_a_model_that_produces_nan_writes_no_shard(model, tmp_path, monkeypatch):
    path, _ = _rows(tmp_path)
    cfg = EmbedJobConfig(input=path, out=tmp_path / "o.parquet", shard_size=2, show_progress=False)
    real = corpus_mod.embed_items

    def nan_on_doc5(m, items, *a, **k):
        out = real(m, items, *a, **k)
        out.embeddings[[i for i, x in enumerate(items) if "number 5" in (x.text or "")]] = float("nan")
        return out

    monkeypatch.setattr(corpus_mod, "embed_items", nan_on_doc5)
    with pytest.raises(TsembedError, match=r"NaN/Inf embeddings for rows with ids \['doc5'\]"):
        run_embed_job(model, cfg)
    assert not shard_path(cfg, 2).exists() and not cfg.out.exists()


def test_two_ranks_split_the_shards(model, tmp_path):
    path, _ = _rows(tmp_path)
    whole = EmbedJobConfig(input=path, out=tmp_path / "whole.parquet", shard_size=2, show_progress=False)
    run_embed_job(model, whole)
    ranks = [EmbedJobConfig(input=path, out=tmp_path / "r.parquet", shard_size=2, rank=r, world_size=2,
                            show_progress=False) for r in (0, 1)]
    rows = read_corpus(path)
    corpus_mod.embed_shards(model, ranks[0], rows)
    assert sorted(p.name for p in ranks[0].shard_dir.glob("shard-*.npy")) == ["shard-00000.npy", "shard-00002.npy"]
    with pytest.raises(DataError, match="missing"):
        corpus_mod.merge_shards(ranks[0], rows)
    assert run_embed_job(model, ranks[1]) is None  # rank 1 embeds its shards and leaves the merge to rank 0
    assert run_embed_job(model, ranks[0]) == ranks[0].out
    np.testing.assert_allclose(read_embeddings(ranks[0].out)[0], read_embeddings(whole.out)[0], atol=1e-6)


@pytest.mark.parametrize(
    "line, field, message",
    [('{"id": "a", "text": 5}', "`text` 5", "must be a string"),
     ('{"id": "a", "image": "img/missing.png"}', "`image` 'img/missing.png'", "not found"),
     ('{"id": "a", "text": ""}', "`text` ''", "is empty"),
     ('{"id": "doc0", "text": "dup"}', "`id` 'doc0'", "repeats the id"),
     ('{"id": "a", "text": "x", "embedding": [1]}', "`embedding`", "reserved"),
     ('{"id": "a", "text": "bad \\ud800 text"}', "`text` 'bad \\ud800 text'", "lone surrogate U+D800"),
     ("not json", "", "invalid JSON")],
)
def test_bad_rows_name_file_row_field(tmp_path, line, field, message):
    path, _ = _rows(tmp_path, n=4)
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DataError) as info:
        read_corpus(path, fields=CorpusFields())
    text = str(info.value)
    assert f"{path} row 5: {field}" in text and message in text


def test_cli_reports_bad_rows_without_traceback(model_dir, tmp_path, capsys):
    path, _ = _rows(tmp_path, n=4)
    path.write_text(path.read_text() + '{"text": 1}\n')
    assert main(["embed", "--model", str(model_dir), "--input", str(path), "--out", str(tmp_path / "o.parquet"),
                 "--no-progress"]) == 1
    assert "row 5: `text` 1 must be a string" in capsys.readouterr().err


def _rank_worker(rank: int, world: int, port: int, model_dir: str, rows: str, out: str) -> None:
    import os

    import torch

    from tsembed.backbones import BACKBONES

    from .conftest import ImageToyBackbone

    torch.set_num_threads(1)
    BACKBONES[ImageToyBackbone.kind] = ImageToyBackbone
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    code = main(["embed", "--model", model_dir, "--input", rows, "--out", out, "--shard-size", "2", "--no-progress",
                 "--device", "cpu"])
    if code != 0:
        raise SystemExit(code)


@pytest.mark.slow  # starts two processes
def test_two_gloo_processes_like_torchrun(model_dir, model, tmp_path):
    import torch.multiprocessing as mp

    from tsembed.inference.server.run import free_port

    path, _ = _rows(tmp_path)
    out = tmp_path / "dist.parquet"
    mp.start_processes(_rank_worker, args=(2, free_port(), str(model_dir), str(path), str(out)), nprocs=2,
                       start_method="spawn")
    single = EmbedJobConfig(input=path, out=tmp_path / "single.parquet", show_progress=False,
                            instruction="passage:")
    run_embed_job(model, single)
    np.testing.assert_allclose(read_embeddings(out)[0], read_embeddings(single.out)[0], atol=1e-5)
    assert not (tmp_path / "dist.parquet.shards").exists()


def test_task_for_a_model_without_task_hints_is_refused(model_dir, tmp_path, capsys):
    path, _ = _rows(tmp_path)
    assert _embed_cli(model_dir, path, tmp_path / "o.parquet", "--task", "retrieval") == 1
    assert "trained without task hints" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_d15_a_truncated_image_is_caught_before_the_job_starts(model_dir, tmp_path, capsys, monkeypatch, fmt):
    """Issue 24, D15: the pre-check only decoded image headers, so a file cut short failed the shard that decoded
    it, mid-job. Now it is read (PNG chunks verified, a JPEG's end marker looked for) before any embedding."""
    from PIL import Image

    path, _ = _rows(tmp_path, n=4)
    image = tmp_path / "img" / f"cut.{fmt.lower()}"
    Image.effect_noise((64, 64), 60).convert("RGB").save(image, format=fmt)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) * 2 // 3])
    path.write_text(path.read_text() + json.dumps({"id": "cut", "image": f"img/{image.name}"}) + "\n")
    with pytest.raises(DataError, match=rf"row 5: `image` 'img/cut\.{fmt.lower()}' .*(truncated|Truncated)"):
        read_corpus(path)
    calls = _count_embed_calls(monkeypatch)
    assert main(["embed", "--model", str(model_dir), "--input", str(path), "--out", str(tmp_path / "o.parquet"),
                 "--no-progress"]) == 1
    assert calls == [] and "row 5" in capsys.readouterr().err
    image.write_bytes(data)  # whole again: the corpus reads
    assert len(read_corpus(path).inputs) == 5
    image.write_bytes(data + b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 20_000)  # data after the image (a motion
    assert len(read_corpus(path).inputs) == 5  # photo's video): still whole, as a decode shows
