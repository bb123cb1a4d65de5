"""The ablation's variants, each a set of config overrides on one base config (docs/design.md §7).

All trained variants share the data, steps, batch size, optimiser and seed; only the adapters, EANS and
the schedule differ. The single-LoRA baseline has the MoE's trainable budget: one expert of rank (E + S)·r for
E routed and S shared experts (the routers' E·d_in weights per layer are the only difference: with the
default E = 4, r = 8 on MiniLM's 36 linears, 1,410,048 adapter parameters against the LoRA's 1,347,840, i.e.
62,208 = 3 · Σ d_in router weights more, +4.6 %).

``shared_routed`` (issue 22 §7, arm A2) spends the same (E + S)·r LoRA rows as one always-on shared expert of
rank r plus E + S − 1 routed residual experts of rank r and one null expert (a "no-op" choice with no weights),
routed top-1 on the instruction. Every LoRA up-projection starts at zero, so at initialisation the routed
experts add nothing and the model is its shared expert alone: one plain LoRA. Its router has E + S − 1 routed
+ 1 null = E + S rows (the LoRA's has 1), so with S = 0 it has exactly the base MoE's trainable parameters
(1,410,048 in the example above, the LoRA + 62,208). ``alpha`` stays the base's, as in every variant, so the shared
expert's α/r is the routed experts', not the rank-(E + S)·r LoRA's.
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


def lora_overrides(num_experts: int, rank: int, num_shared: int = 0, eans_mode: str = "off") -> tuple[str, ...]:
    return ("model.moe.num_experts=1", "model.moe.num_shared_experts=0", "model.moe.num_null_experts=0",
            f"model.moe.rank={(num_experts + num_shared) * rank}", "model.moe.top_k=1", f"eans.mode={eans_mode}")


def shared_routed_overrides(num_experts: int, rank: int, num_shared: int = 0) -> tuple[str, ...]:
    """One shared expert + (E + S − 1) routed experts + one null expert, all of rank r: the (E + S)·r LoRA rows
    of the base MoE and of the ``lora`` baseline, routed top-1 per input on the instruction's tokens."""
    blocks = num_experts + num_shared
    if blocks < 2:
        raise ConfigError(f"shared_routed needs a budget of at least 2 experts of rank {rank}, got {blocks}")
    return ("model.moe.num_shared_experts=1", f"model.moe.num_experts={blocks - 1}", "model.moe.num_null_experts=1",
            f"model.moe.rank={rank}", "model.moe.routing=topk", "model.moe.top_k=1", "model.moe.level=sequence",
            "model.moe.router_input=text", "eans.mode=off")


def shared_routed_description(num_experts: int, rank: int, num_shared: int = 0) -> str:
    blocks = num_experts + num_shared
    return (f"shared + routed (A2): 1 always-on shared expert of rank {rank} + {blocks - 1} routed residual experts "
            f"of rank {rank} + 1 null expert (no-op route, no weights), top-1 on the instruction "
            f"(router_input=text), InfoNCE only; LoRA rows {blocks}×{rank} = {blocks * rank} = the lora arm's rank "
            f"{blocks * rank}, so per adapted linear the two differ only in router rows: {blocks - 1} routed + 1 "
            f"null = {blocks} rows of d_in here vs 1 row for the lora ({blocks - 1}·d_in more); routed up-projections "
            "start at zero, so at init it is its shared expert alone (one plain LoRA)")


def ablation_variants(num_experts: int, rank: int, modes: tuple[str, ...] = ("weight",),
                      num_shared: int = 0, extra: bool = False) -> dict[str, Variant]:
    """The ablation's variants; ``extra`` adds those run only when named: the equal-active-parameter ones and
    ``shared_routed`` (arm A2 of issue 22 §7)."""
    lora_rank = (num_experts + num_shared) * rank
    variants = {
        "base": Variant("base", "the backbone as configured, no adapters (nothing trained)", trained=False),
        "lora": Variant("lora", f"single LoRA of rank {lora_rank} (same trainable budget), InfoNCE",
                        lora_overrides(num_experts, rank, num_shared)),
        "moe": Variant("moe", "MoE-LoRA, InfoNCE only (no EANS)", ("eans.mode=off",)),
        "moe_eans_no_stage1": Variant("moe_eans_no_stage1", "MoE-LoRA + EANS from step 0 (no stage 1)",
                                      ("schedule.stage1_steps=0",)),
    }
    if extra:  # equal *active* parameters: every expert has the LoRA's rank, one is active per input
        variants["moe_equal_active"] = Variant(
            "moe_equal_active", f"MoE-LoRA, experts of rank {lora_rank} (the LoRA's active size), InfoNCE only",
            (f"model.moe.rank={lora_rank}", "eans.mode=off"))
        variants["tsembed_equal_active"] = Variant(
            "tsembed_equal_active", f"TSEmbed with experts of rank {lora_rank} (the LoRA's active size)",
            (f"model.moe.rank={lora_rank}", "eans.mode=weight"))
        if num_experts + num_shared >= 2:
            variants["shared_routed"] = Variant(
                "shared_routed", shared_routed_description(num_experts, rank, num_shared),
                shared_routed_overrides(num_experts, rank, num_shared))
    from tsembed.training.eans import EANS_MODES

    for mode in modes:
        if mode not in EANS_MODES:
            raise ConfigError(f"unknown EANS mode {mode!r}; valid: {sorted(EANS_MODES)}")
        variants[f"tsembed_{mode}"] = Variant(f"tsembed_{mode}", f"TSEmbed: MoE-LoRA, stage 1 then EANS {mode}",
                                              (f"eans.mode={mode}",))
        if EANS_MODES[mode].active and not EANS_MODES[mode].uses_routing:  # a weighting one adapter can use too
            variants[f"lora_{mode}"] = Variant(f"lora_{mode}", f"single LoRA of rank {lora_rank}, stage 1 then {mode}",
                                               lora_overrides(num_experts, rank, num_shared, mode))
    return variants


def derive(variants: dict[str, Variant], specs: list[str]) -> dict[str, Variant]:
    """``variants`` plus the derived ones of ``specs``, each ``NAME=BASE:KEY=VALUE`` (repeat a NAME to add keys).

    A derived variant is its base variant with more config overrides under a name of its own, so two settings
    of one variant (e.g. ``lora80=lora:model.moe.rank=80`` and ``lora_t2=lora:model.moe.temperature=2``) run side
    by side in one ablation and get one summary.

    Raises:
        ConfigError: a malformed spec, an unknown base, a name that is a built-in variant, or one NAME
            derived from two bases.
    """
    derived: dict[str, Variant] = {}
    bases: dict[str, str] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        base, _, override = rest.partition(":")
        name, base = name.strip(), base.strip()
        if not name or not base or "=" not in override:
            raise ConfigError(f"--derive {spec!r}: expected NAME=BASE:KEY=VALUE, e.g. lora80=lora:model.moe.rank=80")
        if name in variants:
            raise ConfigError(f"--derive {spec!r}: {name!r} is a built-in variant; choose another name")
        if base not in variants:
            raise ConfigError(f"--derive {spec!r}: unknown base variant {base!r}; valid: {sorted(variants)}")
        if bases.setdefault(name, base) != base:
            raise ConfigError(f"--derive {spec!r}: {name!r} was already derived from {bases[name]!r}")
        start = derived.get(name, variants[base])
        description = f"{start.description}; {override.strip()}" if name in derived else \
            f"{base} with {override.strip()}"
        derived[name] = Variant(name, description, (*start.overrides, override.strip()), start.trained)
    return {**variants, **derived}


def pick(variants: dict[str, Variant], names: list[str] | None) -> list[Variant]:
    if not names:
        return list(variants.values())
    unknown = sorted(set(names) - set(variants))
    if unknown:
        raise ConfigError(f"unknown variants {unknown}; valid: {sorted(variants)}")
    return [variants[n] for n in names]


def variants_for(base: dict, modes: tuple[str, ...] = ("weight",), extra: bool = False) -> dict[str, Variant]:
    """The variants of a resolved base config: the LoRA budget follows its MoE section."""
    from tsembed.configtools import from_dict
    from tsembed.moe import MoELoRAConfig

    # the typed section, as training reads it: MoELoRAConfig is the one source of defaults and checks
    moe = from_dict(MoELoRAConfig, base.get("model", {}).get("moe") or {}, "model.moe")
    return ablation_variants(moe.num_experts, moe.rank, modes, num_shared=moe.num_shared_experts, extra=extra)
