"""Every shipped config loads and validates (no model is built); every numeric key is range-checked."""

import re
from pathlib import Path

import pytest

from tsembed.errors import ConfigError
from tsembed.moe import MoELoRAConfig
from tsembed.training.config import load_train_config
from tsembed.training.objective import LossConfig

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "src" / "tsembed" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path):
    config = load_train_config(path)
    assert config.schedule.steps > config.schedule.stage1_steps >= 0
    assert config.model.moe is not None


@pytest.mark.parametrize(("override", "key"), [
    ("optim.grad_clip=-1.0", "optim.grad_clip"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio"),
    ("optim.min_lr_ratio=-0.1", "optim.min_lr_ratio"),
    ("optim.lr=.nan", "optim.lr"),
    ("optim.lr=.inf", "optim.lr"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.lr=1e999", "optim.lr"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"),
    ("run.keep_checkpoints=0", "run.keep_checkpoints"),
    ("run.log_every=0", "run.log_every"),
    ("run.num_threads=0", "run.num_threads"),
    ("run.seed=-1", "run.seed"),
    ("schedule.stability_interval=0", "schedule.stability_interval"),
    ("schedule.stability_threshold=-1", "schedule.stability_threshold"),
    ("schedule.min_stage1_steps=-1", "schedule.min_stage1_steps"),
    ("schedule.stage1_router_lr_scale=.nan", "schedule.stage1_router_lr_scale"),
    ("data={suite: s, weights: {a: .nan}}", "data.weights.a"),
    ("data.train_files=[{name: a, path: a.jsonl, weight: -1}]", "data.train_files[0].weight"),
    ("loss.tau=.nan", "loss.tau"),
    ("eans.beta=.inf", "eans.beta"),
    ("model.moe={alpha: .nan}", "model.moe.alpha"),
])
def test_out_of_range_values_are_rejected_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_train_config(overrides=[override])


def test_zero_grad_clip_and_null_mean_no_clipping():
    assert load_train_config(overrides=["optim.grad_clip=0"]).optim.grad_clip == 0
    assert load_train_config(overrides=["optim.grad_clip=null"]).optim.grad_clip is None


def test_qwen2vl_config_trains_fp32_adapters_under_bf16_autocast_with_workers():
    config = load_train_config(CONFIGS[0].parent / "qwen2vl_mmeb.yaml")
    assert config.model.backbone["dtype"] == "bfloat16"  # the frozen base
    assert config.model.moe.adapter_dtype == "float32"
    assert config.run.precision == "bf16" and config.data.num_workers > 0


@pytest.mark.parametrize("section, key, value, message", [
    ("loss", "false_negative_margin", -0.1, "loss.false_negative_margin must be a finite number >= 0 or null"),
    ("loss", "false_negative_margin", float("nan"), "loss.false_negative_margin must be a finite number >= 0"),
    ("loss", "false_negative_margin", float("inf"), "loss.false_negative_margin must be a finite number >= 0"),
    ("loss", "tau", float("nan"), "loss.tau must be a finite number > 0"),
    ("loss", "load_balance_weight", float("nan"), "loss.load_balance_weight must be a finite number >= 0"),
])
def test_loss_numbers_are_range_checked(section, key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        LossConfig(**{key: value})
    assert LossConfig(false_negative_margin=None).false_negative_margin is None  # null turns the rule off
    assert LossConfig(false_negative_margin=0).false_negative_margin == 0


@pytest.mark.parametrize("key, value", [
    ("router_init_std", 0.0), ("router_init_std", -0.1), ("router_init_std", float("nan")),
    ("router_init_std", float("inf")), ("alpha", float("nan")), ("alpha", float("inf")),
    ("temperature", float("nan")), ("temperature", float("inf")), ("alpha", True),
])
def test_moe_positive_numbers_must_be_finite(key, value):
    with pytest.raises(ConfigError, match=re.escape(f"moe.{key} must be a finite number > 0")):
        MoELoRAConfig(target_modules=[".*"], **{key: value})


def test_model_moe_is_a_typed_config_validated_once_at_load():
    """``model.moe`` is a MoELoRAConfig when the file loads; the backbone's targets are filled in later."""
    config = load_train_config(overrides=["model.moe.rank=4", "model.moe.alpha=8", "model.moe.task_hints=vdc"])
    moe = config.model.moe
    assert isinstance(moe, MoELoRAConfig) and (moe.rank, moe.alpha, moe.task_hints) == (4, 8.0, ["vdc"])
    assert moe.target_modules == []  # left out: the backbone's defaults
    assert config.model.moe_config(["a", "b"]).target_modules == ["a", "b"]
    pinned = load_train_config(overrides=["model.moe.target_modules=[x]"]).model
    assert pinned.moe_config(["a"]).target_modules == ["x"]
    assert load_train_config(overrides=["model.moe=null"]).model.moe_config(["a"]) is None


@pytest.mark.parametrize(("override", "message"), [
    ("model.moe.rank=0", "model.moe.rank must be an integer >= 1, got 0"),
    ("model.moe.rank=x", "model.moe.rank: expected an integer, got 'x'"),
    ("model.moe.bogus=1", "unknown config key(s) ['model.moe.bogus']"),
    ("model.moe.routing=soft", "model.moe.routing must be one of"),
    ("model.moe={top_k: 9}", "model.moe.top_k=9 is larger"),
])
def test_model_moe_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_train_config(overrides=[override])


def test_a_saved_run_config_loads_back(tmp_path):
    """A run's config.json, as this version writes it and as older ones did (``model.moe`` a partial dict)."""
    import json
    from dataclasses import asdict

    from tsembed.configtools import from_dict
    from tsembed.training.config import TrainConfig

    config = load_train_config(overrides=["model.moe.num_experts=2", "model.moe.level=sequence"])
    again = from_dict(TrainConfig, json.loads(json.dumps(asdict(config))))
    assert again == config
    old = json.loads(json.dumps(asdict(config)))
    old["model"]["moe"] = {"num_experts": 2, "rank": 8, "alpha": 16, "level": "sequence"}  # as older versions wrote it
    assert from_dict(TrainConfig, old).model.moe == config.model.moe



def test_a_misspelt_backbone_option_fails_when_the_config_loads():
    from tsembed.errors import ConfigError
    from tsembed.training.config import default_config_path, load_train_config

    with pytest.raises(ConfigError, match=r"model.backbone: backbone 'minilm-effnet' has no options \['image_sz'\]"):
        load_train_config(default_config_path(), ["model.backbone.image_sz=64"])
