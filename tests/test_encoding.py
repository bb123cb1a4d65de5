"""The one batched encode: length-sorted batches, order restored, routing on request, eval mode guarded."""

from __future__ import annotations

import pytest
import torch

from tests.evaluation.helpers import toy_model
from tsembed.encoding import EncodedBatch, embed_items, encode_batches, length_sorted_batches
from tsembed.errors import ConfigError
from tsembed.inputs import EmbedInput

TEXTS = ["one", "a much longer sentence about green trees and blue cars", "two words", "three words here", "x"]


def test_batches_are_longest_first_and_ties_keep_input_order():
    items = [EmbedInput(text="ab"), EmbedInput(text="abcd"), EmbedInput(image="i.png"), EmbedInput(text="cd")]
    assert length_sorted_batches(items, 2) == [[2, 1], [0, 3]]
    with pytest.raises(ConfigError, match="batch_size"):
        length_sorted_batches(items, 0)


def test_embed_items_restores_input_order_and_matches_one_by_one():
    model = toy_model()
    items = [EmbedInput(text=t) for t in TEXTS]
    out = embed_items(model, items, batch_size=2, with_routing=True)
    for i, item in enumerate(items):
        one = embed_items(model, [item], batch_size=1, with_routing=True)
        torch.testing.assert_close(out.embeddings[i], one.embeddings[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.signature[i], one.signature[0], atol=1e-5, rtol=1e-5)
    assert out.token_counts == [len(t.split()) for t in TEXTS]
    out.embeddings.mul_(2)  # gathered outside inference mode: ordinary tensors the caller may change


def test_routing_only_on_request_and_none_without_adapters():
    items = [EmbedInput(text=t) for t in TEXTS]
    assert embed_items(toy_model(), items).signature is None
    plain = embed_items(toy_model(adapters=False), items, with_routing=True)
    assert plain.signature is None and plain.layer_probs == {}
    assert embed_items(toy_model(), [], with_routing=True).embeddings.shape == (0, 32)


def test_each_batch_reaches_the_consumer_and_train_mode_is_restored_after_a_failure():
    model = toy_model().train()
    seen: list[EncodedBatch] = []

    def consume(batch: EncodedBatch) -> None:
        assert not model.training and torch.is_inference_mode_enabled()
        seen.append(batch)
        if len(seen) == 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        encode_batches(model, [EmbedInput(text=t) for t in TEXTS], consume, batch_size=2)
    assert model.training and [b.indices for b in seen] == [[1, 3], [2, 0]]
