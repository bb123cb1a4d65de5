"""Model cards: a README.md beside every saved model saying what it is, how to use it and how it scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from tsembed.fileio import atomic_write

CARD_NAME = "README.md"


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
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _results_table(results: dict[str, Any]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_fmt(value)} |" for name, value in _flatten(results)]
    return "\n".join(lines)


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
            f"- MoE-LoRA: {moe.num_experts} experts (+{moe.num_shared_experts} shared), rank {moe.rank}, "
            f"alpha {moe.alpha}, routing `{moe.routing}` (top_k={moe.top_k}, level `{moe.level}`), "
            f"{len(model.attach_summary.modules) if model.attach_summary else '?'} adapted modules"
        )
    lines.append(f"- query instruction: `{config.query_instruction or '(none)'}`")
    lines.append(f"- document instruction: `{config.document_instruction or '(none)'}`")
    return lines


def render_model_card(model: nn.Module, eval_results: dict[str, Any] | None = None, title: str = "") -> str:
    """Markdown with YAML front matter (library, tags), the model's make-up, usage and eval results."""
    front = "\n".join([
        "---",
        "library_name: tsembed",
        "pipeline_tag: feature-extraction",
        "tags: [tsembed, sentence-similarity, feature-extraction, multimodal, mixture-of-experts, lora]",
        "---",
    ])
    usage = "\n".join([
        "```python",
        "from tsembed.inference import Encoder",
        "",
        'encoder = Encoder.from_pretrained("path/to/this/dir")',
        'queries = encoder.encode_query(["a red apple", {"text": "the same but green", "image": "apple.png"}])',
        'docs = encoder.encode_document(["apple.png", "a yellow banana"])',
        "print(encoder.similarity(queries, docs))",
        "```",
        "",
        "Serve it with an OpenAI-compatible `/v1/embeddings`: `tsembed serve --model path/to/this/dir`.",
    ])
    parts = [front, f"# {title or 'tsembed embedding model'}", "", *_describe(model), "", "## Usage", "", usage]
    parts += ["", "## Evaluation", ""]
    parts.append(_results_table(eval_results) if eval_results else "No evaluation results were recorded.")
    return "\n".join(parts) + "\n"


def write_model_card(
    directory: str | Path, model: nn.Module, eval_results: dict[str, Any] | None = None, title: str = ""
) -> Path:
    text = render_model_card(model, eval_results, title)
    return atomic_write(Path(directory) / CARD_NAME, lambda p: p.write_text(text, encoding="utf-8"))


def save_with_card(
    model: nn.Module, directory: str | Path, eval_results: dict[str, Any] | str | Path | None = None
) -> Path:
    """``model.save_pretrained`` plus README.md; ``eval_results`` may be a dict or a JSON file path."""
    if isinstance(eval_results, str | Path):
        eval_results = json.loads(Path(eval_results).read_text())
    directory = model.save_pretrained(directory)
    write_model_card(directory, model, eval_results)
    return Path(directory)
