"""Train one variant, evaluate it, and keep the results on disk so a rerun skips finished work."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tsembed.card import write_model_card
from tsembed.configtools import apply_overrides, from_dict, load_yaml
from tsembed.experiments.variants import Variant
from tsembed.fileio import atomic_write
from tsembed.health import DAGGER
from tsembed.model import MODEL_CONFIG_NAME, TSEmbedModel
from tsembed.training.checkpoint import MODEL_DIR
from tsembed.training.config import TrainConfig, default_config_path

logger = logging.getLogger(__name__)

RESULTS = "results.json"


def variant_config(base: dict[str, Any], variant: Variant, seed: int, out_dir: Path, extra: list[str]) -> TrainConfig:
    data = json.loads(json.dumps(base))  # deep copy
    apply_overrides(data, [*variant.overrides, *extra, f"run.seed={seed}", f"run.output_dir={out_dir}"])
    return from_dict(TrainConfig, data)


def load_base_config(path: Path | None, overrides: list[str]) -> dict[str, Any]:
    data = load_yaml(path or default_config_path())
    apply_overrides(data, overrides)
    from_dict(TrainConfig, json.loads(json.dumps(data)))  # validate now, before any training starts
    return data


def results_path(out_dir: Path, split: str = "eval") -> Path:
    """A run's record for ``split``: dev and eval records sit side by side over one training."""
    return out_dir / (RESULTS if split == "eval" else f"results-{split}.json")


def evaluation_dir(out_dir: Path, split: str = "eval") -> Path:
    """Where the evaluation of ``split`` keeps its own files (``results.json``, ``results.md``, ``hits.json``):
    a folder per split, so the run's record (``results_path``) is never a second schema in the same file."""
    return out_dir / split


def finished_model(model_dir: Path, steps: int) -> bool:
    """True when ``model_dir`` holds a model trained for ``steps`` (another split's evaluation trained it)."""
    path = model_dir / MODEL_CONFIG_NAME
    return path.is_file() and json.loads(path.read_text()).get("extra", {}).get("trained_steps") == steps


def run_variant(base: dict[str, Any], variant: Variant, seed: int, out_dir: Path, suite: Path,
                cache_dir: Path | None, extra: list[str] | None = None, eval_batch_size: int = 64,
                split: str = "eval") -> dict[str, Any]:
    """Train (unless the variant is untrained or already trained) and evaluate on ``split`` of the suite.

    Returns the record also kept in ``results_path(out_dir, split)``: aggregates, per-dataset metrics,
    training time (None when the model was trained by an earlier call), the config, and the run's health
    (``tsembed.health``): per-dataset ``query_cosine``, ``collapsed`` and ``collapsed_datasets`` from the
    evaluation (what summaries act on), and ``train_collapsed_datasets``, those training's collapse watch flagged.
    """
    from tsembed.training.trainer import Trainer, build_model

    result_path = results_path(out_dir, split)
    if result_path.is_file():
        logger.info("%s seed %d: %s results exist, skipping (%s)", variant.name, seed, split, result_path)
        return json.loads(result_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    config = variant_config(base, variant, seed, out_dir, [f"data.suite={suite}", *(extra or [])])
    start = time.perf_counter()
    model_dir = out_dir / MODEL_DIR
    if variant.trained and finished_model(model_dir, config.schedule.steps):
        logger.info("%s seed %d: reusing the trained model in %s", variant.name, seed, model_dir)
        model = TSEmbedModel.from_pretrained(model_dir)
        train_seconds, trainable = None, None
    elif variant.trained:
        trainer = Trainer(config)
        model = TSEmbedModel.from_pretrained(trainer.fit(resume="auto"))
        train_seconds = round(time.perf_counter() - start, 1)
        trainable = sum(p.numel() for p in trainer.trainable)
    else:
        torch.manual_seed(seed)
        config.model.moe = None
        model = build_model(config).eval()
        model.save_pretrained(model_dir)
        train_seconds, trainable = 0.0, 0
    return evaluate_and_record(model, variant, seed, out_dir, suite, cache_dir, split, asdict(config),
                               train_seconds, trainable, eval_batch_size, config.run.progress)


def evaluate_and_record(model: TSEmbedModel, variant: Variant, seed: int, out_dir: Path, suite: Path,
                        cache_dir: Path | None, split: str, config: dict[str, Any], train_seconds: float | None,
                        trainable: int | None, eval_batch_size: int = 64, progress: bool = False,
                        target_routing: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate on ``split`` and keep the run's record (``results_path``), the one schema every summary reads."""
    from tsembed.evaluation import evaluate

    results = evaluate(model, suite, cache_dir=cache_dir, batch_size=eval_batch_size, progress=progress,
                       split=split, target_routing=target_routing)
    results.save(evaluation_dir(out_dir, split))
    if split == "eval":  # the model's card reports how it scored (dev scores only pick configs)
        write_model_card(out_dir / MODEL_DIR, model, results)
    record = {
        "variant": variant.name, "description": variant.description, "seed": seed, "split": split,
        "train_seconds": train_seconds, "trainable_parameters": trainable,
        "aggregates": results.aggregates,
        "datasets": {d.name: d.metrics for d in results.datasets},
        "query_cosine": {d.name: d.query_cosine for d in results.datasets},
        "collapsed": results.collapsed, "collapsed_datasets": results.collapsed_datasets,
        "train_collapsed_datasets": model.config.extra.get("collapsed_datasets", []),
        "config": config, **(extra or {}),
    }
    if results.collapsed:
        logger.warning("%s seed %d: collapsed on %s; summaries mark it %s and leave it out of their means",
                       variant.name, seed, ", ".join(results.collapsed_datasets), DAGGER)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(results_path(out_dir, split), lambda p: p.write_text(text))
    return record


def run_composed(variant: Variant, seed: int, out_dir: Path, suite: Path, cache_dir: Path | None,
                 experts: dict[str, Path], options: dict[str, Any], split: str = "eval",
                 eval_batch_size: int = 64) -> dict[str, Any]:
    """Compose the experts' models (``tsembed compose``; kept, so another split reuses it) and evaluate on
    ``split``. The record adds how often the pilots route each dev query to its own expert (``routing_dev``).
    ``options``: router_input, target_routing, pilots, pilot_rows, pilot_side."""
    from tsembed.inference.compose import ExpertSource, compose, routing_accuracy

    result_path = results_path(out_dir, split)
    if result_path.is_file():
        logger.info("%s seed %d: %s results exist, skipping (%s)", variant.name, seed, split, result_path)
        return json.loads(result_path.read_text())
    missing = [f"{name} ({path})" for name, path in experts.items() if not (path / MODEL_CONFIG_NAME).is_file()]
    if missing:
        raise FileNotFoundError(f"{variant.name}: no trained model for expert(s) {', '.join(missing)}")
    model_dir = out_dir / MODEL_DIR
    start = time.perf_counter()
    if not (model_dir / "compose.json").is_file():
        compose([ExpertSource(name, path) for name, path in experts.items()], model_dir, suite=suite,
                pilots_per_expert=options["pilots"], pilot_rows=options["pilot_rows"], seed=seed,
                batch_size=eval_batch_size, router_input=options["router_input"],
                target_routing=options["target_routing"], pilot_side=options["pilot_side"])
    compose_seconds = round(time.perf_counter() - start, 1)
    model = TSEmbedModel.from_pretrained(model_dir)
    routing = routing_accuracy(model, suite, split="dev", batch_size=eval_batch_size)
    return evaluate_and_record(model, variant, seed, out_dir, suite, cache_dir, split,
                               {"compose": options, "experts": {k: str(v) for k, v in experts.items()}},
                               compose_seconds, 0, eval_batch_size, target_routing=options["target_routing"],
                               extra={"routing_dev": {"query_accuracy": routing["query_accuracy"],
                                                      "accuracy": routing["accuracy"]}})


