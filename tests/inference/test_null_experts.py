"""Null experts (``moe.num_null_experts``) through the saved model, pruning, export and the encoder."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from tsembed.errors import ConfigError
from tsembed.evaluation.encoder import CachedEncoder
from tsembed.inference import encode, load_model
from tsembed.inference.export import export_peft
from tsembed.inference.prune import expert_usage, export_pruned
from tsembed.inputs import EmbedInput
from tsembed.moe import MoELoRALinear

from .conftest import build_model
from .test_export import _route_everything_to

TEXTS = [f"sentence {i} about {w}" for i, w in enumerate("apples trees cars stars fish dogs moons suns".split())]


@pytest.fixture
def null_model():
    return build_model(nulls=1)


def _layers(model) -> list[MoELoRALinear]:
    return [m for m in model.modules() if isinstance(m, MoELoRALinear)]


def test_a_model_with_null_experts_saves_and_loads_exactly(null_model, tmp_path):
    src = null_model.save_pretrained(tmp_path / "src")
    loaded = load_model(src)
    assert loaded.config.moe.num_null_experts == 1 and _layers(loaded)[0].router.weight.shape[0] == 5
    np.testing.assert_array_equal(encode(loaded, TEXTS), encode(null_model, TEXTS))


def test_pruning_measures_null_routes_but_drops_only_routed_experts(null_model, tmp_path):
    _route_everything_to(null_model, 4, TEXTS)  # route 4 is the null expert
    usage = expert_usage(null_model, [EmbedInput(text=t) for t in TEXTS])
    assert usage.shape == (5,) and usage[4] == pytest.approx(1.0)
    src = null_model.save_pretrained(tmp_path / "src")
    rows = tmp_path / "calib.jsonl"
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    report = export_pruned(src, tmp_path / "pruned", 0.0, rows)
    assert report["kept"] == [0, 1, 2, 3] and report["null_routes"] == [4] and report["dropped"] == []
    assert report["usage"][4] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="would drop every expert"):  # the null route is never "kept"
        export_pruned(src, tmp_path / "pruned2", 0.2, rows)


def test_peft_export_names_the_null_experts(null_model, tmp_path):
    src = null_model.save_pretrained(tmp_path / "src")
    export_peft(src, tmp_path / "peft", experts=[0])
    info = json.loads((tmp_path / "peft" / "tsembed_export.json").read_text())
    assert info["null_experts"] == 1 and "null experts have no weights" in info["note"]


def test_one_expert_with_a_null_route_still_has_routing_to_report():
    from tsembed.moe import MoELoRAConfig

    model = build_model(nulls=1)
    one = MoELoRAConfig(target_modules=["x"], num_experts=1, top_k=1)
    model.config = replace(model.config, moe=replace(one, num_null_experts=1))
    assert CachedEncoder(model, None).has_routing  # one expert or nothing: still a choice
    model.config = replace(model.config, moe=one)
    assert not CachedEncoder(model, None).has_routing
