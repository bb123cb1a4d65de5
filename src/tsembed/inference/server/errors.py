"""JSON errors: every failure answers ``{"error": {"message", "type", "param", "code"}}`` (OpenAI's shape), or on
TEI's route ``/embed`` ``{"error": message, "error_type": ...}`` (text-embeddings-inference's shape).

Errors are raised and built in one shape; ``shaped`` turns a body into the shape of the route it answers, so
every refusal (auth, size, deadlines, validation, admission, the model) reaches a TEI client as TEI's shape.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error for the client: HTTP status, message, OpenAI error type, the offending parameter."""

    def __init__(
        self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


TEI_PATHS = frozenset({"/embed"})


def tei_error_type(status: int, code: str | None) -> str:
    """TEI's ``error_type`` for one of our errors: its names (``ErrorType`` in TEI's OpenAPI schema); the status
    code stays ours (TEI answers every validation error 413, here a bad field is still a 400)."""
    if code == "model_unhealthy":
        return "Unhealthy"
    if status in (429, 503):
        return "Overloaded"
    if status >= 500:
        return "Backend"
    if code == "empty_input":
        return "Empty"
    return "Validation"


def shaped(path: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (OpenAI's shape) as the route at ``path`` answers errors."""
    if path not in TEI_PATHS:
        return body
    error = body.get("error") or {}
    return {"error": error.get("message", ""), "error_type": tei_error_type(status, error.get("code"))}


def error_json(path: str, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(shaped(path, status, body), status, headers=headers)


def error_response(exc: APIError, path: str = "") -> JSONResponse:
    return error_json(path, exc.status, error_body(exc.message, exc.type, exc.param, exc.code), exc.headers)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
_PYDANTIC_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop "body" and pydantic's union-branch tags (``str``, ``InputItem``, ``list[...]``) from a location."""
    return tuple(
        p for p in loc
        if p != "body" and not (isinstance(p, str) and ("[" in p or p in _TYPE_TAGS or p[:1].isupper()))
    )


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The most specific problem first: union branches that merely failed to match are left out.

    Linear in the number of errors (a 97 kB body of 10 000 bad items gives 20 000): a location is dropped when it
    is a proper prefix of another, looked up in a set of every error's prefixes, not by comparing all pairs.
    """
    errors = [(_clean_loc(tuple(e.get("loc", ()))), e) for e in exc.errors()]
    if not errors:
        return "invalid request", None

    def rank(item: tuple[tuple[Any, ...], dict[str, Any]]) -> tuple[int, bool]:
        return len(item[0]), not str(item[1].get("type", "")).endswith("_type")

    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for loc, err in sorted(errors, key=rank, reverse=True):
        best.setdefault(loc, err)
    prefixes = {loc[:k] for loc in best for k in range(len(loc))}  # every proper prefix of every location
    kept = [loc for loc in best if loc not in prefixes]
    listed = []
    for loc in kept[:5]:
        err = best[loc]
        msg = "unknown field (not part of the request schema)" if err.get("type") == "extra_forbidden" else err.get(
            "msg", "invalid")
        msg = _PYDANTIC_PREFIX.sub("", msg)  # our validators' own words, without pydantic's "Value error, "
        listed.append(f"{_param(loc)}: {msg}" if loc else msg)
    more = f" (and {len(kept) - 5} more)" if len(kept) > 5 else ""
    return "; ".join(listed) + more, _param(kept[0]) or None


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception path (ours, validation, routing, bugs) to the JSON error shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_json(request.url.path, 400, error_body(message, "invalid_request_error", param, "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        return error_json(request.url.path, exc.status_code,
                          error_body(str(exc.detail), "invalid_request_error", None, code))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_json(request.url.path, 500, error_body(f"internal error ({type(exc).__name__})", "server_error"))
