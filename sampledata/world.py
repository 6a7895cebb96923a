"""The generated product world: what a product is and what a picture of it looks like.

Colours, patterns, categories with their materials, price ranges and brands, the product
identity (ProductSpec) and the renderer. Everything is a pure function of a seed, so the
sample catalog, the training data of the bundled models and the benchmark catalogs are
reproducible on any machine. Words for these things live in sampledata.texts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CANVAS = 256

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 220, 40),
    "green": (40, 160, 60),
    "teal": (20, 150, 150),
    "blue": (40, 90, 225),
    "navy": (20, 30, 100),
    "purple": (130, 50, 170),
    "pink": (245, 130, 185),
    "brown": (120, 70, 30),
    "black": (25, 25, 25),
    "white": (250, 250, 250),
    "grey": (135, 135, 135),
}
PATTERNS = ["solid", "striped", "dotted", "checkered"]
# The order is part of the world: random_spec draws by index, so it fixes every catalog.
CATEGORIES = ["t-shirt", "mug", "shoe", "bag", "lamp", "chair", "bottle", "hat", "watch", "sofa", "vase", "table"]
MATERIALS: dict[str, list[str]] = {
    "t-shirt": ["cotton", "organic cotton", "linen"],
    "mug": ["ceramic", "porcelain", "stoneware"],
    "shoe": ["leather", "canvas", "suede"],
    "bag": ["leather", "canvas", "nylon"],
    "lamp": ["metal", "glass", "ceramic"],
    "chair": ["wooden", "plastic", "upholstered"],
    "bottle": ["steel", "glass", "plastic"],
    "hat": ["wool", "cotton", "straw"],
    "watch": ["steel", "titanium", "leather strap"],
    "sofa": ["velvet", "linen", "leather"],
    "vase": ["ceramic", "glass", "stoneware"],
    "table": ["oak", "walnut", "metal"],
}
PRICE_RANGES: dict[str, tuple[float, float]] = {
    "t-shirt": (9, 45), "mug": (5, 30), "shoe": (35, 180), "bag": (20, 250),
    "lamp": (25, 160), "chair": (40, 300), "bottle": (8, 45), "hat": (10, 60),
    "watch": (40, 600), "sofa": (300, 2500), "vase": (12, 120), "table": (60, 700),
}
BRANDS = [
    "Acme", "Northwind", "Lumen", "Oakridge", "Pebble", "Kestrel", "Solstice", "Marlow",
    "Tandem", "Fjord", "Copperleaf", "Brightside", "Halcyon", "Umber", "Vantage",
]


@dataclass(frozen=True)
class ProductSpec:
    """The visual identity of a product: what an image of it shows."""

    category: str
    main: str
    secondary: str | None
    pattern: str


def random_spec(rng: random.Random, *, category: str | None = None) -> ProductSpec:
    """Draw a product identity; a quarter are solid (no secondary colour)."""
    pattern = rng.choice(PATTERNS)
    main = rng.choice(list(COLOURS))
    secondary = None if pattern == "solid" else rng.choice([c for c in COLOURS if c != main])
    return ProductSpec(category or rng.choice(CATEGORIES), main, secondary, pattern)


# --- drawing -------------------------------------------------------------------------

ShapeFn = Callable[[ImageDraw.ImageDraw], None]


def _tshirt(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(88, 50), (110, 62), (146, 62), (168, 50), (218, 86), (196, 120), (176, 106),
               (176, 212), (80, 212), (80, 106), (60, 120), (38, 86)], fill=255)


def _mug(d: ImageDraw.ImageDraw) -> None:
    d.rounded_rectangle((58, 66, 170, 206), radius=14, fill=255)
    d.ellipse((150, 96, 214, 176), outline=255, width=16)


def _shoe(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(34, 176), (40, 120), (80, 112), (120, 136), (196, 146), (222, 164),
               (224, 192), (34, 192)], fill=255)
    d.rectangle((34, 186, 224, 204), fill=255)


def _bag(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(62, 102), (194, 102), (214, 214), (42, 214)], fill=255)
    d.arc((86, 40, 170, 140), start=180, end=360, fill=255, width=12)


def _lamp(d: ImageDraw.ImageDraw) -> None:
    d.polygon([(92, 36), (164, 36), (198, 118), (58, 118)], fill=255)
    d.rectangle((120, 118, 136, 196), fill=255)
    d.ellipse((74, 186, 182, 220), fill=255)


def _chair(d: ImageDraw.ImageDraw) -> None:
    d.rectangle((74, 36, 182, 124), fill=255)
    d.rectangle((60, 124, 196, 152), fill=255)
    for x in (64, 178):
        d.rectangle((x, 152, x + 14, 222), fill=255)


def _bottle(d: ImageDraw.ImageDraw) -> None:
    d.rounded_rectangle((90, 86, 166, 224), radius=18, fill=255)
    d.polygon([(90, 92), (112, 56), (144, 56), (166, 92)], fill=255)
    d.rectangle((112, 30, 144, 58), fill=255)


def _hat(d: ImageDraw.ImageDraw) -> None:
    d.pieslice((66, 62, 190, 206), start=180, end=360, fill=255)
    d.ellipse((30, 124, 226, 168), fill=255)


def _watch(d: ImageDraw.ImageDraw) -> None:
    d.rectangle((104, 20, 152, 236), fill=255)
    d.ellipse((72, 72, 184, 184), fill=255)


def _sofa(d: ImageDraw.ImageDraw) -> None:
    d.rounded_rectangle((48, 70, 208, 150), radius=12, fill=255)
    d.rounded_rectangle((24, 110, 64, 196), radius=10, fill=255)
    d.rounded_rectangle((192, 110, 232, 196), radius=10, fill=255)
    d.rectangle((40, 140, 216, 190), fill=255)
    for x in (44, 200):
        d.rectangle((x, 190, x + 12, 212), fill=255)


def _vase(d: ImageDraw.ImageDraw) -> None:
    d.ellipse((64, 96, 192, 226), fill=255)
    d.polygon([(104, 110), (110, 46), (98, 32), (158, 32), (146, 46), (152, 110)], fill=255)


def _table(d: ImageDraw.ImageDraw) -> None:
    d.rectangle((30, 84, 226, 110), fill=255)
    d.rectangle((46, 110, 62, 214), fill=255)
    d.rectangle((194, 110, 210, 214), fill=255)
    d.rectangle((62, 136, 194, 148), fill=255)


SHAPES: dict[str, ShapeFn] = {
    "t-shirt": _tshirt, "mug": _mug, "shoe": _shoe, "bag": _bag, "lamp": _lamp,
    "chair": _chair, "bottle": _bottle, "hat": _hat, "watch": _watch, "sofa": _sofa,
    "vase": _vase, "table": _table,
}


def _pattern_layer(pattern: str, rng: random.Random) -> Image.Image:
    """A mask that is 255 where the secondary colour shows."""
    layer = Image.new("L", (CANVAS, CANVAS), 0)
    d = ImageDraw.Draw(layer)
    period = rng.randint(34, 44)
    offset = rng.randint(0, period)
    # The secondary colour always covers the smaller area (about a third), as on real
    # products: with equal areas, a colour-swapped twin would be the same picture.
    if pattern == "striped":
        half = period // 3
        if rng.random() < 0.5:
            for y in range(-period + offset, CANVAS, period):
                d.rectangle((0, y, CANVAS, y + half), fill=255)
        else:  # diagonal stripes
            for x in range(-CANVAS + offset, CANVAS * 2, period):
                d.polygon([(x, 0), (x + half, 0), (x + half - CANVAS, CANVAS),
                           (x - CANVAS, CANVAS)], fill=255)
    elif pattern == "dotted":
        r = period // 4
        for row, y in enumerate(range(offset % period, CANVAS + period, period)):
            shift = period // 2 if row % 2 else 0
            for x in range(shift + offset % period - period, CANVAS + period, period):
                d.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif pattern == "checkered":
        inset = period // 8
        for i, y in enumerate(range(-offset, CANVAS, period)):
            for j, x in enumerate(range(-offset, CANVAS, period)):
                if (i + j) % 2 == 0:
                    d.rectangle((x + inset, y + inset, x + period - 1 - inset, y + period - 1 - inset), fill=255)
    return layer


def render_product(spec: ProductSpec, seed: int, size: int = CANVAS) -> Image.Image:
    """Draw one view of a product; the seed picks background, placement, pattern phase and noise."""
    rng = random.Random(seed)
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    SHAPES[spec.category](ImageDraw.Draw(mask))
    obj = Image.new("RGB", (CANVAS, CANVAS), _jitter_colour(COLOURS[spec.main], rng))
    if spec.pattern != "solid" and spec.secondary:
        second = Image.new("RGB", (CANVAS, CANVAS), _jitter_colour(COLOURS[spec.secondary], rng))
        obj.paste(second, (0, 0), _pattern_layer(spec.pattern, rng))
    # A box blur thresholded at 1 dilates the mask far faster than a MaxFilter.
    outline = mask.filter(ImageFilter.BoxBlur(3)).point(lambda v: 255 if v else 0)
    rgba = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    rgba.paste((55, 55, 55, 255), (0, 0), outline)
    rgba.paste(obj.convert("RGBA"), (0, 0), mask)
    if rng.random() < 0.5:
        rgba = rgba.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    scale = rng.uniform(0.72, 1.0)
    side = int(CANVAS * scale)
    rgba = rgba.resize((side, side), Image.Resampling.BILINEAR)
    rgba = rgba.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, expand=False)
    bg_rgb = tuple(rng.randint(205, 250) for _ in range(3))
    canvas = Image.new("RGB", (CANVAS, CANVAS), bg_rgb)
    slack = CANVAS - side
    canvas.paste(rgba, (rng.randint(0, slack), rng.randint(0, slack)), rgba)
    pixels = np.asarray(canvas, dtype=np.float32)
    noise = np.random.default_rng(seed).standard_normal(pixels.shape, dtype=np.float32)
    pixels += noise * rng.uniform(2, 9)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image if size == CANVAS else image.resize((size, size), Image.Resampling.BICUBIC)


def _jitter_colour(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (max(0, min(255, c + rng.randint(-14, 14))) for c in rgb)
    return r, g, b
