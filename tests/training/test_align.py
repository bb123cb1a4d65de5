"""Bridge alignment (`tsembed align`): leak-free captions, deterministic bytes, caching, and the bridge option."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from tsembed.backbones.minilm_effnet import BRIDGE_DIGEST_PREFIX, BRIDGE_FILE
from tsembed.backbones.testing import build_tiny_minilm_effnet
from tsembed.data.registry import SUITE_KINDS
from tsembed.data.suite import Suite, build_suite
from tsembed.data.suite.captions import alignment_pairs, colour_name, hue_rotated
from tsembed.errors import ConfigError
from tsembed.training.align import AlignConfig, align_bridge, suite_context
from tsembed.training.config import load_train_config
from tsembed.training.trainer import resolve_bridge

TINY_CONFLICT = {"max_train_per_dataset": 4, "max_eval_per_dataset": 4, "pool_size": 8, "dev_fraction": 0.15,
                 "kind": "conflict"}
QUICK = AlignConfig(steps=3, batch_size=8, hue_copies=1, canvases=4, held_out=4, max_emoji=12)


@pytest.fixture(scope="module")
def conflict_suite(tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return build_suite(tmp_path_factory.mktemp("conflict") / "s", seed=0, progress=False, **TINY_CONFLICT)


@pytest.fixture(scope="module")
def tiny_options(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tsembed.backbones.testing import save_tiny_bert

    bert = save_tiny_bert(tmp_path_factory.mktemp("bert"))
    return {"text_model": str(bert), "image_size": 64, "num_visual_tokens": 4, "max_length": 48,
            "disk_cache": False}


def _instruction_phrases() -> set[str]:
    """Every instruction sentence of both suite kinds, without its placeholders."""
    phrases = set()
    for infos in SUITE_KINDS.values():
        for info in infos:
            for template in (info.query_template, info.target_template):
                for part in re.split(r"<\|image_\d\|>|\{text\}|\n", template):
                    if len(part.strip()) > 12:
                        phrases.add(part.strip().lower())
    return phrases


def test_alignment_pairs_use_train_emoji_only_and_no_instruction(conflict_suite: Suite) -> None:
    ctx, bases = suite_context(conflict_suite.root)
    train_chars = {it.char for it in ctx.items("train")}
    held_out = {it.char for split in ("dev", "eval") for it in ctx.items(split)}
    assert held_out and not train_chars & held_out
    pairs = list(alignment_pairs(ctx, seed=0, hue_copies=2, canvases=20, max_emoji=40))
    assert {p.kind for p in pairs} == {"original", "hue", "canvas"}
    shown = {c for p in pairs for c in p.chars}
    assert shown <= train_chars and not shown & held_out
    phrases = _instruction_phrases()
    assert phrases
    for pair in pairs:
        assert not any(phrase in pair.caption.lower() for phrase in phrases), pair.caption
        assert "same" not in pair.caption.lower() and "different" not in pair.caption.lower()
    recorded = json.loads((conflict_suite.root / "meta/splits.json").read_text().splitlines()[0])
    assert bases == recorded["train_bases"]


def test_alignment_pairs_are_deterministic_per_seed(conflict_suite: Suite) -> None:
    ctx, _ = suite_context(conflict_suite.root)

    def listing(seed: int) -> list[tuple[str, bytes]]:
        return [(p.caption, p.image.tobytes()) for p in alignment_pairs(ctx, seed, 1, 5, max_emoji=10)]

    assert listing(0) == listing(0)
    assert listing(0) != listing(1)
    plain = list(alignment_pairs(ctx, 0, 2, 0, recolour=False, max_emoji=10))
    assert {p.kind for p in plain} == {"original"} and len(plain) == 10


def test_hue_rotation_changes_the_colour_word() -> None:
    red = Image.new("RGB", (16, 16), (220, 20, 20))
    assert colour_name(red) == "red"
    assert colour_name(hue_rotated(red, 120)) == "green"
    assert colour_name(hue_rotated(red, 240)) == "blue"
    assert colour_name(Image.new("RGB", (16, 16), (90, 90, 90))) is None  # grey: no hue to name


def test_align_writes_the_same_bytes_twice_and_reuses_its_output(conflict_suite: Suite, tiny_options: dict,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    first = align_bridge(conflict_suite.root, tmp_path / "a", QUICK, tiny_options, progress=False)
    second = align_bridge(conflict_suite.root, tmp_path / "b", QUICK, tiny_options, progress=False)
    assert first.name == BRIDGE_FILE and first.read_bytes() == second.read_bytes()
    record = json.loads((tmp_path / "a" / "bridge.json").read_text())
    assert record["pairs"]["original"] == 12 and record["align"]["steps"] == 3
    assert 0.0 <= record["held_out_retrieval_at1"]["after"] <= 1.0
    import tsembed.training.align as align

    monkeypatch.setattr(align, "vision_features", lambda *a, **k: pytest.fail("the cached bridge was recomputed"))
    assert align_bridge(conflict_suite.root, tmp_path / "a", QUICK, tiny_options, progress=False) == first


def test_a_changed_config_realigns(conflict_suite: Suite, tiny_options: dict, tmp_path: Path) -> None:
    path = align_bridge(conflict_suite.root, tmp_path, QUICK, tiny_options, progress=False)
    before = path.read_bytes()
    again = align_bridge(conflict_suite.root, tmp_path, AlignConfig(**{**QUICK.__dict__, "seed": 1}), tiny_options,
                         progress=False)
    assert again.read_bytes() != before
    assert json.loads((tmp_path / "bridge.json").read_text())["align"]["seed"] == 1


def test_backbone_loads_the_bridge_and_records_its_digest(conflict_suite: Suite, tiny_options: dict,
                                                          tiny_bert_dir: Path, tmp_path: Path) -> None:
    path = align_bridge(conflict_suite.root, tmp_path, QUICK, tiny_options, progress=False)
    from tsembed.weights import read_safetensors

    aligned = read_safetensors(path)
    backbone = build_tiny_minilm_effnet(tiny_options["text_model"], bridge=str(path))
    for name, value in backbone.projector.state_dict().items():
        assert torch.equal(value, aligned[name]), name
    recorded = backbone.config()["bridge"]
    assert recorded.startswith(BRIDGE_DIGEST_PREFIX)
    # A saved model's config names the digest; rebuilding from it loads nothing and does not fail.
    build_tiny_minilm_effnet(tiny_options["text_model"], bridge=recorded)
    with pytest.raises(ConfigError, match="not found"):
        build_tiny_minilm_effnet(tiny_options["text_model"], bridge=str(tmp_path / "missing.safetensors"))
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({name: torch.zeros(*value.shape[:-1], value.shape[-1] + 1) for name, value in aligned.items()},
              str(wrong))
    with pytest.raises(ConfigError, match="does not fit"):
        build_tiny_minilm_effnet(tiny_options["text_model"], bridge=str(wrong))
    with pytest.raises(ConfigError, match="auto"):
        build_tiny_minilm_effnet(tiny_options["text_model"], bridge="auto")


def test_bridge_auto_needs_a_suite() -> None:
    config = load_train_config(None, ["model.backbone={kind: minilm-effnet, bridge: auto}", "data.suite=null",
                                      "data.train_files=[{name: x, path: x.jsonl}]"])
    with pytest.raises(ConfigError, match="data.suite"):
        resolve_bridge(config)


def test_align_config_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="align.steps"):
        AlignConfig(steps=0)
    with pytest.raises(ConfigError, match="align.tau"):
        AlignConfig(tau=float("nan"))
    with pytest.raises(ConfigError, match="unknown keys"):
        AlignConfig.from_dict({"stpes": 3})


def test_align_refuses_a_folder_that_is_not_a_suite(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="suite.json"):
        align_bridge(tmp_path, tmp_path / "out", QUICK)


def test_epoch_order_keeps_families_together_and_uses_every_pair_once() -> None:
    from tsembed.training.align import _epoch_order

    families = [f"f{i % 5}" for i in range(40)] + ["big"] * 20
    train = torch.arange(len(families))
    order = _epoch_order(train, families, chunk=8, generator=torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == train.tolist()
    runs, current = [], 1
    for a, b in zip(order.tolist(), order.tolist()[1:], strict=False):
        if families[a] == families[b]:
            current += 1
        else:
            runs.append(current)
            current = 1
    runs.append(current)
    assert len(runs) <= 8  # 5 chunks of f0-f4 and 3 of "big" (8, 8, 4), each in a row: never scattered
    uniform = _epoch_order(train, None, chunk=8, generator=torch.Generator().manual_seed(0))
    assert sorted(uniform.tolist()) == train.tolist()


def test_recoloured_toned_emoji_lose_their_tone_in_the_caption(conflict_suite: Suite) -> None:
    ctx, _ = suite_context(conflict_suite.root)
    pairs = list(alignment_pairs(ctx, seed=0, hue_copies=2, canvases=0, max_emoji=300))
    assert any(p.kind == "hue" for p in pairs)
    assert not any("skin tone" in p.caption for p in pairs if p.kind == "hue")
    assert any("skin tone" in p.caption for p in pairs if p.kind == "original")
    assert all(p.family for p in pairs)
