"""Composed variants in a study: their spec checks, the order they run in, and a real composition end to end."""

import json

import pytest
import yaml

from tests.experiments.test_study import TINY_E2E, fake_runner, study_dict, write_study
from tsembed.cli import main
from tsembed.errors import ConfigError
from tsembed.experiments.study.run import execute, plan_stage, variants
from tsembed.experiments.study.spec import load_study

EXPERTS = {"S_shape": {"from": "lora", "set": {"data.datasets": ["TintSameEmoji"]}},
           "S_colour": {"from": "lora", "set": {"data.datasets": ["TintSameColour"]}}}
COMPOSED = {"compose": {"experts": {"shape": "S_shape", "colour": "S_colour"}}}


def composed_dict(composed: dict | None = None, stage_variants: list[str] | None = None) -> dict:
    data = study_dict()
    data["variants"] = {**data["variants"], **EXPERTS, "C": composed or COMPOSED}
    data["stages"] = [{"name": "dev", "split": "dev", "suites": ["s0"], "seeds": [0, 1],
                       "variants": stage_variants or ["lora", "S_shape", "S_colour", "C"]}]
    data.pop("selection"), data.pop("compare")
    return data


@pytest.mark.parametrize(("composed", "stage_variants", "message"), [
    ({"compose": {"experts": {"shape": "S_shape"}}}, None, "variants.C.compose.experts: at least two experts"),
    ({"compose": {"experts": {"a": "S_shape", "b": "nope"}}}, None, "variants.C.compose.experts.b: unknown variant"),
    ({"from": "lora", **COMPOSED}, None, "variants.C: give either from"),
    ({**COMPOSED, "set": {"model.moe.rank": 4}}, None, "variants.C.set: a composed variant trains nothing"),
    ({"compose": {**COMPOSED["compose"], "target_routing": "nope"}}, None, "target_routing: 'nope' is not one of"),
    ({"compose": {**COMPOSED["compose"], "router_input": "image"}}, None, "router_input: 'image' is not one of"),
    ({"compose": {**COMPOSED["compose"], "pilot_side": "target"}}, None, "pilot_side: 'target' is not one of"),
    (None, ["lora", "S_shape", "C"], r"stages\[0\].variants: 'C' is composed from \['S_colour'\]"),
])
def test_composed_variant_errors_name_the_field(tmp_path, composed, stage_variants, message):
    with pytest.raises(ConfigError, match=message):
        load_study(write_study(tmp_path, composed_dict(composed, stage_variants)))


def test_a_composed_variant_is_no_source_and_no_expert(tmp_path):
    data = composed_dict()
    data["variants"]["D"] = {"from": "C"}
    with pytest.raises(ConfigError, match="variants.D.from: 'C' is composed, not trained"):
        load_study(write_study(tmp_path / "a", data))
    data = composed_dict()
    data["variants"]["D"] = {"compose": {"experts": {"x": "C", "y": "S_shape"}}}
    with pytest.raises(ConfigError, match="variants.D.compose.experts.x: 'C' is itself composed"):
        load_study(write_study(tmp_path / "b", data))


def test_a_composed_run_waits_for_its_experts_only(tmp_path):
    study = load_study(write_study(tmp_path, composed_dict()))
    resolved = variants(study, {})
    assert not resolved["C"].trained and resolved["C"].overrides[0].startswith("compose.experts=")
    tasks = plan_stage(study, tmp_path / "out", study.stage("dev"), resolved)
    assert [t.compose is not None for t in tasks].count(True) == 2
    assert tasks[3].variant.name == "C" and tasks[3].compose.experts == {"shape": "S_shape", "colour": "S_colour"}
    calls: list = []
    execute(study, tmp_path / "out", jobs=1, runner=fake_runner(calls))
    order = [(name, seed) for name, _, seed, *_ in calls]
    assert order == [("lora", 0), ("S_shape", 0), ("S_colour", 0), ("C", 0),  # seed-major: seed 0 whole first
                     ("lora", 1), ("S_shape", 1), ("S_colour", 1), ("C", 1)]


@pytest.mark.slow  # trains two 2-step specialists on the real default backbone, composes them, evaluates
def test_a_study_composes_its_specialists_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path / "cache"))
    data = {
        "name": "e2e-compose", **TINY_E2E,
        "variants": {"S_group": {"from": "lora", "set": {"data.datasets": ["EmojiGroup"]}},
                     "S_name": {"from": "lora", "set": {"data.datasets": ["NameToImage"]}},
                     "C": {"compose": {"experts": {"group": "S_group", "name": "S_name"}, "pilots": 2,
                                       "pilot_rows": 8}}},
        "stages": [{"name": "dev", "split": "dev", "suites": ["tiny"], "variants": ["S_group", "S_name", "C"],
                    "seeds": [0]}],
        "compare": [{"a": "S_group", "b": "C", "stage": "dev"}], "bootstrap": {"resamples": 50}}
    path = tmp_path / "e2e.study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    assert main(["study", "run", str(path), "--out", str(out), "--jobs", "2"]) == 0
    run = out / "runs" / "tiny" / "seed0" / "C"
    record = json.loads((run / "results-dev.json").read_text())
    assert record["config"]["compose"]["target_routing"] == "query" and record["trainable_parameters"] == 0
    assert 0.0 <= record["routing_dev"]["query_accuracy"] <= 1.0
    assert json.loads((run / "dev" / "results.json").read_text())["settings"]["target_routing"] == "query"
    composed = json.loads((run / "model" / "compose.json").read_text())
    assert [e["name"] for e in composed["experts"]] == ["group", "name"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_runs"] == 0 and summary["compare"][0]["runs"] == 1


def test_two_jobs_start_a_composed_run_only_after_its_experts_finished(tmp_path):
    import threading
    import time

    study = load_study(write_study(tmp_path, composed_dict()))
    events, lock, inner = [], threading.Lock(), fake_runner([])

    def runner(task, base):
        with lock:
            events.append(("start", task.variant.name, task.seed))
        time.sleep(0.05 if task.variant.name == "S_colour" else 0.01)  # the slowest expert
        inner(task, base)
        with lock:
            events.append(("end", task.variant.name, task.seed))

    execute(study, tmp_path / "out", jobs=2, runner=runner)
    for seed in (0, 1):
        start = events.index(("start", "C", seed))
        assert all(events.index(("end", e, seed)) < start for e in ("S_shape", "S_colour"))
    assert len(events) == 16
