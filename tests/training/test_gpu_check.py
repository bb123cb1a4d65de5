"""``benchmarks/gpu_check.py``: its processor-shape check at the GPU run's settings (fast), and its whole CPU mode
(slow: a subprocess that must pass every check and print the JSON keys issue 23 names)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch

from tests.benchmark_scripts import BENCHMARKS, benchmark_module
from tsembed.backbones.qwen2_vl import Qwen2VLBackbone
from tsembed.backbones.testing import save_tiny_qwen2_vl
from tsembed.model import ModelConfig, TSEmbedModel

SCRIPT = BENCHMARKS / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    with benchmark_module("gpu_check") as module:
        yield module


def test_real_processor_shapes_keep_the_whole_question(gpu_check, tmp_path):
    """Qwen2-VL's image processor (max_pixels as the yaml) and max_length 1024, as the GPU run has them: the
    DocVQA page and the 1000x4000 image shrink, and every token of the 30-token question stays."""
    save_tiny_qwen2_vl(tmp_path / "model", pixels=gpu_check.QWEN2_VL_PIXELS, dtype=torch.bfloat16)
    gpu_check.write_images(tmp_path)
    profile = gpu_check.GPU
    backbone = Qwen2VLBackbone(str(tmp_path / "model"), max_length=profile.max_length,
                               max_pixels=profile.max_pixels, dtype=profile.dtype)
    model = TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=None))
    ask = gpu_check.question(backbone.tokenizer)
    result = gpu_check.check_shapes(model, gpu_check.image_paths(tmp_path), ask, profile)
    assert result["question_tokens"] == 30
    shapes = result["shapes"]
    assert all(s["question_kept"] and s["tokens"] <= 1024 for s in shapes.values())
    assert shapes["640x480"]["image_tokens"] == shapes["640x480"]["image_tokens_unshrunk"]  # fits as it is
    for big in ("1700x2200", "1000x4000"):  # ~1,000 tokens at max_pixels: shrunk to leave the question whole
        assert shapes[big]["image_tokens"] < shapes[big]["image_tokens_unshrunk"]


@pytest.mark.slow  # about 40 s on one thread: a tiny model through every check
def test_cpu_mode_passes_and_reports_the_issue_keys(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(out)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    last = json.loads(run.stdout.strip().splitlines()[-1])
    assert last == json.loads(out.read_text())
    for key in ("ok", "nccl_collectives_ok", "gradcache_cosine", "tokens_per_s_backbone", "tokens_per_s_step",
                "peak_memory_mb", "resume_identical", "data_wait_s"):
        assert key in last, key
    assert last["ok"] is True and last["nccl_collectives_ok"] is True and last["resume_identical"] is True
    assert last["gradcache_cosine"] > 0.999
    assert last["peak_memory_mb"] is None  # CPU
    assert set(last["tokens_per_s_step"]) == {"chunk16_ckpt_on", "chunk16_ckpt_off", "chunk64_ckpt_on",
                                              "chunk64_ckpt_off"}
    assert last["tokens_per_s_backbone"] > 0 and not last["skipped"]
    assert sum(line.startswith("PASS ") for line in run.stdout.splitlines()) == 9
