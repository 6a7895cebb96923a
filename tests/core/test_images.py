"""The shared image decoder against the hostile inputs of RELIABILITY.md rows 10-14."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from catalens.errors import InvalidInputError, PayloadTooLargeError, UnsupportedImageError
from catalens.images import decode_image

LIMIT = 40_000_000


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_bomb_is_rejected_before_decoding() -> None:
    data = encode(Image.new("1", (20000, 20000)), "PNG")
    started = time.perf_counter()
    with pytest.raises(PayloadTooLargeError, match="pixel"):
        decode_image(data, max_pixels=LIMIT)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "ICO"])
def test_formats_outside_the_allow_list_are_refused(fmt: str) -> None:
    with pytest.raises(UnsupportedImageError, match="not allowed"):
        decode_image(encode(Image.new("RGB", (16, 16)), fmt), max_pixels=LIMIT)


@pytest.mark.parametrize("data", [b"", b"plain text", b"\x89PNG\r\n\x1a\nbroken"])
def test_garbage_is_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedImageError):
        decode_image(data, max_pixels=LIMIT)


def test_truncated_jpeg_is_unsupported() -> None:
    data = encode(Image.effect_noise((256, 256), 50).convert("RGB"), "JPEG")
    with pytest.raises(UnsupportedImageError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


@pytest.mark.reliability
@pytest.mark.parametrize("orientation,rotate", [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)])
def test_row12_exif_orientation_is_applied(orientation: int, rotate: Image.Transpose) -> None:
    upright = Image.new("RGB", (40, 20), "white")
    upright.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left
    stored = upright.transpose(rotate.ROTATE_90 if rotate == Image.Transpose.ROTATE_270 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(stored, "PNG", exif=exif), max_pixels=LIMIT)
    assert decoded.size == (40, 20)
    assert np.abs(np.asarray(decoded, int) - np.asarray(upright, int)).max() < 5


@pytest.mark.reliability
def test_row13_alpha_is_composited_onto_white() -> None:
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode_image(encode(img, "PNG"), max_pixels=LIMIT).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.reliability
@pytest.mark.parametrize("mode", ["L", "LA", "P", "CMYK", "I;16", "1", "RGBA"])
def test_row13_every_mode_becomes_8bit_rgb(mode: str) -> None:
    img = Image.new("RGB", (8, 8), (200, 100, 50)).convert(mode) if mode != "I;16" else \
        Image.fromarray(np.full((8, 8), 40000, np.uint16))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(encode(img, fmt), max_pixels=LIMIT)
    assert out.mode == "RGB" and out.size == (8, 8)
    if mode == "I;16":
        assert 150 < out.getpixel((0, 0))[0] < 160  # 40000/256, not clipped to white
    else:  # opaque: the same colours, as 8-bit RGB
        assert np.abs(np.asarray(out, int) - np.asarray(img.convert("RGB"), int)).max() <= (3 if fmt == "JPEG" else 0)


@pytest.mark.reliability
def test_row14_animated_gif_decodes_frame_zero_fast() -> None:
    # Distinct colours: identical frames would be merged into one when saving.
    frames = [Image.new("RGB", (64, 64), (i % 256, (i * 7) % 256, (i * 13) % 256)) for i in range(1000)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 1000
    started = time.perf_counter()
    out = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert out.size == (64, 64) and time.perf_counter() - started < 1.0
    assert out.getpixel((0, 0)) == frames[0].getpixel((0, 0)) != frames[1].getpixel((0, 0))  # frame 0 only


@pytest.mark.parametrize("size,ratio", [((1, 100_000), "100000"), ((100_000, 1), "100000"), ((42, 2), "21")])
def test_extreme_aspect_ratios_are_refused_before_decoding(size: tuple[int, int], ratio: str) -> None:
    data = encode(Image.new("1", size), "PNG")
    with pytest.raises(InvalidInputError) as caught:
        decode_image(data, max_pixels=LIMIT)
    assert caught.value.message == (f"image is {size[0]}x{size[1]} (aspect ratio {ratio}:1), over the 20:1 "
                                    "limit (CATALENS_MAX_ASPECT_RATIO)")


def test_aspect_ratio_limit_is_inclusive_and_a_parameter() -> None:
    assert decode_image(encode(Image.new("RGB", (40, 2)), "PNG"), max_pixels=LIMIT).size == (40, 2)
    with pytest.raises(InvalidInputError, match=r"aspect ratio 4:1\), over the 3:1 limit"):
        decode_image(encode(Image.new("RGB", (4, 16)), "PNG"), max_pixels=LIMIT, max_aspect=3)
    assert decode_image(encode(Image.new("RGB", (100, 1)), "PNG"), max_pixels=LIMIT, max_aspect=100).size == (100, 1)
