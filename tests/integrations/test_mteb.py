"""mteb runs a tsembed model offline: tiny local tasks built here (text and text-to-image retrieval over in-memory
data, generated images) plus mteb's own mock tasks; mteb's scores are checked against scores computed by hand from
``Encoder.encode_query`` / ``encode_document``."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.inference.conftest import ImageToyBackbone, build_model
from tsembed.backbones import BACKBONES
from tsembed.inference.encoder import Encoder

HAS_MTEB = importlib.util.find_spec("mteb") is not None
needs_mteb = pytest.mark.skipif(not HAS_MTEB, reason="mteb is not installed (pip install 'tsembed[mteb]')")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "purple": (140, 40, 200)}
WORDS = ["apple tree", "river boat", "mountain snow", "city night", "forest path", "desert sun"]


def _metadata(name: str, task_type: str, category: str, modalities: list[str]):
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name=name, type=task_type, category=category, modalities=modalities, main_score="ndcg_at_10",
        description="A tiny in-memory task for tsembed's tests.", reference=None,
        dataset={"path": f"tsembed-tests/{name}", "revision": "1"}, eval_splits=["test"], eval_langs=["eng-Latn"],
        date=("2026-01-01", "2026-01-01"), dialect=[], domains=[], task_subtypes=[], license="cc-by-4.0",
        annotations_creators="derived", sample_creation="created", bibtex_citation="")


def tiny_tasks():
    """Two local retrieval tasks: text -> text and text -> image (colour squares)."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    class TinyTextRetrieval(AbsTaskRetrieval):
        metadata = _metadata("TsembedTinyT2T", "Retrieval", "t2t", ["text"])

        def load_data(self, num_proc=None, **kwargs):
            queries = Dataset.from_dict({"id": [f"q{i}" for i in range(len(WORDS))],
                                         "text": [f"where is the {w}" for w in WORDS]})
            corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(len(WORDS))], "text": [f"a {w}" for w in WORDS]})
            qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(WORDS))}
            self.dataset = {"default": {"test": RetrievalSplitData(queries=queries, corpus=corpus,
                                                                   relevant_docs=qrels, top_ranked=None)}}
            self.data_loaded = True

    class TinyTextToImage(AbsTaskRetrieval):
        metadata = _metadata("TsembedTinyT2I", "Any2AnyRetrieval", "t2i", ["text", "image"])

        def load_data(self, num_proc=None, **kwargs):
            names = list(COLOURS)
            # ImageToyBackbone reads an image as three colour words (imgrR imggG imgbB): a query naming them can
            # find its image, so the scores are not all ties.
            words = [" ".join(f"img{c}{v // 32}" for c, v in zip("rgb", COLOURS[n], strict=True)) for n in names]
            queries = Dataset.from_dict({"id": [f"q{i}" for i in range(len(names))], "text": words})
            corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(len(names))],
                                        "image": [Image.new("RGB", (16, 16), COLOURS[n]) for n in names]})
            qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(names))}
            self.dataset = {"default": {"test": RetrievalSplitData(queries=queries, corpus=corpus,
                                                                   relevant_docs=qrels, top_ranked=None)}}
            self.data_loaded = True

    return TinyTextRetrieval(), TinyTextToImage()


def hand_scores(encoder: Encoder, queries: list, docs: list) -> dict[str, float]:
    """recall@1 and MRR@10 with one relevant document per query (query i -> document i)."""
    q = encoder.encode_query(queries)  # [N, D]
    d = encoder.encode_document(docs)  # [N, D]
    scores = torch.from_numpy(q @ d.T)  # [N, N] cosine (both L2-normalised)
    rank = (scores > scores.diagonal()[:, None]).sum(1) + 1  # [N] 1-based rank of the relevant document
    return {"recall_at_1": float((rank == 1).float().mean()), "mrr_at_10": float(((rank <= 10) / rank).mean())}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model()


@needs_mteb
def test_mteb_evaluate_runs_offline_and_matches_hand_scores(model, monkeypatch):
    import mteb
    from mteb.mocks.mock_tasks.classification import MockClassificationTask
    from mteb.mocks.mock_tasks.retrieval import MockAny2AnyRetrievalI2TTask

    from tsembed.integrations.mteb import MTEBEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    wrapper = MTEBEncoder(model, name="tsembed-tests/toy", batch_size=4)
    t2t, t2i = tiny_tasks()
    result = mteb.evaluate(wrapper, [t2t, t2i, MockAny2AnyRetrievalI2TTask(), MockClassificationTask()], cache=None,
                           show_progress_bar=False)
    assert result.exceptions is None or not result.exceptions
    scores = {r.task_name: r.scores["test"][0] for r in result.task_results}
    assert set(scores) == {"TsembedTinyT2T", "TsembedTinyT2I", "MockAny2AnyRetrievalI2T", "MockClassificationTask"}
    assert all(np.isfinite(s["main_score"]) for s in scores.values())

    encoder = Encoder(model)
    expected = hand_scores(encoder, [f"where is the {w}" for w in WORDS], [f"a {w}" for w in WORDS])
    for key, value in expected.items():
        assert scores["TsembedTinyT2T"][key] == pytest.approx(value, abs=1e-4)
    names = list(COLOURS)
    words = [" ".join(f"img{c}{v // 32}" for c, v in zip("rgb", COLOURS[n], strict=True)) for n in names]
    images = [Image.new("RGB", (16, 16), COLOURS[n]) for n in names]
    expected = hand_scores(encoder, words, images)
    for key, value in expected.items():
        assert scores["TsembedTinyT2I"][key] == pytest.approx(value, abs=1e-4)
    assert expected["recall_at_1"] > 1 / len(names)  # the images were really seen (chance is 0.2)


@needs_mteb
def test_model_meta_and_loading_from_a_directory(model, tmp_path, monkeypatch):
    from tsembed.evaluation.identity import model_identity
    from tsembed.integrations.mteb import MTEBEncoder, model_meta

    monkeypatch.setitem(BACKBONES, ImageToyBackbone.kind, ImageToyBackbone)
    meta = model_meta(model, "me/toy", license="apache-2.0", languages=["eng-Latn"])
    assert (meta.name, meta.revision, meta.embed_dim) == ("me/toy", model_identity(model)[:12], 32)
    assert meta.n_parameters == sum(p.numel() for p in model.parameters())
    assert meta.modalities == ["text", "image"] and meta.similarity_fn_name.value == "cosine"
    with pytest.raises(ValueError, match="organization/model_name"):
        model_meta(model, "no-slash")

    model.save_pretrained(tmp_path / "toy-model")
    wrapper = MTEBEncoder.from_pretrained(tmp_path / "toy-model", device="cpu")
    assert wrapper.mteb_model_meta.name == "tsembed/toy-model"
    assert wrapper.mteb_model_meta.revision == model_identity(model)[:12]  # the same weights, the same revision
    # mteb's own path (mteb's CLI, ModelMeta.load_model) calls ModelMeta.loader with the name, revision and
    # loader_kwargs; load_model itself also wants mteb's "image" extra (torchvision) for an image model.
    meta_dir = wrapper.mteb_model_meta
    loaded = meta_dir.loader(meta_dir.name, revision=meta_dir.revision, device="cpu", **meta_dir.loader_kwargs)
    assert isinstance(loaded, MTEBEncoder) and loaded.mteb_model_meta.revision == meta.revision
    if importlib.util.find_spec("torchvision") is not None:
        assert isinstance(meta_dir.load_model(), MTEBEncoder)


@needs_mteb
def test_model_meta_release_date_languages_and_training_datasets(model, tmp_path, monkeypatch):
    from datetime import UTC, datetime

    from tsembed.integrations.mteb import MTEBEncoder, model_meta

    monkeypatch.setitem(BACKBONES, ImageToyBackbone.kind, ImageToyBackbone)
    meta = model_meta(model, "me/toy", release_date="2026-12-01", languages=["eng-Latn"],
                      training_datasets={"MSCOCOT2IRetrieval"})
    assert (meta.release_date, meta.languages, meta.training_datasets) == (
        "2026-12-01", ["eng-Latn"], {"MSCOCOT2IRetrieval"})
    assert model_meta(model, "me/toy").training_datasets is None  # untrained: unknown
    model.config.extra = {"train_datasets": ["MSCOCO_t2i", "CIRR", "EmojiGroup"]}  # MMEB-train subsets and our own
    assert model_meta(model, "me/toy").training_datasets == {"MSCOCOT2IRetrieval", "CIRRIT2IRetrieval"}
    model.config.extra = {"train_datasets": ["EmojiGroup"]}
    assert model_meta(model, "me/toy").training_datasets == set()  # trained, on nothing mteb has
    model.save_pretrained(tmp_path / "toy-model")
    saved = MTEBEncoder.from_pretrained(tmp_path / "toy-model", device="cpu").mteb_model_meta
    assert saved.release_date == datetime.now(UTC).date().isoformat()  # the day it was saved


def test_model_meta_languages_from_the_pretrained_card(default_backbone_session):
    pytest.importorskip("mteb")
    from tsembed.integrations.mteb import model_meta
    from tsembed.model import ModelConfig, TSEmbedModel

    model = TSEmbedModel(default_backbone_session, ModelConfig(backbone=default_backbone_session.config()))
    assert model_meta(model, "me/default").languages == ["eng-Latn"]  # all-MiniLM-L6-v2's card: language en


@needs_mteb
def test_instructions_and_task_hints(model):
    from mteb.types import PromptType

    from tsembed.integrations.mteb import MTEBEncoder

    t2t, t2i = tiny_tasks()
    plain = MTEBEncoder(model, name="a/b")
    assert plain._instruction(t2t.metadata, PromptType.query) == "query:"  # the model's own instructions
    assert plain._instruction(t2t.metadata, PromptType.document) == "passage:"
    assert plain._instruction(t2t.metadata, None) is None
    prompted = MTEBEncoder(model, name="a/b", prompts={"TsembedTinyT2I": "Find the image of the colours:",
                                                       "Retrieval": "Retrieve:", "document": ""})
    assert prompted._instruction(t2i.metadata, PromptType.query) == "Find the image of the colours:"  # task name
    assert prompted._instruction(t2t.metadata, PromptType.query) == "Retrieve:"  # task type
    assert prompted._instruction(t2i.metadata, PromptType.document) == "Find the image of the colours:"
    assert MTEBEncoder(model, name="a/b", prompts={"document": ""})._instruction(t2t.metadata, PromptType.document) \
        is None  # an empty prompt means none, not the model's own
    task_prompts = MTEBEncoder(model, name="a/b", use_task_prompts=True)
    assert task_prompts._instruction(t2t.metadata, PromptType.query) == "Retrieve text based on user query."
    assert plain._task_hint(t2t.metadata) is None  # the model has no task hints
    hinted = MTEBEncoder(build_model(task_hints=("retrieval", "vqa")), name="a/b")
    assert hinted._task_hint(t2i.metadata) == "retrieval"
    # With a hint the router sees it: embeddings differ from the same inputs without one.
    docs = [Image.new("RGB", (16, 16), c) for c in COLOURS.values()]
    with_hint = hinted.encoder.encode_document(docs, task="retrieval")
    assert not np.allclose(with_hint, hinted.encoder.encode_document(docs, task="vqa"))


def test_without_mteb_the_import_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # as if not installed
    for name in [m for m in sys.modules if m == "tsembed.integrations.mteb" or m.startswith("mteb.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"pip install 'tsembed\[mteb\]'"):
        importlib.import_module("tsembed.integrations.mteb")
