"""`tsembed.cli.main`: errors are one line (exit 2 for usage, 1 for runtime), `-v` adds the traceback."""

import json

import pytest

from tsembed.cli import main


@pytest.mark.parametrize(("argv", "expected"), [
    (["nope"], "No such command 'nope'"),
    (["--bogus"], "No such option: --bogus"),
    (["train", "--bogus"], "No such option: --bogus"),
    (["eval", "-m", "/no/such/model", "-s", "/no/such/suite"], "'/no/such/model' does not exist"),
])
def test_usage_errors_are_one_line_with_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1


def test_config_errors_are_one_line_with_exit_1_naming_the_key(capsys):
    assert main(["train", "--set", "optim.grad_clip=-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "optim.grad_clip" in err and err.count("\n") == 1


def test_verbose_adds_the_traceback(capsys):
    assert main(["-v", "nope"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_help_keeps_bracketed_text(capsys):
    assert main(["serve", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # help wraps at the terminal width
    assert "[default: folder name]" in out and "TSEMBED_API_KEY environment variable" in out


def test_build_train_eval_end_to_end_on_a_tiny_suite(tiny_bert_dir, tmp_path, monkeypatch):
    """The fast suite's smoke test of the whole command line (the real-encoder demo and ablation runs are slow)."""
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path / "cache"))
    suite, run = tmp_path / "suite", tmp_path / "run"
    assert main(["data", "build-suite", "--out", str(suite), "--max-train", "8", "--max-eval", "3",
                 "--pool-size", "4", "--no-progress", "--dataset", "EmojiGroup", "--dataset", "EmojiGroupGray"]) == 0
    assert main(["train", "--set", f"data.suite={suite}", "--set", f"run.output_dir={run}",
                 "--set", f"model.backbone.text_model={tiny_bert_dir}", "--set", "model.backbone.image_size=64",
                 "--set", "model.backbone.num_visual_tokens=4", "--set", "data.batch_size=4",
                 "--set", "schedule.steps=2", "--set", "schedule.stage1_steps=1", "--set", "run.progress=false",
                 "--set", "run.tensorboard=false"]) == 0
    stages = [json.loads(line)["stage"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert stages == [1, 2]
    assert main(["eval", "--model", str(run / "model"), "--suite", str(suite), "--out", str(tmp_path / "eval"),
                 "--no-progress"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {"IND", "OOD", "overall"} <= set(results["aggregates"])
