"""Derived variants (--derive): a built-in variant plus overrides under a name of its own."""

import pytest

from tsembed.errors import ConfigError
from tsembed.experiments.variants import ablation_variants, derive, pick


def test_derived_variant_is_its_base_plus_the_overrides_in_order() -> None:
    variants = derive(ablation_variants(4, 8), ["lora80=lora:model.moe.rank=80",
                                               "lora_proj=lora:model.backbone.projector_experts=4",
                                               "lora_proj=lora:data.datasets=[a,b]"])
    base = variants["lora"]
    assert variants["lora80"].overrides == (*base.overrides, "model.moe.rank=80")
    assert variants["lora_proj"].overrides == (*base.overrides, "model.backbone.projector_experts=4",
                                               "data.datasets=[a,b]")
    assert variants["lora_proj"].trained and variants["lora"] is base  # built-ins untouched
    assert [v.name for v in pick(variants, ["lora80", "lora"])] == ["lora80", "lora"]


@pytest.mark.parametrize("spec, message", [
    ("lora80", "expected NAME=BASE:KEY=VALUE"),
    ("lora80=lora", "expected NAME=BASE:KEY=VALUE"),
    ("lora80=lora:rank", "expected NAME=BASE:KEY=VALUE"),
    ("lora=moe:model.moe.rank=8", "is a built-in variant"),
    ("x=nope:model.moe.rank=8", "unknown base variant 'nope'"),
])
def test_bad_derive_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        derive(ablation_variants(4, 8), [spec])


def test_one_name_cannot_have_two_bases() -> None:
    with pytest.raises(ConfigError, match="already derived from 'lora'"):
        derive(ablation_variants(4, 8), ["x=lora:model.moe.rank=8", "x=moe:model.moe.rank=8"])


def test_a_derived_override_applies_after_the_variant_unlike_a_base_set(tmp_path) -> None:
    from tsembed.experiments.runner import load_base_config, variant_config
    from tsembed.experiments.variants import variants_for

    base = load_base_config(None, [])
    lora80 = derive(variants_for(base), ["lora80=lora:model.moe.rank=80"])["lora80"]
    config = variant_config(base, lora80, 0, tmp_path, [])
    assert (config.model.moe["num_experts"], config.model.moe["rank"]) == (1, 80)
    # `--set model.moe.rank=80` changes the base, from which the lora variant derives its budget: E × 80
    scaled = load_base_config(None, ["model.moe.rank=80"])
    config = variant_config(scaled, variants_for(scaled)["lora"], 0, tmp_path, [])
    assert config.model.moe["rank"] == 4 * 80


def test_ablate_summarises_a_derived_variant(tmp_path) -> None:
    import json

    from tsembed.cli import main

    run = tmp_path / "seed0" / "lora80"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "variant": "lora80", "description": "d", "seed": 0, "train_seconds": 1.0, "trainable_parameters": 5,
        "aggregates": {"overall": {"hit@1": 0.5}}, "datasets": {}}))
    assert main(["ablate", "--summary-only", "--seeds", "0", "--variant", "lora80", "--derive",
                 "lora80=lora:model.moe.rank=80", "--out", str(tmp_path), "--suite", str(tmp_path / "no-suite")]) == 0
    assert json.loads((tmp_path / "ablation.json").read_text())["variants"]["lora80"]["overall"]["mean"] == 50.0


def test_summary_only_names_a_record_after_its_directory(tmp_path, caplog) -> None:
    import json

    from tsembed.cli import main

    run = tmp_path / "seed0" / "lora_proj"  # a run trained as "lora", linked in under a derived name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "variant": "lora", "description": "d", "seed": 0, "train_seconds": 1.0, "trainable_parameters": 5,
        "aggregates": {"overall": {"hit@1": 0.5}}, "datasets": {}}))
    assert main(["ablate", "--summary-only", "--seeds", "0", "--variant", "lora_proj", "--derive",
                 "lora_proj=lora:model.backbone.projector_experts=4", "--out", str(tmp_path),
                 "--suite", str(tmp_path / "no-suite")]) == 0
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["variant"] for r in summary["per_seed"]] == ["lora_proj"]
    assert "summarised as 'lora_proj'" in caplog.text
