"""The pilot-embedding router: one model-level router that sends an input to the expert whose pilots are nearest.

Each routed expert keeps k pilot embeddings: centroids of the base model's embeddings of that expert's training
inputs (RouterRetriever's design). An input's affinity to an expert is its best cosine to one of the expert's
pilots; top-1 routes it to the most similar expert with weight exactly 1, top-k weighs the k most similar by a
softmax of their affinities. The pilots depend only on the base model and on each expert's own data, so experts
trained apart can be joined (``tsembed compose``), and adding one never moves the others' pilots.
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


class PilotRouter(nn.Module):
    """Routes by pilot embeddings ``pilots`` [E, k, D] (unit rows; a row of zeros pads an expert with fewer).

    Args:
        pilots: per-expert pilot embeddings.
        top_k: experts per input.
        temperature: softmax temperature over the chosen experts' affinities (top_k > 1 only).
    """

    def __init__(self, pilots: torch.Tensor, top_k: int = 1, temperature: float = 0.05) -> None:
        super().__init__()
        if pilots.dim() != 3 or pilots.shape[0] < 1 or pilots.shape[1] < 1:
            raise AdapterError(f"pilots must have shape [experts, k, dim], got {tuple(pilots.shape)}")
        if not 1 <= top_k <= pilots.shape[0]:
            raise AdapterError(f"pilot router top_k must be in [1, {pilots.shape[0]}], got {top_k}")
        self.register_buffer("pilots", pilots.float().contiguous())
        self.top_k = top_k
        self.temperature = temperature

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
        """Expert weights [B, E]: one-hot for top-1, else a softmax over the top-k affinities."""
        affinity = self.affinity(embeddings)
        values, index = affinity.topk(self.top_k, dim=-1)
        weights = torch.ones_like(values) if self.top_k == 1 else torch.softmax(values / self.temperature, dim=-1)
        return torch.zeros_like(affinity).scatter(-1, index, weights)

    def extended(self, pilots: torch.Tensor) -> PilotRouter:
        """A router with ``pilots`` [k', D] (one more expert) after the existing experts, which keep theirs."""
        k = max(self.pilots.shape[1], pilots.shape[0])
        old = F.pad(self.pilots, (0, 0, 0, k - self.pilots.shape[1]))
        new = F.pad(pilots.float(), (0, 0, 0, k - pilots.shape[0])).unsqueeze(0)
        return PilotRouter(torch.cat([old, new.to(old.device)]), self.top_k, self.temperature)

    def kept(self, experts: list[int]) -> PilotRouter:
        """A router over ``experts`` only (renumbered in that order), each with its own pilots."""
        index = torch.tensor(experts, dtype=torch.long, device=self.pilots.device)
        return PilotRouter(self.pilots.index_select(0, index), min(self.top_k, len(experts)), self.temperature)

    def save(self, path: str | Path) -> None:
        tensors = {PILOTS_KEY: self.pilots.detach().cpu().contiguous()}
        meta = {"top_k": str(self.top_k), "temperature": repr(self.temperature)}
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
            temperature = float((handle.metadata() or {}).get("temperature", "0.05"))
        return cls(pilots, top_k=top_k, temperature=temperature)


def fit_pilots(embeddings: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k pilot embeddings [min(k, n), D] for one expert: spherical k-means centroids of its inputs' embeddings."""
    if embeddings.shape[0] == 0:
        raise AdapterError("an expert needs at least one input to place its pilots")
    centroids, _ = spherical_kmeans(embeddings.float(), min(k, embeddings.shape[0]), seed)
    return centroids
