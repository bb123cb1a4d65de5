"""The numbers of one routing analysis (``evaluation.routing``), as plotted by ``evaluation.plots``.

A module of its own so that the analysis, which draws its plots, and the plots, which read a report, both
import it and not each other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tsembed.fileio import atomic_write

#: The report's file name in an analysis folder (``tsembed inspect-routing``, an ablation run's ``routing/``).
ROUTING_FILE = "routing.json"


@dataclass
class RoutingReport:
    """The numbers behind the routing plots; ``to_json`` writes them (``routing.json``).

    ``num_experts`` is the width of every per-expert list: all the router's routes, of which the last
    ``num_null_experts`` are null experts (``moe.num_null_experts``: the no-op choice).
    """

    has_routing: bool
    reason: str = ""
    layers: list[str] = field(default_factory=list)
    num_experts: int = 0
    num_null_experts: int = 0
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    top1_share: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    layer_load: dict[str, dict[str, Any]] = field(default_factory=dict)
    entropy: dict[str, dict[str, float]] = field(default_factory=dict)
    nmi: dict[str, Any] = field(default_factory=dict)
    heatmap_layers: list[str] = field(default_factory=list)
    include_targets: bool = False
    pair_agreement: dict[str, Any] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    def route_labels(self) -> list[str]:
        """``e0``, ``e1``, … for the routed experts, then ``null0``, … for the null experts."""
        routed = self.num_experts - self.num_null_experts
        return [f"e{i}" for i in range(routed)] + [f"null{j}" for j in range(self.num_null_experts)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
        return text
