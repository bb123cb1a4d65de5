"""Bridge alignment: train only the default backbone's visual projector on captioned images (LLaVA stage 1).

Why: a real VLM's projector (LLaVA's MLP, Qwen2-VL's merger) is pretrained on captions before any task tuning,
and the adapters then work above a fixed bridge. The offline backbone's projector used to start at random init
and learn all of its vision-language alignment during the multi-task fine-tune, where the tasks fought over it.
Here MiniLM and EfficientNet stay frozen, no adapters exist, and the projector learns to place the fused image
embedding (mean-pooled MiniLM output over ``[CLS] <16 visual tokens> [SEP]``) next to the frozen sentence
embedding of the picture's caption (symmetric InfoNCE). The result is a bridge file that the backbone loads
(``model.backbone.bridge: PATH``, or ``auto`` to align for the training suite, cached).

Same suite, options and seed give the same bytes (at the same torch thread count).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tsembed.backbones.minilm_effnet import BRIDGE_FILE
from tsembed.errors import ConfigError
from tsembed.fileio import atomic_write, cache_root, exclusive_lock
from tsembed.training.losses import info_nce

logger = logging.getLogger(__name__)

BRIDGE_META = "bridge.json"
BRIDGE_FORMAT = "tsembed-bridge"
#: Backbone options the bridge depends on (the rest, e.g. cache settings, do not change it).
BRIDGE_OPTIONS = ("text_model", "vision_weights", "image_size", "num_visual_tokens", "projector", "image_mean",
                  "image_std")


@dataclass(frozen=True)
class AlignConfig:
    """Knobs of one alignment run; validated here, recorded in ``bridge.json``.

    Attributes:
        steps: optimiser steps.
        batch_size: captioned images per step (in-batch negatives).
        lr: AdamW learning rate of the projector (linear warm-up, cosine decay to 10 %).
        warmup_steps: warm-up steps.
        tau: InfoNCE temperature.
        seed: seeds the projector's init, the captions and the batch order.
        hue_copies: hue-rotated copies per train emoji (ignored without ``recolour``).
        canvases: multi-emoji canvases.
        recolour: False aligns without any recoloured copy (the ablation that shows what colour needs).
        held_out: pairs kept out of training to report image → caption retrieval before and after.
        max_emoji: > 0 aligns on a seeded sample of that many train emoji (quick runs, tests); 0 uses all.
        family_batches: fill each batch with whole families (an emoji's tones, genders and hue copies, at most
            ``family_chunk`` at a time), so that what tells siblings apart — skin tone, colour — is what the
            in-batch negatives test; False draws pairs uniformly.
        family_chunk: most pictures of one family that go into a batch together.
    """

    steps: int = 400
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 20
    tau: float = 0.05
    seed: int = 0
    hue_copies: int = 2
    canvases: int = 1000
    recolour: bool = True
    held_out: int = 256
    max_emoji: int = 0
    family_batches: bool = True
    family_chunk: int = 16

    def __post_init__(self) -> None:
        for name, low in (("steps", 1), ("batch_size", 2), ("warmup_steps", 0), ("hue_copies", 0),
                          ("canvases", 0), ("held_out", 0), ("seed", 0), ("max_emoji", 0),
                          ("family_chunk", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"align.{name} must be an integer >= {low}, got {value!r}")
        for name in ("lr", "tau"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"align.{name} must be a finite number > 0, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"align: unknown keys {unknown}; allowed keys are {sorted(known)}")
        return cls(**data)


def suite_context(suite: Path) -> Any:
    """The suite's build context, checked against its recorded split so the train bases are the suite's own."""
    from tsembed.data.suite.config import SuiteConfig
    from tsembed.data.suite.context import BuildContext

    manifest_path = suite / "suite.json"
    if not manifest_path.is_file():
        raise ConfigError(f"bridge alignment needs an offline suite built by `tsembed data build-suite`: "
                          f"{manifest_path} not found")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if "config" not in manifest:
        raise ConfigError(f"{manifest_path}: no 'config' entry (not an offline suite built by tsembed)")
    config = SuiteConfig(**manifest["config"])
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:  # the image store is never written: pictures stay in memory
        ctx = BuildContext(config, Path(scratch))
    splits_path = suite / manifest.get("split", {}).get("file", "meta/splits.json")
    recorded = json.loads(splits_path.read_text(encoding="utf-8").splitlines()[0]) if splits_path.is_file() else {}
    bases = sorted({it.base for it in ctx.items("train")})
    if recorded.get("train_bases") is not None and recorded["train_bases"] != bases:
        raise ConfigError(f"{splits_path}: the suite's train bases differ from what this catalogue gives for its "
                          f"seed (the emoji packages changed since the build?); rebuild the suite")
    return ctx, bases


def bridge_key(bases: list[str], config: AlignConfig, options: dict[str, Any]) -> str:
    """Content key of a bridge: the train bases it may see, the alignment knobs and the backbone identity."""
    blob = json.dumps({"bases": bases, "align": asdict(config),
                       "backbone": {k: options.get(k) for k in BRIDGE_OPTIONS}, "format": 1},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def align_bridge(suite: str | Path, out: str | Path, config: AlignConfig | None = None,
                 backbone_options: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Align a projector for ``suite`` (from its train emoji only) and write ``out/bridge.safetensors``.

    A directory that already holds the bridge for the same key is left as it is (cached).

    Returns:
        The bridge file's path.
    """
    config = config or AlignConfig()
    suite, out = Path(suite), Path(out)
    options = {k: v for k, v in (backbone_options or {}).items() if k != "kind"}
    for option in ("bridge", "train_projector"):
        options.pop(option, None)
    options = effective_options(options)
    ctx, bases = suite_context(suite)
    key = bridge_key(bases, config, options)
    with exclusive_lock(out / ".align.lock"):  # runs side by side that need this bridge align it once
        bridge, meta_path = out / BRIDGE_FILE, out / BRIDGE_META
        if bridge.is_file() and meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key:
            logger.info("bridge for this suite and config exists, reusing %s", bridge)
            return bridge
        return _align(suite, out, config, options, ctx, bases, key, progress)


def _align(suite: Path, out: Path, config: AlignConfig, options: dict[str, Any], ctx: Any, bases: list[Any],
           key: str, progress: bool) -> Path:
    from tqdm.auto import tqdm

    from tsembed.backbones.minilm_effnet import MiniLMEfficientNetBackbone  # needs the demo extra
    from tsembed.data.suite.captions import alignment_pairs
    from tsembed.training.schedule import lr_factor

    bridge, meta_path = out / BRIDGE_FILE, out / BRIDGE_META
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    backbone = MiniLMEfficientNetBackbone(**options).eval()
    pairs = list(alignment_pairs(ctx, config.seed, config.hue_copies, config.canvases, config.recolour,
                                 config.max_emoji))
    kinds: dict[str, int] = {}
    for pair in pairs:
        kinds[pair.kind] = kinds.get(pair.kind, 0) + 1
    logger.info("alignment set: %d captioned images from %d train bases of %s (%s)", len(pairs), len(bases),
                suite, ", ".join(f"{k} {n}" for k, n in kinds.items()))
    features = vision_features(backbone, [p.image for p in pairs], progress)  # [n, T, C] fp16
    captions = [p.caption for p in pairs]
    caption_ids = torch.tensor(_caption_ids(captions))
    targets = _sentence_embeddings(backbone, captions)  # [n, D]

    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(pairs), generator=generator)
    held = order[: min(config.held_out, len(pairs) // 4)]
    train = order[held.numel():]
    if train.numel() < config.batch_size:
        raise ConfigError(f"{suite}: only {train.numel()} training pairs for a batch of {config.batch_size}")
    before = _retrieval_at1(backbone, features[held], targets[held])
    prepared = time.perf_counter()
    params = list(backbone.projector.parameters())
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    losses: list[float] = []
    families = [p.family for p in pairs] if config.family_batches else None
    cursor, epoch_order = 0, _epoch_order(train, families, config.family_chunk, generator)
    with tqdm(total=config.steps, desc="aligning bridge", unit="step", disable=not progress) as bar:
        for step in range(config.steps):
            if cursor + config.batch_size > epoch_order.numel():
                cursor, epoch_order = 0, _epoch_order(train, families, config.family_chunk, generator)
            batch = epoch_order[cursor : cursor + config.batch_size]
            cursor += config.batch_size
            for group in optimiser.param_groups:
                group["lr"] = config.lr * lr_factor(step, config.warmup_steps, config.steps, 0.1)
            images = _image_embeddings(backbone, features[batch])  # [B, D]
            scores = images @ targets[batch].T  # [B, B]
            same = caption_ids[batch].unsqueeze(1) == caption_ids[batch].unsqueeze(0)  # a repeated caption
            weights = (~same).float()  # is no negative of its twin
            positive = torch.arange(batch.numel())
            loss = 0.5 * (info_nce(scores, positive, config.tau, weights) + info_nce(scores.T, positive, config.tau,
                                                                                   weights))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    after = _retrieval_at1(backbone, features[held], targets[held])
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.projector.state_dict().items()}
    # One metadata entry: safetensors writes its metadata map in hash order, so several keys break byte identity
    # (the key, the projector kind and the rest are in bridge.json).
    metadata = {"format": f"{BRIDGE_FORMAT}/1"}
    from safetensors.torch import save_file

    atomic_write(bridge, lambda p: save_file(state, str(p), metadata=metadata))
    record = {
        "format": BRIDGE_FORMAT, "key": key, "suite": str(suite), "train_bases": len(bases), "pairs": kinds,
        "align": asdict(config), "backbone": {k: options.get(k) for k in BRIDGE_OPTIONS},
        "loss_first": round(sum(losses[:10]) / min(10, len(losses)), 4),
        "loss_last": round(sum(losses[-10:]) / min(10, len(losses)), 4),
        "held_out_retrieval_at1": {"before": before, "after": after, "pairs": int(held.numel())},
        "seconds": round(time.perf_counter() - start, 1),
        "seconds_training": round(time.perf_counter() - prepared, 1),
        "sha256": hashlib.sha256(bridge.read_bytes()).hexdigest(),
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(meta_path, lambda p: p.write_text(text))
    logger.info("bridge written to %s: loss %.3f -> %.3f, held-out image->caption hit@1 %.3f -> %.3f (%.0f s)",
                bridge, record["loss_first"], record["loss_last"], before, after, record["seconds"])
    return bridge


def auto_bridge(suite: str | Path, backbone_options: dict[str, Any], config: AlignConfig | None = None,
                progress: bool = True) -> Path:
    """The bridge for ``suite`` under the cache root (``$TSEMBED_CACHE_DIR/bridges``), aligned if missing."""
    config = config or AlignConfig()
    options = effective_options({k: v for k, v in backbone_options.items() if k in BRIDGE_OPTIONS})
    _, bases = suite_context(Path(suite))
    out = cache_root() / "bridges" / bridge_key(bases, config, options)[:16]
    return align_bridge(suite, out, config, options, progress)


def effective_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every bridge-relevant option the caller left out set to the backbone's default, so that
    leaving a default implicit or spelling it out gives one key."""
    import inspect

    from tsembed.backbones.minilm_effnet import MiniLMEfficientNetBackbone

    defaults = {name: p.default for name, p in inspect.signature(MiniLMEfficientNetBackbone).parameters.items()
                if name in BRIDGE_OPTIONS}
    out = {**defaults, **options}
    for name in ("image_mean", "image_std"):
        out[name] = [float(v) for v in out[name]]
    return out


def _epoch_order(train: torch.Tensor, families: list[str] | None, chunk: int,
                 generator: torch.Generator) -> torch.Tensor:
    """One epoch's order of the training pairs: shuffled, and with ``families`` shuffled chunks of at most
    ``chunk`` siblings in a row, so consecutive batch slices keep siblings together."""
    shuffled = train[torch.randperm(train.numel(), generator=generator)]
    if families is None:
        return shuffled
    by_family: dict[str, list[int]] = {}
    for index in shuffled.tolist():
        by_family.setdefault(families[index], []).append(index)
    chunks = [members[i : i + chunk] for members in by_family.values() for i in range(0, len(members), chunk)]
    return torch.tensor([index for k in torch.randperm(len(chunks), generator=generator).tolist()
                         for index in chunks[k]])


def _caption_ids(captions: list[str]) -> list[int]:
    ids: dict[str, int] = {}
    return [ids.setdefault(c, len(ids)) for c in captions]


@torch.no_grad()
def vision_features(backbone: Any, images: list, progress: bool, chunk: int = 64) -> torch.Tensor:
    """Frozen EfficientNet grid tokens [n, T, C] of PIL images, kept in fp16 (the projector's LayerNorm
    comes first, so the rounding is far below what it normalises away)."""
    from tqdm.auto import tqdm

    from tsembed.backbones.efficientnet import grid_tokens
    from tsembed.backbones.images import image_to_tensor

    out = []
    for start in tqdm(range(0, len(images), chunk), desc="vision features", unit="batch", disable=not progress):
        pixels = torch.stack([image_to_tensor(im, backbone.image_size, backbone.image_mean, backbone.image_std)
                              for im in images[start : start + chunk]])
        out.append(grid_tokens(backbone.vision(pixels), backbone.grid).half())
    return torch.cat(out)


@torch.no_grad()
def _sentence_embeddings(backbone: Any, texts: list[str], chunk: int = 128) -> torch.Tensor:
    """all-MiniLM's own sentence embeddings (mean pooling, L2 norm) of ``texts``, [n, D]."""
    from tsembed.backbones.pooling import pool

    out = []
    for start in range(0, len(texts), chunk):
        encoded = backbone.tokenizer(texts[start : start + chunk], padding=True, truncation=True,
                                     max_length=backbone.max_length, return_tensors="pt")
        hidden = backbone.text(**encoded).last_hidden_state
        out.append(F.normalize(pool(hidden, encoded["attention_mask"], "mean"), dim=-1))
    return torch.cat(out)


def image_only_batch(backbone: Any, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """What ``prepare`` gives for pictures without text, built from their cached features [N, T, C]."""
    from tsembed.backbones.images import DIGEST_BYTES

    n, tokens = features.shape[0], backbone.num_visual_tokens
    ids = torch.tensor([backbone.cls_id, *[backbone.image_token_id] * tokens, backbone.sep_id]).repeat(n, 1)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": (ids == backbone.image_token_id).long() * backbone.image_type_id,
        "image_digest": torch.zeros(n, DIGEST_BYTES, dtype=torch.uint8),
        "image_cached": torch.ones(n, dtype=torch.bool),
        "image_features": features.float(),
        "pixel_values": torch.zeros(0, 3, backbone.image_size, backbone.image_size),
    }


def _image_embeddings(backbone: Any, features: torch.Tensor) -> torch.Tensor:
    """The fused image embedding the alignment trains: mean-pooled MiniLM output, L2-normalised, [N, D]."""
    from tsembed.backbones.pooling import pool

    out = backbone(**image_only_batch(backbone, features))
    return F.normalize(pool(out.hidden_states, out.attention_mask, "mean"), dim=-1)


@torch.no_grad()
def _retrieval_at1(backbone: Any, features: torch.Tensor, targets: torch.Tensor) -> float:
    """Image → caption hit@1 among the held-out pairs (chance 1/n)."""
    if features.shape[0] < 2:
        return float("nan")
    images = torch.cat([_image_embeddings(backbone, features[i : i + 64]) for i in range(0, features.shape[0], 64)])
    hits = (images @ targets.T).argmax(dim=-1) == torch.arange(features.shape[0])
    return round(float(hits.float().mean()), 4)
