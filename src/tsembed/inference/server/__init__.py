"""The embedding server: ``create_app(model, settings)`` and ``serve`` (uvicorn)."""

from tsembed.inference.server.app import create_app
from tsembed.inference.server.errors import APIError
from tsembed.inference.server.run import ServerThread, serve
from tsembed.inference.server.settings import ServerSettings

__all__ = ["APIError", "ServerSettings", "ServerThread", "create_app", "serve"]
