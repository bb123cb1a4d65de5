"""tsembed: universal multimodal embeddings with a Mixture of LoRA Experts (TSEmbed)."""

import os

# tsembed never downloads weights or data at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tsembed.errors import AdapterError, ConfigError, DataError, TsembedError  # noqa: E402

__version__ = "0.1.0"
__all__ = ["AdapterError", "ConfigError", "DataError", "TsembedError", "__version__"]
