"""Inference: ``encode`` API, corpus embedding, FAISS search, the HTTP server and expert export.

Names are imported on first use, so ``tsembed --help`` (which imports ``tsembed.inference.cli``)
does not load torch; the server, FAISS and export helpers live in their submodules, so ``import
tsembed.inference`` needs neither fastapi nor faiss.
"""

from tsembed.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "render_model_card": "tsembed.card",
    "save_with_card": "tsembed.card",
    "write_model_card": "tsembed.card",
    "Encoder": "tsembed.inference.encoder",
    "Routing": "tsembed.inference.encoder",
    "encode": "tsembed.inference.encoder",
    "encode_document": "tsembed.inference.encoder",
    "encode_query": "tsembed.inference.encoder",
    "similarity": "tsembed.inference.encoder",
    "quantize_embeddings": "tsembed.inference.encoder",
    "apply_instruction": "tsembed.inference.inputs",
    "to_embed_input": "tsembed.inference.inputs",
    "to_embed_inputs": "tsembed.inference.inputs",
    "load_model": "tsembed.inference.loading",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
