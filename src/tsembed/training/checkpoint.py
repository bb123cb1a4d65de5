"""Training checkpoints (all it takes to continue a run exactly where it stopped) and the names of a run's files."""

from __future__ import annotations

import json
import logging
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsembed.errors import ConfigError
from tsembed.fileio import atomic_write
from tsembed.weights import verify_checksums, write_checksums

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
MODEL_DIR = "model"  # in a checkpoint, and the final model in the run directory
METRICS_NAME = "metrics.jsonl"  # one record per training step, in the run directory
RUN_CONFIG_NAME = "config.json"  # the resolved training config, in the run directory


def rng_state() -> dict[str, Any]:
    """Every generator's state, in types ``torch.load(weights_only=True)`` accepts (no numpy arrays)."""
    numpy_state = np.random.get_state(legacy=False)
    key = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    return {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {**numpy_state["state"], "key": key}},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    key = numpy_state["state"]["key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, model: Any, state: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoint-<step>/`` (model dir + trainer state + the state's checksum), then prune older ones
    beyond ``keep``. The model dir lists its own weight checksums (``save_pretrained``)."""
    path = directory / f"checkpoint-{state['step']:07d}"
    model.save_pretrained(path / MODEL_DIR)
    atomic_write(path / STATE_NAME, lambda p: torch.save(state, p))
    write_checksums(path, [STATE_NAME])
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in directory.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted((p for p in found if (p / STATE_NAME).is_file()), key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(resume: str, output_dir: Path) -> Path | None:
    """``auto``: the latest complete checkpoint of the run (None if there is none); else a path."""
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_NAME).is_file():
        raise ConfigError(f"--resume {resume}: no {STATE_NAME} there (expected a checkpoint-<step> directory)")
    return path


def load_state(path: Path) -> dict[str, Any]:
    """Read the trainer state without running code: a crafted checkpoint must not execute on resume.

    The state file is checked against the checkpoint's ``checksums.json`` first (the model weights are
    checked against theirs by ``TSEmbedModel.load_weights``, before any is copied), so a truncated or garbled
    checkpoint is refused, naming the file, rather than resumed from.

    Raises:
        AdapterError: the state file differs from its listed checksum.
        ConfigError: the state holds objects other than tensors and plain values.
    """
    verify_checksums(path, [STATE_NAME])
    try:
        return torch.load(path / STATE_NAME, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{path / STATE_NAME}: refused, it holds objects other than tensors and plain values "
            f"(crafted, or written by a tsembed before weights-only checkpoints): {str(exc).splitlines()[0]}"
        ) from None


# sections whose values shape the optimisation: a change between a run and its resume is worth a warning
WATCHED_SECTIONS = ("optim", "schedule", "loss")
UNWATCHED_KEYS = {"schedule.steps"}  # extending a run is what a resume is often for


def warn_changed_settings(previous_config: Path, current: dict[str, Any]) -> list[str]:
    """Warn, naming old and new values, about settings in ``WATCHED_SECTIONS`` (``optim.lr`` …) that differ
    between the run a checkpoint came from (its ``config.json``) and the config resuming it; returns the keys.

    A resume continues the saved optimizer and schedule state with the new values, which is rarely what a
    changed ``optim.lr`` was meant to do silently. Nothing happens when the old config is missing or unreadable.
    """
    try:
        old = json.loads(previous_config.read_text())
    except (OSError, ValueError):
        return []
    changed = []
    for section in WATCHED_SECTIONS:
        before, after = old.get(section), current.get(section)
        if not isinstance(before, dict) or not isinstance(after, dict):
            continue
        for key in sorted(set(before) | set(after)):
            name = f"{section}.{key}"
            if name not in UNWATCHED_KEYS and before.get(key) != after.get(key):
                changed.append(name)
                logger.warning("%s changed on resume: %r in the checkpointed run, %r now; the run continues from its "
                               "saved optimizer and schedule state with the new value", name, before.get(key),
                               after.get(key))
    return changed
