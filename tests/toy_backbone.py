"""A tiny text-only backbone for tests of everything above the backbone layer (training, evaluation,
serving): a hashing tokenizer in front of a randomly initialised 2-layer BERT. Deterministic, no files."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from transformers import BertConfig, BertModel

from tsembed.backbones.base import Backbone, BackboneOutput
from tsembed.inputs import EmbedInput
from tsembed.moe import set_routing_mask

VOCAB = 97
TARGETS = [r"bert\.encoder\.layer\.\d+\.attention\.self\.(query|value)", r"bert\.encoder\.layer\.\d+\.output\.dense"]


class ToyBackbone(Backbone):
    kind = "toy"
    default_pooling = "mean"
    default_target_modules = TARGETS
    image_token = None
    trainable_modules = ("proj",)
    max_length = 16  # words per input; longer text is cut

    def __init__(self, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.hidden_size = hidden
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=2 * hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.proj = torch.nn.Linear(hidden, hidden)  # stands in for a trainable projector
        self.freeze_pretrained()
        self.keep_in_eval([self.bert])

    def prepare(self, inputs: Sequence[EmbedInput]) -> dict[str, torch.Tensor]:
        words = [(x.text or "").split()[: self.max_length] for x in inputs]
        ids = [[1 + zlib.crc32(w.encode()) % (VOCAB - 1) for w in ws] or [1] for ws in words]
        length = max(len(i) for i in ids)
        input_ids = torch.zeros(len(ids), length, dtype=torch.long)
        mask = torch.zeros(len(ids), length, dtype=torch.long)
        for row, i in enumerate(ids):
            input_ids[row, : len(i)] = torch.tensor(i)
            mask[row, : len(i)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BackboneOutput:
        set_routing_mask(self, attention_mask)
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return BackboneOutput(self.proj(hidden), attention_mask)

    def config(self) -> dict:
        return {"kind": "toy", "hidden": self.hidden_size}
