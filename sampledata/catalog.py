"""The sample catalog: generated products, their images and labelled query sets, written to disk.

write_sample_catalog is the single writer of sample catalogs (`catalens sample`, the demo,
the benchmarks and the tests all call it); the training code draws products and queries
from generate_products and build_queries without writing a catalog.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from sampledata import texts
from sampledata.world import (
    BRANDS,
    CANVAS,
    CATEGORIES,
    COLOURS,
    MATERIALS,
    PRICE_RANGES,
    ProductSpec,
    random_spec,
    render_product,
)

MARKER = ".complete"  # written last: its presence means every file of the catalog is there
IMAGE_QUALITY = 90
QUERY_IMAGE_SALT = 999_983  # image queries are other renders of a product than its catalog views


@dataclass
class SampleProduct:
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


def generate_products(n: int, seed: int, *, twin_share: float = 0.08) -> list[SampleProduct]:
    """Draw n products; about twin_share of them come as colour-swapped twin pairs."""
    rng = random.Random(seed)
    products: list[SampleProduct] = []
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


def _make_product(product_id: str, spec: ProductSpec, rng: random.Random) -> SampleProduct:
    brand = rng.choice(BRANDS)
    material = rng.choice(MATERIALS[spec.category])
    low, high = PRICE_RANGES[spec.category]
    price = round(math.exp(rng.uniform(math.log(low), math.log(high))), 2)
    title = texts.title(spec, rng, brand=brand, material=material)
    n_views = rng.choices([1, 2, 3], weights=[0.7, 0.2, 0.1])[0]
    return SampleProduct(product_id, spec, title, texts.description(spec, material, rng), brand,
                         price, material, n_views)


def image_seed(seed: int, product_index: int, view: int, salt: int = 0) -> int:
    """The render seed of one view of the product at product_index in the catalog drawn with seed."""
    return (seed * 1_000_003 + product_index * 7919 + view * 104_729 + salt) & 0x7FFFFFFF


# --- writing -----------------------------------------------------------------------------

RenderJob = tuple[ProductSpec, int, str]  # spec, render seed, path relative to the catalog folder


def _render_chunk(job: tuple[str, int, list[RenderJob]]) -> int:
    """Render and save a chunk of images (a process pool's unit of work); returns how many."""
    out, size, items = job
    for spec, seed, rel in items:
        render_product(spec, seed, size).save(Path(out) / rel, quality=IMAGE_QUALITY)
    return len(items)


def _render_all(out: Path, items: list[RenderJob], *, size: int, workers: int, progress: bool) -> None:
    """Every image, in this process or (workers > 1) in spawned processes: the same bytes either way."""
    from tqdm import tqdm

    with tqdm(total=len(items), desc="rendering", unit="image", disable=not progress) as bar:
        if workers <= 1:
            for item in items:
                bar.update(_render_chunk((str(out), size, [item])))
            return
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        chunk = max(1, min(200, -(-len(items) // (4 * workers))))
        jobs = [(str(out), size, items[i:i + chunk]) for i in range(0, len(items), chunk)]
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for done in pool.map(_render_chunk, jobs):
                bar.update(done)


def write_sample_catalog(out: Path, *, n: int, seed: int, image_size: int = CANVAS, n_queries: int = 300,
                         progress: bool = True, workers: int = 1, reuse: bool = False) -> Path:
    """Write catalog.csv, images/, queries/ and queries.jsonl under out; return the catalog path.

    The files are a pure function of (n, seed, image_size, n_queries), whatever `workers`
    (processes rendering the images). A marker is written last; with reuse=True a folder
    whose marker records the same parameters is returned as it is.
    """
    catalog = out / "catalog.csv"
    if reuse and catalog_complete(out, n=n, seed=seed, image_size=image_size, n_queries=n_queries):
        return catalog
    marker = out / MARKER
    marker.unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(exist_ok=True)
    products = generate_products(n, seed)
    items: list[RenderJob] = []
    for i, product in enumerate(products):
        for view in range(product.n_views):
            rel = f"images/{product.product_id}_{view}.jpg"
            items.append((product.spec, image_seed(seed, i, view), rel))
            product.images.append(rel)
    _render_all(out, items, size=image_size, workers=workers, progress=progress)
    _write_catalog_csv(catalog, products)
    queries = build_queries(products, seed=seed, n=n_queries, out=out, image_size=image_size)
    with open(out / "queries.jsonl", "w") as fh:
        for q in queries:
            fh.write(json.dumps(q) + "\n")
    params = {"n": n, "seed": seed, "image_size": image_size, "n_queries": n_queries}
    marker.write_text(json.dumps({**params, "images": len(items)}))
    return catalog


def catalog_complete(out: Path, *, n: int, seed: int, image_size: int = CANVAS, n_queries: int = 300) -> bool:
    """Whether out holds a finished catalog written with these parameters (its marker says so)."""
    if not (out / "catalog.csv").is_file():
        return False
    try:
        recorded = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return False
    wanted = {"n": n, "seed": seed, "image_size": image_size, "n_queries": n_queries}
    return isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in wanted.items())


def _write_catalog_csv(path: Path, products: list[SampleProduct]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["product_id", "title", "description", "image", "category", "brand",
                         "price", "currency", "availability", "main_colour", "secondary_colour", "pattern",
                         "material", "sku"])
        for p in products:
            # Model names and SKUs come from the id alone, after the world drew the product.
            model = model_code(p.product_id, p.brand)
            writer.writerow([p.product_id, f"{p.title} {model}", f"{p.description} Model {p.brand} {model}.",
                             "|".join(p.images), p.spec.category, p.brand, f"{p.price:.2f}", "USD",
                             availability(p.product_id), p.spec.main, p.spec.secondary or "", p.spec.pattern,
                             p.material, sku(p.product_id, p.brand)])


def _id_hash(product_id: str) -> bytes:
    import hashlib

    return hashlib.sha256(product_id.encode()).digest()


def model_code(product_id: str, brand: str) -> str:
    """The product's model name, e.g. "NO-4821": brand initials and four digits from the id's hash."""
    return f"{brand[:2].upper()}-{1000 + int.from_bytes(_id_hash(product_id)[1:3], 'big') % 9000}"


def sku(product_id: str, brand: str) -> str:
    """The product's SKU, e.g. "NOR-48213-7": unique per product, from the id (the world's stream is untouched)."""
    digest = _id_hash(product_id)
    return f"{brand[:3].upper()}-{int.from_bytes(digest[3:6], 'big') % 100000:05d}-{digest[6] % 10}"


def availability(product_id: str) -> str:
    """About one product in ten is out of stock; from the id's hash, so the world's random stream is untouched."""
    return "out_of_stock" if _id_hash(product_id)[0] < 26 else "in_stock"


def build_queries(products: list[SampleProduct], *, seed: int, n: int, out: Path,
                  image_size: int = CANVAS) -> list[dict]:
    """Labelled plain, colour-swap and image queries over a generated catalog (image queries saved under out)."""
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
                        "text": texts.plain_query(spec, rng, bare=False), "relevant": sorted(by_plain[key])})
    twins = [p for p in products if p.twin_of]
    for i, p in enumerate(twins[:n]):
        queries.append({"query_id": f"swap-{i:04d}", "set": "color_swap",
                        "text": texts.swap_query(p.spec, rng), "relevant": sorted(by_full[p.spec])})
    index_of = {p.product_id: i for i, p in enumerate(products)}
    picks = rng.sample(products, min(n, len(products)))
    (out / "queries").mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(picks):
        rel = f"queries/image-{i:04d}.jpg"
        render_product(p.spec, image_seed(seed, index_of[p.product_id], 0, salt=QUERY_IMAGE_SALT),
                       image_size).save(out / rel, quality=IMAGE_QUALITY)
        queries.append({"query_id": f"image-{i:04d}", "set": "image", "image": rel,
                        "relevant": sorted(by_full[p.spec])})
    # Later sets draw from their own streams, so adding one leaves the others as they were.
    queries += _chinese_queries(plain_keys[:n], by_plain, random.Random(seed + 2))
    queries += _bare_queries(products, n, random.Random(seed + 3))
    queries += _keyword_queries(products, n, random.Random(seed + 4))
    queries += _nomatch_queries(products, n, random.Random(seed + 5))
    queries += _mixed_queries(products, n, random.Random(seed + 6), seed=seed, out=out, image_size=image_size)
    return queries


def _keyword_queries(products: list[SampleProduct], n: int, rng: random.Random) -> list[dict]:
    """`keyword`: what shoppers type that is a word, not a picture: SKUs, model names, brand + category."""
    by_model: dict[str, list[str]] = {}
    by_brand_model: dict[tuple[str, str], list[str]] = {}
    by_brand_category: dict[tuple[str, str], list[str]] = {}
    for p in products:
        model = model_code(p.product_id, p.brand)
        by_model.setdefault(model, []).append(p.product_id)
        by_brand_model.setdefault((p.brand, model), []).append(p.product_id)
        by_brand_category.setdefault((p.brand, p.spec.category), []).append(p.product_id)
    queries = []
    for i, p in enumerate(rng.sample(products, min(n, len(products)))):
        model = model_code(p.product_id, p.brand)
        kind = rng.choice(("sku", "sku", "model", "brand_model", "brand_category"))
        if kind == "sku":
            text, relevant = sku(p.product_id, p.brand), [p.product_id]
        elif kind == "model":
            text, relevant = model, by_model[model]
        elif kind == "brand_model":
            text, relevant = f"{p.brand} {model}", by_brand_model[(p.brand, model)]
        else:
            text = f"{p.brand} {rng.choice(texts.CATEGORY_SYNONYMS[p.spec.category])}"
            relevant = by_brand_category[(p.brand, p.spec.category)]
        queries.append({"query_id": f"keyword-{i:04d}", "set": "keyword", "kind": kind, "text": text,
                         "relevant": sorted(relevant)})
    return queries


OFF_CATALOG = ("laptop charger", "garden hose", "wireless headphones", "bicycle helmet", "dog food", "car tyre",
               "smartphone case", "printer ink", "tennis racket", "electric drill", "yoga mat", "board game")


def _nomatch_queries(products: list[SampleProduct], n: int, rng: random.Random) -> list[dict]:
    """`nomatch`: attribute combinations no product has, and things the catalog does not sell.

    Graded: for "red striped t-shirt" with no such product, striped t-shirts with red in them
    (2) and red t-shirts (1) count; other categories do not. For a colour pairing no product
    has, the same category, main colour and pattern (2) and the same category and main colour (1).
    """
    plain = {(p.spec.category, p.spec.main, p.spec.pattern) for p in products}
    full = {p.spec for p in products}
    absent_plain = sorted((c, m, pat) for c in CATEGORIES for m in COLOURS for pat in ("striped", "dotted", "checkered")
                          if (c, m, pat) not in plain)
    absent_full = sorted({ProductSpec(c, m, s, pat) for (c, m, pat) in plain if pat != "solid" for s in COLOURS
                          if s != m and ProductSpec(c, m, s, pat) not in full}, key=str)
    rng.shuffle(absent_plain)
    rng.shuffle(absent_full)
    budget = max(1, n // 3)
    queries: list[dict] = []

    def add(text: str, grades: dict[str, int]) -> None:
        queries.append({"query_id": f"nomatch-{len(queries):04d}", "set": "nomatch", "text": text,
                        "relevant": sorted(grades), "grades": grades})

    for category, colour, pattern in absent_plain[:budget]:
        grades = {p.product_id: 2 if (p.spec.pattern == pattern and p.spec.secondary == colour) else 1
                  for p in products if p.spec.category == category
                  and ((p.spec.pattern == pattern and p.spec.secondary == colour) or p.spec.main == colour)}
        add(texts.plain_query(ProductSpec(category, colour, None, pattern), rng, bare=False), grades)
    for spec in absent_full[:max(1, n // 6)]:
        grades = {p.product_id: 2 if p.spec.pattern == spec.pattern else 1 for p in products
                  if p.spec.category == spec.category and p.spec.main == spec.main}
        add(texts.swap_query(spec, rng), grades)
    for thing in OFF_CATALOG[:budget]:
        add(thing, {})
    return queries


def _mixed_queries(products: list[SampleProduct], n: int, rng: random.Random, *, seed: int, out: Path,
                   image_size: int) -> list[dict]:
    """`mixed`: a photo of a catalog product and another colour in words; the relevant products are
    the variants with the photo's category and pattern in that colour."""
    by_look: dict[tuple[str, str, str], list[str]] = {}
    for p in products:
        by_look.setdefault((p.spec.category, p.spec.pattern, p.spec.main), []).append(p.product_id)
    index_of = {p.product_id: i for i, p in enumerate(products)}
    candidates = [(p, colour) for p in products for colour in COLOURS
                  if colour != p.spec.main and (p.spec.category, p.spec.pattern, colour) in by_look]
    queries = []
    for i, (p, colour) in enumerate(rng.sample(candidates, min(n // 3, len(candidates)))):
        rel = f"queries/mixed-{i:04d}.jpg"
        render_product(p.spec, image_seed(seed, index_of[p.product_id], 0, salt=QUERY_IMAGE_SALT + 1),
                       image_size).save(out / rel, quality=IMAGE_QUALITY)
        queries.append({"query_id": f"mixed-{i:04d}", "set": "mixed", "image": rel,
                        "parts": [{"image": rel}, {"text": rng.choice(texts.COLOUR_SYNONYMS[colour])}],
                        "relevant": sorted(by_look[(p.spec.category, p.spec.pattern, colour)])})
    return queries


def _chinese_queries(keys: list[tuple[str, str, str]], by_plain: dict[tuple[str, str, str], list[str]],
                     rng: random.Random) -> list[dict]:
    """`plain_zh`: the plain set's products, asked for in Chinese."""
    return [{"query_id": f"plain_zh-{i:04d}", "set": "plain_zh",
             "text": texts.plain_query_zh(ProductSpec(key[0], key[1], None, key[2]), rng),
             "relevant": sorted(by_plain[key])} for i, key in enumerate(keys)]


BARE_GRADES = {"solid": 2, "patterned": 1}  # a bare "<colour> <category>" is answered best by a solid one


def _bare_queries(products: list[SampleProduct], n: int, rng: random.Random) -> list[dict]:
    """`bare`: "<colour> <category>"; every product of that main colour and category is relevant, solid ones most."""
    by_key: dict[tuple[str, str], list[SampleProduct]] = {}
    for p in products:
        by_key.setdefault((p.spec.category, p.spec.main), []).append(p)
    # Only keys with a patterned product test what the set is for: patterned ones must not be missed.
    keys = sorted(k for k, ps in by_key.items() if any(p.spec.pattern != "solid" for p in ps))
    rng.shuffle(keys)
    queries = []
    for i, (category, colour) in enumerate(keys[:n]):
        grades = {p.product_id: BARE_GRADES["solid" if p.spec.pattern == "solid" else "patterned"]
                  for p in by_key[(category, colour)]}
        queries.append({"query_id": f"bare-{i:04d}", "set": "bare", "text": texts.bare_query(category, colour, rng),
                        "relevant": sorted(grades), "grades": grades})
    return queries
