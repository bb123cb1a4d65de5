"""TEI's route: ``POST /embed`` as HuggingFace text-embeddings-inference answers it.

Clients written for TEI (``huggingface_hub.InferenceClient(...).feature_extraction``, LangChain's and
LlamaIndex's TEI embeddings) send ``{"inputs": str | [str], "normalize", "truncate", "prompt_name",
"truncation_direction"}`` and read back a bare JSON list of vectors. Here that body becomes an
``EmbeddingRequest`` and takes the one request path of ``/v1/embeddings`` (its limits, cost bound, admission,
batcher and errors); only the body read and the answer written differ. Errors come in TEI's shape
(``errors.shaped``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsembed.inference.server.errors import APIError
from tsembed.inference.server.schemas import EmbeddingRequest, TEIEmbedRequest

PROMPT_NAMES = ("document", "query")  # the model's instructions, as sentence-transformers prompts are named


def as_embedding_request(tei: TEIEmbedRequest) -> EmbeddingRequest:
    """The ``/v1/embeddings`` request a TEI body asks for.

    Raises:
        APIError: 400 for no inputs (TEI's ``Empty``), ``truncation_direction: left`` or a ``prompt_name`` the
            model does not have.
    """
    if not tei.inputs:
        raise APIError(400, "inputs must not be empty", param="inputs", code="empty_input")
    if tei.truncation_direction.lower() == "left":
        raise APIError(400, "truncation_direction 'left' is not supported: the backbones cut a text at its end; "
                       "send 'right' or leave it out", param="truncation_direction",
                       code="unsupported_truncation_direction")
    if tei.prompt_name is not None and tei.prompt_name not in PROMPT_NAMES:
        raise APIError(400, f"prompt_name {tei.prompt_name!r} is not one of the model's prompts {list(PROMPT_NAMES)}",
                       param="prompt_name", code="unknown_prompt_name")
    return EmbeddingRequest(input=tei.inputs, truncate=bool(tei.truncate), input_type=tei.prompt_name)


def tei_vectors(embeddings: np.ndarray, normalize: bool) -> list[Any]:
    """The bare list TEI answers. ``normalize: false`` gives the model's vectors as it makes them (tsembed models
    normalise their output unless saved with ``normalize: false``; the pooled vector is not kept apart)."""
    vectors = embeddings.astype(np.float32, copy=False)
    if normalize:
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    return vectors.tolist()
