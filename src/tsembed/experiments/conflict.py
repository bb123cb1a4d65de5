"""Task-gradient conflict: do the training datasets pull a shared adapter in different directions?

A mixture of experts earns its routing only if tasks conflict. This measures it from training data
alone (never the eval splits): the gradient of each dataset's contrastive loss (plain InfoNCE with its
hard negatives, no EANS, no routing losses) with respect to the trainable parameters, averaged over a
few batches, and the cosine between every pair of datasets — the measure PCGrad (Yu et al., 2020)
uses. Negative cosines across meta-tasks are the interference experts are meant to remove; cosines
≥ 0 mean one shared adapter can serve every task and splitting its rank buys nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tsembed.encoding import eval_mode
from tsembed.errors import ConfigError
from tsembed.model import TSEmbedModel
from tsembed.training.data import TrainingData
from tsembed.training.eans import EANSConfig
from tsembed.training.loss_config import LossConfig
from tsembed.training.objective import ContrastiveObjective
from tsembed.training.step import contrastive_step


def cosine_matrix(gradients: dict[str, torch.Tensor]) -> torch.Tensor:
    """[D, D] cosines between flattened gradients, in the dict's order (0 where a gradient is zero)."""
    stacked = torch.stack([g.flatten().double() for g in gradients.values()])
    unit = stacked / stacked.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (unit @ unit.T).float()


def group_cosines(names: list[str], matrix: torch.Tensor, groups: dict[str, str]) -> dict[str, Any]:
    """Mean pairwise cosine within each group, between each pair of groups, and over all cross pairs.

    Pairs are of distinct datasets; a group with one dataset has no within-group value.
    """
    pairs: dict[tuple[str, str], list[float]] = {}
    for i, j in itertools.combinations(range(len(names)), 2):
        key = tuple(sorted((groups[names[i]], groups[names[j]])))
        pairs.setdefault(key, []).append(float(matrix[i, j]))
    mean = {f"{a}|{b}": sum(v) / len(v) for (a, b), v in sorted(pairs.items())}
    within = [x for (a, b), v in pairs.items() if a == b for x in v]
    across = [x for (a, b), v in pairs.items() if a != b for x in v]
    return {
        "pairs": mean,
        "within_mean": sum(within) / len(within) if within else None,
        "across_mean": sum(across) / len(across) if across else None,
        "across_min": min(across) if across else None,
        "across_negative_fraction": sum(x < 0 for x in across) / len(across) if across else None,
    }


@dataclass
class ConflictReport:
    datasets: list[str]
    groups: dict[str, str]
    cosines: torch.Tensor  # [D, D]
    gradient_norms: dict[str, float]
    batches: int
    batch_size: int
    split_half: dict[str, float | None]
    pairs: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # conflict suite: name -> (x, y)

    def pair_cosines(self) -> dict[str, float]:
        """Cosine between the two conditions of each declared pair (pairs with a dataset not measured are left out)."""
        index = {n: i for i, n in enumerate(self.datasets)}
        return {name: float(self.cosines[index[x], index[y]]) for name, (x, y) in self.pairs.items()
                if x in index and y in index}

    def to_dict(self) -> dict[str, Any]:
        pairs = self.pair_cosines()
        return {
            "datasets": self.datasets, "groups": self.groups, "batches": self.batches,
            "batch_size": self.batch_size, "gradient_norms": self.gradient_norms, "split_half": self.split_half,
            "cosines": [[round(float(x), 4) for x in row] for row in self.cosines],
            "summary": group_cosines(self.datasets, self.cosines, self.groups),
            "pairs": {name: round(value, 4) for name, value in pairs.items()},
            "pair_cosine_min": round(min(pairs.values()), 4) if pairs else None,
        }

    def markdown(self) -> str:
        s = self.to_dict()["summary"]
        short = [n[:10] for n in self.datasets]
        lines = [
            f"Gradient cosines between training datasets ({self.batches} batches of {self.batch_size} each).", "",
            f"- mean within meta-task: {_fmt(s['within_mean'])}; mean across meta-tasks: {_fmt(s['across_mean'])}; "
            f"most negative across: {_fmt(s['across_min'])}; share of negative cross pairs: "
            f"{_fmt(s['across_negative_fraction'])}",
            "- split-half cosine of each dataset with itself (the noise floor; cross-dataset cosines mean something "
            "only where these are well above 0): " + ", ".join(f"{n} {_fmt(v)}" for n, v in self.split_half.items()),
            "",
            *(["- paired conditions (the positive of one is the other's hardest distractor): " + ", ".join(
                f"{name} {value:+.3f}" for name, value in self.pair_cosines().items()), ""] if self.pairs else []),
            "| meta-task pair | mean cosine |", "|---|---:|",
            *[f"| {k} | {v:+.3f} |" for k, v in s["pairs"].items()], "",
            "| | " + " | ".join(short) + " |", "|---|" + "---:|" * len(short),
            *[f"| {short[i]} | " + " | ".join(f"{float(x):+.2f}" for x in row) + " |"
              for i, row in enumerate(self.cosines)],
        ]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def dataset_gradients(model: TSEmbedModel, data: TrainingData, loss: LossConfig, batches: int, batch_size: int,
                      hard_negatives: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Contrastive-loss gradient of each dataset on ``batches`` random batches of its rows: [batches, P].

    The model runs in eval mode (no dropout, no router jitter) so the gradients are deterministic.
    """
    objective = ContrastiveObjective(dataclasses.replace(loss, load_balance_weight=0.0, z_loss_weight=0.0),
                                     EANSConfig(mode="off"))
    params = [p for p in model.parameters() if p.requires_grad]
    rng = random.Random(seed)
    out: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        for d, rows in sorted(data.by_dataset.items()):
            per_batch = []
            for _ in range(batches):
                picked = rng.sample(rows, min(batch_size, len(rows)))
                model.zero_grad(set_to_none=True)
                contrastive_step(model, objective, data.make_batch(picked, hard_negatives), eans_active=False)
                per_batch.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                            for p in params]))
            out[data.sources[d].name] = torch.stack(per_batch)
        model.zero_grad(set_to_none=True)
    return out


def split_half_cosine(per_batch: torch.Tensor) -> float | None:
    """Cosine between the mean gradients of the first and second half of the batches: how far the
    estimate is above batch noise (near 0 means cross-dataset cosines near 0 say nothing)."""
    half = per_batch.shape[0] // 2
    if half == 0:
        return None
    a, b = per_batch[:half].double().mean(0), per_batch[half : 2 * half].double().mean(0)
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))


def measure_conflict(model: TSEmbedModel, data: TrainingData, groups: dict[str, str], loss: LossConfig,
                     batches: int = 4, batch_size: int = 32, seed: int = 0,
                     pairs: dict[str, tuple[str, str]] | None = None) -> ConflictReport:
    """``groups``: dataset -> group (meta-task, or condition); ``pairs``: declared pairs of conditions."""
    per_batch = dataset_gradients(model, data, loss, batches, batch_size, seed=seed)
    means = {n: g.double().mean(0).float() for n, g in per_batch.items()}
    names = list(means)
    return ConflictReport(names, {n: groups.get(n, n) for n in names}, cosine_matrix(means),
                          {n: float(g.norm()) for n, g in means.items()}, batches, batch_size,
                          {n: split_half_cosine(g) for n, g in per_batch.items()}, dict(pairs or {}))


def run_task_conflict(config: Path | None, overrides: list[str], model_dir: Path | None, batches: int,
                      out: Path | None, backbone_path: str | None = None) -> Any:
    """``tsembed task-conflict``: build the model (a trained one, or the config's at initialisation) and the
    training data, measure, and write conflict.json / conflict.md into ``out`` (atomically) when given."""
    import json

    from tsembed.data.suite import load_suite
    from tsembed.fileio import atomic_write
    from tsembed.training.config import default_config_path, load_train_config
    from tsembed.training.trainer import build_model, resolve_sources

    if backbone_path is not None and model_dir is None:
        raise ConfigError("--backbone-path overrides the backbone of --model; for the config's own model set "
                          "model.backbone's path with --set")
    cfg = load_train_config(config or default_config_path(), overrides)
    torch.manual_seed(cfg.run.seed)
    net = TSEmbedModel.from_pretrained(model_dir, backbone_path=backbone_path) if model_dir else build_model(cfg)
    data = TrainingData(resolve_sources(cfg), skip_invalid=cfg.data.skip_invalid)
    groups, pairs = {}, {}
    if not cfg.data.train_files:
        suite = load_suite(cfg.data.suite)
        groups = {name: suite.info(name).meta_task for name in suite.names()}
        pairs = {name: tuple(sets) for name, sets in suite.manifest.get("pairs", {}).items()}
    report = measure_conflict(net, data, groups, cfg.loss, batches, cfg.data.batch_size, seed=cfg.run.seed,
                              pairs=pairs)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report.to_dict(), indent=2) + "\n"
        atomic_write(out / "conflict.json", lambda p: p.write_text(text))
        atomic_write(out / "conflict.md", lambda p: p.write_text(report.markdown()))
    return report

