"""Every shipped config loads and validates (no model is built)."""

from pathlib import Path

import pytest

from tsembed.training.config import load_train_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "src" / "tsembed" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path):
    config = load_train_config(path)
    assert config.schedule.steps > config.schedule.stage1_steps >= 0
    assert config.model.moe is not None
