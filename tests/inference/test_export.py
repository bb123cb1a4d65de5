"""Export: a merged expert equals the routed model on inputs routed to it; peft adapters; pruning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tsembed.cli import main
from tsembed.errors import AdapterError
from tsembed.inference import encode, load_model
from tsembed.inference.export import export_merged_expert, export_peft
from tsembed.inference.prune import expert_usage, export_pruned, prune_experts
from tsembed.inputs import EmbedInput
from tsembed.moe import MoELoRALinear, masked_mean

from .conftest import ImageToyBackbone, build_model

TEXTS = [f"sentence {i} about {w}" for i, w in enumerate("apples trees cars stars fish dogs moons suns".split())]
EXPERT = 2


def _route_everything_to(model, expert: int, texts: list[str], rounds: int = 4) -> None:
    """Point every router at ``expert`` for these inputs (their mean router input gets the largest logit)."""
    layers = [m for m in model.modules() if isinstance(m, MoELoRALinear)]
    captured: dict[str, torch.Tensor] = {}

    def capture(mod, args):
        x = args[0]
        captured[mod.name] = masked_mean(x, mod._state.mask_for(x.shape[0], x.shape[1], mod.name))

    for _ in range(rounds):  # later layers see what earlier routing produced: repeat until it settles
        hooks = [layer.register_forward_pre_hook(capture) for layer in layers]
        encode(model, texts, show_progress_bar=False)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for layer in layers:
                direction = captured[layer.name].mean(0)
                weight = torch.zeros_like(layer.router.weight)
                weight[expert] = 50 * direction / direction.norm() ** 2
                layer.router.weight.copy_(weight)


def _routed_to(model, texts, expert):
    _, routing = encode(model, texts, return_routing=True, show_progress_bar=False)
    top1 = np.stack(list(routing.top1().values()))  # [layers, N]
    return np.flatnonzero((top1 == expert).all(axis=0))


def test_merged_expert_equals_routed_model(model, tmp_path):
    _route_everything_to(model, EXPERT, TEXTS)
    routed = _routed_to(model, TEXTS, EXPERT)
    assert len(routed) >= len(TEXTS) // 2
    src = model.save_pretrained(tmp_path / "src")
    out = export_merged_expert(src, tmp_path / "merged", EXPERT)
    merged = load_model(out)
    assert merged.config.moe is None and not any(isinstance(m, MoELoRALinear) for m in merged.modules())
    assert "merged" in (out / "README.md").read_text()
    texts = [TEXTS[i] for i in routed]
    np.testing.assert_allclose(encode(merged, texts), encode(model, texts), atol=1e-5)
    other = export_merged_expert(src, tmp_path / "other", (EXPERT + 1) % 4)
    assert not np.allclose(encode(load_model(other), texts), encode(model, texts), atol=1e-3)


def test_merge_needs_sequence_routing_and_a_valid_expert(tmp_path, model):
    token = build_model(level="token").save_pretrained(tmp_path / "token")
    with pytest.raises(AdapterError, match="sequence-level"):
        export_merged_expert(token, tmp_path / "x", 0)
    src = model.save_pretrained(tmp_path / "src")
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "y"), "--expert", "9"]) == 1
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "y")]) == 1  # no mode chosen


def test_peft_adapter_files(model, tmp_path):
    src = model.save_pretrained(tmp_path / "src")
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "peft"), "--peft"]) == 0
    dirs = sorted(p.name for p in (tmp_path / "peft").glob("expert_*"))
    assert dirs == ["expert_0", "expert_1", "expert_2", "expert_3"]
    config = json.loads((tmp_path / "peft" / "expert_1" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4  # rank 2 expert + rank 2 shared expert
    assert config["lora_alpha"] == pytest.approx(model.config.moe.scaling * 4)
    assert "encoder.layer.0.attention.self.query" in config["target_modules"]
    tensors = load_file(str(tmp_path / "peft" / "expert_1" / "adapter_model.safetensors"))
    key = "base_model.model.encoder.layer.0.attention.self.query"
    assert tensors[f"{key}.lora_A.weight"].shape == (4, 32) and tensors[f"{key}.lora_B.weight"].shape == (32, 4)
    assert len(tensors) == 2 * len(config["target_modules"])


def test_peft_loads_and_matches_merged_expert(model, tmp_path):
    peft = pytest.importorskip("peft")
    src = model.save_pretrained(tmp_path / "src")
    export_peft(src, tmp_path / "peft", [EXPERT])
    merged = load_model(export_merged_expert(src, tmp_path / "merged", EXPERT))
    base = ImageToyBackbone().bert  # the same seeded weights the adapters were trained on
    peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path / "peft" / f"expert_{EXPERT}")).eval()
    batch = merged.prepare([EmbedInput(text=t)
                            for t in TEXTS])
    with torch.no_grad():
        expected = merged.backbone.bert(**batch).last_hidden_state
        got = peft_model(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_prune_drops_rare_experts(model, tmp_path):
    _route_everything_to(model, EXPERT, TEXTS)
    src = model.save_pretrained(tmp_path / "src")
    rows = tmp_path / "calib.jsonl"
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    usage = expert_usage(model, [EmbedInput(text=t)
                                 for t in TEXTS])
    assert usage.sum() == pytest.approx(1.0) and usage.argmax() == EXPERT
    report = export_pruned(src, tmp_path / "pruned", 0.2, rows)
    assert report["kept"] == [EXPERT] and report["eval"]["metric"] == "cosine_to_unpruned"
    pruned = load_model(tmp_path / "pruned")
    assert pruned.config.moe.num_experts == 1 and pruned.config.moe.top_k == 1
    routed = [TEXTS[i] for i in _routed_to(model, TEXTS, EXPERT)]
    np.testing.assert_allclose(encode(pruned, routed), encode(model, routed), atol=1e-5)
    assert json.loads((tmp_path / "pruned" / "prune_report.json").read_text())["dropped"] == [0, 1, 3]


def test_prune_reports_hit_at_1_on_an_eval_file(model, tmp_path):
    src = model.save_pretrained(tmp_path / "src")
    rows = tmp_path / "calib.jsonl"
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    eval_file = tmp_path / "eval.jsonl"
    eval_rows = [{"qry_text": t, "qry_img_path": "", "tgt_text": [t, "unrelated words"], "tgt_img_path": ["", ""]}
                 for t in TEXTS[:4]]
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "p"), "--prune-below", "0.0",
                 "--calibration", str(rows), "--eval-file", str(eval_file)]) == 0
    report = json.loads((tmp_path / "p" / "prune_report.json").read_text())
    assert report["eval"]["metric"] == "hit@1" and report["eval"]["before"] == 1.0 and report["eval"]["change"] == 0
    assert report["kept"] == [0, 1, 2, 3]


def test_prune_experts_keeps_config_consistent(model):
    prune_experts(model, [1, 3])
    layer = next(m for m in model.modules() if isinstance(m, MoELoRALinear))
    assert layer.lora_A.shape[0] == (2 + 1) * 2 and layer.router.weight.shape[0] == 2
    assert model.config.moe.num_experts == 2
    assert encode(model, "x").shape == (32,)


def test_exported_models_carry_model_cards(model, tmp_path):
    from huggingface_hub import ModelCard

    src = model.save_pretrained(tmp_path / "src")
    merged = ModelCard.load(export_merged_expert(src, tmp_path / "merged", EXPERT) / "README.md")
    assert merged.data.library_name == "tsembed" and f"expert {EXPERT} merged" in merged.text
    adapter = ModelCard.load(export_peft(src, tmp_path / "peft", [EXPERT])[0] / "README.md")
    assert adapter.data.library_name == "peft" and "peft" in adapter.data.tags
    assert "PeftModel.from_pretrained" in adapter.text
