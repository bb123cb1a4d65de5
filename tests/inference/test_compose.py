"""`tsembed compose`: single-adapter models joined under a pilot router, and an expert added later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.inference.conftest import ImageToyBackbone
from tsembed.cli import main
from tsembed.encoding import embed_items
from tsembed.errors import ConfigError
from tsembed.inference.compose import ExpertSource, add_expert, compose, routing_accuracy
from tsembed.inputs import EmbedInput
from tsembed.model import ModelConfig, TSEmbedModel
from tsembed.moe import MoELoRAConfig, MoELoRALinear

TOPICS = {"alpha": "red apples ripe orchard", "beta": "cold snowy mountain peaks", "gamma": "fast cars racing track"}


def _texts(topic: str, n: int = 12, offset: int = 0) -> list[str]:
    words = TOPICS[topic].split()
    return [f"{topic} {words[(i + offset) % 4]} {words[(i + offset + 1) % 4]} item{i + offset}" for i in range(n)]


def _rows_file(tmp: Path, topic: str) -> Path:
    path = tmp / f"{topic}.jsonl"
    texts = _texts(topic)
    rows = [{"qry": t, "qry_image_path": "", "pos_text": f"{topic} passage {i}", "pos_image_path": ""}
            for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _specialist(tmp: Path, topic: str, seed: int, rank: int = 2) -> Path:
    """A saved single-LoRA model on the shared toy base (same backbone seed), with its own adapter weights."""
    backbone = ImageToyBackbone(seed=0)
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=1, rank=rank, alpha=4.0,
                        level="sequence", top_k=1)
    model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe,
                                               extra={"train_datasets": [topic]}))
    torch.manual_seed(seed)
    for layer in model.modules():
        if isinstance(layer, MoELoRALinear):
            torch.nn.init.normal_(layer.lora_B, std=0.3)
    return model.eval().save_pretrained(tmp / f"model-{topic}")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    tmp = tmp_path_factory.mktemp("compose")
    return {t: (_specialist(tmp, t, seed=i + 1), _rows_file(tmp, t)) for i, t in enumerate(TOPICS)}


def _expert(sources, name: str) -> ExpertSource:
    model_dir, rows = sources[name]
    return ExpertSource(name, model_dir, rows)


def _inputs(topic: str) -> list[EmbedInput]:
    return [EmbedInput(text=t) for t in _texts(topic, 6, offset=20)]  # unseen rows of the topic


def test_each_input_gets_its_own_experts_vector(sources, tmp_path):
    """Routed to its expert, an input's composed embedding is the specialist's own embedding."""
    out = tmp_path / "composed"
    report = compose([_expert(sources, t) for t in TOPICS], out, pilots_per_expert=2)
    assert [e["name"] for e in report["experts"]] == list(TOPICS)
    composed = TSEmbedModel.from_pretrained(out)
    assert composed.pilot_routed and composed.config.moe.expert_names == list(TOPICS)
    card = (out / "README.md").read_text()
    assert "composed model (alpha, beta, gamma)" in card and "expert 1 `beta`: trained on beta" in card
    for e, topic in enumerate(TOPICS):
        items = _inputs(topic)
        routed = embed_items(composed, items, batch_size=4, with_routing=True)
        chosen = next(iter(routed.layer_probs.values())).argmax(dim=-1)
        assert chosen.tolist() == [e] * len(items)  # the pilots find the topic
        own = embed_items(TSEmbedModel.from_pretrained(sources[topic][0]), items, batch_size=4).embeddings
        torch.testing.assert_close(routed.embeddings, own, atol=1e-5, rtol=1e-5)
    other = embed_items(TSEmbedModel.from_pretrained(sources["beta"][0]), _inputs("alpha"), 4).embeddings
    assert not torch.allclose(other, embed_items(composed, _inputs("alpha"), 4).embeddings, atol=1e-3)


def test_adding_an_expert_leaves_the_old_experts_inputs_bit_identical(sources, tmp_path):
    out = tmp_path / "composed"
    compose([_expert(sources, "alpha"), _expert(sources, "beta")], out, pilots_per_expert=2)
    items = _inputs("alpha") + _inputs("beta") + _inputs("gamma")
    before = TSEmbedModel.from_pretrained(out)
    old = embed_items(before, items, batch_size=5, with_routing=True)
    add_expert(_expert(sources, "gamma"), out, pilots_per_expert=2)
    after = TSEmbedModel.from_pretrained(out)
    assert after.config.moe.expert_names == ["alpha", "beta", "gamma"]
    assert torch.equal(after.pilot_router.pilots[:2, : before.pilot_router.pilots.shape[1]],
                       before.pilot_router.pilots)
    new = embed_items(after, items, batch_size=5, with_routing=True)
    routes = next(iter(new.layer_probs.values())).argmax(dim=-1)
    kept = routes < 2
    assert kept[:12].all() and (routes[12:] == 2).all()  # gamma's inputs move to gamma, no one else does
    assert torch.equal(new.embeddings[kept], old.embeddings[kept])  # bit-identical
    assert [e["name"] for e in json.loads((out / "compose.json").read_text())["experts"]] == ["alpha", "beta", "gamma"]
    assert not list(tmp_path.glob(".composed*"))  # the staging directories are gone


def test_a_fallback_expert_takes_the_inputs_no_pilot_recognises(sources, tmp_path):
    """Inputs near an expert's pilots get that specialist's vector; an unseen topic, below every floor, gets the
    fallback model's; adding an expert for it later moves only those inputs."""
    out = tmp_path / "composed"
    generalist = _specialist(tmp_path, "gamma", seed=7)
    report = compose([_expert(sources, "alpha"), _expert(sources, "beta")], out, pilots_per_expert=2,
                     fallback=ExpertSource("generalist", generalist), floor_quantile=0.25)
    assert report["fallback"] == "generalist" and [e.get("fallback", False) for e in report["experts"]] == [
        False, False, True]
    composed = TSEmbedModel.from_pretrained(out)
    assert composed.pilot_router.fallback == 2 and composed.config.moe.expert_names == ["alpha", "beta", "generalist"]
    assert "the fallback: no pilots" in (out / "README.md").read_text()
    items = _inputs("alpha") + _inputs("beta") + _inputs("gamma")
    before = embed_items(composed, items, batch_size=5, with_routing=True)
    routes = next(iter(before.layer_probs.values())).argmax(dim=-1)
    # the unseen topic falls back every time; a topic's unseen rows mostly reach its expert (an odd one sits below
    # the floor, which a quarter of the expert's own training inputs are below too)
    assert routes[12:].tolist() == [2] * 6 and (routes[:6] == 0).sum() >= 4 and (routes[6:12] == 1).sum() >= 4
    assert set(routes[:12].tolist()) <= {0, 1, 2}
    for expert, model_dir in enumerate([sources["alpha"][0], sources["beta"][0], generalist]):
        mine = (routes == expert).nonzero().flatten().tolist()
        own = embed_items(TSEmbedModel.from_pretrained(model_dir), [items[i] for i in mine], batch_size=4).embeddings
        torch.testing.assert_close(before.embeddings[mine], own, atol=1e-5, rtol=1e-5)  # the routed model's vector
    # the fallback was trained on gamma but owns no dataset: reaching it is never "routed right"
    report = routing_accuracy(composed, _one_dataset_suite(tmp_path, "gamma"), "dev")
    assert "accuracy" not in report["datasets"]["gamma"] and report["datasets"]["gamma"]["routed"]["generalist"] > 0

    add_expert(_expert(sources, "gamma"), out, pilots_per_expert=2)
    after = TSEmbedModel.from_pretrained(out)
    assert after.pilot_router.fallback == 2 and torch.equal(after.pilot_router.floors[:3], composed.pilot_router.floors)
    assert after.pilot_router.floors[3] > -1.0  # the new expert gets a floor by the same quantile
    new = embed_items(after, items, batch_size=5, with_routing=True)
    routes = next(iter(new.layer_probs.values())).argmax(dim=-1)
    assert (routes[12:] == 3).sum() >= 4 and set(routes[12:].tolist()) <= {2, 3}  # the new topic has its expert
    kept = (routes < 3) & (routes == next(iter(before.layer_probs.values())).argmax(dim=-1))
    assert kept[:12].all() and torch.equal(new.embeddings[kept], before.embeddings[kept])  # bit-identical
    with pytest.raises(ConfigError, match="--fallback needs --top-k 1"):
        compose([_expert(sources, "alpha"), _expert(sources, "beta")], tmp_path / "x", top_k=2,
                fallback=ExpertSource("generalist", generalist))


def _one_dataset_suite(tmp_path: Path, topic: str) -> Path:
    """A suite with one dev dataset of ``topic``'s unseen rows (the fallback's own training datasets don't count)."""
    suite = tmp_path / f"suite-{topic}"
    (suite / "dev").mkdir(parents=True)
    rows = [{"qry_text": t, "qry_img_path": "", "tgt_text": [f"{topic} passage", "other"], "tgt_img_path": ["", ""]}
            for t in _texts(topic, 4, offset=40)]
    (suite / "dev" / f"{topic}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {"name": topic, "meta_task": "retrieval", "ood": False, "query_template": "{x}", "target_template": "{x}",
            "description": topic, "files": {"dev": f"dev/{topic}.jsonl"}}
    (suite / "suite.json").write_text(json.dumps({"format": "tsembed-suite", "format_version": 1,
                                                  "datasets": {topic: info}}))
    return suite


def test_routing_accuracy_counts_each_dataset_against_its_expert(sources, tmp_path):
    compose([_expert(sources, t) for t in TOPICS], tmp_path / "c", pilots_per_expert=2)
    model = TSEmbedModel.from_pretrained(tmp_path / "c")
    suite = tmp_path / "suite"
    (suite / "dev").mkdir(parents=True)
    datasets = {}
    for topic in TOPICS:
        rows = [{"qry_text": t, "qry_img_path": "", "tgt_text": [f"{topic} passage", "other"],
                 "tgt_img_path": ["", ""]} for t in _texts(topic, 4, offset=40)]
        (suite / "dev" / f"{topic}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        datasets[topic] = {"name": topic, "meta_task": "retrieval", "ood": False, "query_template": "{x}",
                           "target_template": "{x}", "description": topic, "files": {"dev": f"dev/{topic}.jsonl"}}
        datasets[topic]["condition"] = f"{topic}-cond"
    datasets["unowned"] = {**datasets["alpha"], "name": "unowned", "condition": "other"}
    datasets["reworded"] = {**datasets["beta"], "name": "reworded"}  # no expert trained on it: beta's condition
    (suite / "suite.json").write_text(json.dumps({"format": "tsembed-suite", "format_version": 1,
                                                  "datasets": datasets}))
    report = routing_accuracy(model, suite, "dev", batch_size=4)
    assert report["accuracy"] == 1.0 and report["query_accuracy"] == 1.0
    assert report["datasets"]["beta"]["expert"] == "beta" and report["datasets"]["beta"]["query_accuracy"] == 1.0
    assert "accuracy" not in report["datasets"]["unowned"]  # no expert trained on it: listed, not scored
    assert report["datasets"]["reworded"]["expert"] == "beta"


def test_bad_compositions_name_the_expert_and_the_difference(sources, tmp_path):
    with pytest.raises(ConfigError, match="at least two experts"):
        compose([_expert(sources, "alpha")], tmp_path / "x")
    with pytest.raises(ConfigError, match="repeat"):
        compose([_expert(sources, "alpha"), ExpertSource("alpha", sources["beta"][0], sources["beta"][1])],
                tmp_path / "x")
    wide = _specialist(tmp_path, "beta", seed=9, rank=4)
    with pytest.raises(ConfigError, match=r"expert 'wide'.*moe.rank: 2 vs 4"):
        compose([_expert(sources, "alpha"), ExpertSource("wide", wide, sources["beta"][1])], tmp_path / "x")
    with pytest.raises(ConfigError, match="--pilot-data beta=ROWS"):
        compose([_expert(sources, "alpha"), ExpertSource("beta", sources["beta"][0])], tmp_path / "x")
    with pytest.raises(ConfigError, match="not a composed model"):
        add_expert(_expert(sources, "gamma"), sources["alpha"][0])
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_cli_composes_adds_and_reports_routing(sources, tmp_path, capsys):
    out = tmp_path / "c"
    args = ["compose", "--out", str(out), "--pilots", "2"]
    for topic in ("alpha", "beta"):
        args += ["--expert", f"{topic}={sources[topic][0]}", "--pilot-data", f"{topic}={sources[topic][1]}"]
    assert main(args) == 0
    assert main(["compose", "--add", f"gamma={sources['gamma'][0]}", "--pilot-data",
                 f"gamma={sources['gamma'][1]}", "--to", str(out), "--pilots", "2"]) == 0
    assert TSEmbedModel.from_pretrained(out).config.moe.expert_names == ["alpha", "beta", "gamma"]
    assert main(["compose", "--add", "x=y", "--out", str(out)]) == 2  # --add goes with --to
    assert "--to" in capsys.readouterr().err
    with_fallback = tmp_path / "f"
    assert main([*args[:2], str(with_fallback), *args[3:], "--fallback", f"generalist={sources['gamma'][0]}",
                 "--floor-quantile", "0.1"]) == 0
    report = json.loads((with_fallback / "compose.json").read_text())
    assert report["fallback"] == "generalist" and report["floor_quantile"] == 0.1
    assert main(["compose", "--add", f"gamma={sources['gamma'][0]}", "--to", str(with_fallback), "--fallback",
                 "x=y"]) == 2


def test_a_text_router_reads_the_instruction_not_the_image(sources, tmp_path):
    """router_input text: the pilots and the router see an input's text alone, so the same picture under two
    instructions goes to two experts."""
    from PIL import Image

    from tsembed.model import PILOT_VIEW_KEY

    compose([_expert(sources, t) for t in TOPICS], tmp_path / "c", pilots_per_expert=2)
    model = TSEmbedModel.from_pretrained(tmp_path / "c")
    assert model.config.moe.router_input == "text"
    picture = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (250, 10, 10)).save(picture)
    items = [EmbedInput(text=f"<|image_1|> {t}", image=picture) for t in (_texts("alpha", 1)[0], _texts("gamma", 1)[0])]
    batch = model.prepare(items)
    assert batch[PILOT_VIEW_KEY]["input_ids"].shape[1] < batch["input_ids"].shape[1]  # the image's words are gone
    routed = embed_items(model, items, batch_size=2, with_routing=True)
    assert next(iter(routed.layer_probs.values())).argmax(dim=-1).tolist() == [0, 2]


def test_query_routed_targets_are_embedded_by_the_querys_expert(sources, tmp_path):
    """--target-routing query: a row's candidates (here each from another topic, so routed elsewhere by themselves)
    are scored with the vectors their query's expert gives them: the same as embedding them by hand in route_to()."""
    from tsembed.evaluation.harness import evaluate

    compose([_expert(sources, t) for t in TOPICS], tmp_path / "c", pilots_per_expert=2)
    model = TSEmbedModel.from_pretrained(tmp_path / "c")
    rows = [{"qry_text": q, "qry_img_path": "", "tgt_text": ["gamma cars passage", "beta mountain", "alpha apples"],
             "tgt_img_path": ["", "", ""]} for q in _texts("alpha", 3, offset=30)]
    path = tmp_path / "AlphaRows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    own = evaluate(model, {"AlphaRows": path}, progress=False)
    routed = evaluate(model, {"AlphaRows": path}, progress=False, target_routing="query")
    assert routed.settings["target_routing"] == "query"
    queries = embed_items(model, [EmbedInput(text=r["qry_text"]) for r in rows], 4).embeddings
    with model.route_to("alpha"):
        candidates = embed_items(model, [EmbedInput(text=t) for t in rows[0]["tgt_text"]], 4).embeddings
    expected = ((queries @ candidates.T).argmax(dim=-1) == 0).float().mean().item()
    assert routed.datasets[0].metrics["hit@1"] == pytest.approx(expected)
    assert own.hits["AlphaRows"].hits.tolist() != [] and model._forced_expert is None
    with pytest.raises(ConfigError, match="composed model"):
        evaluate(TSEmbedModel.from_pretrained(sources["alpha"][0]), {"AlphaRows": path}, progress=False,
                 target_routing="query")
    with pytest.raises(Exception, match="no expert named 'delta'"), model.route_to("delta"):
        pass


def test_a_composed_model_exports_each_expert_and_encodes_like_any_model(sources, tmp_path):
    """Export --expert e of a composed model is specialist e merged; the Encoder and the server path (prepare with
    the text view, move_batch) embed with pilot routing."""
    from tsembed import Encoder
    from tsembed.inference.export import export_merged_expert

    compose([_expert(sources, t) for t in TOPICS], tmp_path / "c", pilots_per_expert=2)
    merged = TSEmbedModel.from_pretrained(export_merged_expert(tmp_path / "c", tmp_path / "beta-merged", 1))
    items = _inputs("beta")
    own = embed_items(TSEmbedModel.from_pretrained(sources["beta"][0]), items, 4).embeddings
    torch.testing.assert_close(embed_items(merged, items, 4).embeddings, own, atol=1e-5, rtol=1e-5)
    encoder = Encoder.from_pretrained(tmp_path / "c")
    vectors = encoder.encode([x.text for x in items], convert_to_tensor=True)
    torch.testing.assert_close(torch.as_tensor(vectors).float(), own, atol=1e-5, rtol=1e-5)


def test_the_server_embeds_with_the_composed_models_experts(sources, tmp_path):
    from fastapi.testclient import TestClient

    from tsembed.inference.server import ServerSettings, create_app

    compose([_expert(sources, t) for t in TOPICS], tmp_path / "c", pilots_per_expert=2)
    model = TSEmbedModel.from_pretrained(tmp_path / "c")
    items = _inputs("gamma")[:3]
    expected = embed_items(TSEmbedModel.from_pretrained(sources["gamma"][0]), items, 4).embeddings
    with TestClient(create_app(model, ServerSettings(model_name="composed", self_check=False))) as client:
        response = client.post("/v1/embeddings", json={"model": "composed", "input": [x.text for x in items]})
    assert response.status_code == 200, response.text
    got = torch.tensor([d["embedding"] for d in response.json()["data"]])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_pilots_fitted_on_queries_alone_read_each_training_rows_query(tmp_path):
    """--pilot-side query: an expert's pilot inputs are its training rows' queries (not their positives, which with
    one generic target instruction look alike for every expert); corpus rows have none to give."""
    from types import SimpleNamespace

    from tsembed.data.suite import build_suite
    from tsembed.inference.calibration import pair_inputs
    from tsembed.inference.compose import pilot_inputs

    suite = build_suite(tmp_path / "suite", seed=0, progress=False, max_train_per_dataset=6, max_eval_per_dataset=4,
                        pool_size=8, vqa_choices=6)
    name = suite.names(split="train")[0]
    source = SimpleNamespace(name="e", config=SimpleNamespace(extra={"train_datasets": [name]}))
    pairs, where = pilot_inputs(source, None, suite.root, 4)
    queries, where_q = pilot_inputs(source, None, suite.root, 4, "query")
    rows = suite.train(name).rows[:4]
    assert len(pairs) == 8 and len(queries) == 4 and where_q.endswith("train queries: " + name)
    assert where.endswith("train: " + name)
    assert queries == [row.query_input(suite.train(name).image_root) for row in rows]
    assert queries == pair_inputs(suite.train(name), 4)[0::2]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a passage"}\n')
    with pytest.raises(ConfigError, match="corpus rows have no queries"):
        pilot_inputs(source, corpus, None, 4, "query")
    with pytest.raises(ConfigError, match="--pilot-side must be one of"):
        pilot_inputs(source, None, suite.root, 4, "target")


def test_a_composed_model_can_carry_query_routed_targets(sources, tmp_path):
    """compose --target-routing query: the model says so (moe.target_routing), `tsembed eval` then embeds each row's
    candidates with its query's expert by default, the pilots default to the rows' queries, and --add keeps both."""
    from tsembed.evaluation.harness import evaluate

    compose([_expert(sources, t) for t in ("alpha", "beta")], tmp_path / "own", pilots_per_expert=2)
    report = compose([_expert(sources, t) for t in ("alpha", "beta")], tmp_path / "q", pilots_per_expert=2,
                     target_routing="query")
    assert report["pilot_side"] == "query" and report["target_routing"] == "query"
    assert all(e["pilot_side"] == "query" and e["pilot_inputs"] == 12 for e in report["experts"])
    model = TSEmbedModel.from_pretrained(tmp_path / "q")
    assert model.config.moe.target_routing == "query" and model.query_routed
    rows = [{"qry_text": q, "qry_img_path": "", "tgt_text": ["gamma cars passage", "beta mountain", "alpha apples"],
             "tgt_img_path": ["", "", ""]} for q in _texts("alpha", 3, offset=30) + _texts("beta", 3, offset=30)]
    path = tmp_path / "Rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    default = evaluate(model, {"Rows": path}, progress=False)
    assert default.settings["target_routing"] == "query"
    by_hand = evaluate(model, {"Rows": path}, progress=False, target_routing="query")
    assert default.hits["Rows"].hits.tolist() == by_hand.hits["Rows"].hits.tolist()
    assert evaluate(TSEmbedModel.from_pretrained(tmp_path / "own"), {"Rows": path},
                    progress=False).settings["target_routing"] == "own"
    add_expert(_expert(sources, "gamma"), tmp_path / "q", pilots_per_expert=2)
    grown = TSEmbedModel.from_pretrained(tmp_path / "q")
    assert grown.config.moe.target_routing == "query"
    assert grown.config.extra["composed_from"][-1]["pilot_side"] == "query"
    with pytest.raises(ConfigError, match="needs --top-k 1"):
        compose([_expert(sources, t) for t in ("alpha", "beta")], tmp_path / "x", top_k=2, target_routing="query")
