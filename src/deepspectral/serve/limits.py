"""The request-size limit: an ASGI middleware answering HTTP 413 to a body over the limit.

A body whose ``Content-Length`` says it is too large is refused before it is read; a body
without one (chunked) is counted as it arrives. Either way the rest of the body is read
and dropped (up to :data:`DRAIN_FACTOR` times the limit), so that the client, still
sending, reads the 413 answer rather than a broken connection; past that the connection
is closed. A body within the limit is read whole and handed to the application, so
nothing larger than the limit is ever held in memory or spooled to disk.
"""

from __future__ import annotations

import json

__all__ = ["BodyLimit", "DRAIN_FACTOR"]

#: How much of an oversize body is read and dropped before answering 413 (times the limit).
DRAIN_FACTOR = 4
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyLimit:
    """Refuse request bodies larger than ``max_bytes`` with 413 and a JSON ``detail``.

    Parameters
    ----------
    app : ASGI application
    max_bytes : int
        Largest body accepted.
    prefix : str
        Only requests whose path starts with this are limited.
    message : str
        The ``detail`` of the 413 answer (``{size}`` and ``{limit}`` are filled in, MB).
    """

    def __init__(
        self, app, max_bytes: int, *, prefix: str = "/",
        message: str = "the request body is {size} MB, more than the limit of {limit} MB",
    ) -> None:  # fmt: skip
        if max_bytes < 1:
            raise ValueError(f"max_bytes: expected a positive integer, got {max_bytes!r}")
        self.app = app
        self.max_bytes = int(max_bytes)
        self.prefix = prefix
        self.message = message

    async def __call__(self, scope, receive, send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") not in _BODY_METHODS
            or not scope.get("path", "").startswith(self.prefix)
        ):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(receive, send, declared, already=0)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                chunks.clear()
                await self._refuse(receive, send, size, already=size, more=message.get("more_body", False))
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole = b"".join(chunks)
        chunks.clear()
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()  # the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, receive, send, size: int, *, already: int, more: bool = True) -> None:
        """Drop what remains of the body (up to the drain cap), then answer 413."""
        read = already
        close = False
        while more:
            if read > DRAIN_FACTOR * self.max_bytes:
                close = True
                break
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            read += len(message.get("body", b""))
            more = message.get("more_body", False)
        detail = self.message.format(size=f"{max(size, read) / 1e6:.1f}", limit=f"{self.max_bytes / 1e6:.1f}")
        payload = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
