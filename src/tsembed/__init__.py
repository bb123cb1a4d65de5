"""tsembed: universal multimodal embeddings with a Mixture of LoRA Experts (TSEmbed).

>>> from tsembed import Encoder
>>> encoder = Encoder.from_pretrained("runs/tsembed/model")
>>> scores = encoder.similarity(encoder.encode_query("a red apple"), encoder.encode_document(["apple.png"]))

The user-facing names below are imported on first use, so ``import tsembed`` (and the ``tsembed``
command's ``--help``) does not load torch; the error types are light and imported at once.
"""

import os

# tsembed never downloads weights or data at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tsembed.errors import AdapterError, ConfigError, DataError, MissingExtraError, TsembedError  # noqa: E402
from tsembed.lazy import lazy_exports  # noqa: E402

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it); CHANGELOG.md per release

#: Public name → the module that defines it (imported on first access).
_EXPORTS: dict[str, str] = {
    "Encoder": "tsembed.inference.encoder",
    "load_model": "tsembed.inference.loading",
    "TSEmbedModel": "tsembed.model",
    "ModelConfig": "tsembed.model",
    "EmbedInput": "tsembed.inputs",
    "MoELoRAConfig": "tsembed.moe.config",
}

TYPE_CHECKING = False  # not typing's: importing typing costs more than the rest of `import tsembed`
if TYPE_CHECKING:  # the same names for type checkers and IDEs; a test keeps the two lists equal
    from tsembed.inference.encoder import Encoder
    from tsembed.inference.loading import load_model
    from tsembed.inputs import EmbedInput
    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.moe.config import MoELoRAConfig

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "AdapterError",
    "ConfigError",
    "DataError",
    "EmbedInput",
    "Encoder",
    "MissingExtraError",
    "MoELoRAConfig",
    "ModelConfig",
    "TSEmbedModel",
    "TsembedError",
    "__version__",
    "load_model",
]
