"""The embedding server: ``create_app(model, settings)`` and ``serve`` (uvicorn); needs the ``serve`` extra."""

from tsembed.extras import require

require("fastapi", "the embedding server")  # before the modules below import it: name the extra, not the module

from tsembed.inference.server.app import create_app  # noqa: E402
from tsembed.inference.server.errors import APIError  # noqa: E402
from tsembed.inference.server.run import ServerThread, serve  # noqa: E402
from tsembed.inference.server.settings import ServerSettings  # noqa: E402

__all__ = ["APIError", "ServerSettings", "ServerThread", "create_app", "serve"]
