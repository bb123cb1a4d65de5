"""Inference: ``encode`` API, corpus embedding, FAISS search, the HTTP server and expert export.

The server, FAISS and export helpers are imported from their submodules so that ``import
tsembed.inference`` needs neither fastapi nor faiss.
"""

from tsembed.inference.card import render_model_card, save_with_card, write_model_card
from tsembed.inference.encoder import Encoder, Routing, encode, encode_document, encode_query, similarity
from tsembed.inference.inputs import apply_instruction, to_embed_input, to_embed_inputs
from tsembed.inference.loading import load_model

__all__ = [
    "Encoder",
    "Routing",
    "apply_instruction",
    "encode",
    "encode_document",
    "encode_query",
    "load_model",
    "render_model_card",
    "save_with_card",
    "similarity",
    "to_embed_input",
    "to_embed_inputs",
    "write_model_card",
]
