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
from sampledata.world import BRANDS, CANVAS, MATERIALS, PRICE_RANGES, ProductSpec, random_spec, render_product

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
                         "material"])
        for p in products:
            writer.writerow([p.product_id, p.title, p.description, "|".join(p.images),
                             p.spec.category, p.brand, f"{p.price:.2f}", "USD", availability(p.product_id), p.spec.main,
                             p.spec.secondary or "", p.spec.pattern, p.material])


def availability(product_id: str) -> str:
    """About one product in ten is out of stock; from the id's hash, so the world's random stream is untouched."""
    import hashlib

    return "out_of_stock" if hashlib.sha256(product_id.encode()).digest()[0] < 26 else "in_stock"


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
                        "text": texts.plain_query(spec, rng), "relevant": sorted(by_plain[key])})
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
    return queries
