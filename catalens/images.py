"""The one image decoder shared by the indexer and uploads, hardened against hostile files."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from catalens.errors import ImageFetchError, PayloadTooLargeError, UnsupportedImageError

ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF"})


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Bytes -> upright 8-bit RGB image (frame 0, alpha onto white); typed errors for bad input.

    draft_size lets JPEG decode at a DCT-scaled size no smaller than needed, far cheaper
    than decoding full size and resizing.
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
            if draft_size and img.format in ("JPEG", "MPO"):
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError("not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnsupportedImageError(f"corrupt or truncated image: {exc}") from exc


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
    return img.convert("RGB")


def read_image_source(source: str, *, images_root: Path | None, timeout_s: float,
                      max_bytes: int) -> bytes:
    """Read the bytes an image reference points at: http(s) URL, absolute or root-relative path."""
    if source.startswith(("http://", "https://")):
        return _fetch_url(source, timeout_s=timeout_s, max_bytes=max_bytes)
    path = Path(source)
    if not path.is_absolute() and images_root is not None:
        path = images_root / path
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise PayloadTooLargeError(f"{path}: {size:,} bytes, over the {max_bytes:,} byte limit")
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageFetchError(f"image file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ImageFetchError(f"image path is a directory: {path}") from exc
    except PermissionError as exc:
        raise ImageFetchError(f"image file not readable: {path}") from exc


def _fetch_url(url: str, *, timeout_s: float, max_bytes: int) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise ImageFetchError(f"{url}: HTTP {resp.status_code}")
            chunks, total = [], 0
            for chunk in resp.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise PayloadTooLargeError(f"{url}: more than {max_bytes:,} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ImageFetchError(f"{url}: {type(exc).__name__}: {exc}") from exc
