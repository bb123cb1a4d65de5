"""The ablation's variants, each a set of config overrides on one base config (DESIGN §7).

All trained variants share the data, steps, batch size, optimiser and seed; only the adapters, EANS and
the schedule differ. The single-LoRA baseline has the MoE's trainable budget: one expert of rank E·r
(the routers' E·d_in weights per layer are the only difference, < 1 % of the adapter parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from tsembed.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: tuple[str, ...] = ()
    trained: bool = True


def lora_overrides(num_experts: int, rank: int) -> tuple[str, ...]:
    return ("model.moe.num_experts=1", f"model.moe.rank={num_experts * rank}", "model.moe.top_k=1",
            "eans.mode=off")


def ablation_variants(num_experts: int, rank: int, modes: tuple[str, ...] = ("weight",)) -> dict[str, Variant]:
    variants = {
        "base": Variant("base", "untrained backbone, no adapters (projector at its random init)", trained=False),
        "lora": Variant("lora", f"single LoRA of rank {num_experts * rank} (same trainable budget), InfoNCE",
                        lora_overrides(num_experts, rank)),
        "moe": Variant("moe", "MoE-LoRA, InfoNCE only (no EANS)", ("eans.mode=off",)),
        "moe_eans_no_stage1": Variant("moe_eans_no_stage1", "MoE-LoRA + EANS from step 0 (no stage 1)",
                                      ("schedule.stage1_steps=0",)),
    }
    for mode in modes:
        variants[f"tsembed_{mode}"] = Variant(f"tsembed_{mode}", f"TSEmbed: MoE-LoRA, stage 1 then EANS {mode}",
                                              (f"eans.mode={mode}",))
    return variants


def pick(variants: dict[str, Variant], names: list[str] | None) -> list[Variant]:
    if not names:
        return list(variants.values())
    unknown = sorted(set(names) - set(variants))
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; valid: {sorted(variants)}")
    return [variants[n] for n in names]
