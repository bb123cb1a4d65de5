"""The study's suite gate: its spec checks, its reading against hand-computed margins, and the stages it guards."""

import pytest

from tests.experiments.test_study import RATES, fake_runner, study_dict, write_study
from tsembed.cli import main
from tsembed.errors import ConfigError
from tsembed.experiments.study.gate import read_gate
from tsembed.experiments.study.run import execute
from tsembed.experiments.study.spec import GateSpec, load_study
from tsembed.experiments.study.summary import summarize_study


def gated_dict(specialist_rates: dict[str, float], **gate_changes) -> tuple[dict, dict]:
    """A toy study: stage `gate` (lora + two specialists), a guarded `dev`; returns it and the fake runner's rates."""
    data = study_dict()
    data["variants"] = {**data["variants"],
                        "S_shape": {"from": "lora", "set": {"data.datasets": ["TintSameEmoji"]}},
                        "S_colour": {"from": "S_shape", "set": {"data.datasets": ["TintSameColour"]}}}
    data["stages"] = [{"name": "gate", "split": "dev", "suites": ["s0"], "variants": ["lora", "S_shape", "S_colour"],
                       "seeds": [0]}, *data["stages"]]
    data["gate"] = {"stage": "gate", "joint": "lora", "specialists": ["S_shape", "S_colour"], "min_margin": 10.0,
                    "min_conditions": 2, "guards": ["dev", "final"], **gate_changes}
    rates = {**RATES, "S_shape": {"TintSameEmoji": specialist_rates["shape"], "TintSameColour": 0.0},
             "S_colour": {"TintSameEmoji": 0.0, "TintSameColour": specialist_rates["colour"]}}
    return data, rates


@pytest.mark.parametrize(("change", "message"), [
    ({"joint": "cand_a"}, "gate.joint: 'cand_a' is not run in stage 'gate'"),
    ({"specialists": ["S_shape", "cand_a"]}, "gate.specialists: unknown variant"),
    ({"specialists": ["S_shape", "lora"]}, "gate.specialists: 'lora' must train on exactly one dataset"),
    ({"guards": ["gate"]}, "gate.guards: stage 'gate' must come after"),
    ({"min_conditions": 3}, r"gate.min_conditions: 3 is out of range \[1, 2\]"),
    ({"stage": "nope"}, "gate.stage: unknown stage 'nope'"),
    ({"bogus": 1}, r"gate: unknown field\(s\) \['bogus'\]"),
])
def test_gate_errors_name_the_field(tmp_path, change, message):
    data, _ = gated_dict({"shape": 0.9, "colour": 0.9}, **change)
    with pytest.raises(ConfigError, match=message):
        load_study(write_study(tmp_path, data))


def test_specialists_take_their_dataset_from_their_nearest_source(tmp_path):
    data, _ = gated_dict({"shape": 0.9, "colour": 0.9})
    data["variants"]["S_colour_long"] = {"from": "S_colour", "set": {"schedule.steps": 9}}
    data["stages"][0]["variants"].append("S_colour_long")
    data["gate"]["specialists"] = ["S_shape", "S_colour_long"]
    study = load_study(write_study(tmp_path, data))
    assert study.gate.specialists == {"S_shape": "TintSameEmoji", "S_colour_long": "TintSameColour"}


def test_reading_against_hand_computed_margins():
    spec = GateSpec("gate", "joint", {"S_a": "TintSameEmoji", "S_b": "TintSameColour"}, 10.0, 2)

    def rec(shape, colour):
        return {"datasets": {"TintSameEmoji": {"hit@1": shape}, "TintSameColour": {"hit@1": colour}}}

    records = {("joint", "s", 0): rec(0.50, 0.40), ("joint", "s", 1): rec(0.60, 0.40),
               ("S_a", "s", 0): rec(0.65, 0.0), ("S_a", "s", 1): rec(0.65, 0.0),  # margins 15, 5: mean 10.0
               ("S_b", "s", 0): rec(0.0, 0.49), ("S_b", "s", 2): rec(0.0, 0.99)}  # seed 2 unpaired: left out
    reading = read_gate(spec, records)
    assert reading.margins["S_a"]["margin"] == 10.0 and reading.margins["S_a"]["runs"] == 2
    assert reading.margins["S_b"] == {"dataset": "TintSameColour", "condition": "colour", "specialist": 49.0,
                                      "joint": 40.0, "margin": 9.0, "runs": 1}
    assert not reading.passed  # 9.0 < 10: one condition over the margin, two needed
    assert read_gate(GateSpec("gate", "joint", spec.specialists, 9.0, 2), records).passed
    with pytest.raises(ConfigError, match="'S_c' shares no finished run"):
        read_gate(GateSpec("gate", "joint", {"S_c": "TintSameEmoji"}, 10.0, 1),
                  {**records, ("S_c", "s", 5): rec(1, 1)})


@pytest.mark.parametrize(("rates", "passes"), [({"shape": 0.95, "colour": 0.95}, True),
                                               ({"shape": 0.95, "colour": 0.52}, False)])
def test_guarded_stages_run_only_after_the_gate_passed(tmp_path, monkeypatch, rates, passes):
    data, fake_rates = gated_dict(rates)
    monkeypatch.setattr("tests.experiments.test_study.RATES", fake_rates)
    study = load_study(write_study(tmp_path, data))
    with pytest.raises(ConfigError, match="the gate reads stage 'gate': finish it first"):
        execute(study, tmp_path / "out", ["dev"], runner=fake_runner([]))
    calls: list = []
    execute(study, tmp_path / "out", runner=fake_runner(calls))
    stages_run = {split for (_, _, _, split, _) in calls}
    assert stages_run == ({"dev", "eval"} if passes else {"dev"})  # the gate stage is a dev stage
    assert len(calls) == (3 + 5 + 8 if passes else 3)  # dev reuses the gate's lora, seed 0
    summary = summarize_study(study, tmp_path / "out")
    assert summary["gate"]["passed"] is passes
    assert summary["gate"]["margins"]["S_shape"]["margin"] >= 10.0  # 0.95 vs lora's 0.5, 40 rows
    assert ("Gate passed" if passes else "Gate failed") in (tmp_path / "out" / "summary.md").read_text()


def test_cli_check_names_the_gate(tmp_path, capsys):
    data, _ = gated_dict({"shape": 0.9, "colour": 0.9})
    assert main(["study", "check", str(write_study(tmp_path, data))]) == 0
    assert "gate on stage gate: 2 of 2 specialists beat lora by >= 10 points; guards dev, final" in \
        capsys.readouterr().out
