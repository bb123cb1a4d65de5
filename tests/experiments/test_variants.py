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
