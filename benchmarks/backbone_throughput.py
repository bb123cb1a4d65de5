"""Encode throughput of the offline default backbone (all-MiniLM-L6-v2 + EfficientNet-Lite0).

Items per second for ``prepare`` + ``forward`` (inference mode, no pooling) on batches of real
images (OpenMoji glyphs rendered with Pillow, each distinct so every cold lookup misses):

* text only;
* image only and image + text, vision-feature cache cold (empty cache directory: decode, CNN,
  write the entry), warm from disk (a fresh backbone on the same directory: read + checksum, no
  decode, no CNN), and warm from memory (same backbone again: LRU hit).

Each figure is the median over ``--repeats`` passes over all items, after one warm-up batch on
separate images.

    python benchmarks/backbone_throughput.py [--quick] [--batch-size 32] [--items 128] [--repeats 3]

The last line is one JSON object with text_per_s, image_cold_per_s, image_warm_per_s (warm from
disk, the next-run case), image_warm_memory_per_s, image_text_cold_per_s, image_text_warm_per_s and
cache_speedup (image_warm_per_s / image_cold_per_s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tsembed.backbones import MiniLMEfficientNetBackbone
from tsembed.backbones.testing import render_emoji
from tsembed.inputs import EmbedInput

# Ranges OpenMoji covers densely (plants, food, animals, objects); blank or repeated glyphs are skipped.
CODEPOINT_RANGES = ((0x1F330, 0x1F4FF), (0x1F950, 0x1F9FF))


def write_images(directory: Path, count: int, skip: int = 0) -> list[Path]:
    """``count`` PNGs of distinct, non-blank glyphs, after skipping the first ``skip`` usable ones."""
    paths: list[Path] = []
    seen: set[bytes] = set()
    for first, last in CODEPOINT_RANGES:
        for cp in range(first, last + 1):
            image = render_emoji(chr(cp), size=160)
            pixels = image.tobytes()
            if len(set(pixels)) < 3 or pixels in seen:  # no glyph in the font, or a duplicate
                continue
            seen.add(pixels)
            if len(seen) <= skip:
                continue
            path = directory / f"{cp:x}.png"
            image.save(path)
            paths.append(path)
            if len(paths) == count:
                return paths
    raise SystemExit(f"only {len(paths)} distinct glyphs available; lower --items")


def batches(items: list[EmbedInput], size: int) -> list[list[EmbedInput]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def encode_all(backbone: MiniLMEfficientNetBackbone, items: list[EmbedInput], batch_size: int) -> float:
    """Seconds to prepare + forward every item once."""
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches(items, batch_size):
            backbone(**backbone.prepare(batch))
    return time.perf_counter() - start


def fresh_backbone(cache_dir: Path, template: MiniLMEfficientNetBackbone | None) -> MiniLMEfficientNetBackbone:
    backbone = MiniLMEfficientNetBackbone(cache_dir=str(cache_dir))
    if template is not None:
        backbone.load_state_dict(template.state_dict())
    return backbone.eval()


def measure(args: argparse.Namespace, work: Path) -> dict[str, float]:
    images = write_images(work, args.items)
    warmup_images = write_images(work, args.batch_size, skip=args.items)
    texts = [f"Represent the name: emoji number {i} of the set" for i in range(args.items)]
    suites = {
        "text": [EmbedInput(t) for t in texts],
        "image": [EmbedInput(image=p) for p in images],
        "image_text": [EmbedInput("<|image_1|> What is shown in the image?", p) for p in images],
    }
    rates: dict[str, list[float]] = {}
    template = None
    for repeat in range(args.repeats):
        cache_dir = work / f"cache-{repeat}"
        backbone = fresh_backbone(cache_dir, template)
        template = template or backbone
        encode_all(backbone, [EmbedInput("warm up", p) for p in warmup_images], args.batch_size)
        seconds = {"text": encode_all(backbone, suites["text"], args.batch_size)}
        for name in ("image", "image_text"):
            seconds[f"{name}_cold"] = encode_all(backbone, suites[name], args.batch_size)
            seconds[f"{name}_warm_memory"] = encode_all(backbone, suites[name], args.batch_size)
            disk = fresh_backbone(cache_dir, template)  # new process: empty memory, full disk cache
            seconds[f"{name}_warm"] = encode_all(disk, suites[name], args.batch_size)
            # image_text reuses the image features cached by the image pass: clear disk so its cold run is cold
            for entry in cache_dir.rglob("*.bin"):
                entry.unlink()
            backbone.cache.clear_memory()
        for key, value in seconds.items():
            rates.setdefault(key, []).append(args.items / value)
    return {key: statistics.median(values) for key, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--items", type=int, default=128, help="items per pass (distinct images)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="32 items, 1 repeat (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeats = 32, 1
    with tempfile.TemporaryDirectory(prefix="tsembed-bench-") as tmp:
        rates = measure(args, Path(tmp))

    print(
        f"backbone minilm-effnet (128 px, 16 visual tokens), batch {args.batch_size}, {args.items} items, "
        f"median of {args.repeats}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs"
    )
    rows = [
        ("text only", "text", None),
        ("image only, cache cold", "image_cold", None),
        ("image only, cache warm (disk)", "image_warm", "image_cold"),
        ("image only, cache warm (memory)", "image_warm_memory", "image_cold"),
        ("image + text, cache cold", "image_text_cold", None),
        ("image + text, cache warm (disk)", "image_text_warm", "image_text_cold"),
        ("image + text, cache warm (memory)", "image_text_warm_memory", "image_text_cold"),
    ]
    print(f"{'input':<36}{'items/s':>10}{'vs cold':>10}")
    for label, key, base in rows:
        speedup = f"{rates[key] / rates[base]:.1f}x" if base else ""
        print(f"{label:<36}{rates[key]:>10.1f}{speedup:>10}")
    summary = {
        "text_per_s": round(rates["text"], 2),
        "image_cold_per_s": round(rates["image_cold"], 2),
        "image_warm_per_s": round(rates["image_warm"], 2),
        "image_warm_memory_per_s": round(rates["image_warm_memory"], 2),
        "image_text_cold_per_s": round(rates["image_text_cold"], 2),
        "image_text_warm_per_s": round(rates["image_text_warm"], 2),
        "cache_speedup": round(rates["image_warm"] / rates["image_cold"], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
