"""Admission control: what a request may hold before its images are decoded or it joins the queue.

Decoded images are the one thing a small request can make huge (a 26 kB PNG can declare 20 million
pixels). Their pixel count is known from the headers, so it is charged here first: a request over its own
budget is 413, one that would push the server past its in-flight budget is 503 with ``Retry-After``.
All accounting runs on the event loop thread, so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tsembed.inference.server.errors import APIError

RETRY_AFTER_S = "1"


class PixelBudget:
    """Server-wide cap on decoded image pixels held by admitted requests.

    Args:
        limit: pixels all requests in flight may hold together (``max_inflight_pixels``).
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.in_use = limit, 0

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        """Hold ``pixels`` for the duration of the block.

        Raises:
            APIError: 503 ``overloaded`` with ``Retry-After`` when the budget cannot take them now.
        """
        if pixels and self.in_use + pixels > self.limit:
            raise APIError(503, f"server is busy decoding images ({self.in_use} of {self.limit} pixels in flight; "
                           f"this request needs {pixels}); retry later", type="server_error", code="overloaded",
                           headers={"Retry-After": RETRY_AFTER_S})
        self.in_use += pixels
        try:
            yield
        finally:
            self.in_use -= pixels


def request_pixels_error(pixels: int, limit: int) -> APIError:
    """413 for a request whose images together declare more pixels than one request may decode."""
    return APIError(413, f"the request's images hold {pixels} pixels in all, over the limit of {limit} pixels per "
                    "request (max_request_pixels); send fewer or smaller images", param="input",
                    code="request_too_large")
