"""encode / encode_query / encode_document / similarity, input forms, and save → load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tsembed.errors import DataError
from tsembed.inference import Encoder, encode, encode_document, encode_query, save_with_card, similarity
from tsembed.inference.inputs import apply_instruction, to_embed_input

from .conftest import make_image

TEXTS = ["a red apple", "one", "a much longer sentence about a green tree and a blue car", "two words"]


def test_shapes_and_normalisation(model):
    single = encode(model, "a red apple", show_progress_bar=False)
    batch = encode(model, TEXTS, show_progress_bar=False)
    assert single.shape == (32,) and batch.shape == (4, 32) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    assert encode(model, [], show_progress_bar=False).shape == (0, 32)


def test_length_sorting_restores_order(model):
    batch = encode(model, TEXTS, batch_size=2, show_progress_bar=False)
    one_by_one = np.stack([encode(model, t, show_progress_bar=False) for t in TEXTS])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)


def test_input_forms(model, tmp_path):
    red = make_image(tmp_path / "red.png", (255, 0, 0))
    blue = make_image(tmp_path / "blue.png", (0, 0, 255))
    forms = [str(red), red, Image.open(red), {"image": str(red)}, {"text": "a photo", "image": blue}]
    out = encode(model, forms, show_progress_bar=False)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    np.testing.assert_allclose(out[0], out[3], atol=1e-6)
    assert not np.allclose(out[0], out[4])
    assert to_embed_input({"text": "red.png"}).text == "red.png"  # text that reads as a path: say so
    assert to_embed_input("I saved it as red.png").text == "I saved it as red.png"  # a sentence, not a path
    with pytest.raises(DataError, match="looks like an image path but no such file"):
        to_embed_input("red.png")  # no such file here: an error, not silently text


@pytest.mark.parametrize(
    "bad, message",
    [({"txt": "x"}, "unknown keys"), ({"image": "missing.png"}, "not found"), (3.5, "unsupported input type"),
     ({}, "needs `text`"), (__import__("pathlib").Path("nope.png"), "not found")],
)
def test_bad_inputs_name_the_position(model, bad, message):
    with pytest.raises(DataError, match=f"input 1: .*{message}"):
        encode(model, ["fine", bad], show_progress_bar=False)


def test_instructions(model):
    text = "a red apple"
    np.testing.assert_allclose(encode(model, text, instruction="query:"), encode(model, "query: a red apple"),
                               atol=1e-6)
    np.testing.assert_allclose(encode_query(model, text), encode(model, "query: a red apple"), atol=1e-6)
    np.testing.assert_allclose(encode_document(model, text), encode(model, "passage: a red apple"), atol=1e-6)
    assert apply_instruction("Find: {text} now", to_embed_input(text)).text == "Find: a red apple now"
    assert apply_instruction("Describe.", to_embed_input({"image": Image.new("RGB", (2, 2))})).text == "Describe."


def test_routing_truncation_and_tensors(model):
    emb, routing = encode(model, TEXTS, return_routing=True, show_progress_bar=False)
    layers = len(routing.layer_probs)
    assert routing.signature.shape == (4, layers * 4)
    assert all(p.shape == (4, 4) for p in routing.layer_probs.values())
    assert all(t.shape == (4,) for t in routing.top1().values())
    one, r1 = encode(model, TEXTS[0], return_routing=True)
    np.testing.assert_allclose(r1.signature, routing.signature[0], atol=1e-6)
    short = encode(model, TEXTS, truncate_dim=8, convert_to_numpy=False, show_progress_bar=False)
    assert isinstance(short, torch.Tensor) and short.shape == (4, 8)
    torch.testing.assert_close(short.norm(dim=-1), torch.ones(4))


def test_encode_restores_training_mode(model):
    model.train()
    encode(model, "x", show_progress_bar=False)
    assert model.training


def test_similarity():
    a = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    b = np.array([[1.0, 1.0]], dtype=np.float32)
    sim = similarity(a, b)
    assert isinstance(sim, torch.Tensor) and sim.shape == (2, 1)  # a tensor, as sentence-transformers returns
    np.testing.assert_allclose(sim[:, 0].numpy(), [2**-0.5, 2**-0.5], rtol=1e-6)
    assert isinstance(similarity(torch.tensor(a), b), torch.Tensor)


def test_save_load_round_trip_with_card(model, tmp_path):
    inputs = TEXTS + [{"text": "x", "image": Image.new("RGB", (4, 4), (0, 200, 0))}]
    before = encode(model, inputs, show_progress_bar=False)
    results = {"overall": {"hit@1": 0.75}, "per_meta_task": {"retrieval": 0.5}}
    out = save_with_card(model, tmp_path / "saved", eval_results=results)
    card = (out / "README.md").read_text()
    assert "library_name: tsembed" in card and "| overall / hit@1 | 0.7500 |" in card
    assert "4 experts" in card and "query:" in card
    loaded = Encoder.from_pretrained(out)
    np.testing.assert_allclose(loaded.encode(inputs, show_progress_bar=False), before, atol=1e-6)
    np.testing.assert_allclose(loaded.encode_query("x"), encode_query(model, "x"), atol=1e-6)
