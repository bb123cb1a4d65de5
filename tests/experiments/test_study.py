"""`tsembed study`: the spec's checks, resumable runs (fake runner), the selection rule and the summary."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.experiments.tiny_align import TINY_ALIGN
from tsembed.cli import main
from tsembed.errors import ConfigError, DataError
from tsembed.evaluation.hits import DatasetHits, write_hits
from tsembed.experiments.study.run import STATE, execute, plan_stage, variants
from tsembed.experiments.study.selection import select
from tsembed.experiments.study.spec import SelectionSpec, load_study
from tsembed.experiments.study.summary import summarize_study, with_clusters

REPO = Path(__file__).resolve().parents[2]
PAIRS = {"shape-vs-colour": ["TintSameEmoji", "TintSameColour"]}
ROWS = 40
#: variant -> hit rate per dataset (the fake runner's truth): cand_b is best overall but drops colour
RATES = {"lora": {"TintSameEmoji": 0.5, "TintSameColour": 0.5},
         "cand_a": {"TintSameEmoji": 0.6, "TintSameColour": 0.52},
         "cand_b": {"TintSameEmoji": 0.95, "TintSameColour": 0.3}}


#: base config and suite of the end-to-end studies: 2 steps on the real default backbone, a tiny suite with dev
TINY_E2E = {
    "base": {"config": None, "set": {
        "schedule.steps": 2, "schedule.stage1_steps": 1, "data.batch_size": 4,
        "model.backbone.num_visual_tokens": 4, "model.backbone.image_size": 64, **TINY_ALIGN}},
    "suites": {"tiny": {"path": "suite", "build": ["--max-train", 16, "--max-eval", 4, "--pool-size", 8,
                                                    "--dev-fraction", 0.15]}},
}


def study_dict(**changes) -> dict:
    data = {
        "name": "toy", "description": "a toy study",
        "base": {"config": None, "set": {"schedule.steps": 2, "schedule.stage1_steps": 1}},
        "suites": {"s0": {"path": "suite0", "build": ["--kind", "conflict"], "clusters": "row",
                          "family": "conflict"},
                   "s1": {"path": "suite1", "family": "conflict"}},
        "variants": {"cand_a": {"from": "lora", "set": {"model.moe.rank": 16}, "description": "A"},
                     "cand_b": {"from": "cand_a", "set": {"model.moe.router_input": "text"}}},
        "stages": [{"name": "dev", "split": "dev", "suites": ["s0"], "variants": ["lora", "cand_a", "cand_b"],
                    "seeds": [0, 1]},
                   {"name": "final", "split": "eval", "suites": ["s0", "s1"], "variants": ["lora"], "selected": True,
                    "seeds": [0, 1]}],
        "selection": {"stage": "dev", "candidates": ["cand_a", "cand_b"], "reference": "lora", "metric": "overall",
                      "max_drop": 1.0, "rule": "best dev overall, no condition 1 point below lora",
                      "fallback": "lora"},
        "compare": [{"a": "lora", "b": "selected", "stage": "final"}],
        "bootstrap": {"resamples": 200, "seed": 0},
    }
    data.update(changes)
    return data


def write_study(root: Path, data: dict, name: str = "toy.study.yaml") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for suite in data.get("suites", {}).values():
        if isinstance(suite, dict) and "path" in suite:
            (root / suite["path"]).mkdir(parents=True, exist_ok=True)
            (root / suite["path"] / "suite.json").write_text(json.dumps({"pairs": PAIRS}))
    path = root / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fake_runner(calls: list):
    def run(task, base):
        calls.append((task.variant.name, task.suite, task.seed, task.split, task.variant.overrides))
        name = task.variant.name
        rng = np.random.default_rng([task.seed, int(task.suite[-1]), len(name)])
        hits = {d: DatasetHits((rng.random(ROWS) < p).astype(int)) for d, p in RATES.get(name, RATES["lora"]).items()}
        datasets = {d: {"hit@1": float(h.hits.mean())} for d, h in hits.items()}
        overall = float(np.mean([m["hit@1"] for m in datasets.values()]))
        record = {"variant": name, "description": task.variant.description, "seed": task.seed, "split": task.split,
                  "aggregates": {"overall": {"hit@1": overall}, "IND": {"hit@1": overall}}, "datasets": datasets}
        task.results.parent.mkdir(parents=True, exist_ok=True)
        task.results.write_text(json.dumps(record))
        write_hits(task.hits.parent, hits)

    return run


def test_variants_resolve_through_their_sources(tmp_path):
    study = load_study(write_study(tmp_path, study_dict()))
    resolved = variants(study, {"model": {"moe": {"num_experts": 4, "rank": 8}}})
    assert resolved["cand_b"].overrides == (*resolved["lora"].overrides, "model.moe.rank=16",
                                            'model.moe.router_input="text"')
    assert resolved["cand_a"].description == "A" and resolved["cand_b"].trained
    assert study.base_overrides() == ["schedule.steps=2", "schedule.stage1_steps=1"]
    assert study.suites["s0"].path == tmp_path / "suite0"  # outside git: relative to the file's directory
    assert study.suites["s0"].build == ("--kind", "conflict")


@pytest.mark.parametrize(("change", "message"), [
    ({"bogus": 1}, r"top level: unknown field\(s\) \['bogus'\]"),
    ({"variants": {"x": {"from": "nope"}}}, "variants.x.from: unknown variant 'nope'"),
    ({"variants": {"lora": {"from": "base"}}}, "variants.lora: 'lora' is a built-in variant"),
    ({"variants": {"x": {"from": "y"}, "y": {"from": "x"}}}, "variants.y.from: a cycle"),
    ({"stages": [{"name": "d", "split": "test", "suites": ["s0"], "variants": ["lora"], "seeds": [0]}]},
     r"stages\[0\].split: 'test' is not one of"),
    ({"stages": [{"name": "d", "split": "dev", "suites": ["s9"], "variants": ["lora"], "seeds": [0]}]},
     r"stages\[0\].suites: unknown suite 's9'"),
    ({"stages": [{"name": "d", "split": "dev", "suites": ["s0"], "variants": ["lora"], "seeds": [0, 0]}]},
     r"stages\[0\].seeds: expected a non-empty list of distinct"),
    ({"stages": [{"name": "d", "split": "dev", "suites": ["s0"], "seeds": [0]}]},
     r"stages\[0\]: give variants \(a list\), selected: true"),
    ({"selection": None}, "selection: a stage runs the selected variant, but the study has no selection"),
    ({"compare": [{"a": "lora", "b": "cand_a", "stage": "final"}]}, r"compare\[0\].b: 'cand_a' is not run"),
    ({"bootstrap": {"level": 2}}, "bootstrap.level: 2 is out of range"),
    ({"base": {"config": "missing.yaml"}}, "base.config: no such file"),
])
def test_errors_name_the_field(tmp_path, change, message):
    data = study_dict(**change)
    if "variants" in change:
        data["variants"] = {**study_dict()["variants"], **change["variants"]}
    if "stages" in change:
        data.pop("selection"), data.pop("compare")
    with pytest.raises(ConfigError, match=message):
        load_study(write_study(tmp_path, data))


def test_selection_rule_and_fallback():
    def rec(shape, colour):
        return {"aggregates": {"overall": {"hit@1": (shape + colour) / 2}},
                "datasets": {"TintSameEmoji": {"hit@1": shape}, "TintSameColour": {"hit@1": colour},
                             "TintSameColourReworded": {"hit@1": 0.0}}}  # OOD: never a condition of the rule

    records = {("lora", "s", 0): rec(0.5, 0.5), ("a", "s", 0): rec(0.6, 0.495), ("b", "s", 0): rec(0.9, 0.48)}
    spec = SelectionSpec("dev", ("a", "b"), "lora", "overall", 1.0, "rule", "lora")
    chosen = select(spec, records)
    assert chosen.winner == "a" and not chosen.fallback_used
    assert chosen.table["b"]["worst_condition"] == "colour" and chosen.table["b"]["worst_diff"] == pytest.approx(-2)
    assert select(SelectionSpec("dev", ("a", "b"), "lora", "overall", 3.0, "", "lora"), records).winner == "b"
    none = select(SelectionSpec("dev", ("b",), "lora", "overall", 0.5, "", "lora"), records)
    assert none.winner == "lora" and none.fallback_used
    with pytest.raises(ConfigError, match="shares no finished run"):
        select(SelectionSpec("dev", ("c",), "lora"), records)


def test_run_resume_select_and_summarize(tmp_path):
    study = load_study(write_study(tmp_path, study_dict()))
    out = tmp_path / "out"
    calls: list = []
    with pytest.raises(ConfigError, match="finish stage 'dev' first"):
        execute(study, out, ["final"], runner=fake_runner(calls))
    assert not calls  # the final stage waits for the whole selection stage
    ran = execute(study, out, jobs=2, runner=fake_runner(calls))
    assert len(ran) == len(calls) == 2 * 3 + 4 + 4  # dev; final: lora and the winner
    final = [c for c in calls if c[3] == "eval" and c[0] != "lora"]
    assert {c[0] for c in final} == {"cand_a"}  # cand_b loses 20 points of colour
    assert {c[4] for c in final} == {(*calls[0][4], "model.moe.rank=16")}  # lora's overrides, then its own
    assert execute(study, out, runner=fake_runner(calls)) == []  # resumed: everything is finished
    summary = summarize_study(study, out)
    assert summary["selection"]["winner"] == "cand_a"
    (entry,) = summary["compare"]
    assert entry["a"] == "lora" and entry["b"] == "cand_a" and entry["runs"] == 4 and not entry["missing"]
    lo, hi = entry["overall"]["ci"]
    assert lo <= entry["overall"]["mean"] <= hi and set(entry["per_condition"]) == {"shape", "colour"}
    assert [(r["suite"], r["seed"]) for r in entry["per_run"]] == [(s, n) for s in ("s0", "s1") for n in (0, 1)]
    mean_diff = sum(r["cand_a"] - r["lora"] for r in entry["per_run"]) / 4  # the point estimate, run by run
    assert mean_diff == pytest.approx(entry["overall"]["mean"], abs=0.01)
    assert summary["missing_runs"] == 0 and summary["study"].endswith("toy.study.yaml")
    assert "## cand_a − lora, stage final, conflict (4 paired runs" in (out / "summary.md").read_text()
    sick = out / "runs" / "s1" / "seed1" / "cand_a" / "results.json"
    sick.write_text(json.dumps({**json.loads(sick.read_text()), "collapsed": True}))
    (entry,) = summarize_study(study, out)["compare"]
    assert entry["runs"] == 3 and entry["collapsed"] == ["s1 seed 1 (cand_a collapsed)"]  # named, not averaged in
    assert "Left out, collapsed: s1 seed 1" in (out / "summary.md").read_text()


def test_commit_change_is_refused_and_runs_are_never_redefined(tmp_path):
    study = load_study(write_study(tmp_path, study_dict()))
    out = tmp_path / "out"
    execute(study, out, ["dev"], runner=fake_runner([]))
    state = json.loads((out / STATE).read_text())
    (out / STATE).write_text(json.dumps({**state, "commit": "0" * 40}))
    with pytest.raises(ConfigError, match="was run from commit 0000"):
        execute(study, out, ["final"], runner=fake_runner([]))
    execute(study, out, ["final"], allow_commit_change=True, runner=fake_runner([]))
    assert json.loads((out / STATE).read_text())["history"] == [{"commit": "0" * 40}]
    changed = study_dict()
    changed["variants"]["cand_a"]["set"]["model.moe.rank"] = 24
    (out / "runs" / "s0" / "seed0" / "cand_a" / "results-dev.json").unlink()
    study = load_study(write_study(tmp_path, changed))
    with pytest.raises(ConfigError, match="give the changed variant a new name"):
        execute(study, out, ["dev"], allow_commit_change=True, runner=fake_runner([]))


def test_a_failed_run_fails_its_stage_after_the_others_finish(tmp_path):
    study = load_study(write_study(tmp_path, study_dict()))
    calls: list = []
    good = fake_runner(calls)

    def flaky(task, base):
        if task.variant.name == "cand_a" and task.seed == 0:
            raise OSError("disk full")
        good(task, base)

    with pytest.raises(RuntimeError, match=r"stage dev: 1 run\(s\) failed: dev: cand_a on s0, seed 0 .*disk full"):
        execute(study, tmp_path / "out", ["dev"], jobs=2, runner=flaky)
    assert len(calls) == 5
    assert len(execute(study, tmp_path / "out", ["dev"], runner=good)) == 1  # only the failed one is left


def test_episode_clusters_join_the_rows_that_rank_one_gallery(tmp_path):
    from tsembed.data import write_eval

    galleries = [["a.png", "b.png", "c.png"], ["d.png", "e.png", "f.png"]]
    rows = {"TintSameEmoji": galleries, "TintSameColour": [g[::-1] for g in galleries],  # other positives
            "ToneSameEmoji": [["x.png", "y.png"]], "Words": [["", ""]]}  # another episode; text candidates
    manifest = {"format": "tsembed-suite", "format_version": 1, "image_root": ".", "datasets": {}}
    for name, items in rows.items():
        write_eval(tmp_path / "suite" / "eval" / f"{name}.jsonl",
                   [{"qry_text": "q", "qry_img_path": "", "tgt_img_path": g,
                     "tgt_text": [f"<|image_1|> {p}" if p else f"t{i}" for i, p in enumerate(g)]} for g in items])
        manifest["datasets"][name] = {"name": name, "meta_task": "retrieval", "ood": False,
                                      "query_template": "{text}", "target_template": "{text}",
                                      "files": {"eval": f"eval/{name}.jsonl"}, "description": "toy"}
    (tmp_path / "suite" / "suite.json").write_text(json.dumps(manifest))
    data = study_dict()
    data["suites"]["s0"]["clusters"] = "episode"
    study = load_study(write_study(tmp_path, data))
    hits = {"TintSameEmoji": DatasetHits(np.array([1, 0])), "TintSameColour": DatasetHits(np.array([0, 0])),
            "ToneSameEmoji": DatasetHits(np.array([1])), "Words": DatasetHits(np.array([1]))}
    spec = dataclasses.replace(study.suites["s0"], path=tmp_path / "suite")
    clustered = with_clusters(spec, "eval", hits)
    a, b = clustered["TintSameEmoji"].clusters, clustered["TintSameColour"].clusters
    assert a == b and a[0] != a[1] and a[0].startswith("episode:")
    assert clustered["ToneSameEmoji"].clusters[0] not in a and clustered["Words"].clusters == ("Words:0",)
    assert with_clusters(study.suites["s1"], "eval", hits) == hits  # clusters: row
    with pytest.raises(DataError, match="2 eval rows, but the run's hits have 3"):
        with_clusters(spec, "eval", {"TintSameEmoji": DatasetHits(np.array([1, 0, 1]))})


def test_cli_check(tmp_path, capsys):
    path = write_study(tmp_path, study_dict())
    assert main(["study", "check", str(path)]) == 0
    text = capsys.readouterr().out
    assert "valid" in text and "dev (dev): 6 runs" in text
    bad = write_study(tmp_path / "bad", study_dict(bogus=1))
    assert main(["study", "check", str(bad)]) == 1


STUDY_FILES = sorted({*REPO.glob("docs/**/*.study.yaml"), *REPO.glob("docs/results/**/study.yaml")})


def test_the_repository_has_study_files():
    assert STUDY_FILES, "no docs/**/*.study.yaml: the study-file test below would check nothing"


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_study_file_in_the_repository_validates(path):
    study = load_study(path)
    base = {"model": {"moe": {"num_experts": 4, "rank": 8}}}
    resolved = variants(study, base)
    for stage in study.stages:
        if not stage.selected:
            assert plan_stage(study, Path("/nonexistent"), stage, resolved)


@pytest.mark.slow  # builds a tiny suite, trains 2 steps of two variants side by side on the real default backbone
def test_study_end_to_end_two_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path / "cache"))
    data = {
        "name": "e2e", **TINY_E2E,
        "variants": {"lora16": {"from": "lora", "set": {"model.moe.rank": 16}}},
        "stages": [{"name": "dev", "split": "dev", "suites": ["tiny"], "variants": ["lora", "lora16"], "seeds": [0]},
                   {"name": "eval", "split": "eval", "suites": ["tiny"], "variants": ["lora"], "selected": True,
                    "seeds": [0]}],
        "selection": {"stage": "dev", "candidates": ["lora16"], "reference": "lora", "max_drop": 100},
        "compare": [{"a": "lora", "b": "selected", "stage": "eval"}], "bootstrap": {"resamples": 100}}
    path = tmp_path / "e2e.study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--out", str(out), "--jobs", "2"]) == 0
    run = out / "runs" / "tiny" / "seed0" / "lora16"
    assert (run / "dev" / "hits.json").is_file() and (run / "eval" / "hits.json").is_file()
    assert "OMP_NUM_THREADS" not in (run / "study.log").read_text() and (run / "study-task.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection"]["winner"] == "lora16" and summary["compare"][0]["runs"] == 1
    assert summary["missing_runs"] == 0


def test_conflict_summary_from_a_study_keeps_the_headline_schema(tmp_path):
    """`tsembed conflict-summary --study`: the primary comparison's paired numbers, per-run spread, intervals,
    suite seeds and secondary endpoints (None where the study has none), and collapsed runs counted."""
    from tsembed.experiments.conflict_summary import study_conflict_summary

    data = study_dict()
    data["suites"]["s0"]["build"] = ["--kind", "conflict", "--seed", "0"]
    data["suites"]["s1"]["build"] = ["--kind", "conflict", "--seed", "7"]
    data["stages"][1]["name"] = "eval"
    data["compare"] = [{"a": "lora", "b": "selected", "stage": "eval"}]
    study = load_study(write_study(tmp_path, data))
    out = tmp_path / "out"
    execute(study, out, runner=fake_runner([]))
    summary = summarize_study(study, out)
    head = study_conflict_summary(study, summary)
    (entry,) = summary["compare"]
    assert head["tsembed_variant"] == "cand_a" and head["lora_variant"] == "lora"
    assert head["suite_seeds"] == [0, 7] and head["seeds"] == [0, 1] and head["runs"] == 4
    assert head["paired_diff_overall"]["mean"] == pytest.approx(entry["overall"]["mean"], abs=0.01)
    assert head["paired_diff_overall"]["std"] > 0 and head["ci95_overall"] == entry["overall"]["ci"]
    assert set(head["per_condition_ci95"]) == set(head["per_condition_diff"]) == {"shape", "colour"}
    assert head["generic_diff"] is None and head["breadth_diff"] is None and head["collapsed_runs"] == 0
    assert head["tsembed_overall"]["mean"] - head["lora_overall"]["mean"] == pytest.approx(
        head["paired_diff_overall"]["mean"], abs=0.02)
    target = tmp_path / "summary.json"
    args = ["conflict-summary", "--study", str(study.path), "--runs", str(out), "--out", str(target)]
    assert main(args) == 0 and json.loads(target.read_text())["ci95_overall"] == head["ci95_overall"]
    with pytest.raises(ConfigError, match="no finished 'dev' comparison"):
        study_conflict_summary(study, summary, primary="dev")
    assert main(["conflict-summary", "--study", str(study.path), "--out", str(target)]) != 0  # --runs missing


def test_eval_runs_of_the_older_layout_still_count_as_finished(tmp_path):
    """Eval runs finished before each split had its own folder keep hits.json beside results.json; a summary
    must read them, not call them missing (the claim study's runs at e6d39ee are of that layout)."""
    study = load_study(write_study(tmp_path, study_dict()))
    out = tmp_path / "out"
    execute(study, out, runner=fake_runner([]))
    before = summarize_study(study, out)["compare"][0]
    for task in plan_stage(study, out, study.stage("final"), {}):
        if task.done():
            new = task.hits
            new.replace(task.run_dir / "hits.json")  # the old place
            new.parent.rmdir()
            assert task.hits == task.run_dir / "hits.json"
    after = summarize_study(study, out)["compare"][0]
    assert after["runs"] == before["runs"] == 4 and after["overall"] == before["overall"]


def test_the_state_records_the_commit_of_the_code_that_runs(tmp_path, monkeypatch):
    """A study file read from one checkout and run with the package of another (a pinned worktree on PYTHONPATH)
    records the code's commit, and the study file's beside it."""
    import tsembed.experiments.study.run as run_module

    study = load_study(write_study(tmp_path, study_dict()))
    commits = {run_module.code_root(): "c0de" * 10, study.root: "f11e" * 10}
    monkeypatch.setattr(run_module, "git_state", lambda root: {"commit": commits.get(root), "dirty": False})
    state = run_module.check_commit(study, tmp_path / "out")
    assert state["commit"] == "c0de" * 10 and state["study_file_commit"] == "f11e" * 10
