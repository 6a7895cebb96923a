"""The one image decoder shared by the indexer and uploads, and the one reader of image sources
(URLs under an SSRF policy, files confined to image roots), hardened against hostile input."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import httpcore
from PIL import Image, ImageOps, UnidentifiedImageError

from catalens.config import Settings
from catalens.errors import (
    ImageFetchError,
    ImageSourceRefusedError,
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedImageError,
)

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF"})
# The media type each allowed format is served as, whatever the file's name says.
MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
               "GIF": "image/gif"}
DEFAULT_MAX_ASPECT = 20.0
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
URL_REFUSED = ("image URL refused: it resolves to a loopback, private, link-local or reserved address "
               "(allow it with CATALENS_URL_ALLOW)")
PATH_REFUSED = "image path refused: it is outside the allowed image folders"
NOT_REGULAR = "image path refused: not a regular file"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


# --- decoding --------------------------------------------------------------------------------


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None,
                 max_aspect: float = DEFAULT_MAX_ASPECT) -> Image.Image:
    """Bytes -> upright 8-bit RGB image (frame 0, alpha onto white); typed errors for bad input.

    draft_size lets JPEG decode at a DCT-scaled size no smaller than needed, far cheaper
    than decoding full size and resizing. Size, pixel count and aspect ratio are checked
    from the header, before any pixel is decoded.
    """
    if not data:
        raise UnsupportedImageError("empty file: 0 bytes")
    try:
        with warnings.catch_warnings():
            # Pillow only warns below 2x its own limit; a bomb must be an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise UnsupportedImageError(
                    f"image format {img.format or 'unknown'} is not allowed "
                    f"(allowed: {', '.join(sorted(ALLOWED_FORMATS - {'MPO'}))})")
            width, height = img.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"image is {width}x{height} = {width * height:,} pixels, over the "
                    f"{max_pixels:,} pixel limit")
            check_aspect_ratio(width, height, max_aspect)
            if draft_size and img.format in ("JPEG", "MPO"):
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            # In place, and no convert of an image already RGB: each copy of a 40 Mpx image is 120 MB.
            ImageOps.exif_transpose(img, in_place=True)
            return _to_rgb(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError("not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnsupportedImageError(f"corrupt or truncated image: {exc}") from exc


def check_aspect_ratio(width: int, height: int, max_aspect: float) -> None:
    """Refuse strips such as 1 x 100,000 px: the model's preprocess scales the short side up
    to its input size first, which turns a 375-byte PNG into gigabytes."""
    short, long = min(width, height), max(width, height)
    if short >= 1 and long / short <= max_aspect:
        return
    ratio = long / max(short, 1)
    raise InvalidInputError(f"image is {width}x{height} (aspect ratio {_number(ratio)}:1), over the "
                            f"{_number(max_aspect)}:1 limit (CATALENS_MAX_ASPECT_RATIO)")


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def identify_format(data: bytes) -> str:
    """The allowed format of encoded image bytes, read from the header alone (nothing decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError,
            EOFError) as exc:
        raise UnsupportedImageError("not a recognised image file") from exc
    if fmt not in ALLOWED_FORMATS:
        raise UnsupportedImageError(f"image format {fmt or 'unknown'} is not allowed")
    return fmt


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # Scale 16/32-bit greys into 8 bits instead of clipping them to white.
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


# --- reading a source --------------------------------------------------------------------------


def read_image_source(source: str, *, images_root: Path | None, timeout_s: float, max_bytes: int,
                      roots: Sequence[Path] | None = None, url_allow: Sequence[str] = ()) -> bytes:
    """The bytes an image reference points at, at most max_bytes: an http(s) URL under the URL
    policy, or a path (relative ones against images_root) that must resolve inside roots.

    roots=None leaves paths unconfined, for a file the local user names on the command line.
    """
    if "\x00" in source:  # the OS cannot take it; refuse before any path or URL handling
        raise ImageSourceRefusedError("an image reference must not contain a NUL character")
    if is_url(source):
        return fetch_url(source, timeout_s=timeout_s, max_bytes=max_bytes, url_allow=url_allow)
    path = Path(source)
    if not path.is_absolute() and images_root is not None:
        path = images_root / path
    return read_local_file(path, roots=roots, max_bytes=max_bytes)


def read_stored_image(source: str, settings: Settings, *, images_root: Path | None) -> bytes:
    """Re-read an indexed image at query time under the indexer's policy: the version's images root
    and CATALENS_IMAGE_ROOTS for paths, the URL policy for URLs, the fetch caps for both."""
    roots = resolve_roots([images_root, *settings.image_roots])
    return read_image_source(source, images_root=None, timeout_s=settings.fetch_timeout_s,
                             max_bytes=settings.max_fetch_bytes, roots=roots, url_allow=settings.url_allow)


def resolve_roots(paths: Iterable[Path | str | None]) -> tuple[Path, ...]:
    """Image roots with symlinks resolved (so containment is checked on real paths), deduplicated."""
    return tuple(dict.fromkeys(Path(p).expanduser().resolve() for p in paths if p))


def is_inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether a resolved path lies in one of the (resolved) roots."""
    return any(path == root or path.is_relative_to(root) for root in roots)


def confine_path(path: Path, roots: Sequence[Path]) -> Path:
    """The real path (symlinks and '..' resolved) if it lies inside a root; refused otherwise.

    Existence is not checked, so a refusal never tells whether a file exists.
    """
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL in the path
        raise ImageSourceRefusedError(PATH_REFUSED) from exc
    if not is_inside(real, roots):
        raise ImageSourceRefusedError(PATH_REFUSED)
    return real


def read_local_file(path: Path | str, *, max_bytes: int, roots: Sequence[Path] | None = None) -> bytes:
    """A regular file's bytes, at most max_bytes, confined to roots (None: anywhere, for a file
    the local user names on the command line); messages never name the path."""
    real = confine_path(Path(path), roots) if roots is not None else Path(path)
    try:
        # Refuse devices, FIFOs, sockets and folders before opening: opening one may block
        # (a FIFO with no writer) or never end reading (/dev/zero).
        _require_regular(os.stat(real).st_mode)
        # O_NONBLOCK: if a FIFO replaced the file since the stat, open still returns at once;
        # O_NOFOLLOW: a confined path was resolved already, a symlink there now is a swap.
        nofollow = getattr(os, "O_NOFOLLOW", 0) if roots is not None else 0
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | nofollow)
        try:
            info = os.fstat(fd)
            _require_regular(info.st_mode)  # what was opened, not what the path named a moment ago
            _require_size(info.st_size, max_bytes)
            return _read_capped(fd, max_bytes)
        finally:
            os.close(fd)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ImageFetchError("image file not found") from exc
    except PermissionError as exc:
        raise ImageFetchError("image file not readable") from exc
    except OSError as exc:
        raise ImageFetchError("image file could not be read") from exc


def _require_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise ImageSourceRefusedError(NOT_REGULAR)


def _require_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise PayloadTooLargeError(f"image file is {size:,} bytes, over the {max_bytes:,} byte limit")


def _read_capped(fd: int, max_bytes: int) -> bytes:
    """Read to EOF but never more than max_bytes + 1: a file that grows while read is still capped."""
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes:
        chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise PayloadTooLargeError(f"image file is over the {max_bytes:,} byte limit")


# --- URLs: the SSRF policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class UrlAllowList:
    """Hosts (by name) and networks image URLs may reach although they are internal."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> UrlAllowList:
        hosts, networks = set(), []
        for entry in (e.strip() for e in entries):
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if entry:
                    hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows(self, host: str, address: IPAddress) -> bool:
        return host.lower().rstrip(".") in self.hosts or any(address in net for net in self.networks
                                                             if net.version == address.version)


def is_internal(address: IPAddress) -> bool:
    """Loopback, private, link-local, multicast, reserved, unspecified or otherwise not global;
    IPv6 forms that embed an IPv4 address (mapped, 6to4, Teredo, NAT64) are judged by it."""
    if isinstance(address, ipaddress.IPv6Address):
        stands_for = address.ipv4_mapped or (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
                                             if address in NAT64 else None)
        if stands_for is not None:  # what a connection reaches is that IPv4 address
            return is_internal(stands_for)
        tunnelled = [address.sixtofour, *(address.teredo or ())]
        if any(v4 is not None and is_internal(v4) for v4 in tunnelled):
            return True
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified or not address.is_global)


@dataclass(frozen=True)
class VettedUrl:
    """A URL that passed the policy, with the one address the fetch must connect to."""

    parts: SplitResult
    host: str
    port: int
    address: str


def vet_url(url: str, allow: UrlAllowList, deadline: float) -> VettedUrl:
    """Resolve the URL's host and refuse it if ANY address is internal and not allowed."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise ImageSourceRefusedError("image URL refused: not a valid URL") from exc
    host = parts.hostname or ""
    if parts.scheme.lower() not in ("http", "https"):
        raise ImageSourceRefusedError("image URL refused: only http and https URLs are allowed")
    if not host:
        raise ImageSourceRefusedError("image URL refused: not a valid URL")
    addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in _resolve(host, port, deadline)]
    if not addresses:
        raise ImageFetchError("image URL could not be fetched (host not found)")
    for address in addresses:
        if is_internal(address) and not allow.allows(host, address):
            raise ImageSourceRefusedError(URL_REFUSED)
    return VettedUrl(parts, host, port, str(addresses[0]))


def _resolve(host: str, port: int, deadline: float) -> list[str]:
    """getaddrinfo bounded by the fetch deadline: it has no timeout of its own, so it runs in a
    daemon thread that is abandoned (and ends on its own) when the deadline passes."""
    result: dict[str, Any] = {}

    def lookup() -> None:
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            result["error"] = exc

    worker = threading.Thread(target=lookup, name="catalens-dns", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise ImageFetchError("image URL could not be fetched (timed out)")
    if "error" in result:
        raise ImageFetchError("image URL could not be fetched (host not found)")
    return list(dict.fromkeys(info[4][0] for info in result["infos"]))


# --- URLs: the fetch ------------------------------------------------------------------------------


def fetch_url(url: str, *, timeout_s: float, max_bytes: int, url_allow: Sequence[str] = ()) -> bytes:
    """GET an image URL: every hop vetted after DNS and connected to the vetted address (no
    rebinding), at most MAX_REDIRECTS redirects followed by hand, one deadline for all of it."""
    deadline = time.monotonic() + timeout_s
    allow = UrlAllowList.parse(url_allow)
    try:
        for _ in range(MAX_REDIRECTS + 1):
            target = vet_url(url, allow, deadline)
            status, location, body = _get(target, deadline, max_bytes)
            if status in REDIRECT_STATUSES and location:
                url = urljoin(url, location)
                continue
            if status != 200:
                raise ImageFetchError(f"image URL could not be fetched (HTTP {status})")
            return body
    except httpcore.TimeoutException as exc:
        raise ImageFetchError("image URL could not be fetched (timed out)") from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
        # Never the exception text: it names addresses, ports and TLS details.
        raise ImageFetchError("image URL could not be fetched (connection failed)") from exc
    except (UnicodeError, ValueError) as exc:  # a host name IDNA cannot encode, a malformed URL
        raise ImageSourceRefusedError("image URL refused: not a valid URL") from exc
    raise ImageFetchError(f"image URL could not be fetched (more than {MAX_REDIRECTS} redirects)")


def _get(target: VettedUrl, deadline: float, max_bytes: int) -> tuple[int, str | None, bytes]:
    """One request to the vetted address: (status, redirect location, body if 200)."""
    parts = target.parts
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    url = httpcore.URL(scheme=parts.scheme.lower().encode(), host=target.host.encode("idna"), port=target.port,
                       target=path.encode("utf-8", "surrogateescape"))
    headers = [(b"Host", parts.netloc.rpartition("@")[2].encode("idna")), (b"Accept", b"image/*"),
               (b"Accept-Encoding", b"identity"), (b"User-Agent", b"catalens-image-fetch")]
    # No proxy from the environment: a proxy would connect on our behalf to an unvetted address.
    with httpcore.ConnectionPool(network_backend=_PinnedBackend(target.address, deadline), max_connections=1) as pool:
        with pool.stream("GET", url, headers=headers) as resp:
            if resp.status != 200:
                return resp.status, _header(resp.headers, b"location"), b""
            length = _header(resp.headers, b"content-length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise PayloadTooLargeError(f"image URL sends {int(length):,} bytes, over the {max_bytes:,} byte "
                                           "limit (CATALENS_MAX_FETCH_BYTES)")
            return 200, None, _read_body(resp.iter_stream(), deadline, max_bytes)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    return next((value.decode("latin-1").strip() for key, value in headers if key.lower() == name), None)


def _read_body(chunks: Iterator[bytes], deadline: float, max_bytes: int) -> bytes:
    body, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(f"image URL sends more than {max_bytes:,} bytes "
                                       "(CATALENS_MAX_FETCH_BYTES)")
        body.append(chunk)
        if time.monotonic() > deadline:
            raise httpcore.ReadTimeout("deadline")
    return b"".join(body)


def _remaining(deadline: float, timeout_error: type[Exception]) -> float:
    """Seconds left before the fetch's deadline; every socket operation waits at most this long."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise timeout_error("deadline")
    return left


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake ends by the fetch's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _remaining(self._deadline, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(self._deadline, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        # server_hostname stays the URL's host name: SNI and the certificate check use it.
        stream = self._stream.start_tls(ssl_context, server_hostname,
                                        _remaining(self._deadline, httpcore.ConnectTimeout))
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the address the policy vetted, whatever the host name would resolve to now."""

    def __init__(self, address: str, deadline: float) -> None:
        self._address, self._deadline = address, deadline
        self._sync = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = self._sync.connect_tcp(self._address, port, _remaining(self._deadline, httpcore.ConnectTimeout),
                                        local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not image sources")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)
