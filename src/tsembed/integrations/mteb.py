"""Evaluate a tsembed model with `mteb <https://github.com/embeddings-benchmark/mteb>`_: MTEB text tasks, MIEB
image tasks and mteb's MMEB-style any-to-any tasks, through the model's one forward (``Encoder.encode``).

>>> import mteb
>>> from tsembed.integrations.mteb import MTEBEncoder
>>> model = MTEBEncoder.from_pretrained("runs/tsembed/final", name="me/tsembed-minilm")
>>> results = mteb.evaluate(model, mteb.get_tasks(tasks=["STS12"]))

Instructions. ``prompts={key: instruction}`` is looked up in mteb's order: the task's name, its type
("Retrieval", "Any2AnyRetrieval", ...), then the side ("query" / "document"). Without a match a query gets the model's
``query_instruction`` and a document its ``document_instruction`` (what ``Encoder.encode_query`` /
``encode_document`` do), and inputs without a side (classification, STS, clustering) none. ``use_task_prompts=True``
hands the choice to mteb instead (``AbsEncoder.get_instruction``: ``prompts``, then the task's own prompt). An image
input with an instruction reads "<|image_1|> <instruction>", MMEB's form.

Task hints. A model trained with ``moe.task_hints`` gets the meta-task of each mteb task type (``TASK_HINTS``) when
it knows that hint; other models ignore it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tsembed.data.registry import meta_task
from tsembed.errors import DataError
from tsembed.extras import require
from tsembed.inference.encoder import Encoder
from tsembed.inputs import EmbedInput

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

_PURPOSE = "tsembed.integrations.mteb"
AbsEncoder = require("mteb.models.abs_encoder", _PURPOSE).AbsEncoder
ModelMeta = require("mteb.models.model_meta", _PURPOSE).ModelMeta
PromptType = require("mteb.types", _PURPOSE).PromptType

# spelled through the registry's meta_task, so a renamed meta-task fails here instead of drifting
_CLASSIFICATION, _VQA, _RETRIEVAL = (meta_task(n) for n in ("classification", "vqa", "retrieval"))
#: mteb task type -> the tsembed meta-task a task-hinted router is told (types not listed declare none).
TASK_HINTS: dict[str, str] = {
    "Classification": _CLASSIFICATION,
    "MultilabelClassification": _CLASSIFICATION,
    "ImageClassification": _CLASSIFICATION,
    "ZeroShotClassification": _CLASSIFICATION,
    "VisionCentricQA": _VQA,
    "Retrieval": _RETRIEVAL,
    "Reranking": _RETRIEVAL,
    "InstructionRetrieval": _RETRIEVAL,
    "InstructionReranking": _RETRIEVAL,
    "Any2AnyRetrieval": _RETRIEVAL,
    "Any2AnyMultilingualRetrieval": _RETRIEVAL,
    "Any2AnyReranking": _RETRIEVAL,
    "DocumentUnderstanding": _RETRIEVAL,
}
#: MMEB-train subsets -> the mteb tasks built on the same data (what ``ModelMeta.training_datasets`` names, so mteb's
#: leaderboard marks them as seen in training).
MMEB_TRAIN_TO_MTEB: dict[str, tuple[str, ...]] = {
    "ImageNet_1K": ("Imagenet1k", "Imagenet1kZeroShot"),
    "SUN397": ("SUN397", "SUN397ZeroShot"),
    "HatefulMemes": ("HatefulMemesI2TRetrieval", "HatefulMemesT2IRetrieval"),
    "OK-VQA": ("OKVQAIT2TRetrieval",),
    "CIRR": ("CIRRIT2IRetrieval",),
    "VisualNews_t2i": ("VisualNewsT2IRetrieval",),
    "VisualNews_i2t": ("VisualNewsI2TRetrieval",),
    "MSCOCO_t2i": ("MSCOCOT2IRetrieval",),
    "MSCOCO_i2t": ("MSCOCOI2TRetrieval",),
    "NIGHTS": ("NIGHTSI2IRetrieval",),
    "WebQA": ("WebQAT2ITRetrieval", "WebQAT2TRetrieval"),
}
#: Model-card language codes (ISO 639-1) -> mteb's language-script codes.
MTEB_LANGUAGES = {"en": "eng-Latn", "zh": "cmn-Hans", "de": "deu-Latn", "fr": "fra-Latn", "es": "spa-Latn",
                  "ja": "jpn-Jpan", "multilingual": None}


def training_tasks(train_datasets: Iterable[str]) -> set[str]:
    """The mteb tasks a model's training datasets cover (empty when none is known to mteb)."""
    return {task for name in train_datasets for task in MMEB_TRAIN_TO_MTEB.get(name, ())}


def _release_date(directory: str | Path | None) -> str | None:
    """The day a saved model was written (its config's modification date), as mteb wants it: YYYY-MM-DD."""
    if directory is None:
        return None
    from datetime import UTC, datetime

    from tsembed.model import MODEL_CONFIG_NAME

    config = Path(directory) / MODEL_CONFIG_NAME
    if not config.is_file():
        return None
    return datetime.fromtimestamp(config.stat().st_mtime, UTC).date().isoformat()


#: Items embedded per call into the model; bounds how many decoded images are held at once.
CHUNK = 1024


def model_meta(
    model: nn.Module,
    name: str,
    *,
    revision: str | None = None,
    license: str | None = None,
    languages: list[str] | None = None,
    modalities: Iterable[str] = ("text", "image"),
    training_datasets: set[str] | None = None,
    reference: str | None = None,
    directory: str | Path | None = None,
    release_date: str | None = None,
) -> ModelMeta:
    """mteb's ``ModelMeta`` for a tsembed model.

    Args:
        model: A ``TSEmbedModel``.
        name: "organization/model_name", as mteb requires; it names the results folder.
        revision: Default: the first 12 hex digits of the model's content hash (config and every weight), so
            mteb's result cache never mixes two trainings of one name.
        license, reference: As in mteb.
        languages: mteb codes like ``["eng-Latn"]``; default: the pretrained weights' card languages, mapped.
        modalities: What the model embeds; every tsembed backbone but the text-only test toy embeds images.
        training_datasets: mteb task names the model was trained on (marks contamination on mteb's leaderboard);
            default: the mteb tasks built on the MMEB-train subsets it trained on (``MMEB_TRAIN_TO_MTEB``), an
            empty set for a trained model none of whose data mteb has, None (unknown) for an untrained one.
        directory: The saved model; with it, ``meta.load_model()`` (and mteb's CLI) can load the model.
        release_date: YYYY-MM-DD; default: the day ``directory`` was saved (None without a directory).
    """
    if revision is None:
        from tsembed.evaluation.identity import model_identity

        revision = model_identity(model)[:12]
    backbone = getattr(model, "backbone", model)
    params = list(model.parameters())
    pretrained = backbone.card_metadata() if hasattr(backbone, "card_metadata") else {}
    if languages is None and pretrained.get("language"):
        languages = [MTEB_LANGUAGES[code] for code in pretrained["language"] if MTEB_LANGUAGES.get(code)] or None
    trained_on = getattr(getattr(model, "config", None), "extra", {}).get("train_datasets")
    if training_datasets is None and trained_on is not None:
        training_datasets = training_tasks(trained_on)
    return ModelMeta(
        loader=load_mteb_encoder if directory is not None else None,
        loader_kwargs={"directory": str(directory)} if directory is not None else {},
        name=name,
        revision=revision,
        release_date=release_date or _release_date(directory),
        languages=languages,
        n_parameters=sum(p.numel() for p in params),
        memory_usage_mb=round(sum(p.numel() * p.element_size() for p in params) / 2**20, 1),
        max_tokens=getattr(backbone, "max_length", None),
        embed_dim=getattr(backbone, "hidden_size", None),
        license=license,
        open_weights=True,
        public_training_code=None,
        public_training_data=None,
        framework=["PyTorch"],
        reference=reference,
        similarity_fn_name="cosine",
        use_instructions=True,
        training_datasets=training_datasets,
        modalities=list(modalities),
    )


def load_mteb_encoder(model_name: str, revision: str | None = None, *, directory: str, device: str | None = None,
                      **kwargs: Any) -> MTEBEncoder:
    """``ModelMeta.loader``: load the saved model at ``directory`` (mteb passes its name and revision)."""
    return MTEBEncoder.from_pretrained(directory, name=model_name, revision=revision, device=device, **kwargs)


def _batch_inputs(batch: Mapping[str, Any], start: int) -> list[EmbedInput]:
    """One mteb batch (``text`` and/or ``image`` columns) as tsembed inputs; ``start`` numbers them for errors."""
    texts, images = batch.get("text"), batch.get("image")
    if texts is None and images is None:
        raise DataError(f"mteb batch at input {start}: no `text` or `image` column (has {sorted(batch)})")
    n = len(texts if texts is not None else images)
    items = []
    for i in range(n):
        text = texts[i] if texts is not None else None
        image = images[i] if images is not None else None
        if text is not None and not isinstance(text, str):
            raise DataError(f"mteb input {start + i}: `text` must be a string, got {type(text).__name__}")
        items.append(EmbedInput(text=text or None, image=image))
    return items


class MTEBEncoder(AbsEncoder):
    """An mteb encoder (``mteb.models.EncoderProtocol``) over a tsembed model.

    Args:
        model: A ``TSEmbedModel`` (or an ``Encoder``), on any device.
        name: "organization/model_name" for mteb's results; default "tsembed/<folder>" or "tsembed/model".
        revision: See ``model_meta``.
        batch_size: Inputs per forward pass (mteb's own batches are regrouped by length).
        prompts: mteb-style instructions by task name, task type or prompt type (see the module docstring).
        use_task_prompts: Fall back to each task's own prompt.
        meta: A ready ``ModelMeta``; otherwise built by ``model_meta`` from the keyword arguments below.
        **meta_kwargs: ``license``, ``languages``, ``modalities``, ``training_datasets``, ``reference``, ``directory``.
    """

    def __init__(self, model: nn.Module | Encoder, *, name: str | None = None, revision: str | None = None,
                 batch_size: int = 32, prompts: dict[str, str] | None = None, use_task_prompts: bool = False,
                 meta: ModelMeta | None = None, **meta_kwargs: Any) -> None:
        self.encoder = model if isinstance(model, Encoder) else Encoder(model)
        self.model = self.encoder.model
        self.batch_size = batch_size
        self.prompts_dict = dict(prompts) if prompts else None
        self.use_task_prompts = use_task_prompts
        default_name = f"tsembed/{Path(meta_kwargs['directory']).name}" if meta_kwargs.get("directory") else \
            "tsembed/model"
        self.mteb_model_meta = meta or model_meta(self.model, name or default_name, revision=revision, **meta_kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None,
                        backbone_path: str | Path | None = None, **kwargs: Any) -> MTEBEncoder:
        """Load a saved model (``save_pretrained`` output) and wrap it; ``backbone_path`` overrides its backbone
        reference (``Encoder.from_pretrained``); ``kwargs`` as for the constructor."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs.setdefault("directory", directory)
        return cls(Encoder.from_pretrained(directory, device=device, backbone_path=backbone_path), **kwargs)

    def _instruction(self, task_metadata: Any, prompt_type: PromptType | None) -> str | None:
        """The instruction for one task and side (see the module docstring for the order)."""
        if self.use_task_prompts:
            return self.get_instruction(task_metadata, prompt_type) or None
        for key in (task_metadata.name, task_metadata.type, prompt_type.value if prompt_type else None):
            if self.prompts_dict and key in self.prompts_dict:
                return self.prompts_dict[key] or None
        config = getattr(self.model, "config", None)
        if prompt_type == PromptType.query:
            return getattr(config, "query_instruction", "") or None
        if prompt_type == PromptType.document:
            return getattr(config, "document_instruction", "") or None
        return None

    def _task_hint(self, task_metadata: Any) -> str | None:
        hint = TASK_HINTS.get(task_metadata.type)
        return hint if hint in (getattr(self.model, "task_hints", None) or []) else None

    def encode(self, inputs: DataLoader, *, task_metadata: Any, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        """Embed every input of mteb's ``DataLoader`` (rows of ``text`` and/or ``image``): [N, D] float32,
        L2-normalised, in the loader's order."""
        instruction, task = self._instruction(task_metadata, prompt_type), self._task_hint(task_metadata)
        parts, pending, seen = [], [], 0
        for batch in inputs:
            items = _batch_inputs(batch, seen)
            seen += len(items)
            pending += items
            if len(pending) >= CHUNK:
                parts.append(self._embed(pending, instruction, task))
                pending = []
        if pending or not parts:
            parts.append(self._embed(pending, instruction, task))
        return np.concatenate(parts)

    def _embed(self, items: list[EmbedInput], instruction: str | None, task: str | None) -> np.ndarray:
        if not items:
            dim = self.mteb_model_meta.embed_dim
            return np.zeros((0, dim if isinstance(dim, int) else 0), dtype=np.float32)
        return self.encoder.encode(items, instruction=instruction, batch_size=self.batch_size, normalize=True,
                                   convert_to_numpy=True, show_progress_bar=False, task=task)
