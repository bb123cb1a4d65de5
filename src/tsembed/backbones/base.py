"""The backbone protocol: processed inputs in, hidden states out (docs/design.md §2, §4).

One shape fits early-fusion encoders/decoders and dual encoders alike:

* ``prepare(inputs)`` runs on the CPU without gradients: it tokenises, loads and transforms images,
  maps MMEB's ``<|image_1|>`` placeholder to the backbone's own image tokens, and returns a dict of
  tensors that the caller may move to any device.
* ``forward(**prepared)`` returns ``BackboneOutput(hidden_states [B, L, D], attention_mask [B, L])``.
  Pooling (``tsembed.backbones.pooling.pool``) and L2 normalisation happen in the embedding model, so
  training, ``encode()`` and the server share one forward. A dual encoder fuses its towers itself and
  returns one "token" per input (L = 1), so every pooling mode gives the fused vector.

Backbones that host MoE-LoRA adapters call ``tsembed.moe.set_routing_mask`` with the mask of the very
sequence the adapted layers see, right before those layers run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from tsembed.errors import AdapterError
from tsembed.inputs import EmbedInput
from tsembed.precision import keep_in_float32


@dataclass
class BackboneOutput:
    """What a backbone's forward returns.

    hidden_states: [B, L, D] last-layer hidden states (dual encoders: the fused embedding, L = 1).
    attention_mask: [B, L], 1 for real tokens and 0 for padding.
    """

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor


class Backbone(nn.Module):
    """Base class of every backbone; subclasses set the attributes below and implement four methods.

    Attributes:
        kind: registry name (``tsembed.backbones.BACKBONES``); ``config()["kind"]``.
        hidden_size: D of ``BackboneOutput.hidden_states``.
        default_pooling: ``"last"`` | ``"mean"`` | ``"cls"``, what ``pool`` should use by default.
        default_target_modules: full-match regexes of module paths relative to this module, where
            MoE-LoRA attaches by default (``MoELoRAConfig.target_modules``).
        image_token: the backbone's own text for one image (None when images never enter the text).
        trainable_modules: paths of modules this backbone adds on top of pretrained weights (e.g. a
            projector). They train beside the adapters; ``tsembed.moe.attach`` freezes everything,
            so call ``unfreeze_trainable_modules()`` after attaching, and checkpoint them with the
            adapters (``trainable_state_dict()``).
        reference_options: constructor options that name pretrained files (a directory, a Hub id or a weight
            file). A saved model stores them relocatably (``tsembed.backbones.reference``); the first is what
            ``from_pretrained(..., backbone_path=...)`` and ``--backbone-path`` override.
        retired_options: option → the one value it still takes: an option whose feature was retired, still accepted
            with that value (what saved models carry) but no longer written; a loaded config drops it
            (``tsembed.backbones.reference.resolve_backbone_config``), so old and new models compare equal.
    """

    kind: ClassVar[str] = ""
    hidden_size: int
    default_pooling: str
    default_target_modules: list[str]
    image_token: str | None
    trainable_modules: tuple[str, ...] = ()
    reference_options: ClassVar[tuple[str, ...]] = ("path",)
    retired_options: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        # Plain attribute, not submodules: frozen pretrained modules whose dropout/batch-norm must not
        # follow train(); modules added later (adapters) are not listed and do follow it.
        self._always_eval: list[nn.Module] = []

    # --- the protocol ---------------------------------------------------------------------------

    def prepare(self, inputs: Sequence[EmbedInput]) -> dict[str, torch.Tensor]:
        """Tokenise and load images for a batch on the CPU, without gradients."""
        raise NotImplementedError

    def forward(self, **prepared: torch.Tensor) -> BackboneOutput:  # type: ignore[override]
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-serialisable reference that ``build_backbone`` turns back into this backbone."""
        raise NotImplementedError

    def card_metadata(self) -> dict[str, Any]:
        """What a model card can say about the pretrained weights: ``base_model`` (Hugging Face Hub ids) and
        ``license``, each only when known offline; the model card fills in the rest."""
        return {}

    @classmethod
    def packaged_references(cls) -> dict[str, Path]:
        """Option → path of a default shipped inside a pip package (the option's None value loads it)."""
        return {}

    # --- shared behaviour -----------------------------------------------------------------------

    def keep_in_eval(self, modules: Iterable[nn.Module]) -> None:
        """Pin frozen pretrained modules (and all their current children) to eval mode."""
        for module in modules:
            self._always_eval.extend(module.modules())
            module.eval()

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in self._always_eval:
            module.training = False
        return self

    def freeze_pretrained(self) -> None:
        """Freeze every parameter except those of ``trainable_modules``."""
        for param in self.parameters():
            param.requires_grad_(False)
        self.unfreeze_trainable_modules()

    def unfreeze_trainable_modules(self) -> None:
        """Make ``trainable_modules`` trainable again (after ``tsembed.moe.attach`` froze them), as fp32
        master weights on a bf16/fp16 base (``tsembed.precision.keep_in_float32``)."""
        for name in self.trainable_modules:
            for param in keep_in_float32(self.get_submodule(name)).parameters():
                param.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of ``trainable_modules`` only, keyed by full path (what a checkpoint must add to adapters)."""
        state: dict[str, torch.Tensor] = {}
        for name in self.trainable_modules:
            for key, value in self.get_submodule(name).state_dict().items():
                state[f"{name}.{key}"] = value
        return state

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Strict counterpart of ``trainable_state_dict``.

        Raises:
            AdapterError: keys are missing or unexpected (both listed).
        """
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise AdapterError(
                f"{type(self).__name__} trainable state does not match: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        self.load_state_dict(state, strict=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
