"""Derived variants (--derive): a built-in variant plus overrides under a name of its own."""

import pytest

from tsembed.errors import ConfigError
from tsembed.experiments.variants import ablation_variants, derive, pick


def test_derived_variant_is_its_base_plus_the_overrides_in_order() -> None:
    variants = derive(ablation_variants(4, 8), ["lora80=lora:model.moe.rank=80",
                                               "lora_t2=lora:model.moe.temperature=2",
                                               "lora_t2=lora:data.datasets=[a,b]"])
    base = variants["lora"]
    assert variants["lora80"].overrides == (*base.overrides, "model.moe.rank=80")
    assert variants["lora_t2"].overrides == (*base.overrides, "model.moe.temperature=2", "data.datasets=[a,b]")
    assert variants["lora_t2"].trained and variants["lora"] is base  # built-ins untouched
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
    assert (config.model.moe.num_experts, config.model.moe.rank) == (1, 80)
    # `--set model.moe.rank=80` changes the base, from which the lora variant derives its budget: E × 80
    scaled = load_base_config(None, ["model.moe.rank=80"])
    config = variant_config(scaled, variants_for(scaled)["lora"], 0, tmp_path, [])
    assert config.model.moe.rank == 4 * 80


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

    run = tmp_path / "seed0" / "lora_t2"  # a run trained as "lora", linked in under a derived name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "variant": "lora", "description": "d", "seed": 0, "train_seconds": 1.0, "trainable_parameters": 5,
        "aggregates": {"overall": {"hit@1": 0.5}}, "datasets": {}}))
    assert main(["ablate", "--summary-only", "--seeds", "0", "--variant", "lora_t2", "--derive",
                 "lora_t2=lora:model.moe.temperature=2", "--out", str(tmp_path),
                 "--suite", str(tmp_path / "no-suite")]) == 0
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["variant"] for r in summary["per_seed"]] == ["lora_t2"]
    assert "summarised as 'lora_t2'" in caplog.text


def _variant_moe(name: str, tmp_path) -> dict:
    from tsembed.experiments.runner import load_base_config, variant_config
    from tsembed.experiments.variants import variants_for

    base = load_base_config(None, [])
    variants = variants_for(base, extra=True)
    return variant_config(base, variants[name], 0, tmp_path / name, []).model.moe.to_dict()


def test_shared_routed_has_the_lora_arms_trainable_budget_but_for_router_rows(tmp_path) -> None:
    """Arm A2 (issue 22 §7) against A1 on a tiny model: the same LoRA rows, and routers the only difference.

    Default base: E = 4 routed experts of rank r = 8, no shared ones, so the lora arm is one LoRA of rank 32.
    shared_routed: 1 shared + 3 routed experts of rank 8 = 32 LoRA rows, plus 1 null expert. Per adapted linear
    (d_in, d_out): lora 32·(d_in + d_out) + 1·d_in (its one-expert router); shared_routed 32·(d_in + d_out) +
    (3 + 1)·d_in (router rows of the routed and null experts; the null owns no LoRA rows). Difference: 3·d_in.
    """
    from torch import nn

    from tsembed.moe import MoELoRAConfig, attach

    def trainable(moe: dict) -> int:
        model = nn.Sequential(nn.Linear(24, 40), nn.Linear(40, 24))
        attach(model, MoELoRAConfig.from_dict({**moe, "target_modules": [r"\d"]}))
        return sum(p.numel() for p in model.parameters() if p.requires_grad)

    lora, shared_routed = _variant_moe("lora", tmp_path), _variant_moe("shared_routed", tmp_path)
    assert (lora["num_experts"], lora["rank"], lora["num_shared_experts"], lora["num_null_experts"]) == (1, 32, 0, 0)
    sr = MoELoRAConfig.from_dict({**shared_routed, "target_modules": ["x"]})
    assert (sr.num_shared_experts, sr.num_experts, sr.num_null_experts, sr.rank) == (1, 3, 1, 8)
    assert (sr.top_k, sr.level, sr.router_input, sr.num_routes) == (1, "sequence", "text", 4)
    assert (sr.num_shared_experts + sr.num_experts) * sr.rank == lora["rank"]  # the same LoRA rows
    lora_params = 32 * (24 + 40) + 24 + 32 * (40 + 24) + 40
    assert trainable(lora) == lora_params == 4160
    assert trainable(shared_routed) == lora_params + 3 * (24 + 40) == 4352  # + 3·d_in router rows per linear
    # the description carries the arithmetic
    from tsembed.experiments.variants import ablation_variants

    assert "= the lora arm's rank 32" in ablation_variants(4, 8, extra=True)["shared_routed"].description


def test_shared_routed_is_run_only_when_named_and_plain_lora_variants_have_no_null_expert() -> None:
    from tsembed.experiments.variants import shared_routed_overrides

    assert "shared_routed" not in ablation_variants(4, 8) and "shared_routed" in ablation_variants(4, 8, extra=True)
    for name, variant in ablation_variants(4, 8, modes=("weight", "hardness"), extra=True).items():
        if name.startswith("lora"):
            assert "model.moe.num_null_experts=0" in variant.overrides
    assert "model.moe.num_experts=4" in shared_routed_overrides(4, 8, num_shared=1)  # budget 5 blocks: 1 + 4
    with pytest.raises(ConfigError, match="at least 2 experts"):
        shared_routed_overrides(1, 8)
    assert "shared_routed" not in ablation_variants(1, 8, extra=True)
