"""Tiny text-only MMEB eval suites and toy models for evaluation tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from tests.toy_backbone import ToyBackbone
from tsembed.data import write_eval
from tsembed.model import ModelConfig, TSEmbedModel
from tsembed.moe import MoELoRAConfig, MoELoRALinear

WORDS = "red green blue cat dog fish tree house car sun moon star one two three four".split()
#: name -> (meta_task, ood, rows, candidates per row)
TOY_DATASETS = {
    "ColorCls": ("classification", False, 6, 4),
    "AnimalVQA": ("vqa", False, 5, 3),
    "WordRetrieval": ("retrieval", False, 6, 5),
    "WordGrounding": ("grounding", True, 4, 4),
}


def toy_model(adapters: bool = True, seed: int = 0, task_hints: tuple[str, ...] = (),
              target_routing: str = "own") -> TSEmbedModel:
    """target_routing 'query': sequence-level top-1 routing (what it needs); otherwise token-level top-2."""
    backbone = ToyBackbone(seed=0)
    moe = None
    if adapters:
        query = {"level": "sequence", "top_k": 1} if target_routing == "query" else {}
        moe = MoELoRAConfig(target_modules=backbone.default_target_modules, num_experts=4, rank=2, router_init_std=0.5,
                            task_hints=list(task_hints), target_routing=target_routing, **query)
    model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe))
    torch.manual_seed(seed + 1)
    for layer in model.modules():
        if isinstance(layer, MoELoRALinear):
            torch.nn.init.normal_(layer.lora_B, std=0.05)
    return model.eval()


def eval_rows(name: str, num_rows: int, num_candidates: int, seed: int = 0) -> list[dict]:
    """Rows whose positive shares words with the query, so a model can beat chance; candidates distinct."""
    rng = random.Random(f"{name}/{seed}")
    rows = []
    for i in range(num_rows):
        words = rng.sample(WORDS, num_candidates + 1)
        key = words[0]
        cands = [f"{key} {words[1]}"] + [f"{w} {words[1]}" for w in words[2 : num_candidates + 1]]
        # A candidate shared by every row of the dataset (like a class label): exercises de-duplication.
        cands[-1] = "shared label"
        rows.append(
            {
                "qry_text": f"{name} query {i}: find {key}",
                "qry_img_path": "",
                "tgt_text": cands,
                "tgt_img_path": [""] * len(cands),
            }
        )
    return rows


def write_toy_suite(root: Path) -> Path:
    """A suite directory in the format `tsembed.data.load_suite` reads (manifest + eval files)."""
    datasets = {}
    for name, (meta_task, ood, n, c) in TOY_DATASETS.items():
        write_eval(root / "eval" / f"{name}.jsonl", eval_rows(name, n, c))
        datasets[name] = {
            "name": name,
            "meta_task": meta_task,
            "ood": ood,
            "query_template": "{text}",
            "target_template": "{text}",
            "files": {"eval": f"eval/{name}.jsonl"},
            "description": "toy",
        }
    manifest = {"format": "tsembed-suite", "format_version": 1, "image_root": ".", "datasets": datasets}
    (root / "suite.json").write_text(json.dumps(manifest, indent=2))
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class ForwardCounter:
    """Counts forward passes (batches) of a model and the inputs they carried."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self.inputs = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.inputs += output.embeddings.shape[0]
