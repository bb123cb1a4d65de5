"""Task scaling: nested task sets, relative hit@1 against specialists, and a tiny end-to-end grid."""

import json

import pytest

from tests.experiments.tiny_align import TINY_ALIGN_ARGS
from tsembed.cli import main
from tsembed.errors import ConfigError
from tsembed.experiments.scaling import Budget, drop_from_first_to_last, nested_sizes, relative_table, task_order


def test_sizes_orders_and_budget():
    assert nested_sizes(6) == [1, 2, 4, 6] and nested_sizes(4) == [1, 2, 4] and nested_sizes(1) == [1]
    tasks = ["a", "b", "c", "d"]
    assert sorted(task_order(tasks, 0)) == tasks and task_order(tasks, 0) == task_order(list(reversed(tasks)), 0)
    assert any(task_order(tasks, s) != task_order(tasks, 0) for s in range(1, 5))
    assert Budget(50, 150).overrides(["a", "b", "c", "d"]) == [
        "data.datasets=[a,b,c,d]", "schedule.steps=200", "schedule.stage1_steps=100"]
    assert Budget(50, 150).overrides(["a"])[1] == "schedule.steps=150"
    with pytest.raises(ConfigError):
        Budget(0, 10)


def test_relative_hit1_by_hand():
    def rec(variant, seed, size, tasks, hits):
        return {"variant": variant, "seed": seed, "size": size, "tasks": tasks,
                "datasets": {t: {"hit@1": h} for t, h in hits.items()}}

    specialists = {(0, "a"): 80.0, (0, "b"): 40.0, (1, "a"): 50.0, (1, "b"): 0.0}
    records = [rec("lora", 0, 1, ["a"], {"a": 0.8}), rec("lora", 0, 2, ["a", "b"], {"a": 0.4, "b": 0.4}),
               rec("lora", 1, 1, ["a"], {"a": 0.5}), rec("lora", 1, 2, ["a", "b"], {"a": 0.25, "b": 0.3})]
    table = relative_table(records, specialists)
    # seed 0, two tasks: (0.5 + 1.0) / 2; seed 1: b's specialist scored 0, so only a counts: 0.5
    assert table["lora"]["2"]["values"] == pytest.approx([0.75, 0.5])
    assert table["lora"]["2"]["mean"] == pytest.approx(0.625) and table["lora"]["1"]["mean"] == pytest.approx(1.0)
    assert drop_from_first_to_last(table) == {"lora": pytest.approx(0.375)}


def test_collapsed_runs_are_left_out_of_the_relative_hit1_and_marked():
    from tsembed.experiments.scaling import markdown

    def rec(seed, hit, collapsed=False):
        return {"variant": "moe", "seed": seed, "size": 1, "tasks": ["a"], "datasets": {"a": {"hit@1": hit}},
                "collapsed": collapsed}

    specialists = {(0, "a"): 50.0, (1, "a"): 50.0, (2, "a"): None}  # seed 2's specialist collapsed
    table = relative_table([rec(0, 0.5), rec(1, 0.01, collapsed=True), rec(2, 0.4)], specialists)
    cell = table["moe"]["1"]
    assert cell["values"] == pytest.approx([1.0]) and cell["collapsed_runs"] == 1  # not (1.0 + 0.02) / 2
    text = markdown(table, drop_from_first_to_last(table))
    assert "| moe | 1.00 ± 0.00 † |" in text and "† collapsed" in text
    assert "†" not in markdown(relative_table([rec(0, 0.5)], specialists), {})


@pytest.mark.slow  # trains and evaluates several models on the real default backbone
def test_task_scaling_end_to_end_and_resumes(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path / "cache"))
    suite = tmp_path / "suite"
    assert main(["data", "build-suite", "--kind", "conflict", "--out", str(suite), "--max-train", "8",
                 "--max-eval", "3", "--pool-size", "6", "--no-progress", "--dataset", "TintSameEmoji",
                 "--dataset", "TintSameColour"]) == 0
    args = ["task-scaling", "--suite", str(suite), "--out", str(tmp_path / "ts"), "--variant", "lora",
            "--variant", "tsembed_weight", "--steps-per-task", "1", "--min-steps", "2",
            "--set", "data.batch_size=4", "--set", "run.progress=false", "--set", "model.backbone.num_visual_tokens=4",
            "--set", "model.backbone.image_size=64", *TINY_ALIGN_ARGS]
    assert main(args) == 0
    summary = json.loads((tmp_path / "ts" / "task-scaling.json").read_text())
    assert summary["sizes"] == [1, 2] and set(summary["relative_hit1"]) == {"lora", "tsembed_weight"}
    assert len(summary["specialists"]) == 2 and (tmp_path / "ts" / "task-scaling.png").is_file()
    assert {(r["variant"], r["size"]) for r in summary["runs"]} == {
        ("lora", 1), ("lora", 2), ("tsembed_weight", 1), ("tsembed_weight", 2)}
    config = json.loads((tmp_path / "ts" / "seed0" / "tasks2" / "tsembed_weight" / "config.json").read_text())
    assert sorted(config["data"]["datasets"]) == ["TintSameColour", "TintSameEmoji"]
    assert not (tmp_path / "ts" / "seed0" / "tasks1" / "lora").exists()  # the first task's specialist serves
    with caplog.at_level("INFO"):
        assert main(args) == 0  # everything is found on disk
    assert "results exist, skipping" in caplog.text and "saved model" not in caplog.text


def test_conflict_summary_pairs_seeds_and_conditions(tmp_path):
    from tsembed.experiments.conflict_summary import conflict_summary

    def rec(variant, seed, overall, tone, tone_ood):
        return {"variant": variant, "seed": seed, "aggregates": {"overall": {"hit@1": overall}},
                "datasets": {"ToneSameTone": {"hit@1": tone}, "TextToneSameTone": {"hit@1": tone_ood}}}

    ablation = {"split": "eval", "environment": {"commit": "abc"}, "per_seed": [
        rec("lora", 0, 0.30, 0.10, 0.0), rec("tsembed_weight", 0, 0.35, 0.20, 0.1),
        rec("lora", 1, 0.40, 0.10, 0.0), rec("tsembed_weight", 1, 0.41, 0.30, 0.1),
        rec("lora", 2, 0.50, 0.10, 0.0)]}  # seed 2 has no TSEmbed run: left out of the pairs
    out = conflict_summary(ablation, {"pair_cosine_min": -0.44, "pairs": {"x": -0.44}}, "tsembed_weight", "lora")
    assert out["seeds"] == [0, 1] and out["commit"] == "abc" and out["conflict_cosine_min"] == -0.44
    assert out["paired_diff_overall"]["mean"] == pytest.approx(3.0)
    assert out["lora_overall"]["mean"] == pytest.approx(35.0)
    assert out["per_condition_diff"] == {"tone": pytest.approx(15.0)}  # IND datasets only (no OOD TextToneSameTone)
    assert out["per_dataset_diff"]["TextToneSameTone"]["mean"] == pytest.approx(10.0)
    with pytest.raises(ConfigError, match="no seed with both"):
        conflict_summary(ablation, None, "moe", "lora")
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps(ablation))
    assert main(["conflict-summary", "--ablation", str(path), "--out", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["seeds"] == [0, 1]
    assert out["collapsed_runs"] == 0 and out["collapsed"] == []
    assert out["unchecked_runs"] == 4  # these records predate the check: counted, not taken as healthy


def test_conflict_summary_leaves_out_a_seed_whose_baseline_collapsed():
    from tsembed.experiments.conflict_summary import conflict_summary

    def rec(variant, seed, overall, collapsed=False):
        return {"variant": variant, "seed": seed, "aggregates": {"overall": {"hit@1": overall}},
                "datasets": {"ToneSameTone": {"hit@1": overall}}, "collapsed": collapsed}

    ablation = {"split": "eval", "per_seed": [
        rec("lora", 0, 0.30), rec("tsembed_weight", 0, 0.35),
        rec("lora", 1, 0.05, collapsed=True), rec("tsembed_weight", 1, 0.41),  # +36 against a collapsed baseline
        rec("lora", 2, 0.40), rec("tsembed_weight", 2, 0.41)]}
    out = conflict_summary(ablation, None, "tsembed_weight", "lora")
    assert out["seeds"] == [0, 2] and out["collapsed_runs"] == 1 and out["collapsed"] == ["lora/seed1"]
    assert isinstance(out["collapsed_runs"], int) and out["unchecked_runs"] == 0
    assert out["paired_diff_overall"]["mean"] == pytest.approx(3.0) and out["lora_overall"]["mean"] == 35.0
    only_collapsed = {"per_seed": [rec("lora", 1, 0.05, collapsed=True), rec("tsembed_weight", 1, 0.41)]}
    with pytest.raises(ConfigError, match="collapsed run"):
        conflict_summary(only_collapsed, None, "tsembed_weight", "lora")
