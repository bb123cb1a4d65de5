"""Data-layer fixtures: tiny images, row factories, and one tiny suite built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tsembed.data.suite import Suite, build_suite

#: Size knobs of the tiny suite: every dataset, a handful of rows each, built in a few seconds.
TINY = {"max_train_per_dataset": 6, "max_eval_per_dataset": 4, "pool_size": 8, "vqa_choices": 6}


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    """An image root with two valid PNGs (img/a.png, img/b.png) and a corrupt one (img/bad.png)."""
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "img/a.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(root / "img/b.png")
    (root / "img/bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    """One tiny suite (seed 0) shared by the whole session; treat it as read-only."""
    return build_suite(tmp_path_factory.mktemp("suite") / "tiny", seed=0, progress=False, **TINY)
