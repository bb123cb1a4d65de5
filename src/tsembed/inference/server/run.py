"""Run the app under uvicorn: in the foreground (``tsembed serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from tsembed.errors import TsembedError
from tsembed.extras import require
from tsembed.inference.server.connections import uvicorn_options
from tsembed.inference.server.settings import API_KEY_ENV

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted (one process: the model is loaded once, in this process)."""
    uvicorn = require("uvicorn", "the embedding server")
    settings = getattr(getattr(app, "state", None), "settings", None)
    warn_if_exposed(host, getattr(settings, "api_key", None))
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10,
                **_connection_options(app))


def _connection_options(app: Any) -> dict[str, Any]:
    """uvicorn options from the app's settings: keep-alive timeout, header deadline and connection cap
    (``connections.uvicorn_options``); uvicorn's defaults for an app without settings."""
    return uvicorn_options(getattr(getattr(app, "state", None), "settings", None))


def warn_if_exposed(host: str, api_key: str | None) -> bool:
    """Warn when other machines can reach the server and no key guards ``/v1/*``; True if it warned."""
    if api_key or _is_loopback(host):
        return False
    logger.warning("serving on %s without an API key: anyone who can reach this port can use the model; "
                   "set the %s environment variable to require one", host, API_KEY_ENV)
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: assume it is reachable
        return False


def start_server_process(serve_args: list[str], port: int, env: dict[str, str] | None = None,
                         timeout: float = 180.0) -> subprocess.Popen:
    """``tsembed serve <serve_args> --port <port>`` in a subprocess (benchmarks: the server gets its own GIL
    and its own memory); returns once ``/health`` answers 200 on loopback.

    Raises:
        TsembedError: the process exited, or did not answer within ``timeout`` seconds (it is killed).
    """
    cmd = [sys.executable, "-m", "tsembed", "serve", *serve_args, "--port", str(port)]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TsembedError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise TsembedError(f"server did not start within {timeout:g} s")


class ServerThread:
    """uvicorn on a loopback port in a background thread; ``with ServerThread(app) as url: ...``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None, log_level: str = "warning") -> None:
        uvicorn = require("uvicorn", "the embedding server")
        self.host, self.port = host, port or free_port(host)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level,
                                **_connection_options(app))  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="tsembed-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise TsembedError(f"server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
