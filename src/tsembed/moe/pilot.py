"""The pilot-embedding router: one model-level router that sends an input to the expert whose pilots are nearest.

Each routed expert keeps k pilot embeddings: centroids of the base model's embeddings of that expert's training
inputs (RouterRetriever's design). An input's affinity to an expert is its best cosine to one of the expert's
pilots; top-1 routes it to the most similar expert with weight exactly 1, top-k weighs the k most similar by a
softmax of their affinities. The pilots depend only on the base model and on each expert's own data, so experts
trained apart can be joined (``tsembed compose``), and adding one never moves the others' pilots.

A *fallback* expert (optional) has no pilots. Each piloted expert keeps a floor: the affinity that all but a small
share of its own training inputs reach. An input whose nearest expert is further than that expert's floor is one
the pilots do not recognise (a new wording, a new task), and goes to the fallback instead of to a wrong specialist.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from tsembed.errors import AdapterError
from tsembed.fileio import atomic_write
from tsembed.moe.kmeans import spherical_kmeans
from tsembed.weights import read_safetensors

PILOTS_KEY = "pilots"
FLOORS_KEY = "floors"
NO_FLOOR = -2.0  # below every cosine: the expert never falls back (finite, so weight files stay checkable)


class PilotRouter(nn.Module):
    """Routes by pilot embeddings ``pilots`` [E, k, D] (unit rows; a row of zeros pads an expert with fewer).

    Args:
        pilots: per-expert pilot embeddings.
        top_k: experts per input.
        temperature: softmax temperature over the chosen experts' affinities (top_k > 1 only).
        fallback: the expert (its pilots all zero rows) that takes inputs below their nearest expert's floor.
        floors: per-expert minimum affinity [E] (with ``fallback``; ``NO_FLOOR``: never falls back from that expert).
    """

    def __init__(self, pilots: torch.Tensor, top_k: int = 1, temperature: float = 0.05, fallback: int | None = None,
                 floors: torch.Tensor | None = None) -> None:
        super().__init__()
        if pilots.dim() != 3 or pilots.shape[0] < 1 or pilots.shape[1] < 1:
            raise AdapterError(f"pilots must have shape [experts, k, dim], got {tuple(pilots.shape)}")
        if not 1 <= top_k <= pilots.shape[0]:
            raise AdapterError(f"pilot router top_k must be in [1, {pilots.shape[0]}], got {top_k}")
        if fallback is not None:
            if not 0 <= fallback < pilots.shape[0]:
                raise AdapterError(f"fallback expert {fallback} is not one of the {pilots.shape[0]} experts")
            if pilots[fallback].abs().sum() != 0:
                raise AdapterError(f"fallback expert {fallback} has pilots: it must be reached only by falling back")
        if floors is None:
            floors = torch.full((pilots.shape[0],), NO_FLOOR)
        if floors.shape != (pilots.shape[0],):
            raise AdapterError(f"floors must have one entry per expert ({pilots.shape[0]}), got {tuple(floors.shape)}")
        if fallback is None and bool((floors > NO_FLOOR).any()):
            raise AdapterError("floors without a fallback expert: an input below its floor would have nowhere to go")
        self.register_buffer("pilots", pilots.float().contiguous())
        self.register_buffer("floors", floors.float().contiguous())
        self.top_k = top_k
        self.temperature = temperature
        self.fallback = fallback

    @property
    def num_experts(self) -> int:
        return int(self.pilots.shape[0])

    def affinity(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Each input's best cosine to each expert's pilots: [B, E] (padding pilots never win)."""
        x = F.normalize(embeddings.float(), dim=-1)
        sims = torch.einsum("bd,ekd->bek", x, self.pilots.to(x.device))  # [B, E, k]
        padding = self.pilots.to(x.device).abs().sum(dim=-1) == 0  # [E, k]
        return sims.masked_fill(padding, float("-inf")).max(dim=-1).values

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Expert weights [B, E]: one-hot for top-1, else a softmax over the top-k affinities; an input below
        its nearest expert's floor gets the fallback expert alone."""
        affinity = self.affinity(embeddings)
        values, index = affinity.topk(self.top_k, dim=-1)
        weights = torch.ones_like(values) if self.top_k == 1 else torch.softmax(values / self.temperature, dim=-1)
        routed = torch.zeros_like(affinity).scatter(-1, index, weights)
        if self.fallback is None:
            return routed
        unrecognised = values[:, 0] < self.floors.to(affinity.device)[index[:, 0]]
        alone = torch.zeros_like(affinity)
        alone[:, self.fallback] = 1.0
        return torch.where(unrecognised[:, None], alone, routed)

    def extended(self, pilots: torch.Tensor, floor: float = NO_FLOOR) -> PilotRouter:
        """A router with ``pilots`` [k', D] (one more expert, with ``floor``) after the existing experts, which keep
        theirs (and the fallback stays the same expert)."""
        k = max(self.pilots.shape[1], pilots.shape[0])
        old = F.pad(self.pilots, (0, 0, 0, k - self.pilots.shape[1]))
        new = F.pad(pilots.float(), (0, 0, 0, k - pilots.shape[0])).unsqueeze(0)
        floors = torch.cat([self.floors, torch.tensor([floor], device=self.floors.device)])
        return PilotRouter(torch.cat([old, new.to(old.device)]), self.top_k, self.temperature, self.fallback, floors)

    def kept(self, experts: list[int]) -> PilotRouter:
        """A router over ``experts`` only (renumbered in that order), each with its own pilots and floor; without
        the fallback expert, inputs below a floor go to their nearest expert again."""
        index = torch.tensor(experts, dtype=torch.long, device=self.pilots.device)
        fallback = experts.index(self.fallback) if self.fallback in experts else None
        floors = self.floors.index_select(0, index)
        if fallback is None:
            floors = torch.full_like(floors, NO_FLOOR)
        return PilotRouter(self.pilots.index_select(0, index), min(self.top_k, len(experts)), self.temperature,
                           fallback, floors)

    def save(self, path: str | Path) -> None:
        tensors = {PILOTS_KEY: self.pilots.detach().cpu().contiguous(),
                   FLOORS_KEY: self.floors.detach().cpu().contiguous()}
        meta = {"top_k": str(self.top_k), "temperature": repr(self.temperature),
                "fallback": "" if self.fallback is None else str(self.fallback)}
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | Path, num_experts: int, top_k: int) -> PilotRouter:
        """Raises AdapterError naming the file when it lacks the pilots or holds another number of experts."""
        from safetensors import safe_open

        tensors = read_safetensors(path)
        if PILOTS_KEY not in tensors:
            raise AdapterError(f"{path}: no {PILOTS_KEY!r} tensor (keys: {sorted(tensors)})")
        pilots = tensors[PILOTS_KEY]
        if pilots.dim() != 3 or pilots.shape[0] != num_experts:
            raise AdapterError(f"{path}: pilots of shape {tuple(pilots.shape)}, expected [{num_experts}, k, dim] "
                               "(one row of pilots per routed expert)")
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        fallback = int(meta["fallback"]) if meta.get("fallback") else None
        try:
            return cls(pilots, top_k=top_k, temperature=float(meta.get("temperature", "0.05")), fallback=fallback,
                       floors=tensors.get(FLOORS_KEY))  # files written before floors existed have none
        except AdapterError as exc:
            raise AdapterError(f"{path}: {exc}") from None


FLOOR_TOLERANCE = 1e-4  # cosines of one input computed in different batches differ by ~1e-6


def pilot_floor(own_affinity: torch.Tensor, quantile: float) -> float:
    """The floor of one expert: the ``quantile`` of its own training inputs' affinity to its pilots (at most that
    share of the inputs it was trained on would fall back).

    Training inputs repeat (one instruction per row), so their affinities take few values and the quantile lands on
    one of them; the tolerance keeps an input as close as that training input above the floor whichever batch
    embedded it, instead of letting rounding decide.
    """
    if own_affinity.numel() == 0:
        raise AdapterError("an expert needs at least one input to place its floor")
    if not 0.0 <= quantile < 1.0:
        raise AdapterError(f"floor quantile must be in [0, 1), got {quantile}")
    return float(torch.quantile(own_affinity.float(), quantile)) - FLOOR_TOLERANCE


def fit_pilots(embeddings: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k pilot embeddings [min(k, n), D] for one expert: spherical k-means centroids of its inputs' embeddings."""
    if embeddings.shape[0] == 0:
        raise AdapterError("an expert needs at least one input to place its pilots")
    centroids, _ = spherical_kmeans(embeddings.float(), min(k, embeddings.shape[0]), seed)
    return centroids
