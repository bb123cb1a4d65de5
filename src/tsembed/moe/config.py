"""Configuration of MoE-LoRA adapters, validated once at the edge (docs/design.md §3.2)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from tsembed.errors import ConfigError
from tsembed.moe.routers import ROUTERS
from tsembed.precision import DTYPES

ROUTING_LEVELS = ("token", "sequence")
ROUTER_INPUTS = ("all", "text")
#: Who chooses the experts: each layer's ``learned`` linear router, or one model-level ``pilot`` router that sends
#: an input to the expert whose pilot embeddings (centroids of the base model's embeddings of that expert's training
#: inputs) are nearest (``tsembed compose``; ``tsembed.moe.pilot``).
ROUTER_KINDS = ("learned", "pilot")
#: Where a learned router starts: ``random`` (normal, ``router_init_std``) or ``kmeans`` (each router's rows at a
#: spherical k-means of its own inputs over the training data, ``tsembed.moe.router_start``).
ROUTER_STARTS = ("random", "kmeans")
#: How a learned model embeds a candidate: ``own`` (routed by itself, one vector per candidate) or ``query`` (with
#: the experts its query was routed to, layer by layer: the candidate's vector depends on the query's route, so a
#: corpus is indexed once per route; ``tsembed.moe.routing.forced_routes``).
TARGET_ROUTINGS = ("own", "query")


@dataclass
class MoELoRAConfig:
    """MoE-LoRA adapter settings.

    Args:
        target_modules: regular expressions, each fully matched against module paths (e.g.
            ``r"encoder\\.layer\\.\\d+\\.attention\\.self\\.(query|value)"``); every pattern must match.
            Empty means "the backbone's default targets": a training config may leave them out, and the trainer
            fills them in (``with_default_targets``) once the backbone is known; ``attach`` refuses an empty list.
        num_experts: routed experts E per adapted linear.
        rank: LoRA rank r of each expert.
        alpha: LoRA scaling numerator; the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapter input while training.
        routing: ``topk`` (renormalised top-k), ``topp`` (fewest experts with mass >= top_p) or ``dense``.
        top_k: experts per input for ``topk``.
        top_p: probability mass for ``topp``.
        level: ``token`` routes every token; ``sequence`` routes the masked mean of the sequence once.
        temperature: router softmax temperature T.
        jitter: multiplicative uniform noise (1 ± jitter) on the router input while training.
        num_shared_experts: always-on experts added with gate 1 (DeepSeekMoE-style). S shared experts of rank r
            compute exactly one always-on LoRA of rank S·r.
        num_null_experts: null experts N (AdaMoE): extra router choices with no parameters that output zero,
            so the router can choose "no-op" for an input. They take part in everything the router does
            (softmax, top-k / top-p selection and its renormalisation, the balance and z-losses, the routing
            signature and statistics, ``inspect-routing``); their routes are numbered after the E routed
            experts (E … E+N−1). With a shared expert, an input routed to a null gets the shared expert alone.
        router_init_std: std of the router's normal initialisation.
        task_hints: names of the tasks an input may declare (``EmbedInput.task``, e.g. the MMEB meta-tasks).
            Each layer learns one logit bias per hint, added to the router's logits, so routing can depend
            on the task and not only on the content, and a query and its target (same task) lean to the
            same experts. Empty: routing sees content only. An input without a task gets no bias. Needs
            adapted layers that see one row per input (minilm-effnet, text towers); a layer that sees another
            batch (e.g. vision patches) raises an AdapterError naming it.
        task_hint_init: initial logit bias of hint i towards expert ``i mod E`` (0: no preference). A large
            value (e.g. 8) routes each declared task to its own expert from the first step: the "MoE routed
            by the true task id" upper bound; the biases stay trainable.
        router_input: what a sequence-level router pools: ``all`` tokens, or only the ``text`` tokens (not
            the image tokens) where the backbone marks them (minilm-effnet, Qwen2-VL). For an image input the
            text is its instruction, so a query and a target of the same task meet in the same expert instead
            of being routed by picture content; an input with no text tokens routes on all of them.
        router_start: ``random`` (the router's weight drawn with std ``router_init_std``: near-uniform routing at
            first) or ``kmeans``: before training, each layer's router rows are the centroids of a spherical
            k-means of what that router reads over a sample of the training inputs (centred on their mean), so
            inputs that look alike start in one expert (``tsembed.moe.router_start``).
        router_start_margin: with ``kmeans``, an input at its centroid's direction, of average spread, gets a logit
            of this size for its own expert (its cosine to the others' centroids scales theirs).
        target_routing: ``own`` (a target is routed by itself, like any input) or ``query`` (a target is embedded
            with the experts its query chose, in every layer; training and evaluation alike). With one generic
            target instruction (MMEB) every target routes alike, so only ``query`` lets a target be read
            differently for queries of different conditions. Needs sequence-level top-1 routing (a learned router's,
            or a composed model's pilots: an index per expert).
        router: ``learned`` (a linear router in every adapted layer) or ``pilot`` (one model-level router over
            per-expert pilot embeddings, as ``tsembed compose`` builds: sequence level, ``topk``, no null experts
            or task hints; the layers own no router weights).
        expert_names: optional names of the routed experts, in order (``tsembed compose`` names each expert after
            the model it came from); shown by ``inspect-routing`` and in the model card.
        adapter_dtype: dtype of the adapter, router and task-hint parameters, whatever the base's dtype:
            ``float32`` (default: fp32 master weights that AdamW can update; the compute still runs in
            bf16/fp16 under autocast, see ``tsembed.precision``), ``bfloat16`` or ``float16``. Saved adapters
            keep it.
    """

    target_modules: list[str] = field(default_factory=list)
    num_experts: int = 4
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    routing: str = "topk"
    top_k: int = 2
    top_p: float = 0.5
    level: str = "token"
    temperature: float = 1.0
    jitter: float = 0.0
    num_shared_experts: int = 0
    num_null_experts: int = 0
    router_init_std: float = 0.02
    router_start: str = "random"
    router_start_margin: float = 4.0
    task_hints: list[str] = field(default_factory=list)
    task_hint_init: float = 0.0
    router_input: str = "all"
    target_routing: str = "own"
    router: str = "learned"
    expert_names: list[str] = field(default_factory=list)
    adapter_dtype: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        self.target_modules = list(self.target_modules)
        for pattern in self.target_modules:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"moe.target_modules: {pattern!r} is not a valid regex ({exc})") from None
        _check_int("num_experts", self.num_experts, minimum=1)
        _check_int("rank", self.rank, minimum=1)
        _check_int("num_shared_experts", self.num_shared_experts, minimum=0)
        _check_int("num_null_experts", self.num_null_experts, minimum=0)
        if self.routing not in ROUTERS:  # the gate functions' registry is the one list of routing modes
            raise ConfigError(f"moe.routing must be one of {tuple(ROUTERS)}, got {self.routing!r}")
        if self.level not in ROUTING_LEVELS:
            raise ConfigError(f"moe.level must be one of {ROUTING_LEVELS}, got {self.level!r}")
        _check_int("top_k", self.top_k, minimum=1)
        if self.top_k > self.num_routes:
            nulls = f" + moe.num_null_experts={self.num_null_experts}" if self.num_null_experts else ""
            raise ConfigError(
                f"moe.top_k={self.top_k} is larger than moe.num_experts={self.num_experts}{nulls}, the router's "
                f"{self.num_routes} choices; top_k must be between 1 and num_experts + num_null_experts"
            )
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ConfigError(f"moe.top_p must be in (0, 1], got {self.top_p!r}")
        _check_positive("temperature", self.temperature)
        _check_positive("router_init_std", self.router_init_std)
        if self.router_start not in ROUTER_STARTS:
            raise ConfigError(f"moe.router_start must be one of {ROUTER_STARTS}, got {self.router_start!r}")
        _check_positive("router_start_margin", self.router_start_margin)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"moe.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= float(self.jitter) < 1.0:
            raise ConfigError(f"moe.jitter must be in [0, 1), got {self.jitter!r}")
        if isinstance(self.task_hints, str):
            self.task_hints = [self.task_hints]
        self.task_hints = list(self.task_hints)
        bad = [h for h in self.task_hints if not isinstance(h, str) or not h.strip()]
        if bad:
            raise ConfigError(f"moe.task_hints: every hint must be a non-empty string, got {bad!r}")
        if len(set(self.task_hints)) != len(self.task_hints):
            raise ConfigError(f"moe.task_hints: names repeat in {self.task_hints!r}")
        if self.router_input not in ROUTER_INPUTS:
            raise ConfigError(f"moe.router_input must be one of {ROUTER_INPUTS}, got {self.router_input!r}")
        if self.router_input != "all" and self.level != "sequence":
            raise ConfigError("moe.router_input='text' needs moe.level='sequence' (a token router reads its token)")
        if isinstance(self.task_hint_init, bool) or not isinstance(self.task_hint_init, int | float) or not (
                math.isfinite(self.task_hint_init)):
            raise ConfigError(f"moe.task_hint_init must be a finite number, got {self.task_hint_init!r}")
        if self.task_hint_init and not self.task_hints:
            raise ConfigError("moe.task_hint_init needs moe.task_hints (the tasks whose bias it initialises)")
        if self.target_routing not in TARGET_ROUTINGS:
            raise ConfigError(f"moe.target_routing must be one of {TARGET_ROUTINGS}, got {self.target_routing!r}")
        if self.target_routing == "query":
            needs = {"level": ("sequence", self.level), "routing": ("topk", self.routing), "top_k": (1, self.top_k)}
            wrong = [f"moe.{k}={got!r} (needs {want!r})" for k, (want, got) in needs.items() if got != want]
            if wrong:
                raise ConfigError("moe.target_routing='query' gives a target its query's one expert per layer: "
                                  + ", ".join(wrong))
        if self.router not in ROUTER_KINDS:
            raise ConfigError(f"moe.router must be one of {ROUTER_KINDS}, got {self.router!r}")
        if self.router == "pilot":
            needs = {"level": ("sequence", self.level), "routing": ("topk", self.routing),
                     "num_null_experts": (0, self.num_null_experts),
                     "num_shared_experts": (0, self.num_shared_experts), "task_hints": ([], self.task_hints)}
            wrong = [f"moe.{k}={got!r} (needs {want!r})" for k, (want, got) in needs.items() if got != want]
            if wrong:
                raise ConfigError("moe.router='pilot' routes whole inputs to routed experts by their pilots: "
                                  + ", ".join(wrong))
        self.expert_names = list(self.expert_names)
        if self.expert_names and (len(self.expert_names) != self.num_experts
                                  or len(set(self.expert_names)) != len(self.expert_names)
                                  or not all(isinstance(n, str) and n.strip() for n in self.expert_names)):
            raise ConfigError(f"moe.expert_names must be {self.num_experts} distinct non-empty names (one per routed "
                              f"expert), got {self.expert_names!r}")
        if self.adapter_dtype not in DTYPES:
            raise ConfigError(f"moe.adapter_dtype must be one of {sorted(DTYPES)}, got {self.adapter_dtype!r}")
        _check_positive("alpha", self.alpha)

    @property
    def num_routes(self) -> int:
        """The router's choices: E routed experts then N null experts."""
        return self.num_experts + self.num_null_experts

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.adapter_dtype]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_default_targets(self, targets: list[str]) -> MoELoRAConfig:
        """This config, with ``targets`` (a backbone's defaults) when it names none itself."""
        return self if self.target_modules else replace(self, target_modules=list(targets))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoELoRAConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"moe: unknown keys {unknown}; allowed keys are {sorted(known)}")
        return cls(**data)


def _check_positive(name: str, value: Any) -> None:
    """A finite number > 0 (NaN passes ``<= 0`` checks, and Inf scales every update to Inf or 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"moe.{name} must be a finite number > 0, got {value!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"moe.{name} must be an integer >= {minimum}, got {value!r}")
