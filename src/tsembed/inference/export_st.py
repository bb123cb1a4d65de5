"""``tsembed export --expert E --format sentence-transformers``: one merged expert as a plain
sentence-transformers model that ``SentenceTransformer(OUT)`` loads offline.

What it reproduces: tsembed's text path of the offline default backbone (minilm-effnet). For a text input that
backbone runs MiniLM on ``[CLS] text [SEP]`` (segment 0, right truncation at ``max_length``), mean-pools every
unpadded token and L2-normalises: exactly sentence-transformers' ``Transformer`` → ``Pooling("mean")`` →
``Normalize`` stack. Expert E (plus any shared experts) is folded into MiniLM's linears first, as
``tsembed export --expert E`` does. The model's ``query_instruction`` / ``document_instruction`` become the
prompts ``query`` / ``document`` (``encode(..., prompt_name="query")`` = tsembed's ``encode_query``);
``encode`` without a prompt is tsembed's ``encode`` without an instruction.

What it cannot reproduce, so it refuses or leaves out:

* images: minilm-effnet fuses images early (EfficientNet-Lite0 features → the trained projector → visual tokens
  spliced into MiniLM's sequence at the ``<|image_1|>`` slot); sentence-transformers has no module that splices
  projected CNN features into a BERT's input embeddings, so the exported model is text-only (the projector is
  not exported). Keep images on tsembed (``--format tsembed``).
* other backbones: qwen2-vl (its chat prompt template, image tokens and last-token pooling over a VLM) and
  dual-encoder (tsembed's late fusion of text+image inputs) are refused; export them with ``--format tsembed``
  or ``--peft``.
* an instruction with text after its ``{text}`` slot: sentence-transformers prompts are prefixes only, so that
  prompt is left out with a warning.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from tsembed.backbones.hf import quiet_transformers
from tsembed.backbones.minilm_effnet import MiniLMEfficientNetBackbone
from tsembed.card import build_sentence_transformers_card, write_card
from tsembed.errors import ConfigError
from tsembed.extras import require
from tsembed.inference.export import _require_adapters, merge_expert_into_model
from tsembed.inference.inputs import TEXT_SLOT
from tsembed.inference.loading import load_model

logger = logging.getLogger(__name__)

SUPPORTED_KIND = MiniLMEfficientNetBackbone.kind
ST_POOLING = {"mean": "mean", "cls": "cls", "last": "lasttoken"}  # tsembed pooling -> sentence-transformers mode
PROMPT_NAMES = {"query": "query_instruction", "document": "document_instruction"}


def instruction_prompt(instruction: str) -> str | None:
    """The sentence-transformers prompt (a prefix) equal to tsembed's ``apply_instruction``; None when the
    instruction puts text after the content, which no prefix can express."""
    if TEXT_SLOT not in instruction:
        return f"{instruction} "  # apply_instruction joins instruction and content with a space
    before, after = instruction.split(TEXT_SLOT, 1)
    return before if not after else None


def model_prompts(model: nn.Module) -> dict[str, str]:
    """``{"query": ..., "document": ...}`` from the model's instructions (empty and inexpressible ones left out)."""
    prompts = {}
    for name, field in PROMPT_NAMES.items():
        instruction = getattr(model.config, field, "") or ""
        if not instruction:
            continue
        prompt = instruction_prompt(instruction)
        if prompt is None:
            logger.warning("%s %r has text after %s; sentence-transformers prompts are prefixes, so the exported "
                           "model has no %r prompt", field, instruction, TEXT_SLOT, name)
            continue
        prompts[name] = prompt
    return prompts


def _with_pooler(text: nn.Module) -> dict[str, torch.Tensor]:
    """The text encoder's state plus a zero BERT pooler when it has none: sentence-transformers pools the token
    embeddings and never uses the pooler, but loads the model with one, and would report it missing."""
    state = {k: v.detach().contiguous() for k, v in text.state_dict().items()}
    if getattr(text, "pooler", None) is None and "pooler.dense.weight" not in state:
        size = int(text.config.hidden_size)
        state["pooler.dense.weight"] = torch.zeros(size, size)
        state["pooler.dense.bias"] = torch.zeros(size)
    return state


def check_exportable(model: nn.Module) -> None:
    """Only a backbone whose text path sentence-transformers reproduces exactly (see the module doc).

    Raises:
        ConfigError: naming the backbone kind, why it cannot be represented and what to export instead.
    """
    kind = model.config.backbone.get("kind")
    if kind != SUPPORTED_KIND:
        raise ConfigError(
            f"--format sentence-transformers: backbone {kind!r} cannot be exported; only {SUPPORTED_KIND!r}'s text "
            "path maps onto sentence-transformers modules (qwen2-vl's prompt template, image tokens and last-token "
            "pooling, and the dual encoder's late fusion have no sentence-transformers equivalent). Use --format "
            "tsembed or --peft"
        )


def export_sentence_transformers(model_dir: str | Path, out_dir: str | Path, expert: int,
                                 backbone_path: str | Path | None = None) -> Path:
    """Write expert ``expert`` of the model in ``model_dir``, merged, as a sentence-transformers folder.

    Args:
        model_dir: a tsembed model directory with MoE-LoRA adapters.
        out_dir: the folder to write (``SentenceTransformer(out_dir)`` loads it offline).
        expert: the routed expert to merge (shared experts are always merged).
        backbone_path: overrides the saved backbone reference (``TSEmbedModel.from_pretrained``).

    Raises:
        ConfigError: the backbone has no sentence-transformers equivalent (images never have one; see above).
        AdapterError: no adapters, token-level routing, or no expert ``expert``.
        MissingExtraError: sentence-transformers is not installed.
    """
    require("sentence_transformers", "tsembed export --format sentence-transformers")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    model = load_model(model_dir, backbone_path=backbone_path)
    _require_adapters(model, model_dir)
    check_exportable(model)
    merge_expert_into_model(model, expert)
    backbone = model.backbone
    prompts = model_prompts(model)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tsembed-st-") as staging, quiet_transformers():
        backbone.text.save_pretrained(staging, state_dict=_with_pooler(backbone.text))  # standard HF layout
        backbone.tokenizer.save_pretrained(staging)
        modules: list[nn.Module] = [
            Transformer(staging, max_seq_length=backbone.max_length),
            Pooling(backbone.hidden_size, pooling_mode=ST_POOLING[model.pooling]),
        ]
        if model.config.normalize:
            modules.append(Normalize())
        st_model = SentenceTransformer(modules=modules, prompts=prompts, similarity_fn_name="cosine", device="cpu")
        st_model.save(str(out), create_model_card=False)
    write_card(out, build_sentence_transformers_card(model, expert, prompts))
    return out
