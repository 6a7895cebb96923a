"""The generated product world: procedural products, their images, texts and labelled queries.

Everything here is a pure function of a seed, so the sample catalog, the training data of
the bundled model and the benchmark catalogs are reproducible on any machine.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
COLOUR_SYNONYMS: dict[str, list[str]] = {
    "red": ["red", "scarlet", "crimson"],
    "orange": ["orange", "tangerine"],
    "yellow": ["yellow", "lemon"],
    "green": ["green", "emerald"],
    "teal": ["teal", "turquoise"],
    "blue": ["blue", "cobalt"],
    "navy": ["navy", "navy blue", "dark blue"],
    "purple": ["purple", "violet"],
    "pink": ["pink", "rose"],
    "brown": ["brown", "chocolate"],
    "black": ["black", "jet black"],
    "white": ["white", "snow white"],
    "grey": ["grey", "gray"],
}

PATTERNS = ["solid", "striped", "dotted", "checkered"]
PATTERN_ADJECTIVES: dict[str, list[str]] = {
    "solid": ["solid", "plain"],
    "striped": ["striped", "stripy"],
    "dotted": ["dotted", "polka dot", "spotted"],
    "checkered": ["checkered", "checked", "chequered"],
}
PATTERN_NOUNS: dict[str, list[str]] = {
    "striped": ["stripes"],
    "dotted": ["dots", "polka dots", "spots"],
    "checkered": ["checks", "check squares"],
}

CATEGORY_SYNONYMS: dict[str, list[str]] = {
    "t-shirt": ["t-shirt", "tee", "tshirt"],
    "mug": ["mug", "coffee mug", "cup"],
    "shoe": ["shoe", "sneaker", "trainer"],
    "bag": ["bag", "handbag", "tote bag"],
    "lamp": ["lamp", "desk lamp", "table lamp"],
    "chair": ["chair", "dining chair", "seat"],
    "bottle": ["bottle", "water bottle", "flask"],
    "hat": ["hat", "bucket hat"],
    "watch": ["watch", "wristwatch"],
    "sofa": ["sofa", "couch", "settee"],
    "vase": ["vase", "flower vase"],
    "table": ["table", "side table"],
}
CATEGORIES = list(CATEGORY_SYNONYMS)
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
SIZES = ["S", "M", "L", "XL"]


@dataclass(frozen=True)
class ProductSpec:
    """The visual identity of a product: what an image of it shows."""

    category: str
    main: str
    secondary: str | None
    pattern: str


@dataclass
class WorldProduct:
    """One generated catalog product with its texts and attributes."""

    product_id: str
    spec: ProductSpec
    title: str
    description: str
    brand: str
    price: float
    material: str
    n_views: int
    twin_of: str | None = None
    images: list[str] = field(default_factory=list)


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
    canvas = Image.new("RGB", (CANVAS, CANVAS), bg_rgb)  # type: ignore[arg-type]
    slack = CANVAS - side
    canvas.paste(rgba, (rng.randint(0, slack), rng.randint(0, slack)), rgba)
    pixels = np.asarray(canvas, dtype=np.float32)
    noise = np.random.default_rng(seed).standard_normal(pixels.shape, dtype=np.float32)
    pixels += noise * rng.uniform(2, 9)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image if size == CANVAS else image.resize((size, size), Image.Resampling.BICUBIC)


def _jitter_colour(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-14, 14))) for c in rgb)  # type: ignore[return-value]


# --- texts -----------------------------------------------------------------------------


def random_spec(rng: random.Random, *, category: str | None = None) -> ProductSpec:
    """Draw a product identity; a quarter are solid (no secondary colour)."""
    pattern = rng.choice(PATTERNS)
    main = rng.choice(list(COLOURS))
    secondary = None if pattern == "solid" else rng.choice([c for c in COLOURS if c != main])
    return ProductSpec(category or rng.choice(CATEGORIES), main, secondary, pattern)


def describe(spec: ProductSpec, rng: random.Random, *, brand: str = "", material: str = "") -> str:
    """One caption of a product, from a template chosen at random (used for titles and training)."""
    cat = rng.choice(CATEGORY_SYNONYMS[spec.category])
    main = rng.choice(COLOUR_SYNONYMS[spec.main])
    adj = rng.choice(PATTERN_ADJECTIVES[spec.pattern])
    brand_prefix = f"{brand} " if brand else ""
    material = f"{material} " if material else ""
    if spec.pattern == "solid" or spec.secondary is None:
        templates = [
            f"{brand_prefix}{main} {material}{cat}",
            f"{brand_prefix}{adj} {main} {material}{cat}",
            f"{main} {cat}",
            f"{adj} {main} {cat}",
            f"{material}{cat} in {main}",
        ]
    else:
        second = rng.choice(COLOUR_SYNONYMS[spec.secondary])
        noun = rng.choice(PATTERN_NOUNS[spec.pattern])
        templates = [
            f"{brand_prefix}{main} {material}{cat} with {second} {noun}",
            f"{brand_prefix}{main} and {second} {adj} {cat}",
            f"{main} {adj} {cat}",
            f"{adj} {main} {cat}",
            f"{main} {cat} with {second} {noun}",
            f"{material}{cat} in {main} with {second} {noun}",
        ]
    return " ".join(rng.choice(templates).split())


def describe_full(spec: ProductSpec, rng: random.Random) -> str:
    """A caption naming category, both colours in their roles and the pattern (training)."""
    cat = rng.choice(CATEGORY_SYNONYMS[spec.category])
    main = rng.choice(COLOUR_SYNONYMS[spec.main])
    adj = rng.choice(PATTERN_ADJECTIVES[spec.pattern])
    if spec.secondary is None:
        return f"{adj} {main} {cat}"
    second = rng.choice(COLOUR_SYNONYMS[spec.secondary])
    noun = rng.choice(PATTERN_NOUNS[spec.pattern])
    return rng.choice([f"{main} {adj} {cat} with {second} {noun}", f"{adj} {cat} in {main} with {second} {noun}",
                       f"{main} {cat} with {second} {noun}", f"{main} and {second} {adj} {cat}"])


def plain_query(spec: ProductSpec, rng: random.Random) -> str:
    """A shopper's attribute query: category + main colour + pattern, paraphrased."""
    cat = rng.choice(CATEGORY_SYNONYMS[spec.category])
    main = rng.choice(COLOUR_SYNONYMS[spec.main])
    adj = rng.choice(PATTERN_ADJECTIVES[spec.pattern])
    if spec.pattern == "solid":
        forms = [f"{adj} {main} {cat}", f"{main} {cat}", f"a {main} {cat} with no pattern"]
    else:
        noun = rng.choice(PATTERN_NOUNS[spec.pattern])
        forms = [f"{main} {adj} {cat}", f"{adj} {main} {cat}", f"{main} {cat} with {noun}",
                 f"{adj} {cat} in {main}"]
    return rng.choice(forms)


def swap_query(spec: ProductSpec, rng: random.Random) -> str:
    """Names both colours with their roles, so only one of two swapped twins matches."""
    cat = rng.choice(CATEGORY_SYNONYMS[spec.category])
    second = COLOUR_SYNONYMS[spec.secondary or spec.main][0]
    noun = rng.choice(PATTERN_NOUNS[spec.pattern])
    return f"{COLOUR_SYNONYMS[spec.main][0]} {cat} with {second} {noun}"


def _description(spec: ProductSpec, material: str, rng: random.Random) -> str:
    cat = spec.category
    if spec.pattern == "solid" or spec.secondary is None:
        look = f"in solid {spec.main}"
    else:
        look = f"in {spec.main} with {spec.secondary} {PATTERN_NOUNS[spec.pattern][0]}"
    extras = rng.choice([
        "Built to last.", "A customer favourite.", "Easy to clean.", "Ships in two days.",
        "Designed in house.", "Limited edition.",
    ])
    return f"A {material} {cat} {look}. {extras}"


# --- the catalog -------------------------------------------------------------------------


def generate_products(n: int, seed: int, *, twin_share: float = 0.08) -> list[WorldProduct]:
    """Draw n products; about twin_share of them come as colour-swapped twin pairs."""
    rng = random.Random(seed)
    products: list[WorldProduct] = []
    while len(products) < n:
        idx = len(products)
        spec = random_spec(rng)
        twin = spec.pattern != "solid" and rng.random() < twin_share / 2 and len(products) < n - 1
        products.append(_make_product(f"P{seed:03d}-{idx:06d}", spec, rng))
        if twin:
            swapped = ProductSpec(spec.category, spec.secondary or spec.main, spec.main, spec.pattern)
            twin_product = _make_product(f"P{seed:03d}-{idx + 1:06d}", swapped, rng)
            twin_product.twin_of = products[-1].product_id
            products[-1].twin_of = twin_product.product_id
            products.append(twin_product)
    return products


def _make_product(product_id: str, spec: ProductSpec, rng: random.Random) -> WorldProduct:
    brand = rng.choice(BRANDS)
    material = rng.choice(MATERIALS[spec.category])
    low, high = PRICE_RANGES[spec.category]
    price = round(math.exp(rng.uniform(math.log(low), math.log(high))), 2)
    title = describe(spec, rng, brand=brand, material=material)
    title = title[0].upper() + title[1:]
    n_views = rng.choices([1, 2, 3], weights=[0.7, 0.2, 0.1])[0]
    return WorldProduct(product_id, spec, title, _description(spec, material, rng), brand,
                        price, material, n_views)


def _image_seed(seed: int, product_index: int, view: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + product_index * 7919 + view * 104_729 + salt) & 0x7FFFFFFF


def write_sample_catalog(out: Path, *, n: int = 2000, seed: int = 7, image_size: int = CANVAS,
                         n_queries: int = 300, progress: bool = True) -> Path:
    """Write catalog.csv, images/ and queries.jsonl under out; return the catalog path."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    (out / "queries").mkdir(exist_ok=True)
    products = generate_products(n, seed)
    for i, product in enumerate(tqdm(products, desc="rendering", unit="product", disable=not progress)):
        for view in range(product.n_views):
            rel = f"images/{product.product_id}_{view}.jpg"
            render_product(product.spec, _image_seed(seed, i, view), image_size).save(
                out / rel, quality=90)
            product.images.append(rel)
    catalog = out / "catalog.csv"
    _write_catalog_csv(catalog, products)
    queries = build_queries(products, seed=seed, n=n_queries, out=out, image_size=image_size)
    with open(out / "queries.jsonl", "w") as fh:
        for q in queries:
            fh.write(json.dumps(q) + "\n")
    return catalog


def _write_catalog_csv(path: Path, products: list[WorldProduct]) -> None:
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["product_id", "title", "description", "image", "category", "brand",
                         "price", "currency", "main_colour", "secondary_colour", "pattern",
                         "material"])
        for p in products:
            writer.writerow([p.product_id, p.title, p.description, "|".join(p.images),
                             p.spec.category, p.brand, f"{p.price:.2f}", "USD", p.spec.main,
                             p.spec.secondary or "", p.spec.pattern, p.material])


def build_queries(products: list[WorldProduct], *, seed: int, n: int, out: Path,
                  image_size: int = CANVAS) -> list[dict]:
    """Labelled plain, colour-swap and image queries over a generated catalog."""
    rng = random.Random(seed + 1)
    by_plain: dict[tuple[str, str, str], list[str]] = {}
    by_full: dict[ProductSpec, list[str]] = {}
    for p in products:
        by_plain.setdefault((p.spec.category, p.spec.main, p.spec.pattern), []).append(p.product_id)
        by_full.setdefault(p.spec, []).append(p.product_id)
    queries: list[dict] = []
    plain_keys = sorted(by_plain)
    rng.shuffle(plain_keys)
    for i, key in enumerate(plain_keys[:n]):
        spec = ProductSpec(key[0], key[1], None, key[2])
        queries.append({"query_id": f"plain-{i:04d}", "set": "plain",
                        "text": plain_query(spec, rng), "relevant": sorted(by_plain[key])})
    twins = [p for p in products if p.twin_of]
    for i, p in enumerate(twins[:n]):
        queries.append({"query_id": f"swap-{i:04d}", "set": "color_swap",
                        "text": swap_query(p.spec, rng), "relevant": sorted(by_full[p.spec])})
    index_of = {p.product_id: i for i, p in enumerate(products)}
    picks = rng.sample(products, min(n, len(products)))
    (out / "queries").mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(picks):
        rel = f"queries/image-{i:04d}.jpg"
        render_product(p.spec, _image_seed(seed, index_of[p.product_id], 0, salt=999_983),
                       image_size).save(out / rel, quality=90)
        queries.append({"query_id": f"image-{i:04d}", "set": "image", "image": rel,
                        "relevant": sorted(by_full[p.spec])})
    return queries


def iter_training_pairs(seed: int) -> Iterator[tuple[ProductSpec, int, str]]:
    """An endless stream of (spec, image seed, caption) for training; disjoint from catalog seeds."""
    rng = random.Random(seed)
    while True:
        spec = random_spec(rng)
        form = rng.random()
        if form < 0.35:
            caption = plain_query(spec, rng)
        elif form < 0.55 and spec.secondary:
            caption = swap_query(spec, rng)
        else:
            caption = describe(spec, rng, brand=rng.choice(BRANDS) if rng.random() < 0.3 else "",
                               material=rng.choice(MATERIALS[spec.category]) if rng.random() < 0.3 else "")
        yield spec, rng.getrandbits(31), caption


def spec_as_dict(spec: ProductSpec) -> dict:
    return asdict(spec)
