"""Bounded request bodies on every route, and the security headers of every response.

Both are pure ASGI middleware: they see the raw request before any parsing, so a 200 MB
body is refused from its Content-Length (or after `limit` streamed bytes) instead of being
read, buffered and parsed first.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from retrieval.schemas import ErrorBody, ErrorOut

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Multipart framing (boundaries, part headers, the k and filters fields) on top of the file.
MULTIPART_SLACK = 64 * 1024
# More digits than this cannot be a body we accept (and int() of a huge digit string is slow).
_MAX_LENGTH_DIGITS = 18


@dataclass(frozen=True)
class BodyLimit:
    """At most `limit` bytes (+ `slack` for framing) for paths under `prefix`; `setting` raises it."""

    prefix: str
    limit: int
    setting: str
    what: str = "request body"
    slack: int = 0

    def matches(self, path: str) -> bool:
        prefix = self.prefix.rstrip("/")
        return not prefix or path == prefix or path.startswith(prefix + "/")

    @property
    def hard_limit(self) -> int:
        return self.limit + self.slack


def error_body(code: str, message: str) -> bytes:
    """The documented error envelope {"error": {"code", "message"}}: the one place it is built."""
    return json.dumps(ErrorOut(error=ErrorBody(code=code, message=message)).model_dump()).encode()


async def send_error(send: Send, status: int, code: str, message: str, *, close: bool = False) -> None:
    """A complete JSON error response in the documented shape, sent straight from the middleware."""
    body = error_body(code, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the client may still be sending a body we will not read
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def parse_content_length(scope: Scope) -> int | None | str:
    """The declared body length, None when absent, or a reason string when it is malformed."""
    values = [v for k, v in scope.get("headers") or () if k.lower() == b"content-length"]
    if not values:
        return None
    if len(values) > 1 or b"," in values[0]:
        return "more than one Content-Length value"
    raw = values[0].strip()
    if not raw or not raw.isdigit():  # bytes.isdigit is ASCII-only: no sign, no spaces, no '٣'
        return f"Content-Length is not a non-negative integer: {raw[:40].decode('latin-1')!r}"
    if len(raw) > _MAX_LENGTH_DIGITS:
        return 10 ** _MAX_LENGTH_DIGITS  # larger than any limit
    return int(raw)


class BodyLimitMiddleware:
    """Refuse request bodies over their path's limit with 413, before the app parses them.

    The first limit whose prefix matches (longest prefix first) applies; `default` covers
    every other path. A declared Content-Length over the limit is refused without reading a
    byte; a body without one (chunked) is counted as it streams and cut off at the limit.
    A malformed Content-Length is a 400.
    """

    def __init__(self, app: ASGIApp, *, limits: Sequence[BodyLimit], default: BodyLimit) -> None:
        self.app = app
        self.limits = sorted(limits, key=lambda b: len(b.prefix), reverse=True)
        self.default = default

    def limit_for(self, path: str) -> BodyLimit:
        return next((b for b in self.limits if b.matches(path)), self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rule = self.limit_for(scope["path"])
        length = parse_content_length(scope)
        if isinstance(length, str):
            await send_error(send, 400, "bad_request", f"malformed request: {length}", close=True)
            return
        if length is not None and length > rule.hard_limit:
            await self._reject(send, rule)
            return
        received = 0
        exceeded = False
        app_started = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:  # never read past the limit, whatever the app asks for
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > rule.hard_limit:
                    exceeded = True
                    # Stop reading: hand the app an end of body; its reply is replaced below.
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_started, rejected
            if exceeded and not app_started:
                if not rejected:
                    rejected = True
                    await self._reject(send, rule)
                return
            if message["type"] == "http.response.start":
                app_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # Whatever the cut-off body made the app raise, the answer is the 413.
            if not (exceeded and not app_started):
                raise
        if exceeded and not app_started and not rejected:
            await self._reject(send, rule)

    @staticmethod
    async def _reject(send: Send, rule: BodyLimit) -> None:
        await send_error(send, 413, "payload_too_large",
                         f"{rule.what} is larger than {rule.limit:,} bytes (the limit is set by {rule.setting})",
                         close=True)


# --- security headers ----------------------------------------------------------------------

PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "object-src 'none'; frame-ancestors 'none'; base-uri 'none'")
# FastAPI's /docs (Swagger UI) and /redoc pages load their bundles from a CDN and start them
# with an inline script; they get a policy that allows exactly that, and nothing else.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: blob: https://fastapi.tiangolo.com "
            "https://cdn.redoc.ly; worker-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; "
            "base-uri 'none'")
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def security_headers(path: str) -> dict[str, str]:
    """The headers every response carries (as a dict, for responses built outside the middleware)."""
    headers = {k.decode(): v.decode() for k, v in SECURITY_HEADERS}
    headers["content-security-policy"] = DOCS_CSP if path in DOCS_PATHS else PAGE_CSP
    return headers


class SecurityHeadersMiddleware:
    """Add nosniff, no-referrer, DENY framing and a Content-Security-Policy to every response.

    A header the route set itself is kept as it is.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [(k.encode(), v.encode()) for k, v in security_headers(scope["path"]).items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                present = {k.lower() for k, _ in headers}
                headers.extend((k, v) for k, v in extra if k not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- the server's own 400 ------------------------------------------------------------------


def server_http_protocol() -> type | str:
    """uvicorn's HTTP protocol class, answering requests it cannot parse in the documented shape.

    uvicorn refuses a malformed request line or header (a Content-Length of "abc", "-5" or
    "5, 5"; two Content-Length headers) itself, before the app runs, with a plain-text 400.
    This subclass sends {"error": {"code": "bad_request", ...}} with the security headers
    instead. Pass it as `uvicorn.run(..., http=server_http_protocol())`; when uvicorn's
    internals differ from what it expects, it returns "auto" (uvicorn's own choice).
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:  # no httptools: uvicorn uses h11
        try:
            from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]  # uvicorn types the two protocols apart
        except ImportError:
            return "auto"
    if not callable(getattr(Base, "send_400_response", None)):
        return "auto"

    class DocumentedErrorProtocol(Base):
        def send_400_response(self, msg: str) -> None:
            body = error_body("bad_request", "malformed HTTP request: a bad request line or header "
                                             "(for example Content-Length)")
            state = getattr(self, "server_state", None)
            headers = list(getattr(state, "default_headers", None) or [])
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"), *SECURITY_HEADERS,
                        (b"content-security-policy", PAGE_CSP.encode())]
            head = b"HTTP/1.1 400 Bad Request\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            self.transport.write(head + b"\r\n" + body)
            self.transport.close()

    return DocumentedErrorProtocol
