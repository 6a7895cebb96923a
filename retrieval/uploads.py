"""Bounded request bodies: a fast 413 from Content-Length, and a byte count for chunked uploads."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]
# Multipart framing (boundaries, part headers, the k and filters fields) on top of the file.
MULTIPART_SLACK = 64 * 1024


class BodyLimitMiddleware:
    """Reject request bodies over `limit` bytes on the given paths with 413, before parsing them."""

    def __init__(self, app: ASGIApp, *, limit: int, paths: frozenset[str]) -> None:
        self.app = app
        self.limit = limit + MULTIPART_SLACK
        self.file_limit = limit
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._reject(send)
            return
        received = 0
        exceeded = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    # Stop reading: hand the app an end of body; its reply is replaced below.
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                if not started:
                    started = True
                    await self._reject(send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _reject(self, send: Callable[[Message], Awaitable[None]]) -> None:
        body = json.dumps({"error": {"code": "payload_too_large",
                                     "message": f"upload is larger than {self.file_limit:,} bytes"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
