"""End-to-end smoke test of the main job on a tiny suite, and the ablation's aggregation."""

import json

import pytest

from tests.experiments.tiny_align import TINY_ALIGN_ARGS
from tsembed.cli import main
from tsembed.errors import ConfigError
from tsembed.experiments.ablation import (
    ENTROPY,
    NMI_DATASET,
    NMI_TASK,
    PAIR_AGREEMENT,
    differences_table,
    final_train_loss,
    markdown_table,
    mean_std,
    paired_differences,
    routing_columns,
    summarize,
)
from tsembed.experiments.variants import ablation_variants, pick, variants_for


def test_lora_baseline_has_the_moe_budget():
    variants = ablation_variants(num_experts=4, rank=8, modes=("weight", "mine"))
    assert "model.moe.rank=32" in variants["lora"].overrides and "model.moe.num_experts=1" in variants["lora"].overrides
    assert set(variants) == {"base", "lora", "moe", "moe_eans_no_stage1", "tsembed_weight", "tsembed_mine"}
    with pytest.raises(ConfigError, match="unknown variants"):
        pick(variants, ["lora", "nope"])


def test_a_weighting_without_routing_also_gets_a_lora_variant():
    variants = ablation_variants(num_experts=4, rank=8, modes=("weight", "hardness"))
    assert {"tsembed_hardness", "lora_hardness"} <= set(variants) and "lora_weight" not in variants
    lora = variants["lora_hardness"].overrides
    assert "model.moe.rank=32" in lora and lora[-1] == "eans.mode=hardness" and "eans.mode=off" not in lora
    with pytest.raises(ConfigError, match="unknown EANS mode"):
        ablation_variants(num_experts=4, rank=8, modes=("bogus",))


def _adapter_parameters(moe: dict) -> int:
    from torch import nn

    from tsembed.moe import MoELoRAConfig, attach

    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    attach(model, MoELoRAConfig(target_modules=[r"\d"], level="sequence", **moe))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("shared", [0, 1])
def test_lora_budget_counts_shared_experts(shared):
    moe = {"num_experts": 3, "rank": 8, "top_k": 1, "num_shared_experts": shared}
    lora = dict(moe)
    for override in variants_for({"model": {"moe": moe}})["lora"].overrides:
        key, value = override.split("=")
        if key.startswith("model.moe."):
            lora[key.removeprefix("model.moe.")] = int(value)
    moe_params, lora_params = _adapter_parameters(moe), _adapter_parameters(lora)
    routers = 2 * (3 - 1) * 64  # the only difference: the routers (E x d_in per layer; 1 x d_in for one expert)
    assert moe_params - lora_params == routers


def test_summary_mean_and_sample_std():
    records = [
        {"variant": "lora", "description": "d", "seed": s, "aggregates": {"overall": {"hit@1": v}}}
        for s, v in enumerate([0.40, 0.42, 0.44])
    ]
    table = summarize(records)
    assert table["lora"]["overall"]["mean"] == pytest.approx(42.0)
    assert table["lora"]["overall"]["std"] == pytest.approx(2.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert "| lora | – | – | – | – | – | – | 42.0 ± 2.0 | – | – | – | – | – |" in markdown_table(table)


def test_paired_differences_and_training_loss(tmp_path):
    def rec(variant, seed, overall):
        return {"variant": variant, "seed": seed, "aggregates": {"overall": {"hit@1": overall}},
                "datasets": {"A": {"hit@1": overall / 2}}}

    records = [rec("lora", 0, 0.30), rec("lora", 1, 0.20), rec("moe", 0, 0.33), rec("moe", 1, 0.21),
               rec("moe", 2, 0.50)]  # seed 2 has no baseline: left out
    diff = paired_differences(records)
    assert diff["moe"]["overall"]["values"] == pytest.approx([3.0, 1.0])
    assert diff["moe"]["overall"]["mean"] == pytest.approx(2.0) and "lora" not in diff
    assert "| moe | – | – | – | – | – | – | +2.0 ± 1.4 |" in differences_table(diff)
    per_dataset = paired_differences(records, key="datasets", groups=("A", "B"))
    assert per_dataset["moe"]["A"]["values"] == pytest.approx([1.5, 0.5]) and "B" not in per_dataset["moe"]
    assert "| moe | +1.0 ± 0.7 | – |" in differences_table(per_dataset, groups=("A", "B"))
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "contrastive": 4.0}, {"step": 2, "contrastive": 3.0, "infonce": 2.0},
            {"step": 3, "contrastive": 9.0, "infonce": 1.0}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert final_train_loss(metrics, window=2) == pytest.approx(1.5)  # the unweighted loss where logged
    assert final_train_loss(metrics, window=3) == pytest.approx(7 / 3)
    assert final_train_loss(tmp_path / "missing.jsonl") is None


def test_a_collapsed_run_is_marked_and_left_out_of_means_and_differences():
    def rec(variant, seed, overall, collapsed=False):
        return {"variant": variant, "description": "d", "seed": seed, "aggregates": {"overall": {"hit@1": overall}},
                "datasets": {"A": {"hit@1": overall}}, "collapsed": collapsed,
                "collapsed_datasets": ["A"] if collapsed else []}

    records = [rec("lora", 0, 0.30), rec("lora", 1, 0.02, collapsed=True), rec("lora", 2, 0.40),
               rec("moe", 0, 0.33), rec("moe", 1, 0.50), rec("moe", 2, 0.41)]
    table = summarize(records)
    assert table["lora"]["overall"]["values"] == pytest.approx([30.0, 40.0])  # not 24.0 with the collapsed 2.0
    assert table["lora"]["collapsed_runs"] == 1 and table["lora"]["collapsed_seeds"] == [1]
    assert table["lora"]["seeds"] == [0, 2] and table["moe"]["collapsed_runs"] == 0
    text = markdown_table(table)
    assert "| lora † (1/3 runs collapsed, left out) | – | – | – | – | – | – | 35.0 ± 7.1 |" in text
    assert "| moe | " in text and "† collapsed" in text
    diff = paired_differences(records)
    assert diff["moe"]["overall"]["values"] == pytest.approx([3.0, 1.0])  # seed 1's baseline collapsed
    assert "| variant − lora † |" in differences_table(diff, collapsed={"lora"})
    assert "†" not in markdown_table(summarize([r for r in records if not r["collapsed"]]))
    assert summarize([{**records[1], "collapsed": False, "collapsed_datasets": []}])["lora"]["collapsed_runs"] == 0


def test_the_demo_report_marks_a_collapsed_baseline_and_computes_no_difference(tmp_path):
    from tsembed.experiments.demo import render_report

    def rec(overall, collapsed):
        return {"aggregates": {"overall": {"hit@1": overall}}, "collapsed": collapsed,
                "collapsed_datasets": ["A"] if collapsed else []}

    report = render_report({"tsembed_weight": rec(0.4, False), "lora": rec(0.02, True)}, {}, tmp_path, True, 0, [], 1.0)
    assert "| single LoRA † |" in report and "| TSEmbed | " in report and "lora (A)" in report
    assert "| difference | – | – | – | – | – | – | – |" in report and "+38.0" not in report
    healthy = render_report({"tsembed_weight": rec(0.4, False), "lora": rec(0.02, False)}, {}, tmp_path, True, 0, [],
                            1.0)
    assert "+38.0" in healthy and "†" not in healthy


@pytest.mark.slow  # trains and evaluates two models on the real default backbone
def test_demo_end_to_end_on_a_tiny_suite(tmp_path, monkeypatch):
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path / "cache"))
    suite = tmp_path / "suite"
    assert main(["data", "build-suite", "--out", str(suite), "--max-train", "16", "--max-eval", "4",
                 "--pool-size", "8", "--no-progress"]) == 0
    args = ["demo", "--quick", "--suite", str(suite), "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "report"),
            "--set", "schedule.steps=2", "--set", "schedule.stage1_steps=1", "--set", "data.batch_size=4",
            "--set", "run.progress=false", "--set", "model.backbone.num_visual_tokens=4",
            "--set", "model.backbone.image_size=64", *TINY_ALIGN_ARGS]
    assert main(args) == 0
    report = (tmp_path / "report" / "README.md").read_text()
    assert "| TSEmbed |" in report and "| single LoRA |" in report
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert set(summary) == {"tsembed_weight", "lora", "collapsed_runs"} and "overall" in summary["lora"]
    assert list((tmp_path / "report" / "routing").glob("*.png"))
    assert (tmp_path / "report" / "training_tsembed_weight.png").is_file()
    lines = (tmp_path / "work" / "tsembed_weight" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(x) for x in lines if x]
    assert [m["stage"] for m in metrics] == [1, 2]
    # a rerun finds every result and re-trains nothing
    assert main(args) == 0
    # the ablation's routing column: measured once, kept on disk, none for the router-less baseline
    nmi = routing_columns(tmp_path / "work" / "tsembed_weight", suite, tmp_path / "work" / "eval-cache")
    assert set(nmi) == {NMI_TASK, NMI_DATASET, ENTROPY, PAIR_AGREEMENT} and all(0.0 <= v <= 1.0 for v in nmi.values())
    assert (tmp_path / "work" / "tsembed_weight" / "routing" / "routing.json").is_file()
    assert routing_columns(tmp_path / "work" / "lora", suite, None) == {}


def test_summary_only_trains_nothing_and_names_missing_runs(tmp_path, caplog):
    for seed, value in ((0, 0.30), (1, 0.20)):
        run = tmp_path / f"seed{seed}" / "lora"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({
            "variant": "lora", "description": "d", "seed": seed, "train_seconds": 1.0, "trainable_parameters": 5,
            "aggregates": {"overall": {"hit@1": value}}, "datasets": {}}))
    assert main(["ablate", "--summary-only", "--seeds", "0", "--seeds", "1", "--variant", "lora", "--variant", "moe",
                 "--out", str(tmp_path), "--suite", str(tmp_path / "no-suite")]) == 0
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert set(summary["variants"]) == {"lora"}
    assert summary["variants"]["lora"]["overall"]["mean"] == pytest.approx(25.0)
    assert not (tmp_path / "seed0" / "moe").exists() and not (tmp_path / "no-suite").exists()
    assert "moe seed 0: no" in caplog.text
    assert summary["unchecked_runs"] == 2 and summary["collapsed_runs"] == 0  # records from before the check
    assert "2 run(s) predate the collapse check" in (tmp_path / "ablation.md").read_text()


def test_summary_only_leaves_out_a_collapsed_run_and_says_so(tmp_path):
    for seed, value, collapsed in ((0, 0.30, False), (1, 0.02, True), (2, 0.40, False)):
        run = tmp_path / f"seed{seed}" / "lora"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({
            "variant": "lora", "description": "d", "seed": seed, "train_seconds": 1.0, "trainable_parameters": 5,
            "aggregates": {"overall": {"hit@1": value}}, "datasets": {"A": {"hit@1": value}},
            "query_cosine": {"A": 1.0 if collapsed else 0.4}, "collapsed": collapsed,
            "collapsed_datasets": ["A"] if collapsed else []}))
    assert main(["ablate", "--summary-only", "--seeds", "0", "--seeds", "1", "--seeds", "2", "--variant", "lora",
                 "--out", str(tmp_path), "--suite", str(tmp_path / "no-suite")]) == 0
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert summary["variants"]["lora"]["overall"]["mean"] == pytest.approx(35.0)  # 24.0 with the collapsed run
    assert summary["collapsed_runs"] == 1 and summary["collapsed"] == ["lora/seed1"] and summary["unchecked_runs"] == 0
    assert [r["collapsed"] for r in summary["per_seed"]] == [False, True, False]
    assert "| lora † (1/3 runs collapsed, left out) |" in (tmp_path / "ablation.md").read_text()


@pytest.mark.slow  # trains and evaluates on the real default backbone
def test_ablation_on_the_dev_split_then_eval_trains_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path / "cache"))
    suite = tmp_path / "suite"
    assert main(["data", "build-suite", "--out", str(suite), "--max-train", "16", "--max-eval", "4",
                 "--pool-size", "8", "--dev-fraction", "0.15", "--no-progress"]) == 0
    args = ["ablate", "--seeds", "0", "--variant", "lora", "--suite", str(suite), "--out", str(tmp_path / "abl"),
            "--set", "schedule.steps=2", "--set", "schedule.stage1_steps=1", "--set", "data.batch_size=4",
            "--set", "run.progress=false", "--set", "model.backbone.num_visual_tokens=4",
            "--set", "model.backbone.image_size=64", *TINY_ALIGN_ARGS]
    assert main([*args, "--eval-split", "dev"]) == 0
    run = tmp_path / "abl" / "seed0" / "lora"
    dev = json.loads((run / "results-dev.json").read_text())
    assert dev["split"] == "dev" and "OOD" not in dev["aggregates"] and not (run / "results.json").exists()
    assert json.loads((tmp_path / "abl" / "ablation-dev.json").read_text())["split"] == "dev"
    with caplog.at_level("INFO"):
        assert main(args) == 0  # the eval split reuses the model trained for dev
    assert "reusing the trained model" in caplog.text
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    record = json.loads((run / "results.json").read_text())
    assert record["split"] == "eval" and "OOD" in record["aggregates"] and record["train_seconds"] is None
    evaluation = json.loads((run / "eval" / "results.json").read_text())  # the evaluation's own file, its own schema
    assert "variant" not in evaluation and evaluation["aggregates"] == record["aggregates"]
    assert main(["eval", "--model", str(run / "model"), "--suite", str(suite), "--split", "dev", "--no-progress",
                 "--out", str(tmp_path / "ev")]) == 0
    assert "on the dev split" in (tmp_path / "ev" / "results.md").read_text()
