"""``Encoder.encode`` as a sentence-transformers drop-in: its keywords, prompts, precision and helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tsembed.errors import ConfigError, DataError
from tsembed.inference import Encoder, encode, encode_query
from tsembed.inference.encoder import quantize_embeddings

from .conftest import make_image

TEXTS = ["a red apple", "one", "a much longer sentence about a green tree", "two words"]


def test_issue_target_normalised_tensor_with_query_prompt(model):
    encoder = Encoder(model)
    out = encoder.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True, prompt_name="query")
    assert isinstance(out, torch.Tensor) and out.shape == (4, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    np.testing.assert_allclose(out.numpy(), encode_query(model, TEXTS, show_progress_bar=False), atol=1e-6)
    np.testing.assert_allclose(encoder.encode_query(TEXTS), out.numpy(), atol=1e-6)


def test_normalize_embeddings_false_keeps_raw_norms(model):
    # the model's own output is unit-length; a truncated one is not unless normalised again
    raw = Encoder(model).encode(TEXTS, normalize_embeddings=False, truncate_dim=8)
    assert (np.linalg.norm(raw, axis=1) < 0.999).all()
    unit = encode(model, TEXTS, truncate_dim=8)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)
    np.testing.assert_allclose(Encoder(model).encode(TEXTS, normalize_embeddings=True, truncate_dim=8), unit)


def test_convert_to_tensor_wins_and_single_input(model):
    encoder = Encoder(model)
    single = encoder.encode("a red apple", convert_to_tensor=True, convert_to_numpy=True)
    assert isinstance(single, torch.Tensor) and single.shape == (32,)
    assert isinstance(encoder.encode(TEXTS, convert_to_numpy=False), torch.Tensor)
    assert isinstance(encoder.encode(TEXTS), np.ndarray)


def test_prompts_are_prefixes_like_sentence_transformers(model):
    encoder = Encoder(model)
    assert encoder.prompts == {"query": "query: ", "document": "passage: "}
    np.testing.assert_allclose(encoder.encode("x", prompt="query: "), encode(model, "query: x"), atol=1e-6)
    np.testing.assert_allclose(encoder.encode("x", prompt="Q|"), encode(model, "Q|x"), atol=1e-6)  # no space added
    np.testing.assert_allclose(encoder.encode("x", prompt_name="document"), encode(model, "passage: x"), atol=1e-6)
    # an image-only input gets the prompt as the model's instruction, as encode_query gives it
    image = Image.new("RGB", (4, 4), (200, 0, 0))
    np.testing.assert_allclose(encoder.encode(image, prompt_name="query"), encode_query(model, image), atol=1e-6)
    custom = Encoder(model, prompts={"clf": "Classify: "}, default_prompt_name="clf")
    np.testing.assert_allclose(custom.encode("x"), encode(model, "Classify: x"), atol=1e-6)
    np.testing.assert_allclose(custom.encode("x", prompt="query: ", prompt_name="clf"), encode(model, "query: x"),
                               atol=1e-6)  # prompt wins over prompt_name, as in sentence-transformers
    with pytest.raises(ConfigError, match="prompt name 'nope' not found"):
        encoder.encode("x", prompt_name="nope")
    with pytest.raises(ConfigError, match="not both"):
        encoder.encode("x", prompt="a ", instruction="b")
    np.testing.assert_allclose(encoder.encode_query("x", instruction=""), encode(model, "x"), atol=1e-6)


def test_device_dimension_and_similarity_fn(model):
    encoder = Encoder(model, truncate_dim=8)
    assert encoder.device == torch.device("cpu")
    assert encoder.get_sentence_embedding_dimension() == 8 and Encoder(model).get_sentence_embedding_dimension() == 32
    assert encoder.encode(TEXTS, device="cpu").shape == (4, 8)
    a, b = np.eye(2, dtype=np.float32) * 2, np.array([[2.0, 0.0]], dtype=np.float32)
    assert encoder.similarity_fn_name == "cosine"
    scores = encoder.similarity(a, b)
    assert isinstance(scores, torch.Tensor)  # numpy in, torch out, as in sentence-transformers
    torch.testing.assert_close(scores, torch.tensor([[1.0], [0.0]]))
    encoder.similarity_fn_name = "dot"
    torch.testing.assert_close(encoder.similarity(a, b), torch.tensor([[4.0], [0.0]]))
    torch.testing.assert_close(encoder.similarity_pairwise(a, np.vstack([b, b])), torch.tensor([4.0, 0.0]))
    encoder.similarity_fn_name = "euclidean"
    torch.testing.assert_close(encoder.similarity(a, b), torch.tensor([[0.0], [-(8**0.5)]]))
    with pytest.raises(ConfigError, match="similarity_fn_name"):
        encoder.similarity_fn_name = "jaccard"


def test_cuda_device_without_cuda_is_a_clear_error(model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'cuda'.*use --device cpu"):
        Encoder(model).encode("x", device="cuda")
    with pytest.raises(ConfigError, match="not a torch device"):
        Encoder(model).encode("x", device="gpu0")


@pytest.mark.parametrize("precision, dtype, width", [("float32", np.float32, 32), ("int8", np.int8, 32),
                                                     ("uint8", np.uint8, 32), ("binary", np.int8, 4),
                                                     ("ubinary", np.uint8, 4)])
def test_precision(model, precision, dtype, width):
    out = Encoder(model).encode(TEXTS, precision=precision)
    assert out.dtype == dtype and out.shape == (4, width)
    tensor = Encoder(model).encode(TEXTS, precision=precision, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and np.array_equal(tensor.numpy(), out)


def test_precision_matches_sentence_transformers_quantize_embeddings():
    st = pytest.importorskip("sentence_transformers")
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(20, 64)).astype(np.float32)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        ours, theirs = quantize_embeddings(emb, precision), st.quantize_embeddings(emb, precision=precision)
        assert ours.dtype == theirs.dtype, precision
        np.testing.assert_array_equal(ours, theirs, err_msg=precision)
    with pytest.raises(ConfigError, match="precision must be one of"):
        quantize_embeddings(emb, "int4")


def test_an_unknown_precision_is_refused_once_before_the_model_runs(model, monkeypatch):
    from typing import get_args

    from tsembed.inference import encoder as module

    assert module.PRECISIONS == get_args(module.Precision) == ("float32", "int8", "uint8", "binary", "ubinary")
    monkeypatch.setattr(module, "embed_items", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(ConfigError, match=r"precision must be one of \['float32', 'int8'"):
        Encoder(model).encode(TEXTS, precision="int4")
    monkeypatch.undo()  # the model may run again
    checks = []
    monkeypatch.setattr(module, "checked_precision", lambda p: checks.append(p) or p)
    Encoder(model).encode(TEXTS, precision="int8")
    assert checks == ["int8"]  # validated once per call, not again by the quantiser


def test_binary_bits_are_the_signs():
    emb = np.array([[1, -1, 1, -1, -1, -1, -1, 1]], dtype=np.float32)
    assert quantize_embeddings(emb, "ubinary").tolist() == [[0b10100001]]
    assert quantize_embeddings(emb, "binary").tolist() == [[0b10100001 - 128]]


def test_explicit_images_and_missing_image_path(model, tmp_path):
    red = make_image(tmp_path / "red.png", (255, 0, 0))
    encoder = Encoder(model)
    out = encoder.encode([{"image": str(red)}, Image.open(red), str(red)])
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    for missing in ["redd.png", str(tmp_path / "nope.JPG"), "My Photos/cat.webp"]:
        with pytest.raises(DataError, match="input 1: .*looks like an image path but no such file"):
            encoder.encode(["fine", missing])
    as_text = encoder.encode([{"text": "redd.png"}, "a photo named cat.jpg"])
    assert as_text.shape == (2, 32)


def test_int8_of_a_single_input_needs_a_batch(model):
    with pytest.raises(ConfigError, match="single embedding"):
        Encoder(model).encode("x", precision="int8")  # sentence-transformers refuses it too
    assert Encoder(model).encode("x", precision="binary").shape == (4,)
