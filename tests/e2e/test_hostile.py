"""A generated corpus of hostile inputs against a real `catalens serve` process and the CLI.

Every input is made here, in code, from a fixed seed (no binary fixtures). The HTTP part
sends each one to a real server and checks the invariants of RELIABILITY.md rows 10, 11,
13, 14, 15, 22, 23 and 24 from the outside; the CLI part feeds malformed catalogs to
`catalens index build`. The numbers go to test-artifacts/hostile-corpus.json.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import socket
import struct
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import ROOT, SampleIndex, Server, run_cli, start_server, stop_server

SEED = 20240613
API_KEY = "hostile-corpus-key"
ARTIFACT = ROOT / "test-artifacts" / "hostile-corpus.json"
# Growth of the server's peak RSS (VmHWM) over the whole corpus, after a warm-up request of
# each kind. See the test's docstring for what the number covers.
PEAK_GROWTH_BOUND_MB = 400
MB = 1024 * 1024

Maker = Callable[[], dict[str, Any]]


@dataclass
class Probe:
    """One hostile request: `make()` builds httpx.request keyword arguments (lazily: some are big)."""

    category: str
    name: str
    method: str
    path: str
    make: Maker = field(default=lambda: {})
    timeout: float = 30.0
    raw: bytes | None = None  # sent as-is over a socket instead of through httpx
    server_level: bool = False  # may be refused by the HTTP server itself (uvicorn/h11), not by the app


# ----------------------------------------------------------------------------------------------------------------
# Byte builders
# ----------------------------------------------------------------------------------------------------------------


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr((SEED, *key)).encode()))


def rgb_pixels(width: int, height: int, *key: object) -> Image.Image:
    """Deterministic noise for small images; a cheap repeating pattern for long thin ones."""
    if width * height <= 250_000:
        arr = _rng("px", width, height, *key).integers(0, 256, (height, width, 3), dtype=np.uint8)
        return Image.fromarray(arr, "RGB")
    tile = _rng("tile", *key).integers(0, 256, (min(height, 64), min(width, 64), 3), dtype=np.uint8)
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    return Image.fromarray(np.tile(tile, reps)[:height, :width], "RGB")


def in_mode(img: Image.Image, mode: str) -> Image.Image:
    if mode in ("LA", "RGBA", "PA"):
        alpha = Image.fromarray(_rng("alpha", img.size).integers(0, 256, img.size[::-1], dtype=np.uint8), "L")
        base = img.convert({"LA": "L", "RGBA": "RGB", "PA": "P"}[mode])
        out = base.convert(mode) if mode != "PA" else base.convert("PA")
        out.putalpha(alpha)
        return out
    if mode in ("I;16", "I;16B", "I", "F"):
        return img.convert("L").convert("I").point(lambda v: v * 257).convert(mode) if mode != "F" \
            else img.convert("L").convert("F")
    return img.convert(mode)


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def image_bytes(mode: str, size: tuple[int, int], fmt: str, **kw: Any) -> bytes:
    return encode(in_mode(rgb_pixels(*size, mode, fmt), mode), fmt, **kw)


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def zeros_deflate(row: bytes, rows: int) -> bytes:
    """zlib stream of `rows` copies of `row`, fast: a fully flushed block compresses the same every time."""
    per_block = max(1, min(rows, (4 * MB) // len(row)))
    block = row * per_block
    full, rest = divmod(rows, per_block)
    comp = zlib.compressobj(9)
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH) if full else b""
    repeat = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH) if full > 1 else b""
    tail = comp.compress(row * rest) + comp.flush()
    adler = 1
    for _ in range(full):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    if not full:
        return tail
    return first + repeat * (full - 1) + tail[:-4] + struct.pack(">I", adler)


def png_zero_image(width: int, height: int, *, bit_depth: int = 1, color_type: int = 0,
                   extra: bytes = b"", idat_rows: int | None = None) -> bytes:
    """A PNG of zero pixels (never held in memory): the classic decompression bomb."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    rows = height if idat_rows is None else idat_rows
    row = b"\x00" * (1 + -(-width * bit_depth * channels // 8)) if rows else b""
    data = zeros_deflate(row, rows) if rows else zlib.compress(b"")
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    plte = png_chunk(b"PLTE", b"\x00\x00\x00") if color_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + plte + extra
            + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b""))


def webp_canvas(width: int, height: int) -> bytes:
    """An animated WEBP whose canvas is width x height, holding one 16x16 frame."""
    small = encode(Image.new("RGB", (16, 16), (200, 10, 10)), "WEBP", lossless=True)
    frame = small[12:]  # the VP8L chunk after RIFF....WEBP

    def chunk(tag: bytes, data: bytes) -> bytes:
        return tag + struct.pack("<I", len(data)) + data + (b"\x00" if len(data) % 2 else b"")

    def u24(v: int) -> bytes:
        return v.to_bytes(3, "little")

    vp8x = chunk(b"VP8X", b"\x02\x00\x00\x00" + u24(width - 1) + u24(height - 1))
    anim = chunk(b"ANIM", b"\x00\x00\x00\x00\x00\x00")
    anmf = chunk(b"ANMF", u24(0) + u24(0) + u24(15) + u24(15) + u24(100) + b"\x00" + frame)
    body = b"WEBP" + vp8x + anim + anmf
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_header(width: int, height: int) -> bytes:
    """A 1-bit little-endian TIFF declaring width x height with one tiny strip."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 1), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_at = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        value = strip_at if tag == 273 else value
        ifd += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + b"\x00" * 16


def jpeg_with_exif(orientation: int | None, *, exif_blob: bytes | None = None, size: tuple[int, int] = (48, 32)) -> bytes:
    img = rgb_pixels(*size, "exif")
    if exif_blob is not None:
        return encode(img, "JPEG", exif=exif_blob)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes())


def multipart(parts: list[tuple[bytes, bytes | None, bytes | None, bytes]], *, boundary: bytes = b"hostileBoundary7",
              closing: bool = True) -> bytes:
    """A multipart/form-data body from (field name, filename, content type, data), byte for byte."""
    out = []
    for name, filename, ctype, data in parts:
        disp = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename is not None else b"")
        head = b"Content-Disposition: " + disp + b"\r\n" + (b"Content-Type: " + ctype + b"\r\n" if ctype else b"")
        out.append(b"--" + boundary + b"\r\n" + head + b"\r\n" + data + b"\r\n")
    if closing:
        out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out)


def form_request(parts: list[tuple[bytes, bytes | None, bytes | None, bytes]], **kw: Any) -> dict[str, Any]:
    boundary = kw.pop("boundary", b"hostileBoundary7")
    ctype = kw.pop("content_type", b"multipart/form-data; boundary=" + boundary)
    body = multipart(parts, boundary=boundary, **kw)
    return {"content": body, "headers": {"content-type": ctype.decode("latin-1")}}


def upload(data: bytes, filename: bytes | None = b"q.png", ctype: bytes | None = b"image/png",
           fields: dict[bytes, bytes] | None = None) -> dict[str, Any]:
    parts = [(b"file", filename, ctype, data)]
    parts += [(k, None, None, v) for k, v in (fields or {b"k": b"3"}).items()]
    return form_request(parts)


def nested(depth: int, inner: str = "1", open_: str = "[", close: str = "]") -> str:
    return open_ * depth + inner + close * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def json_body(text: str | bytes, ctype: str | bytes = "application/json") -> dict[str, Any]:
    return {"content": text.encode() if isinstance(text, str) else text, "headers": {"content-type": ctype}}


def streamed(total: int, head: bytes, tail: bytes, fill: bytes = b"a") -> Iterator[bytes]:
    """A body sent chunked (no Content-Length) of about `total` bytes."""
    yield head
    chunk = fill * MB
    for _ in range(total // MB):
        yield chunk
    yield tail


def admin(body: Any = None, *, content: bytes | None = None, key: str | None = API_KEY) -> dict[str, Any]:
    headers = {"x-api-key": key} if key is not None else {}
    if content is not None:
        return {"content": content, "headers": {**headers, "content-type": "application/json"}}
    return {"json": body, "headers": headers}


# ----------------------------------------------------------------------------------------------------------------
# The corpus, one generator per category
# ----------------------------------------------------------------------------------------------------------------

IMAGE_ROUTE = "/v1/search/image"
TEXT_ROUTE = "/v1/search/text"

FORMAT_MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"],
    "JPEG": ["1", "L", "RGB", "CMYK", "YCbCr"],
    "WEBP": ["L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "F"],
    "GIF": ["1", "L", "P", "RGB", "RGBA", "I;16"],
    "TIFF": ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I", "I;16", "F"],
    "BMP": ["1", "L", "P", "RGB"],
    "ICO": ["L", "RGBA"],
    "PPM": ["1", "L", "RGB"],
    "TGA": ["L", "RGBA"],
    "JPEG2000": ["L", "RGB"],
}
SIZES = [(1, 1), (2, 3), (64, 48), (17, 1), (3, 2000), (2000, 3), (1, 4000)]
LONG_SIZES = {"PNG": [(1, 100_000), (100_000, 1), (2, 60_000)], "GIF": [(1, 60_000), (60_000, 1)],
              "WEBP": [(1, 16_383), (16_383, 1)], "JPEG": [(1, 65_000), (65_000, 1)]}


def image_mode_probes() -> list[Probe]:
    probes = []
    for fmt, modes in FORMAT_MODES.items():
        sizes = SIZES if fmt in ("PNG", "JPEG", "WEBP", "GIF") else [(1, 1), (64, 48), (3, 200)]
        for mode in modes:
            for size in sizes + LONG_SIZES.get(fmt, []):
                if fmt == "ICO" and max(size) > 256:
                    continue

                def make(mode: str = mode, size: tuple[int, int] = size, fmt: str = fmt) -> dict[str, Any]:
                    return upload(image_bytes(mode, size, fmt), b"q." + fmt.lower().encode(),
                                  b"image/" + fmt.lower().encode())

                probes.append(Probe("image_modes", f"{fmt} {mode} {size[0]}x{size[1]}", "POST", IMAGE_ROUTE, make))
    return probes


def _bases() -> dict[str, Callable[[], bytes]]:
    return {
        "png": lambda: image_bytes("RGB", (64, 48), "PNG"),
        "png-interlaced": lambda: image_bytes("RGBA", (64, 48), "PNG", interlace=1),
        "jpeg": lambda: image_bytes("RGB", (64, 48), "JPEG", quality=90),
        "jpeg-progressive": lambda: image_bytes("RGB", (64, 48), "JPEG", progressive=True),
        "gif": lambda: image_bytes("P", (64, 48), "GIF"),
        "webp": lambda: image_bytes("RGB", (64, 48), "WEBP"),
        "webp-lossless": lambda: image_bytes("RGBA", (64, 48), "WEBP", lossless=True),
        "tiff": lambda: image_bytes("RGB", (64, 48), "TIFF"),
    }


def truncated_probes() -> list[Probe]:
    probes = []
    for base_name, base in _bases().items():
        n = len(base())
        cuts = sorted({0, 1, 2, 4, 8, 12, 16, 24, 33, 64, n // 4, n // 2, 3 * n // 4, n - 16, n - 2, n - 1})
        for cut in cuts:
            probes.append(Probe("truncated", f"{base_name} first {cut} of {n} bytes", "POST", IMAGE_ROUTE,
                                lambda base=base, cut=cut: upload(base()[:cut])))
        rnd = random.Random(f"{SEED}-{base_name}")
        for i in range(8):
            positions = sorted(rnd.sample(range(n), k=min(n, 1 + i * 3)))

            def flipped(base: Callable[[], bytes] = base, positions: list[int] = positions) -> dict[str, Any]:
                data = bytearray(base())
                for p in positions:
                    data[p] ^= 0xFF
                return upload(bytes(data))

            probes.append(Probe("truncated", f"{base_name} with {len(positions)} flipped bytes", "POST",
                                IMAGE_ROUTE, flipped))
        probes.append(Probe("truncated", f"{base_name} twice", "POST", IMAGE_ROUTE,
                            lambda base=base: upload(base() * 2)))
    return probes


def bomb_probes() -> list[Probe]:
    ztxt = png_chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"\x00" * (64 * MB), 9))
    iccp = png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * (64 * MB), 9))
    huge_gif = (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00"
                + b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00\x02\x02\x44\x01\x00\x3b")
    sof = bytearray(image_bytes("RGB", (16, 16), "JPEG"))
    i = sof.find(b"\xff\xc0")
    sof[i + 5:i + 9] = struct.pack(">HH", 65500, 65500)
    cases: dict[str, Callable[[], bytes]] = {
        "1-bit PNG 50000x50000 (2.5 G px)": lambda: png_zero_image(50_000, 50_000),
        "1-bit PNG 20000x20000 (400 M px)": lambda: png_zero_image(20_000, 20_000),
        "L PNG 10000x10000 (100 M px, Pillow warns)": lambda: png_zero_image(10_000, 10_000, bit_depth=8),
        "L PNG 7000x7000 (49 M px, over our cap)": lambda: png_zero_image(7_000, 7_000, bit_depth=8),
        "RGB PNG 6000x6000 (36 M px, under the cap)": lambda: png_zero_image(6_000, 6_000, bit_depth=8,
                                                                             color_type=2),
        "RGBA PNG 4000x4000 (16 M px)": lambda: png_zero_image(4_000, 4_000, bit_depth=8, color_type=6),
        "16-bit RGBA PNG 3000x3000": lambda: png_zero_image(3_000, 3_000, bit_depth=16, color_type=6),
        "PNG header 2^31-1 x 2^31-1, no data": lambda: png_zero_image(2**31 - 1, 2**31 - 1, idat_rows=0),
        "PNG header 1 x 2^31-1, few rows": lambda: png_zero_image(1, 2**31 - 1, idat_rows=10),
        "PNG header 0x0": lambda: png_zero_image(0, 0, idat_rows=0),
        "PNG 64x64 with a 64 MB zTXt chunk": lambda: png_zero_image(64, 64, extra=ztxt),
        "PNG 64x64 with a 64 MB iCCP profile": lambda: png_zero_image(64, 64, extra=iccp),
        "PNG 64x64 IDAT inflating to 400 MB": lambda: png_zero_image(64, 64, idat_rows=50_000_000),
        "GIF logical screen 65535x65535": lambda: huge_gif,
        "JPEG SOF 65500x65500, 16x16 of data": lambda: bytes(sof),
        "WEBP canvas 16383x16383": lambda: webp_canvas(16_383, 16_383),
        "WEBP canvas 16383x1": lambda: webp_canvas(16_383, 1),
        "GIF 8000x8000 flat": lambda: encode(Image.new("P", (8_000, 8_000)), "GIF"),
        "TIFF 30000x30000 1-bit header": lambda: tiff_header(30_000, 30_000),
    }
    return [Probe("bombs", name, "POST", IMAGE_ROUTE, lambda make=make: upload(make()), timeout=60)
            for name, make in cases.items()]


def polyglot_probes() -> list[Probe]:
    html = b"<html><body><script>alert(document.domain)</script></body></html>"
    gif = image_bytes("P", (8, 8), "GIF")
    png = image_bytes("RGB", (8, 8), "PNG")
    jpeg = image_bytes("RGB", (8, 8), "JPEG")
    zbuf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("evil.html", html)
    zipped = zbuf.getvalue()
    gif_comment = gif[:-1] + b"\x21\xfe" + bytes([len(html[:255])]) + html[:255] + b"\x00\x3b"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'
    cases = {
        "GIF + trailing HTML": gif + html,
        "GIF with HTML in a comment extension": gif_comment,
        "GIF89a magic then HTML": b"GIF89a" + html,
        "HTML then a GIF": html + gif,
        "PNG + trailing zip": png + zipped,
        "zip + PNG appended": zipped + png,
        "JPEG + trailing PHP": jpeg + b"<?php system($_GET['c']); ?>",
        "JPEG with HTML in a COM segment": jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(html) + 2) + html + jpeg[2:],
        "PNG with HTML in a tEXt chunk": png[:33] + png_chunk(b"tEXt", b"c\x00" + html) + png[33:],
        "SVG with script": svg,
        "SVG then PNG": svg + png,
        "PDF header + JPEG": b"%PDF-1.4\n" + jpeg,
        "JPEG + PDF": jpeg + b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "GIF + JavaScript": gif + b"\n;alert(1)//",
        "BMP magic + HTML": b"BM" + html,
        "ICO + HTML": image_bytes("RGBA", (16, 16), "ICO") + html,
    }
    probes = []
    for name, data in cases.items():
        for filename, ctype in ((b"x.gif", b"image/gif"), (b"x.html", b"text/html")):
            probes.append(Probe("polyglot", f"{name} as {filename.decode()}", "POST", IMAGE_ROUTE,
                                lambda d=data, f=filename, c=ctype: upload(d, f, c)))
    return probes


def mislabelled_probes() -> list[Probe]:
    jpeg = image_bytes("RGB", (32, 24), "JPEG")
    payloads: dict[str, bytes] = {
        "jpeg": jpeg,
        "png": image_bytes("RGBA", (32, 24), "PNG"),
        "gif": image_bytes("P", (32, 24), "GIF"),
        "webp": image_bytes("RGB", (32, 24), "WEBP"),
        "bmp": image_bytes("RGB", (32, 24), "BMP"),
        "tiff": image_bytes("RGB", (32, 24), "TIFF"),
        "ico": image_bytes("RGBA", (32, 32), "ICO"),
        "tga": image_bytes("RGB", (32, 24), "TGA"),
        "ppm": image_bytes("RGB", (32, 24), "PPM"),
        "jp2": image_bytes("RGB", (32, 24), "JPEG2000"),
        "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "text": b"just some text\n" * 10,
        "html": b"<!doctype html><title>x</title>",
        "json": b'{"query": "red mug"}',
        "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "elf": b"\x7fELF\x02\x01\x01" + b"\x00" * 57,
        "empty": b"",
        "nul bytes": b"\x00" * 1000,
        "random": _rng("random").integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }
    labels: list[tuple[bytes | None, bytes | None]] = [
        (b"x.png", b"image/gif"), (b"x.jpg", b"image/png"), (b"x.gif", b"image/jpeg"), (b"x.svg", b"image/svg+xml"),
        (b"x.html", b"text/html"), (b"x", b"application/octet-stream"), (b"x.png", None), (b"", b"image/png"),
        (b"../../../etc/passwd", b"image/png"), ("\u00e9\u6f22\U0001f600.png".encode(), b"image/png"),
        (b"x.png", b"image/png; charset=utf-8; boundary=zz"), (b"x" * 5000 + b".png", b"IMAGE/PNG"),
    ]
    probes = []
    for kind, data in payloads.items():
        for filename, ctype in labels:
            shown = (filename or b"<none>")[:24].decode("utf-8", "replace")
            probes.append(Probe("mislabelled", f"{kind} bytes named {shown!r} as {ctype!r}", "POST", IMAGE_ROUTE,
                                lambda d=data, f=filename, c=ctype: upload(d, f, c)))
    return probes


def animated_probes() -> list[Probe]:
    def gif_frames(n: int, size: tuple[int, int], *, vary_size: bool = False) -> bytes:
        frames = []
        for i in range(n):
            w, h = (size[0] + i % 7, size[1] + i % 5) if vary_size else size
            frame = Image.new("P", (w, h), i % 256)
            frame.putpixel((i % w, (i // w) % h), (i * 7) % 256)
            frames.append(frame)
        return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10, loop=0)

    def apng(n: int) -> bytes:
        frames = [Image.new("RGBA", (32, 32), (i % 256, 0, 0, 128)) for i in range(n)]
        return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=10)

    def webp_anim(n: int) -> bytes:
        frames = [Image.new("RGB", (32, 32), (0, i % 256, 0)) for i in range(n)]
        return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=10)

    cases = {
        "GIF 2 frames": lambda: gif_frames(2, (32, 32)),
        "GIF 100 frames": lambda: gif_frames(100, (32, 32)),
        "GIF 1000 frames": lambda: gif_frames(1000, (32, 32)),
        "GIF 3000 frames of 1x1": lambda: gif_frames(3000, (1, 1)),
        "GIF 300 frames of changing size": lambda: gif_frames(300, (16, 16), vary_size=True),
        "GIF 200 frames 256x256": lambda: gif_frames(200, (256, 256)),
        "APNG 2 frames": lambda: apng(2),
        "APNG 500 frames": lambda: apng(500),
        "WEBP animated 2 frames": lambda: webp_anim(2),
        "WEBP animated 300 frames": lambda: webp_anim(300),
        "GIF 1000 frames truncated in the middle": lambda: gif_frames(1000, (32, 32))[:-4000],
    }
    return [Probe("animated", name, "POST", IMAGE_ROUTE, lambda make=make: upload(make(), b"a.gif", b"image/gif"),
                  timeout=60) for name, make in cases.items()]


def exif_probes() -> list[Probe]:
    probes = []
    for orientation in (None, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 255, 65535):
        probes.append(Probe("exif", f"JPEG orientation {orientation}", "POST", IMAGE_ROUTE,
                            lambda o=orientation: upload(jpeg_with_exif(o), b"e.jpg", b"image/jpeg")))
    rnd = random.Random(SEED)
    garbage = {
        "random EXIF bytes": b"Exif\x00\x00" + rnd.randbytes(200),
        "EXIF header only": b"Exif\x00\x00",
        "EXIF IFD offset past the end": b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xf0",
        "EXIF 65535 entries declared": b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\xff\xff" + b"\x12\x01\x03\x00" * 4,
        "EXIF self-referencing IFD": b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00"
                                    b"\x06\x00\x00\x00\x08\x00\x00\x00",
        "EXIF orientation as a string": b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x02\x00\x04\x00\x00\x00"
                                        b"six\x00\x00\x00\x00\x00",
        "EXIF 60 KB": b"Exif\x00\x00" + rnd.randbytes(60_000),
    }
    for name, blob in garbage.items():
        probes.append(Probe("exif", f"JPEG with {name}", "POST", IMAGE_ROUTE,
                            lambda b=blob: upload(jpeg_with_exif(None, exif_blob=b), b"e.jpg", b"image/jpeg")))
    for orientation in (6, 8):
        probes.append(Probe("exif", f"PNG eXIf orientation {orientation}", "POST", IMAGE_ROUTE, lambda o=orientation: upload(
            encode(rgb_pixels(40, 20, "pngexif"), "PNG", exif=_exif(o)))))
        probes.append(Probe("exif", f"WEBP EXIF orientation {orientation}", "POST", IMAGE_ROUTE, lambda o=orientation: upload(
            encode(rgb_pixels(40, 20, "webpexif"), "WEBP", exif=_exif(o)), b"x.webp", b"image/webp")))
        probes.append(Probe("exif", f"1x8000 PNG with orientation {orientation}", "POST", IMAGE_ROUTE,
                            lambda o=orientation: upload(encode(rgb_pixels(1, 8000, "tall"), "PNG", exif=_exif(o)))))
    return probes


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


TEXT_FIELDS: dict[str, Any] = {"query": "red mug", "k": 3, "filters": {}, "rerank": False, "rerank_top_n": 5}
WRONG_VALUES: list[Any] = [None, True, 0, -1, 1.5, 10**30, "", "x", " ", [], {}, [1], {"a": 1}, "3", [None]]
FILTER_FIELDS = ["category", "brand", "price_min", "price_max"]


def json_probes() -> list[Probe]:
    probes: list[Probe] = []

    def add(name: str, maker: Maker, timeout: float = 30.0, route: str = TEXT_ROUTE) -> None:
        probes.append(Probe("json", name, "POST", route, maker, timeout))

    valid = json.dumps(TEXT_FIELDS)
    add("valid", lambda: {"json": TEXT_FIELDS})
    for cut in sorted({1, 2, 5, 9, 10, 11, 20, 30, len(valid) // 2, len(valid) - 2, len(valid) - 1}):
        add(f"truncated at {cut}", lambda cut=cut: json_body(valid[:cut]))
    for fname in TEXT_FIELDS:
        for value in WRONG_VALUES:
            add(f"{fname} = {value!r}"[:80], lambda f=fname, v=value: {"json": {**TEXT_FIELDS, f: v}})
    for fname in FILTER_FIELDS:
        for value in WRONG_VALUES + [["a"] * 201, -0.0, 1e308]:
            add(f"filters.{fname} = {value!r}"[:80],
                lambda f=fname, v=value: {"json": {**TEXT_FIELDS, "filters": {f: v}}})
    numbers = ["1e400", "-1e400", "1e308", "NaN", "Infinity", "-Infinity", "99999999999999999999999999999",
               "-0", "0.0000000000000000000000000001e-400", "1" * 5000, "1e99999999999", "3.0"]
    for token in numbers:
        for fname in ("k", "rerank_top_n"):
            add(f"{fname}: {token[:30]}", lambda t=token, f=fname: json_body(f'{{"query": "mug", "{f}": {t}}}'))
        for fname in ("price_min", "price_max"):
            add(f"filters.{fname}: {token[:30]}",
                lambda t=token, f=fname: json_body(f'{{"query": "mug", "filters": {{"{f}": {t}}}}}'))
    for depth in (100, 1_000, 5_000, 50_000):
        add(f"query nested {depth} arrays", lambda d=depth: json_body(f'{{"query": {nested(d)}}}'))
        add(f"root nested {depth} arrays", lambda d=depth: json_body(nested(d)))
        add(f"root nested {depth} objects", lambda d=depth: json_body(nested_objects(d)))
        add(f"filters.category nested {depth}",
            lambda d=depth: json_body(f'{{"query": "x", "filters": {{"category": {nested(d, chr(34) + "a" + chr(34))}}}}}'))
    for size in (2 * MB, 8 * MB):
        add(f"query string of {size // MB} MB", lambda s=size: {"json": {"query": "a" * s}})
        add(f"{size // MB} MB key", lambda s=size: {"json": {"query": "x", "k" * s: 1}})
        add(f"{size // MB} MB of whitespace", lambda s=size: json_body(" " * s + valid))
        add(f"category list of {size // 8} items", lambda s=size: {"json": {"query": "x",
                                                                           "filters": {"category": ["a"] * (s // 8)}}})
    add("200 MB JSON with Content-Length", lambda: json_body(b'{"query": "' + b"a" * (200 * MB) + b'"}'), timeout=120)
    add("200 MB JSON chunked", lambda: {"content": streamed(200 * MB, b'{"query": "', b'"}'),
                                        "headers": {"content-type": "application/json"}}, timeout=120)
    encodings: dict[str, bytes] = {
        "invalid UTF-8 in query": b'{"query": "\xff\xfe\xfd"}',
        "overlong UTF-8": b'{"query": "\xc0\xaf\xe0\x80\xaf"}',
        "UTF-8 surrogate bytes": b'{"query": "\xed\xa0\x80"}',
        "lone surrogate escape": b'{"query": "\\ud800"}',
        "reversed surrogate pair": b'{"query": "\\udc00\\ud800"}',
        "NUL escape in query": b'{"query": "a\\u0000b"}',
        "raw NUL byte in query": b'{"query": "a\x00b"}',
        "NUL in a key": b'{"query": "x", "k\\u0000": 1}',
        "NUL byte before the body": b'\x00{"query": "x"}',
        "UTF-8 BOM": b'\xef\xbb\xbf{"query": "x"}',
        "UTF-16 body": '{"query": "x"}'.encode("utf-16"),
        "UTF-32 body": '{"query": "x"}'.encode("utf-32"),
        "latin-1 body": '{"query": "caf\u00e9"}'.encode("latin-1"),
        "duplicate keys": b'{"query": "x", "query": "y", "k": 1, "k": 2}',
        "trailing garbage": b'{"query": "x"} trailing',
        "two documents": b'{"query": "x"}{"query": "y"}',
        "comment": b'{"query": "x" /* c */}',
        "single quotes": b"{'query': 'x'}",
        "trailing comma": b'{"query": "x",}',
        "empty body": b"",
        "null": b"null",
        "array": b'["query", "x"]',
        "string": b'"red mug"',
        "number": b"42",
        "true": b"true",
        "only whitespace": b"   \n\t ",
        "control characters in query": b'{"query": "\\u0001\\u0002\\u001b[31m"}',
        "RTL and zero-width query": '{"query": "\u202e\u200b\u200d\ufeff"}'.encode(),
        "1000 emoji": json.dumps({"query": "\U0001f600" * 1000}).encode(),
        "1001 chars": json.dumps({"query": "a" * 1001}).encode(),
        "whitespace-only query": b'{"query": "   \\t\\n  "}',
        "query of 500 NULs": json.dumps({"query": "\x00" * 500}).encode(),
        "combining marks": json.dumps({"query": "a" + "\u0301" * 999}).encode(),
        "unknown top-level field": b'{"query": "x", "extra": 1}',
        "unknown filter field": b'{"query": "x", "filters": {"colour": ["red"]}}',
    }
    for name, body in encodings.items():
        add(name, lambda b=body: json_body(b))
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "", "application/json; "
                  "charset=utf-16", "application/xml", "*/*", "application/json; charset=\u00e9"):
        add(f"valid JSON sent as {ctype!r}", lambda c=ctype: json_body(valid, c.encode("latin-1")))
    for fname in ("category", "brand"):
        for escaped in ('"\\ud800"', '"\\udfff\\ud800"', '"a\\u0000b"', '"\\u0000"', '"%"', '"_"', '"\\\\"'):
            add(f"filters.{fname} = [{escaped}]", lambda f=fname, e=escaped: json_body(
                f'{{"query": "x", "filters": {{"{f}": [{e}]}}}}'))
    add("no content-type", lambda: {"content": valid.encode(), "headers": {"content-type": ""}})
    add("form body", lambda: {"data": {"query": "red mug"}})
    add("multipart body", lambda: upload(b"x"))
    return probes


def form_probes() -> list[Probe]:
    png = image_bytes("RGB", (32, 24), "PNG")
    good = (b"file", b"q.png", b"image/png", png)
    probes: list[Probe] = []

    def add(name: str, maker: Maker, timeout: float = 30.0) -> None:
        probes.append(Probe("forms", name, "POST", IMAGE_ROUTE, maker, timeout))

    add("valid", lambda: form_request([good]))
    add("two files in one field", lambda: form_request([good, good]))
    add("two files in two fields", lambda: form_request([good, (b"file2", b"b.png", b"image/png", png)]))
    add("no file", lambda: form_request([(b"k", None, None, b"3")]))
    add("no parts at all", lambda: form_request([]))
    add("file as a text field", lambda: form_request([(b"file", None, None, b"not a file")]))
    add("file field with an empty filename", lambda: form_request([(b"file", b"", b"image/png", png)]))
    add("file field with a NUL in the filename", lambda: form_request([(b"file", b"a\x00.png", b"image/png", png)]))
    add("file named with CRLF", lambda: form_request([(b"file", b"a\r\nX-Evil: 1", b"image/png", png)]))
    add("empty field name", lambda: form_request([(b"", b"q.png", b"image/png", png)]))
    add("1000 files", lambda: form_request([good] * 1000), timeout=60)
    add("1001 files", lambda: form_request([good] * 1001), timeout=60)
    add("2000 text fields", lambda: form_request([good] + [(b"f%d" % i, None, None, b"x") for i in range(2000)]))
    add("a 2 MB field", lambda: form_request([good, (b"note", None, None, b"x" * 2 * MB)]))
    add("a 100 KB part header", lambda: form_request([good, (b"n" * 100_000, None, None, b"x")]))
    field_values = {
        b"k": [b"abc", b"0", b"101", b"-1", b"1e400", b"NaN", b"1.5", b"", b" 5 ", "\u0663".encode(), b"0x10",
               b"9" * 30, b"\x00", b"\xff\xfe", b"[1]"],
        b"rerank": [b"maybe", b"2", b"", b"TRUE", b"on", b"\xff"],
        b"rerank_top_n": [b"0", b"101", b"x", b"-5", b"1e400"],
        b"filters": [b"not json", b"[]", b"null", b"1", b'"x"', b'{"category": "x"}', b'{"x": 1}',
                     b'{"price_min": NaN}', b'{"price_min": 1e400}', b'{"price_max": -1}', b'{"price_min": Infinity}',
                     b'{"category": [1, 2]}', b'{"category": ["a", null]}', b"\xff\xfe", b'{"category": ["\x00"]}',
                     b'{"category": ["\\ud800"]}', b"{" * 100, nested(100).encode(), nested(5000).encode(),
                     nested(50_000).encode(), nested_objects(5000).encode(),
                     ('{"category": ' + nested(5000, '"a"') + "}").encode(), b"a" * (2 * MB),
                     json.dumps({"category": ["a"] * 201}).encode(), json.dumps({"brand": ["b" * 100_000]}).encode()],
    }
    for fname, values in field_values.items():
        for value in values:
            add(f"{fname.decode()} = {value[:30]!r}", lambda f=fname, v=value: form_request([good, (f, None, None, v)]))
    add("k given twice", lambda: form_request([good, (b"k", None, None, b"1"), (b"k", None, None, b"200")]))
    add("filters given twice", lambda: form_request([good, (b"filters", None, None, b"{}"),
                                                     (b"filters", None, None, b"[[[")]))
    add("multipart without a boundary parameter", lambda: form_request([good], content_type=b"multipart/form-data"))
    add("boundary that does not match", lambda: form_request([good], content_type=b"multipart/form-data; boundary=zz"))
    add("no closing boundary", lambda: form_request([good], closing=False))
    add("empty boundary", lambda: form_request([good], content_type=b"multipart/form-data; boundary="))
    add("200-char boundary", lambda: form_request([good], boundary=b"b" * 200))
    add("boundary with quotes and spaces", lambda: form_request(
        [good], boundary=b"a b", content_type=b'multipart/form-data; boundary="a b"'))
    add("garbage body", lambda: {"content": _rng("garbage").integers(0, 256, 5000, dtype=np.uint8).tobytes(),
                                 "headers": {"content-type": "multipart/form-data; boundary=x"}})
    add("part without Content-Disposition", lambda: {"content": b"--b\r\nContent-Type: image/png\r\n\r\nxx\r\n--b--\r\n",
                                                     "headers": {"content-type": "multipart/form-data; boundary=b"}})
    add("urlencoded instead of multipart", lambda: {"data": {"file": "x", "k": "3"}})
    add("JSON instead of multipart", lambda: {"json": {"file": "x"}})
    add("no body", lambda: {"headers": {"content-type": "multipart/form-data; boundary=x"}})
    add("50 MB upload with Content-Length", lambda: upload(b"\x00" * (50 * MB)), timeout=120)
    add("50 MB upload chunked", lambda: {"content": streamed(50 * MB, b"--b\r\nContent-Disposition: form-data; "
                                                             b'name="file"; filename="a.png"\r\n\r\n', b"\r\n--b--\r\n",
                                                             b"\x00"),
                                         "headers": {"content-type": "multipart/form-data; boundary=b"}}, timeout=120)
    return probes


def param_probes(product_id: str) -> list[Probe]:
    probes: list[Probe] = []

    def add(name: str, method: str, path: str, maker: Maker = lambda: {}, **kw: Any) -> None:
        probes.append(Probe("params", name, method, path, maker, **kw))

    similar = f"/v1/products/{product_id}/similar"
    image = f"/v1/products/{product_id}/image"
    values = ["-1", "0", "abc", "1e400", "NaN", "inf", "-inf", "1.5", "", " ", "9" * 40, "\u0663", "%00", "0x1",
              "true", "[]"]
    for name in ("k", "price_min", "price_max", "same_category"):
        for value in values:
            add(f"similar {name}={value!r}", "GET", similar, lambda n=name, v=value: {"params": {n: v}})
    for name in ("view", "size"):
        for value in values + [str(2**63), str(-(2**63) - 1), "THUMB", "full\x00"]:
            add(f"image {name}={value!r}", "GET", image, lambda n=name, v=value: {"params": {n: v}})
    add("similar category repeated 2000 times", "GET", similar, lambda: {"params": [("category", "a")] * 2000})
    for value in ("%00", "%ED%A0%80", "a%00b", "%C0%80", "%25", "_%25"):
        add(f"similar category={value}", "GET", f"{similar}?category={value}&brand={value}")
    add("similar brand of 6 KB", "GET", similar, lambda: {"params": {"brand": "b" * 6000}})
    add("similar with price_min > price_max", "GET", similar, lambda: {"params": {"price_min": 5, "price_max": 1}})
    add("similar with unknown params", "GET", similar, lambda: {"params": {"zzz": "1", "k[]": "2"}})
    ids = ["", " ", "%00", "..", "%2e%2e", "%2F", "a%2Fb", "x" * 8000, "%F0%9F%98%80", "%FF%FE", "%C0%AF", "%ZZ",
           "%", "nonexistent", "'; DROP TABLE products; --", "\u00e9", "%0d%0aX-Evil:%201", "con", "a?b", "a#b",
           "%u0041", "..%2F..%2Fetc%2Fpasswd"]
    for pid in ids:
        for suffix in ("", "/similar", "/image"):
            add(f"product id {pid[:20]!r}{suffix}", "GET", f"/v1/products/{pid}{suffix}")
    routes = ["/v1/search/text", "/v1/search/image", f"/v1/products/{product_id}", similar, image, "/v1/facets",
              "/healthz", "/readyz", "/v1/admin/reload", "/v1/admin/products", "/v1/admin/products/delete"]
    for route in routes:
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
            add(f"{method} {route}", method, route)
        add(f"HEAD {route}", "HEAD", route)
    for path in ("/nope", "/v1", "/v1/", "/v2/search/text", "/v1/search/text/", "//v1/facets", "/v1/facets/..",
                 "/static/../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd", "/openapi.json", "/docs", "/metrics"):
        add(f"GET {path}", "GET", path)
    add("facets with junk params", "GET", "/v1/facets", lambda: {"params": {"a": "\x00", "b": "x" * 5000}})
    add("GET text search", "GET", "/v1/search/text", lambda: {"params": {"query": "mug"}})
    return probes


def raw_probes() -> list[Probe]:
    def raw(name: str, data: bytes, *, server_level: bool = True) -> Probe:
        return Probe("raw_http", name, "RAW", "", raw=data, server_level=server_level, timeout=10)

    host = b"Host: 127.0.0.1\r\nConnection: close\r\n"
    body = b'{"query": "x"}'
    return [
        raw("invalid percent-encoding in the path", b"GET /v1/products/%ZZ%G1 HTTP/1.1\r\n" + host + b"\r\n",
            server_level=False),
        raw("raw invalid UTF-8 in the path", b"GET /v1/products/\xff\xfe HTTP/1.1\r\n" + host + b"\r\n"),
        raw("NUL in the path", b"GET /v1/products/a\x00b HTTP/1.1\r\n" + host + b"\r\n"),
        raw("Content-Length not a number", b"POST /v1/search/text HTTP/1.1\r\n" + host
            + b"Content-Type: application/json\r\nContent-Length: abc\r\n\r\n" + body),
        raw("negative Content-Length", b"POST /v1/search/text HTTP/1.1\r\n" + host
            + b"Content-Type: application/json\r\nContent-Length: -5\r\n\r\n" + body),
        raw("two Content-Lengths", b"POST /v1/search/text HTTP/1.1\r\n" + host
            + b"Content-Type: application/json\r\nContent-Length: 14\r\nContent-Length: 3\r\n\r\n" + body),
        raw("Content-Length shorter than the body", b"POST /v1/search/text HTTP/1.1\r\n" + host
            + b"Content-Type: application/json\r\nContent-Length: 5\r\n\r\n" + body),
        raw("bad chunk size", b"POST /v1/search/text HTTP/1.1\r\n" + host
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n" + body + b"\r\n0\r\n\r\n"),
        raw("chunked and Content-Length", b"POST /v1/search/text HTTP/1.1\r\n" + host
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 14\r\n\r\n"
            + b"e\r\n" + body + b"\r\n0\r\n\r\n"),
        raw("a 64 KB header", b"GET /healthz HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n"),
        raw("header with a NUL", b"GET /healthz HTTP/1.1\r\n" + host + b"X-Nul: a\x00b\r\n\r\n"),
        raw("HTTP/0.9 request", b"GET /healthz\r\n\r\n"),
        raw("HTTP/9.9 request", b"GET /healthz HTTP/9.9\r\n" + host + b"\r\n"),
        raw("garbage request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
        raw("method of 10 KB", b"G" * 10_000 + b" / HTTP/1.1\r\n" + host + b"\r\n"),
        raw("absolute-form target to another host", b"GET http://internal.invalid/latest HTTP/1.1\r\n" + host + b"\r\n",
            server_level=False),
        raw("500 headers", b"GET /healthz HTTP/1.1\r\n" + host + b"".join(b"X-%d: 1\r\n" % i for i in range(500))
            + b"\r\n"),
        raw("Content-Length says 1 GB, 14 bytes sent", b"POST /v1/search/text HTTP/1.1\r\n" + host
            + b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n" + body, server_level=False),
        raw("API key with a NUL", b"POST /v1/admin/reload HTTP/1.1\r\n" + host + b"X-API-Key: " + API_KEY.encode()
            + b"\x00\r\n\r\n"),
        raw("a URL of 200 KB", b"GET /v1/products/x/similar?" + b"category=a&" * 20_000 + b" HTTP/1.1\r\n" + host
            + b"\r\n"),
        raw("a URL of 12 KB", b"GET /v1/products/x/similar?" + b"category=a&" * 1_000 + b" HTTP/1.1\r\n" + host
            + b"\r\n", server_level=False),
        raw("Expect: 100-continue with a huge length", b"POST /v1/search/image HTTP/1.1\r\n" + host
            + b"Content-Type: multipart/form-data; boundary=b\r\nExpect: 100-continue\r\n"
            + b"Content-Length: 999999999999\r\n\r\n"),
    ]


def admin_probes() -> list[Probe]:
    probes: list[Probe] = []

    def add(name: str, path: str, maker: Maker, timeout: float = 60.0) -> None:
        probes.append(Probe("admin", name, "POST", path, maker, timeout))

    products, delete = "/v1/admin/products", "/v1/admin/products/delete"
    base = {"product_id": "hostile-1", "title": "a hostile product", "description": "d", "price": 3.5}
    add("no key", products, lambda: admin({"products": [base]}, key=None))
    add("wrong key", products, lambda: admin({"products": [base]}, key="nope"))
    add("empty key", products, lambda: admin({"products": [base]}, key=""))
    add("bearer with a 100 KB key", products, lambda: {"json": {"products": [base]},
                                                       "headers": {"authorization": "Bearer " + "k" * 100_000}})
    add("non-ASCII key", products, lambda: {"json": {"products": [base]}, "headers": {"x-api-key": "k\u00e9y".encode()}})
    add("non-ASCII bearer", products, lambda: {"json": {"products": [base]},
                                               "headers": {"authorization": "Bearer \u00e9\u00e9".encode("latin-1")}})
    for fname in ("product_id", "title", "description", "image", "category", "brand", "price", "currency"):
        for value in (None, 1, -1.5, True, [], {}, [1], "", "x" * 300, ["a", {"b": 1}]):
            add(f"product.{fname} = {value!r}"[:80], products,
                lambda f=fname, v=value: admin({"products": [{**base, f: v}]}))
    for token in ("NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 5000):
        add(f"price: {token[:20]}", products, lambda t=token: admin(
            content=f'{{"products": [{{"product_id": "p", "title": "t", "price": {t}}}]}}'.encode()))
    add("products = []", products, lambda: admin({"products": []}))
    add("products = null", products, lambda: admin({"products": None}))
    add("1001 products", products, lambda: admin({"products": [{**base, "product_id": f"p{i}"} for i in range(1001)]}))
    add("extra top-level field", products, lambda: admin({"products": [base], "x": 1}))
    add("attribute nested 200 deep", products, lambda: admin(content=(
        '{"products": [{"product_id": "deep200", "title": "t", "attrs": ' + nested(200) + "}]}").encode()))
    for depth in (1_000, 5_000, 50_000):
        add(f"attribute nested {depth} deep", products, lambda d=depth: admin(content=(
            '{"products": [{"product_id": "deep", "title": "t", "attrs": ' + nested(d) + "}]}").encode()))
    add("attribute of 5 MB", products, lambda: admin({"products": [{**base, "blob": "b" * (5 * MB)}]}))
    add("40 MB body", products, lambda: admin({"products": [{**base, "blob": "b" * (40 * MB)}]}), timeout=120)
    add("title with NUL and surrogate escape", products, lambda: admin(
        content=b'{"products": [{"product_id": "p\\u0000", "title": "t\\ud800"}]}'))
    add("invalid UTF-8 body", products, lambda: admin(content=b'{"products": [{"product_id": "\xff", "title": "t"}]}'))
    for image in ("http://127.0.0.1:9/x.jpg", "http://localhost:9/x.png", "https://127.0.0.1:9/", "ftp://127.0.0.1/x",
                  "file:///etc/passwd", "/etc/passwd", "/", "relative/../../../../etc/passwd", "data:image/png;base64,AA",
                  "|||", " | ", "\x00", "http://[::1]:9/x", "http://127.0.0.1:9/" + "a" * 5000):
        add(f"image = {image[:40]!r}", products, lambda i=image: admin(
            {"products": [{**base, "product_id": "img-" + str(zlib.crc32(i.encode())), "image": i}]}))
    add("image list of 500 empty strings", products, lambda: admin({"products": [{**base, "image": [""] * 500}]}))
    for ids in ([], [""], [1], [None], ["x" * 300], ["a\x00"], ["nonexistent-1", "nonexistent-1"]):
        add(f"delete ids={ids!r}"[:60], delete, lambda i=ids: admin({"ids": i}))
    add("delete 10001 ids", delete, lambda: admin({"ids": [f"x{i}" for i in range(10_001)]}))
    add("delete ids nested 5000", delete, lambda: admin(content=('{"ids": ' + nested(5000, '"a"') + "}").encode()))
    add("delete ids as a string", delete, lambda: admin({"ids": "abc"}))
    add("reload with a garbage body", "/v1/admin/reload", lambda: admin(content=b"\xff\x00garbage"))
    add("reload with a 5000-deep body", "/v1/admin/reload", lambda: admin(content=nested(5000).encode()))
    return probes


def build_corpus(product_id: str) -> list[Probe]:
    return (image_mode_probes() + truncated_probes() + bomb_probes() + polyglot_probes() + mislabelled_probes()
            + animated_probes() + exif_probes() + json_probes() + form_probes() + param_probes(product_id)
            + raw_probes() + admin_probes())


# ----------------------------------------------------------------------------------------------------------------
# Sending and judging
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int | None
    headers: dict[str, str]
    body: bytes
    error: str | None = None


def send_raw(url: str, data: bytes, timeout: float) -> Outcome:
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, ConnectionResetError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as exc:
        return Outcome(None, {}, b"", f"{type(exc).__name__}: {exc}")
    reply = b"".join(chunks)
    if not reply:
        return Outcome(None, {}, b"", "connection closed without a response")
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Outcome(None, {}, reply[:200], f"not an HTTP response: {lines[0]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Outcome(status, headers, body)


def send(client: httpx.Client, url: str, probe: Probe) -> Outcome:
    if probe.raw is not None:
        return send_raw(url, probe.raw, probe.timeout)
    kwargs = probe.make()
    try:
        resp = client.request(probe.method, url + probe.path, timeout=probe.timeout, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer is recorded, not raised
        return Outcome(None, {}, b"", f"{type(exc).__name__}: {exc}"[:300])
    return Outcome(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)


def judge(probe: Probe, out: Outcome) -> str | None:
    """Why this outcome breaks an invariant, or None."""
    if out.status is None:
        if probe.server_level and "closed without a response" in (out.error or ""):
            return None  # the HTTP server dropped a request it could not parse: not the app's to answer
        return f"no response: {out.error}"
    if out.status >= 500:
        if out.status == 503 and "retry-after" in out.headers:
            return None
        return f"{out.status} {out.body[:300]!r}"
    if 400 <= out.status < 500 and probe.method != "HEAD":
        try:
            body = json.loads(out.body)
        except ValueError:
            if probe.server_level:
                return None  # uvicorn/h11 answered before the app saw the request
            return f"{out.status} not JSON: {out.body[:200]!r}"
        err = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(err, dict) and set(err) == {"code", "message"} and isinstance(err["code"], str)
                and isinstance(err["message"], str) and err["message"].strip() and err["code"]):
            return f"{out.status} not in the error shape: {out.body[:300]!r}"
    return None


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM line")


# ----------------------------------------------------------------------------------------------------------------
# Malformed catalogs through the CLI
# ----------------------------------------------------------------------------------------------------------------


def parquet_bytes(columns: dict[str, list[Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


@dataclass
class CatalogCase:
    suffix: str
    make: Callable[[], bytes]
    may_pass_clean: bool = False  # a build that skips nothing is fine too (the odd bytes are just text)


def catalog_cases(images: list[str]) -> dict[str, CatalogCase]:
    """Malformed catalogs. Bad rows are gathered in a few files, since every build loads the model.

    `images` are good image paths relative to the catalog's folder."""
    header = "product_id,title,description,image,category,brand,price,currency\n"
    good = "".join(f"g{i},a red mug {i},desc,{img},mug,acme,3.5,EUR\n" for i, img in enumerate(images))
    image = images[0]
    bad_rows = (
        "p3\n"  # too few cells
        "p4,t,d,,,,1,EUR,x,y,z\n"  # too many
        ",no id,d,,,,1,EUR\n"
        "g1,duplicate id,d,,,,1,EUR\n"
        "p5,t,d,,,,abc,EUR\np6,t,d,,,,1e400,EUR\np7,t,d,,,,-5,EUR\np8,t,d,,,,NaN,EUR\np9,t,d,,,,inf,EUR\n"
        f"p10,{'t' * 100_000},d,,,,1,EUR\n"  # under the csv module's 128 KB field limit
        "p11,t,d,/etc/passwd,,,1,EUR\np12,t,d,../../../../etc/shadow,,,1,EUR\n"
        "p13,t,d,http://127.0.0.1:9/x.jpg,,,1,EUR\np14,t,d,/,,,1,EUR\n"
        'p15,"never closed,x,,,,1,EUR\n'  # swallows the rest of the file
    )
    jl_good = json.dumps({"product_id": "j1", "title": "a red mug", "image": image}) + "\n"
    jl_bad = ("{broken\n[1,2]\n\"str\"\nnull\nNaN\n{\"product_id\": 5, \"title\": [\"x\"]}\n"
              + json.dumps({"product_id": "big", "title": "t" * (5 * MB)}) + "\n")

    def text(t: str) -> Callable[[], bytes]:
        return lambda: t.encode()

    def garbage(key: str) -> Callable[[], bytes]:
        return lambda: _rng(key).integers(0, 256, 20_000, dtype=np.uint8).tobytes()

    return {
        "CSV with 16 kinds of bad rows": CatalogCase(".csv", text(header + good + bad_rows)),
        "CSV whose 10 products share one image file": CatalogCase(".csv", text(header + "".join(
            f"s{i},a shared mug {i},desc,{image},mug,acme,3.5,EUR\n" for i in range(10))), may_pass_clean=True),
        "JSONL with garbage lines (a 5 MB one, invalid UTF-8)": CatalogCase(".jsonl", lambda: (
            jl_good + jl_bad).encode() + b'{"product_id": "\xff\xfe", "title": "x"}\n'),
        "JSONL with a line nested 100000 deep": CatalogCase(".jsonl", text(jl_good + nested(100_000) + "\n")),
        "Parquet with wrong and null cells": CatalogCase(".parquet", lambda: parquet_bytes(
            {"product_id": ["p0", "p1", "p2", None], "title": ["good", "ok", None, "x"], "price": ["1", "a", "1", "-2"],
             "image": [image, "/etc/passwd", image, None]})),
        "Parquet whose every row is bad": CatalogCase(".parquet", lambda: parquet_bytes(
            {"product_id": ["p1", None], "title": [None, "x"]})),
        "CSV latin-1 bytes": CatalogCase(".csv", lambda: (header + good + "p3,caf\u00e9,x,,,,1,EUR\n").encode("latin-1")),
        "CSV UTF-16": CatalogCase(".csv", lambda: (header + good).encode("utf-16")),
        "CSV with a NUL byte in a title": CatalogCase(".csv", text(header + good + "p3,nul\x00title,x,,,,1,EUR\n"),
                                                      may_pass_clean=True),
        "CSV with a 2 MB quoted cell": CatalogCase(".csv", text(header + good + f'p3,"{"t" * 2_000_000}",x,,,,1,EUR\n')),
        "CSV without a title column": CatalogCase(".csv", text("product_id,description\np1,x\n")),
        "CSV with a duplicated header column": CatalogCase(".csv", text("product_id,title,title\np1,a,b\n")),
        "CSV empty file": CatalogCase(".csv", text("")),
        "CSV binary garbage": CatalogCase(".csv", garbage("csv")),
        "JSONL binary garbage": CatalogCase(".jsonl", garbage("jsonl")),
        "Parquet that is text": CatalogCase(".parquet", text("product_id,title\np1,x\n")),
        "Parquet truncated": CatalogCase(".parquet", lambda: parquet_bytes(
            {"product_id": ["p1", "p2"], "title": ["a", "b"]})[:-40]),
        "Parquet without a title column": CatalogCase(".parquet", lambda: parquet_bytes({"product_id": ["p1"], "x": [1]})),
    }


def judge_cli(case: CatalogCase, catalog: Path, result: Any) -> str | None:
    """Non-zero exit with one line saying what and where (the file, a row, or the recorded errors),
    or a build that records the rows it skipped; never a traceback."""
    if "Traceback" in result.stderr or "Traceback" in result.stdout:
        return f"traceback, exit {result.returncode}: {(result.stderr.strip().splitlines() or [''])[-1]}"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        if len(lines) != 1:
            return f"exit {result.returncode} with {len(lines)} stderr lines: {result.stderr[-300:]!r}"
        if catalog.name not in lines[0] and "row" not in lines[0] and "catalens index errors" not in lines[0]:
            return f"exit {result.returncode}, the error does not say where: {lines[0]!r}"
        return None
    try:
        summary = json.loads(result.stdout)
    except ValueError:
        return f"exit 0 without a JSON summary: {result.stdout[-300:]!r}"
    if not summary.get("skipped") and not case.may_pass_clean:
        return f"exit 0 and no row skipped or recorded: {json.dumps(summary)[:300]}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# The test
# ----------------------------------------------------------------------------------------------------------------


def run_http_corpus(corpus: list[Probe], start: Callable[[], Server], log: Path) -> dict[str, Any]:
    """Send every probe to a server from `start()`, sequentially; restart it (at most 3 times) if it dies."""
    results: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    memory: dict[str, Any] = {"bound_mb": PEAK_GROWTH_BOUND_MB, "restarts": 0}
    jumps: list[tuple[float, str]] = []
    timings: list[tuple[float, str]] = []
    server = start()
    try:
        with httpx.Client() as client:
            warm = upload(image_bytes("RGB", (64, 48), "JPEG"), b"w.jpg", b"image/jpeg")
            assert client.post(server.url + IMAGE_ROUTE, timeout=60, **warm).status_code == 200
            assert client.post(server.url + TEXT_ROUTE, json={"query": "warm up"}, timeout=60).status_code == 200
            pid = server.process.pid
            baseline = vm_hwm_mb(pid)
            memory["vmhwm_before_mb"] = round(baseline, 1)
            peak_growth = 0.0
            for probe in corpus:
                before = vm_hwm_mb(pid)
                t0 = time.monotonic()
                out = send(client, server.url, probe)
                if out.status is None and probe.raw is None and server.process.poll() is None:
                    # After an unhandled error uvicorn closes the keep-alive connection, and the next
                    # request on it fails: that belongs to the previous input, so try once more.
                    out = send(client, server.url, probe)
                elapsed = time.monotonic() - t0
                timings.append((elapsed, f"{probe.category}: {probe.name}"))
                alive = server.process.poll() is None
                after = vm_hwm_mb(pid) if alive else before
                if after - before >= 25:
                    jumps.append((after - before, f"{probe.category}: {probe.name}"))
                peak_growth = max(peak_growth, after - baseline)
                problem = judge(probe, out)
                if problem is None and elapsed > 10:
                    problem = f"slow: {elapsed:.1f} s (status {out.status})"
                results.append({"category": probe.category, "status": str(out.status) if out.status else "none"})
                if problem:
                    failures.append({"category": probe.category, "input": probe.name, "method": probe.method,
                                     "path": probe.path[:120], "problem": problem[:500], "seconds": round(elapsed, 2)})
                if not alive:
                    failures.append({"category": probe.category, "input": probe.name, "problem": "the server died",
                                     "log_tail": log.read_text(errors="replace")[-2000:]})
                    memory["restarts"] += 1
                    memory.setdefault("peak_growth_before_restarts_mb", []).append(round(peak_growth, 1))
                    if memory["restarts"] > 3:
                        break
                    server = start()
                    pid = server.process.pid
                    client.post(server.url + IMAGE_ROUTE, timeout=60, **warm)
                    baseline = vm_hwm_mb(pid)
            ready = client.get(server.url + "/readyz", timeout=30)
            if ready.status_code != 200:
                failures.append({"category": "after", "input": "/readyz", "problem": f"{ready.status_code} {ready.text}"})
            memory["vmhwm_after_mb"] = round(vm_hwm_mb(pid), 1)
    finally:
        stop_server(server)
    memory["peak_growth_mb"] = round(peak_growth, 1)
    memory["largest_jumps_mb"] = [{"input": name, "growth_mb": round(g, 1)} for g, name in sorted(jumps, reverse=True)[:20]]
    slowest = [{"input": name, "seconds": round(t, 2)} for t, name in sorted(timings, reverse=True)[:10]]
    return {"results": results, "failures": failures, "memory": memory, "slowest": slowest}


def run_catalogs(work: Path, images: list[Path], workers: int = 2) -> dict[str, Any]:
    """Feed each malformed catalog to `catalens index build`, as a user runs it (`workers` at a time)."""
    (work / "images").mkdir(exist_ok=True)
    for img in images:
        shutil.copy(img, work / "images" / img.name)
    cases = list(catalog_cases([f"images/{img.name}" for img in images]).items())

    def build(i: int, name: str, case: CatalogCase) -> tuple[dict[str, Any], str | None]:
        catalog = work / f"catalog{i}{case.suffix}"
        catalog.write_bytes(case.make())
        t0 = time.monotonic()
        result = run_cli("index", "build", "--catalog", str(catalog), "--index-dir", str(work / f"cli-idx{i}"),
                         "--json", "--quiet", "--reranker", "none", "--no-rerank-features", timeout=120)
        last = (result.stderr.strip().splitlines() or [""])[-1]
        run = {"input": name, "exit": result.returncode, "seconds": round(time.monotonic() - t0, 1),
               "stderr": last[:300]}
        return run, judge_cli(case, catalog, result)

    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda item: build(item[0], *item[1]), enumerate(cases)))
    runs = [run for run, _ in done]
    failures = [{"category": "catalogs", "input": run["input"], "problem": problem[:500]}
                for run, problem in done if problem]
    results = [{"category": "catalogs", "status": f"exit {run['exit']}"} for run in runs]
    return {"results": results, "failures": failures, "runs": runs}


def summarize(http: dict[str, Any], cli: dict[str, Any], seconds: dict[str, float]) -> dict[str, Any]:
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    for r in http["results"] + cli["results"]:
        by_category[r["category"]][r["status"]] += 1
    return {
        "seed": SEED,
        "inputs": len(http["results"]) + len(cli["results"]),
        "by_category": {c: {"count": sum(s.values()), "statuses": dict(sorted(s.items()))}
                        for c, s in by_category.items()},
        "failures": http["failures"] + cli["failures"],
        "peak_memory": http["memory"],
        "slowest_requests": http["slowest"],
        "catalogs": cli["runs"],
        "seconds": seconds,
    }


@pytest.mark.slow
@pytest.mark.reliability
def test_hostile_corpus_gets_no_5xx_typed_4xx_and_bounded_server_memory(
        sample_index: SampleIndex, tmp_path_factory: pytest.TempPathFactory) -> None:
    """>= 1,000 generated hostile inputs against a real `catalens serve`, and malformed catalogs against the CLI.

    Asserts: no response >= 500 except a 503 with Retry-After; every 4xx is
    {"error": {"code", "message"}} with a non-empty message (requests the HTTP server itself
    refuses before the app sees them are exempt from the shape); every request is answered
    within 10 s and the server is still ready afterwards; the server's peak RSS (VmHWM in
    /proc/<pid>/status) grows by less than PEAK_GROWTH_BOUND_MB = 400 MB over the whole
    corpus, counted from after a warm-up text and image search. The bound admits the largest
    image allowed (40 M pixels = 120 MB of 8-bit RGB) decoded once plus working room; the
    36 M-pixel PNG bomb in the corpus measured +133 MB for Pillow's decode alone, and +412 MB
    through a decoder that keeps three full-size copies (load, exif_transpose, convert). Each malformed
    catalog either makes `catalens index build` exit non-zero with one stderr line saying what
    and where (the file, a row, or `catalens index errors`), or is built with its bad rows
    skipped and recorded; never a traceback.
    """
    started = time.monotonic()
    work = tmp_path_factory.mktemp("hostile")
    index_dir = work / "index"
    shutil.copytree(sample_index.index_dir, index_dir)  # admin upserts must not touch the shared index
    corpus = build_corpus(sample_index.rows()[0]["product_id"])
    assert len(corpus) >= 1000, len(corpus)
    log = work / "serve.log"
    images = sorted((sample_index.sample_dir / "images").glob("*.jpg"))[:10]
    with ThreadPoolExecutor(1) as pool:  # the CLI runs (one model load each) go beside the HTTP corpus
        catalogs = pool.submit(run_catalogs, work, images)
        http = run_http_corpus(corpus, lambda: start_server(index_dir, env={"CATALENS_API_KEY": API_KEY}, log=log),
                               log)
        http_seconds = time.monotonic() - started
        cli = catalogs.result()
    summary = summarize(http, cli, {"http": round(http_seconds, 1), "total": round(time.monotonic() - started, 1)})
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(summary, indent=2) + "\n")

    failures = summary["failures"]
    assert not failures, f"{len(failures)} hostile inputs broke an invariant (see {ARTIFACT}):\n" + "\n".join(
        f"- [{f['category']}] {f['input']}: {f['problem']}" for f in failures[:40])
    assert http["memory"]["peak_growth_mb"] < PEAK_GROWTH_BOUND_MB, http["memory"]
