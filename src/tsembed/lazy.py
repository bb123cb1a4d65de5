"""Package namespaces whose names import their module on first use (PEP 562 ``__getattr__``).

``import tsembed`` and ``tsembed --help`` must not pay for torch and transformers; ``from tsembed
import Encoder`` still works because the first access imports ``tsembed.inference.encoder``.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs more than all of `import tsembed`
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public ``name`` lives in module ``exports[name]``.

    The imported value is stored in the package's namespace, so each name is resolved once.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
