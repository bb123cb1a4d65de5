"""Routing analysis writes its plots and numbers; the training-curve helper draws a metrics log."""

import json

import numpy as np
import pytest

from tsembed.errors import ConfigError, DataError
from tsembed.evaluation import analyze_routing, evaluate, plot_training_curves
from tsembed.evaluation.routing import select_layers, spaced

from .helpers import TOY_DATASETS, ForwardCounter, toy_model, write_jsonl, write_toy_suite

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ["expert_usage.png", "layer_load.png", "routing_entropy.png", "routing_nmi.png"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_toy_suite(tmp_path_factory.mktemp("suite"))


def test_inspect_routing_writes_pngs_and_json(suite, tmp_path):
    model = toy_model()
    report = analyze_routing(model, suite, tmp_path, include_targets=True, progress=False)
    assert report.plots == PLOTS
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == PNG
    data = json.loads((tmp_path / "routing.json").read_text())
    assert data["has_routing"] and data["num_experts"] == 4 and len(data["layers"]) == 6
    assert list(data["usage"]) == list(TOY_DATASETS)
    for per_layer in data["usage"].values():
        assert all(sum(v) == pytest.approx(1.0, abs=1e-4) for v in per_layer.values())
    for load in data["layer_load"].values():
        assert sum(load["top1_share"]) == pytest.approx(1.0) and 1.0 - 1e-6 <= load["load_balance"] <= 4.0
    for key in ("dataset", "meta_task"):
        assert all(0.0 <= v <= 1.0 for v in data["nmi"][key].values())
    assert all(0.0 <= e["per_input"] <= 1.0 for e in data["entropy"].values())
    assert list(data["pair_agreement"]["datasets"]) == list(TOY_DATASETS)
    assert all(0.0 <= v <= 1.0 for v in data["pair_agreement"]["per_layer"].values())
    assert data["datasets"]["ColorCls"]["num_inputs"] > TOY_DATASETS["ColorCls"][2]  # queries + candidates


def test_routing_reuses_the_eval_cache(suite, tmp_path):
    model = toy_model()
    evaluate(model, suite, cache_dir=tmp_path / "cache", progress=False)
    counter = ForwardCounter(model)
    report = analyze_routing(model, suite, None, layers=["-1"], cache_dir=tmp_path / "cache", progress=False)
    assert counter.calls == 0 and report.layers == ["bert.encoder.layer.1.output.dense"]


def test_base_model_has_nothing_to_analyse(suite, tmp_path):
    report = analyze_routing(toy_model(adapters=False), suite, tmp_path, progress=False)
    assert not report.has_routing and "no MoE-LoRA router" in report.reason
    assert json.loads((tmp_path / "routing.json").read_text())["has_routing"] is False
    assert not list(tmp_path.glob("*.png"))


def test_layer_selection():
    layers = ["a.0.query", "a.0.value", "a.1.query", "a.1.value"]
    assert select_layers(layers, None) == layers
    assert select_layers(layers, ["0", r"a\.\d\.value"]) == ["a.0.query", "a.0.value", "a.1.value"]
    assert select_layers(layers, ["a.1.query,-1"]) == ["a.1.query", "a.1.value"]
    with pytest.raises(ConfigError, match="matches no adapted layer"):
        select_layers(layers, ["key"])
    with pytest.raises(ConfigError, match="out of range"):
        select_layers(layers, [9])
    assert spaced(list("abcdefghij"), 4) == ["a", "d", "g", "j"]


def test_plot_training_curves(tmp_path):
    rows = []
    for step in range(1, 41):
        row = {"step": step, "loss": 3.0 / step, "stage": 1 if step <= 20 else 2}
        if step > 20:
            row.update(
                eans_entropy=0.9, affinity_chosen=0.8 + 0.001 * step, affinity_random=0.5, false_negative_frac=0.01
            )
        rows.append(row)
    rows.insert(10, {"step": 10, "eval_hit@1": 0.4})  # other records in the log are skipped
    log = write_jsonl(tmp_path / "metrics.jsonl", rows)
    out = plot_training_curves(log, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG
    log.write_text(log.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"metrics.jsonl line 42"):
        plot_training_curves(log, tmp_path / "curves.png")


def test_routing_report_numbers_on_known_probs():
    from tsembed.evaluation.routing import RoutingData, routing_report

    probs = np.array([[[0.9, 0.1]], [[0.8, 0.2]], [[0.1, 0.9]], [[0.3, 0.7]]])  # [N=4, L=1, E=2]
    positive = np.array([[[0.6, 0.4]], [[0.7, 0.3]], [[0.4, 0.6]], [[0.9, 0.1]]])  # top-1: 0, 0, 1, 0
    data = RoutingData(["layer"], probs, np.array(["A", "A", "B", "B"]), np.array(["vqa", "vqa", "vqa", "vqa"]),
                       np.array([True] * 4), positive)
    report = routing_report(data)
    # queries' top-1 0, 0, 1, 1: three of four pairs agree; chance = [.5, .5]·[.75, .25] = .5
    assert report.pair_agreement["mean"] == pytest.approx(0.75)
    assert report.pair_agreement["chance_mean"] == pytest.approx(0.5)
    assert report.pair_agreement["datasets"]["A"] == pytest.approx({"mean": 1.0, "chance_mean": 1.0})
    assert report.pair_agreement["datasets"]["B"] == pytest.approx({"mean": 0.5, "chance_mean": 0.5})
    assert report.usage["A"]["layer"] == pytest.approx([0.85, 0.15])
    assert report.top1_share["B"]["layer"] == [0.0, 1.0]
    assert report.nmi["dataset"]["layer"] == pytest.approx(1.0)  # top-1 expert identifies the dataset
    assert report.nmi["meta_task"]["layer"] == 0.0  # one meta-task, two experts used: MI = 0
    assert report.nmi["dataset_max"] == pytest.approx(1.0) and report.nmi["dataset_max_layer"] == "layer"
    assert report.layer_load["layer"]["load_balance"] == pytest.approx(2 * (0.5 * 0.525 + 0.5 * 0.475))
