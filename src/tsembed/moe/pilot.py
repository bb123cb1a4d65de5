"""The pilot-embedding router: one model-level router that sends an input to the expert whose pilots are nearest.

Each routed expert keeps k pilot embeddings: centroids of the base model's embeddings of that expert's training
inputs (RouterRetriever's design). An input's affinity to an expert is its best cosine to one of the expert's
pilots; top-1 routes it to the most similar expert with weight exactly 1, top-k weighs the k most similar by a
softmax of their affinities. The pilots depend only on the base model and on each expert's own data, so experts
trained apart can be joined (``tsembed compose``), and adding one never moves the others' pilots.

Modality-aware pilots carry the kind of input they came from (text alone, or with an image), and an input is
compared only with pilots of its own kind: an expert that never saw an image query is never chosen for one because
its instruction happens to read alike. An input whose kind no expert has seen is compared with every pilot.
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
KINDS_KEY = "pilot_kinds"
ANY_INPUT, TEXT_INPUT, IMAGE_INPUT = -1, 0, 1  # the kind of input a pilot came from; ANY: not recorded


def input_kinds(items: list) -> torch.Tensor:
    """[B] the kind of each ``EmbedInput``: IMAGE_INPUT when it has an image, else TEXT_INPUT."""
    return torch.tensor([IMAGE_INPUT if x.image is not None else TEXT_INPUT for x in items], dtype=torch.long)


class PilotRouter(nn.Module):
    """Routes by pilot embeddings ``pilots`` [E, k, D] (unit rows; a row of zeros pads an expert with fewer).

    Args:
        pilots: per-expert pilot embeddings.
        top_k: experts per input.
        temperature: softmax temperature over the chosen experts' affinities (top_k > 1 only).
        kinds: [E, k] the kind of input each pilot came from (TEXT_INPUT / IMAGE_INPUT); None: ANY_INPUT for all,
            a router that ignores the input's kind.
    """

    def __init__(self, pilots: torch.Tensor, top_k: int = 1, temperature: float = 0.05,
                 kinds: torch.Tensor | None = None) -> None:
        super().__init__()
        if pilots.dim() != 3 or pilots.shape[0] < 1 or pilots.shape[1] < 1:
            raise AdapterError(f"pilots must have shape [experts, k, dim], got {tuple(pilots.shape)}")
        if not 1 <= top_k <= pilots.shape[0]:
            raise AdapterError(f"pilot router top_k must be in [1, {pilots.shape[0]}], got {top_k}")
        if kinds is None:
            kinds = torch.full(pilots.shape[:2], ANY_INPUT, dtype=torch.long)
        if tuple(kinds.shape) != tuple(pilots.shape[:2]):
            raise AdapterError(f"pilot kinds must have shape {tuple(pilots.shape[:2])} (one per pilot), got "
                               f"{tuple(kinds.shape)}")
        if not set(kinds.unique().tolist()) <= {ANY_INPUT, TEXT_INPUT, IMAGE_INPUT}:
            raise AdapterError(f"pilot kinds must be {ANY_INPUT} (any), {TEXT_INPUT} (text) or {IMAGE_INPUT} "
                               f"(image), got {sorted(kinds.unique().tolist())}")
        self.register_buffer("pilots", pilots.float().contiguous())
        self.register_buffer("kinds", kinds.to(device=self.pilots.device, dtype=torch.long).contiguous())
        self.top_k = top_k
        self.temperature = temperature

    @property
    def num_experts(self) -> int:
        return int(self.pilots.shape[0])

    @property
    def modality_aware(self) -> bool:
        """Its pilots record the kind of input they came from (``tsembed compose --modality-aware``)."""
        return bool((self.kinds != ANY_INPUT).any())

    def affinity(self, embeddings: torch.Tensor, kinds: torch.Tensor | None = None) -> torch.Tensor:
        """Each input's best cosine to each expert's pilots: [B, E] (padding pilots never win).

        ``kinds`` [B] (``input_kinds``): a modality-aware router compares each input only with pilots of its kind
        (or of ANY); an input that matches no pilot at all is compared with every pilot.
        """
        x = F.normalize(embeddings.float(), dim=-1)
        pilots = self.pilots.to(x.device)
        sims = torch.einsum("bd,ekd->bek", x, pilots)  # [B, E, k]
        sims = sims.masked_fill(pilots.abs().sum(dim=-1) == 0, float("-inf"))  # padding [E, k]
        if kinds is not None and self.modality_aware:
            pilot_kinds = self.kinds.to(x.device)
            other = (pilot_kinds != ANY_INPUT) & (pilot_kinds != kinds.to(x.device)[:, None, None])  # [B, E, k]
            own = sims.masked_fill(other, float("-inf"))
            seen = torch.isfinite(own).flatten(1).any(dim=1)  # [B]: some pilot of the input's kind exists
            sims = torch.where(seen[:, None, None], own, sims)
        return sims.max(dim=-1).values

    def forward(self, embeddings: torch.Tensor, kinds: torch.Tensor | None = None) -> torch.Tensor:
        """Expert weights [B, E]: one-hot for top-1, else a softmax over the top-k affinities (an expert with no
        pilot of the input's kind gets weight 0)."""
        affinity = self.affinity(embeddings, kinds)
        values, index = affinity.topk(self.top_k, dim=-1)
        weights = torch.ones_like(values) if self.top_k == 1 else torch.softmax(values / self.temperature, dim=-1)
        return torch.zeros_like(affinity).scatter(-1, index, weights)

    def extended(self, pilots: torch.Tensor, kinds: torch.Tensor | None = None) -> PilotRouter:
        """A router with ``pilots`` [k', D] (one more expert; ``kinds`` [k'] theirs, None: ANY) after the existing
        experts, which keep theirs."""
        if kinds is None:
            kinds = torch.full(pilots.shape[:1], ANY_INPUT, dtype=torch.long)
        k = max(self.pilots.shape[1], pilots.shape[0])
        old = F.pad(self.pilots, (0, 0, 0, k - self.pilots.shape[1]))
        new = F.pad(pilots.float(), (0, 0, 0, k - pilots.shape[0])).unsqueeze(0)
        old_kinds = F.pad(self.kinds, (0, k - self.kinds.shape[1]), value=ANY_INPUT)
        new_kinds = F.pad(kinds.long(), (0, k - kinds.shape[0]), value=ANY_INPUT).unsqueeze(0)
        return PilotRouter(torch.cat([old, new.to(old.device)]), self.top_k, self.temperature,
                           torch.cat([old_kinds, new_kinds.to(old_kinds.device)]))

    def kept(self, experts: list[int]) -> PilotRouter:
        """A router over ``experts`` only (renumbered in that order), each with its own pilots."""
        index = torch.tensor(experts, dtype=torch.long, device=self.pilots.device)
        return PilotRouter(self.pilots.index_select(0, index), min(self.top_k, len(experts)), self.temperature,
                           self.kinds.index_select(0, index))

    def save(self, path: str | Path) -> None:
        tensors = {PILOTS_KEY: self.pilots.detach().cpu().contiguous()}
        if self.modality_aware:  # a router that ignores kinds writes the file it always wrote
            tensors[KINDS_KEY] = self.kinds.detach().cpu().contiguous()
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
        kinds = tensors.get(KINDS_KEY)
        if kinds is not None and tuple(kinds.shape) != tuple(pilots.shape[:2]):
            raise AdapterError(f"{path}: {KINDS_KEY} of shape {tuple(kinds.shape)}, expected "
                               f"{tuple(pilots.shape[:2])} (one kind per pilot)")
        return cls(pilots, top_k=top_k, temperature=temperature, kinds=kinds)


def fit_pilots(embeddings: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k pilot embeddings [min(k, n), D] for one expert: spherical k-means centroids of its inputs' embeddings."""
    if embeddings.shape[0] == 0:
        raise AdapterError("an expert needs at least one input to place its pilots")
    centroids, _ = spherical_kmeans(embeddings.float(), min(k, embeddings.shape[0]), seed)
    return centroids


def fit_pilots_by_kind(embeddings: torch.Tensor, kinds: torch.Tensor, k: int,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Modality-aware pilots for one expert: k centroids of its text-only inputs and k of its image inputs
    (for each kind it has), and each pilot's kind. Returns ([k', D], [k'])."""
    if embeddings.shape[0] == 0:
        raise AdapterError("an expert needs at least one input to place its pilots")
    pilots, pilot_kinds = [], []
    for kind in (TEXT_INPUT, IMAGE_INPUT):
        rows = embeddings[kinds == kind]
        if rows.shape[0]:
            pilots.append(fit_pilots(rows, k, seed))
            pilot_kinds.append(torch.full((pilots[-1].shape[0],), kind, dtype=torch.long))
    return torch.cat(pilots), torch.cat(pilot_kinds)
