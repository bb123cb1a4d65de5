"""`tsembed eval` and `tsembed inspect-routing` end to end through `tsembed.cli.main`."""

import json

import pytest

from tests.toy_backbone import ToyBackbone
from tsembed.backbones import BACKBONES
from tsembed.cli import main

from .helpers import toy_model, write_jsonl, write_toy_suite


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A saved toy model with adapters, a base model, and a suite; the toy backbone registered."""
    monkeypatch.setitem(BACKBONES, ToyBackbone.kind, ToyBackbone)
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path / "cache"))
    toy_model().save_pretrained(tmp_path / "model")
    toy_model(adapters=False).save_pretrained(tmp_path / "base")
    return tmp_path, write_toy_suite(tmp_path / "suite")


def test_eval_and_inspect_routing(saved, capsys):
    tmp, suite = saved
    args = [
        "eval",
        "--model",
        str(tmp / "model"),
        "--suite",
        str(suite),
        "--out",
        str(tmp / "eval"),
        "--global-pool",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    assert main(args) == 0
    results = json.loads((tmp / "eval" / "results.json").read_text())
    assert len(results["datasets"]) == 4 and results["timing"]["encoded"] > 0
    assert "global_recall@10" in results["datasets"][0]["metrics"]
    assert "| overall |" in (tmp / "eval" / "results.md").read_text()
    assert "| overall |" in capsys.readouterr().out
    assert list((tmp / "cache" / "embeddings").iterdir())  # the default cache is under $TSEMBED_CACHE_DIR

    assert main(args) == 0  # second run: everything from the cache
    assert json.loads((tmp / "eval" / "results.json").read_text())["timing"]["encoded"] == 0

    out = tmp / "routing"
    assert (
        main(
            [
                "inspect-routing",
                "--model",
                str(tmp / "model"),
                "--suite",
                str(suite),
                "--out",
                str(out),
                "--layers",
                "0,-1",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "NMI(dataset, top-1 expert)" in printed and "query and positive share the top-1 expert" in printed
    assert len(list(out.glob("*.png"))) == 4 and (out / "routing.json").is_file()


def test_base_model_cli(saved, capsys):
    tmp, suite = saved
    assert (
        main(
            [
                "eval",
                "-m",
                str(tmp / "base"),
                "-s",
                str(suite),
                "-o",
                str(tmp / "eval"),
                "-d",
                "ColorCls",
                "--no-cache",
                "--no-progress",
            ]
        )
        == 0
    )
    assert [d["name"] for d in json.loads((tmp / "eval" / "results.json").read_text())["datasets"]] == ["ColorCls"]
    assert (
        main(["inspect-routing", "-m", str(tmp / "base"), "-s", str(suite), "-o", str(tmp / "r"), "--no-progress"]) == 0
    )
    assert "nothing to analyse" in capsys.readouterr().out


def test_malformed_file_fails_with_a_clear_error(saved, capsys):
    tmp, _ = saved
    row = {"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b"], "tgt_img_path": ["", ""]}
    bad = write_jsonl(tmp / "Bad.jsonl", [row, {**row, "pos_index": 1}])
    assert main(["eval", "-m", str(tmp / "model"), "-s", str(bad), "-o", str(tmp / "eval"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "Bad.jsonl row 2" in err and "pos_index" in err


def test_truncated_weights_and_a_missing_suite_file_are_one_line_naming_the_file(saved, capsys):
    tmp, suite = saved
    weights = tmp / "model" / "adapters" / "moe_lora.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["eval", "-m", str(tmp / "model"), "-s", str(suite), "-o", str(tmp / "e"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{weights}: sha256" in err and "truncated" in err  # its checksum tells

    missing = next((suite / "eval").iterdir())
    missing.unlink()
    assert main(["eval", "-m", str(tmp / "base"), "-s", str(suite), "-o", str(tmp / "e"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and missing.name in err and "Traceback" not in err


def test_empty_eval_file_exits_non_zero_with_a_clear_message(saved, capsys):
    tmp, _ = saved
    empty = tmp / "Empty.jsonl"
    empty.write_text("")
    assert main(["eval", "-m", str(tmp / "model"), "-s", str(empty), "-o", str(tmp / "eval"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no eval rows" in err and "Empty.jsonl" in err
    assert not (tmp / "eval" / "results.json").exists()


def test_cuda_device_on_a_cpu_build_is_one_clear_line(saved, capsys, monkeypatch):
    import torch

    tmp, suite = saved
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["eval", "-m", str(tmp / "model"), "-s", str(suite), "--device", "cuda", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "use --device cpu" in err and "AssertionError" not in err
