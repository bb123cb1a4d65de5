"""The MMEB protocol end to end on a toy suite: scores, averages, cache reuse and resume."""

import json

import numpy as np
import pytest
import torch

from tsembed.errors import ConfigError
from tsembed.evaluation import CachedEncoder, EvalResults, evaluate, score_dataset
from tsembed.inference import encode
from tsembed.inputs import EmbedInput
from tsembed.moe import MoELoRALinear

from .helpers import TOY_DATASETS, ForwardCounter, toy_model, write_toy_suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_toy_suite(tmp_path_factory.mktemp("suite"))


def test_score_dataset_hand_case():
    # inputs: 0 query A, 1 query B, 2..4 candidates
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [0.6, 0.6]])
    queries = torch.tensor([0, 1])
    cands = torch.tensor([[2, 3, 4], [2, 4, 0]])  # row 1's positive is input 2 (0.1) but 4 scores 0.6
    valid = torch.tensor([[True, True, True], [True, True, False]])
    metrics, pool = score_dataset(emb, queries, cands, valid, global_pool=True)
    assert metrics["hit@1"] == pytest.approx(0.5)
    # pool = {2, 3, 4}; query A: 2 first (rank 1); query B scores 2:0.1 3:0.9 4:0.6 -> rank 3
    assert pool == 3
    assert metrics["global_recall@1"] == pytest.approx(0.5)
    assert metrics["global_mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_evaluate_suite_and_averages(suite):
    results = evaluate(toy_model(), suite, progress=False, global_pool=True)
    assert [d.name for d in results.datasets] == list(TOY_DATASETS)
    for d in results.datasets:
        meta_task, ood, rows, cands = TOY_DATASETS[d.name]
        assert (d.meta_task, d.ood, d.num_rows, d.mean_candidates) == (meta_task, ood, rows, cands)
        assert 0.0 <= d.metrics["hit@1"] <= 1.0 and "global_ndcg@10" in d.metrics
    hits = {d.name: d.metrics["hit@1"] for d in results.datasets}
    agg = results.aggregates
    assert agg["overall"]["hit@1"] == pytest.approx(sum(hits.values()) / len(hits))  # mean over datasets
    assert agg["IND"]["hit@1"] == pytest.approx((hits["ColorCls"] + hits["AnimalVQA"] + hits["WordRetrieval"]) / 3)
    assert agg["OOD"]["hit@1"] == pytest.approx(hits["WordGrounding"])
    assert agg["classification"]["num_datasets"] == 1 and results.overall == agg["overall"]["hit@1"]
    back = EvalResults.from_dict(json.loads(results.to_json()))
    assert back.to_dict() == results.to_dict()
    table = results.to_markdown()
    assert "| overall | 4 |" in table and "WordGrounding" in table and "pool mrr" in table


def test_dataset_selection_and_unknown_name(suite):
    results = evaluate(toy_model(adapters=False), suite, ["ColorCls,AnimalVQA"], progress=False)
    assert [d.name for d in results.datasets] == ["ColorCls", "AnimalVQA"]
    with pytest.raises(ConfigError, match="ColorCls"):
        evaluate(toy_model(adapters=False), suite, ["Nope"], progress=False)


def test_second_run_encodes_nothing(suite, tmp_path):
    model = toy_model()
    counter = ForwardCounter(model)
    first = evaluate(model, suite, cache_dir=tmp_path, batch_size=4, progress=False)
    distinct = counter.inputs
    assert first.timing["encoded"] == distinct > 0
    assert first.timing["requested"] > distinct  # shared candidates were de-duplicated
    calls = counter.calls
    second = evaluate(model, suite, cache_dir=tmp_path, batch_size=4, progress=False)
    assert counter.calls == calls and second.timing["encoded"] == 0
    fresh = toy_model()  # a new object with the same weights has the same identity
    fresh_counter = ForwardCounter(fresh)
    assert evaluate(fresh, suite, cache_dir=tmp_path, progress=False).timing["encoded"] == 0
    assert fresh_counter.calls == 0
    assert [d.metrics for d in second.datasets] == [d.metrics for d in first.datasets]


def test_changed_weights_miss_the_cache(suite, tmp_path):
    evaluate(toy_model(), suite, cache_dir=tmp_path, progress=False)
    other = toy_model(seed=7)
    assert any(isinstance(m, MoELoRALinear) for m in other.modules())
    assert evaluate(other, suite, cache_dir=tmp_path, progress=False).timing["encoded"] > 0


class _Crash(RuntimeError):
    pass


def test_interrupted_run_resumes(suite, tmp_path):
    model = toy_model()
    counter = ForwardCounter(model)
    full = evaluate(model, suite, progress=False)  # no disk cache: how many inputs exist
    total = counter.inputs

    crashing = toy_model()
    calls = {"n": 0}

    def boom(module, args, output):
        calls["n"] += 1
        if calls["n"] == 6:
            raise _Crash

    handle = crashing.register_forward_hook(boom)
    encoder = CachedEncoder(crashing, tmp_path, batch_size=4, progress=False, shard_size=4)
    with pytest.raises(_Crash):
        evaluate(crashing, suite, encoder=encoder)
    handle.remove()
    resumed = toy_model()
    counter = ForwardCounter(resumed)
    results = evaluate(resumed, suite, cache_dir=tmp_path, batch_size=4, progress=False)
    assert counter.inputs == total - 5 * 4  # the five batches before the crash were kept
    assert [d.metrics for d in results.datasets] == [d.metrics for d in full.datasets]


def test_base_model_without_adapters(suite):
    model = toy_model(adapters=False)
    assert model.config.moe is None
    results = evaluate(model, suite, progress=False)
    assert results.overall is not None


@pytest.mark.parametrize("hinted", [True, False])
def test_eval_inputs_declare_their_meta_task_only_for_hinted_models(suite, hinted):
    model = toy_model(task_hints=("classification", "vqa", "retrieval", "grounding") if hinted else ())
    seen: list[tuple[str | None, str]] = []
    prepare = model.prepare

    def spy(inputs):
        seen.extend((x.task, x.text) for x in inputs)
        return prepare(inputs)

    model.prepare = spy
    evaluate(model, suite, progress=False)
    tasks = {text.split(" query")[0]: task for task, text in seen if " query " in text}
    expected = {name: spec[0] if hinted else None for name, spec in TOY_DATASETS.items()}
    assert tasks == expected
    # without hints the label shared across datasets is one cache entry; with hints one per task
    assert sum(text == "shared label" for _, text in seen) == (len(TOY_DATASETS) if hinted else 1)


def test_an_input_s_own_task_wins_over_the_eval_set_s_as_in_encode():
    model = toy_model(task_hints=("classification", "vqa", "retrieval", "grounding"))
    for layer in model.modules():
        if isinstance(layer, MoELoRALinear):
            torch.nn.init.normal_(layer.router_hint, std=3.0)  # zero at init: give the tasks an effect
    own = EmbedInput(text="a red apple", task="vqa")
    got = CachedEncoder(model, progress=False).encode([own, EmbedInput(text="a red apple")], task="retrieval")
    expected = encode(model, [own, "a red apple"], task="retrieval")
    np.testing.assert_allclose(got.embeddings, expected, atol=1e-6)
    assert not np.allclose(got.embeddings[0], got.embeddings[1], atol=1e-4)


def test_results_record_query_cosine_and_flag_a_collapsed_model(suite, tmp_path):
    from tsembed.health import DAGGER
    from tsembed.inputs import input_key

    healthy = evaluate(toy_model(adapters=False), suite, progress=False)
    assert not healthy.collapsed and healthy.to_dict()["collapsed_datasets"] == []
    first = healthy.datasets[0]  # the reference: the model's own embeddings of the dataset's distinct queries
    from tsembed.evaluation.loading import load_eval_set
    from tsembed.evaluation.sources import resolve_eval_sets

    spec = resolve_eval_sets(suite, [first.name], "eval")[0]
    queries = list({input_key(q): q for q in (row.query_input(spec.image_root) for row in load_eval_set(spec).rows)
                    }.values())
    assert len(queries) >= 2
    unit = encode(toy_model(adapters=False), queries, show_progress_bar=False)
    pairs = [float(unit[i] @ unit[j]) for i in range(len(unit)) for j in range(len(unit)) if i != j]
    reference = sum(pairs) / len(pairs)
    assert first.query_cosine == pytest.approx(reference, abs=1e-4) and first.query_cosine < 0.99

    model = toy_model(adapters=False)
    with torch.no_grad():  # every input the same embedding: the collapsed point
        model.backbone.proj.weight.zero_()
        model.backbone.proj.bias.fill_(1.0)
    collapsed = evaluate(model, suite, progress=False)
    assert collapsed.collapsed and collapsed.collapsed_datasets == [d.name for d in collapsed.datasets]
    assert all(d.query_cosine == pytest.approx(1.0) for d in collapsed.datasets)
    json_path, md_path = collapsed.save(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["collapsed"] is True and data["collapsed_datasets"] == collapsed.collapsed_datasets
    back = EvalResults.from_json(json_path)
    assert back.to_dict() == collapsed.to_dict() and back.collapsed
    assert f"{collapsed.datasets[0].name} {DAGGER}" in md_path.read_text()
    for d in data["datasets"]:  # a file written before query_cosine was recorded still loads, as not collapsed
        del d["query_cosine"]
    old = EvalResults.from_dict({k: v for k, v in data.items() if not k.startswith("collapse")})
    assert not old.collapsed and old.datasets[0].query_cosine is None


def test_a_query_routed_model_scores_each_row_with_its_querys_experts(tmp_path):
    """moe.target_routing='query': by default a row's candidates are embedded with its query's top-1 expert in every
    layer (a route per query, from the routing cache), hit for hit what embedding them by hand inside forced_routes
    gives; 'own' routes them by themselves, and a model trained without it refuses 'query'."""
    from tsembed.encoding import embed_items
    from tsembed.moe import forced_routes

    from .helpers import eval_rows, write_jsonl

    rows = eval_rows("WordRetrieval", 6, 5)
    path = write_jsonl(tmp_path / "WordRetrieval.jsonl", rows)
    model = toy_model(target_routing="query")
    routed = evaluate(model, {"WordRetrieval": path}, progress=False, cache_dir=tmp_path / "cache")
    assert routed.settings["target_routing"] == "query"
    queries = embed_items(model, [EmbedInput(text=r["qry_text"]) for r in rows], 4, with_routing=True)
    routes = torch.stack([p.argmax(dim=-1) for p in queries.layer_probs.values()], dim=1)  # [rows, layers]
    assert len({tuple(r) for r in routes.tolist()}) > 1  # the rows really take different routes
    expected = []
    for i, row in enumerate(rows):
        layers = {name: routes[i, j : j + 1] for j, name in enumerate(queries.layer_probs)}
        with forced_routes(model.backbone, layers):
            candidates = embed_items(model, [EmbedInput(text=t) for t in row["tgt_text"]], 4).embeddings
        scores = candidates @ queries.embeddings[i]
        expected.append(bool(scores[0] > scores[1:].max()))
    assert routed.hits["WordRetrieval"].hits.tolist() == expected
    again = evaluate(model, {"WordRetrieval": path}, progress=False, cache_dir=tmp_path / "cache")  # cached routing
    assert again.hits["WordRetrieval"].hits.tolist() == expected
    own = evaluate(model, {"WordRetrieval": path}, progress=False, target_routing="own")
    assert own.settings["target_routing"] == "own"
    with pytest.raises(ConfigError, match="trained with moe.target_routing='query'"):
        evaluate(toy_model(), {"WordRetrieval": path}, progress=False, target_routing="query")
