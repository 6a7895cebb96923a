"""`catalens bench`: indexing throughput, query latency under load, ANN recall/QPS (issue 7).

Three commands, each printing one JSON object with --json and writing JSON + a PNG plot
into --out (default bench-results/), with the machine named:

  bench index   end-to-end indexing images/s next to two ceilings measured in the same
                run with the same model, batch size and threads: model-only (pre-decoded
                tensors) and decode-only (read + hash + decode + thumbnail + preprocess).
  bench query   a real `catalens serve` subprocess driven over HTTP by this process
                (httpx, asyncio, C closed-loop clients for T seconds): QPS and latency
                percentiles for text, image and similar-items search.
  bench ann     FAISS factories on clustered synthetic vectors: build time, bytes per
                vector, recall@10 against exact search, single-query and batch QPS.

Generated catalogs and query indexes are cached under --work-dir (default
$CATALENS_BENCH_DIR or ~/.cache/catalens/bench) and reused by later runs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catalens.config import DEFAULT_MODEL, Settings
from catalens.errors import CatalensError

DEFAULT_OUT = Path("bench-results")
CATALOG_SEED = 101  # bench catalogs are their own world, disjoint from the sample (7) and tests
RECALL_TARGET = 0.95


class BenchError(CatalensError):
    code, http_status = "bench_failed", 500


# --- shared helpers ------------------------------------------------------------------------


def log(args: argparse.Namespace, message: str) -> None:
    """Progress goes to stderr, so stdout stays one JSON object under --json."""
    if not getattr(args, "quiet", False):
        print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on: cores, CPU model, memory, library versions."""
    cpu_model, flags = "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu_model == "unknown":
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "simd": [f for f in ("avx2", "avx512f", "fma", "neon") if f in flags],
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for name in ("torch", "faiss", "open_clip", "numpy"):
        with contextlib.suppress(Exception):
            info[name] = __import__(name).__version__
    return info


def set_threads(threads: int) -> None:
    """Torch and FAISS threads, set explicitly (never left to the libraries' defaults)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def model_slug(model: str) -> str:
    name = Path(model).name if ("/" in model or os.sep in model) else model
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def work_dir(args: argparse.Namespace) -> Path:
    if args.work_dir:
        return Path(args.work_dir).expanduser()
    if os.environ.get("CATALENS_BENCH_DIR"):
        return Path(os.environ["CATALENS_BENCH_DIR"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "catalens" / "bench"


def write_result(args: argparse.Namespace, name: str, data: dict[str, Any],
                 plot: Callable[[dict[str, Any], Path], None]) -> dict[str, Any]:
    """<out>/<name>.json and, unless --no-plot, <out>/<name>.png; records the paths in data."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / f"{name}.json")}
    if not args.no_plot:
        try:
            plot(data, out / f"{name}.png")
            files["png"] = str(out / f"{name}.png")
        except ImportError:
            log(args, "matplotlib is not installed (pip install 'catalens[bench]'): no plot written")
    data["files"] = files
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return data


def print_result(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _machine_line(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    return f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores"


# --- generated catalogs --------------------------------------------------------------------


def _render_chunk(job: tuple[str, list[tuple[Any, int, str]]]) -> int:
    from catalens.world import render_product

    out, items = job
    for spec, image_seed, rel in items:
        render_product(spec, image_seed).save(Path(out) / rel, quality=90)
    return len(items)


def generate_catalog(out: Path, *, n: int, seed: int, workers: int = 1, n_queries: int = 300) -> Path:
    """The same files as catalens.world.write_sample_catalog, with images rendered in parallel.

    Reused when complete (a marker file is written last); returns the catalog path.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from catalens import world

    catalog = out / "catalog.csv"
    marker = out / ".complete"
    if marker.is_file() and catalog.is_file():
        return catalog
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    products = world.generate_products(n, seed)
    items: list[tuple[Any, int, str]] = []
    for i, product in enumerate(products):
        for view in range(product.n_views):
            rel = f"images/{product.product_id}_{view}.jpg"
            items.append((product.spec, world._image_seed(seed, i, view), rel))
            product.images.append(rel)
    chunk = max(1, min(200, -(-len(items) // (4 * max(1, workers)))))
    jobs = [(str(out), items[i:i + chunk]) for i in range(0, len(items), chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_render_chunk, jobs))
    else:
        for job in jobs:
            _render_chunk(job)
    world._write_catalog_csv(catalog, products)
    queries = world.build_queries(products, seed=seed, n=n_queries, out=out)
    with open(out / "queries.jsonl", "w") as fh:
        for q in queries:
            fh.write(json.dumps(q) + "\n")
    marker.write_text(json.dumps({"n": n, "seed": seed, "images": len(items)}))
    return catalog


def ensure_catalog(args: argparse.Namespace, n: int) -> Path:
    out = work_dir(args) / f"catalog-n{n}-s{args.seed}"
    if not (out / ".complete").is_file():
        workers = max(1, min(os.cpu_count() or 1, args.render_workers or os.cpu_count() or 1))
        log(args, f"generating a {n}-product catalog in {out} ({workers} render processes)")
        t0 = time.perf_counter()
        generate_catalog(out, n=n, seed=args.seed, workers=workers)
        log(args, f"catalog generated in {time.perf_counter() - t0:.1f}s")
    return out / "catalog.csv"


def catalog_images(catalog: Path) -> list[Path]:
    with open(catalog, newline="") as fh:
        return [catalog.parent / rel for row in csv.DictReader(fh) for rel in row["image"].split("|") if rel]


def with_random_weights(args: argparse.Namespace, settings: Settings) -> Settings:
    """An open_clip name without --pretrained: save one random init to a file both processes load.

    The build and the `catalens serve` subprocess then run the same weights (timing only;
    a random CLIP's results mean nothing).
    """
    from catalens.encoder import BUNDLED_DIR

    if settings.pretrained or (BUNDLED_DIR / settings.model).is_dir() or Path(settings.model).exists():
        return settings
    import open_clip
    import torch

    path = work_dir(args) / f"random-{model_slug(settings.model)}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(open_clip.create_model(settings.model).state_dict(), path)
    log(args, f"{settings.model} has no --pretrained: using random weights saved in {path} (timing only)")
    return settings.model_copy(update={"pretrained": str(path)})


def _load_encoder(settings: Settings):  # type: ignore[no-untyped-def]
    from catalens.encoder import ModelSpec, load_clip

    # allow_random: `--model ViT-B-32` without --pretrained measures the real architecture
    # (random weights are as fast as trained ones); results are meaningless, timings are not.
    return load_clip(ModelSpec(settings.model, settings.pretrained), device=settings.device, allow_random=True)


# --- bench index ---------------------------------------------------------------------------


def _timed_embedder(encoder, reranker=None):  # type: ignore[no-untyped-def]
    """An Embedder that adds the seconds spent inside each model call to pixel_s or text_s."""
    from indexer.embedder import Embedder

    def timed(name: str, counter: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return getattr(Embedder, name)(self, *args)
            finally:
                setattr(self, counter, getattr(self, counter) + time.perf_counter() - t0)
        return call

    methods = {name: timed(name, "pixel_s") for name in
               ("embed_pixels", "embed_pixels_with_features", "rerank_features")}
    TimedEmbedder = type("TimedEmbedder", (Embedder,), {
        "pixel_s": 0.0, "text_s": 0.0, **methods, "embed_texts": timed("embed_texts", "text_s")})
    return TimedEmbedder(encoder, reranker=reranker)


@contextlib.contextmanager
def _phase_timers(phases: dict[str, float]) -> Iterator[None]:
    """Time the builder's stages by wrapping its module functions for the duration of one build."""
    from unittest import mock

    from indexer import builder

    names = {"read_catalog": "_read_rows", "sync_metadata": "sync_products", "images": "_embed_images",
             "texts": "_embed_texts", "faiss_and_write": "write_version"}

    def timed(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[phase] = phases.get(phase, 0.0) + time.perf_counter() - t0
        return wrapper

    with contextlib.ExitStack() as stack:
        for phase, name in names.items():
            if hasattr(builder, name):
                stack.enter_context(mock.patch.object(builder, name, timed(phase, getattr(builder, name))))
        yield


def cmd_bench_index(args: argparse.Namespace, settings: Settings) -> int:
    import torch

    from indexer.builder import BuildOptions, build_index
    from indexer.reader import ImageJob, ImageReader

    threads = settings.torch_threads()
    workers = args.decode_workers or settings.decode_workers
    settings = settings.model_copy(update={"threads": threads, "decode_workers": workers})
    catalog = ensure_catalog(args, args.n)
    paths = catalog_images(catalog)
    set_threads(threads)
    log(args, f"loading model {settings.model}; torch/FAISS threads {threads}, decode workers {workers}, "
              f"batch {settings.batch_size}, {len(paths)} images")
    encoder = _load_encoder(settings)
    root = work_dir(args)
    root.mkdir(parents=True, exist_ok=True)

    # 1. decode-only ceiling: the pipeline's reader stage alone, same worker count, thumbnails written.
    bytes_per_image = 3 * 4 * encoder.image_size ** 2
    keep = max(4 * settings.batch_size, min(len(paths), int(args.model_only_mb * 2**20 // bytes_per_image)))
    with tempfile.TemporaryDirectory(dir=root, prefix="decode-") as tmp:
        reader = ImageReader(settings.model_copy(update={"index_dir": Path(tmp)}), images_root=None,
                             preprocess=encoder.preprocess, image_size=encoder.image_size,
                             is_cached=lambda digest: False)
        jobs = [ImageJob(i, str(p)) for i, p in enumerate(paths)]

        def read_one(job: ImageJob) -> Any:
            loaded = reader(job)
            if loaded.error:
                raise BenchError(f"cannot read {job.source}: {loaded.error}")
            return loaded.pixels if job.image_id < keep else None

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            t0 = time.perf_counter()
            decoded = list(pool.map(read_one, jobs))
            decode_s = time.perf_counter() - t0
    decode_ips = len(paths) / decode_s
    log(args, f"decode-only: {decode_ips:.1f} img/s")

    # 2. model-only ceiling: pre-decoded tensors through the image tower, same batch size.
    pixels = [p for p in decoded if p is not None]
    del decoded
    batches = [pixels[i:i + settings.batch_size] for i in range(0, len(pixels), settings.batch_size)]
    encoder.encode_pixels(torch.stack(batches[0]))  # warm-up, not timed
    t0 = time.perf_counter()
    for batch in batches:
        encoder.encode_pixels(torch.stack(batch))
    model_s = time.perf_counter() - t0
    model_ips = len(pixels) / model_s
    del pixels, batches
    log(args, f"model-only: {model_ips:.1f} img/s over {min(keep, len(paths))} images")

    # 3. end to end: a real `index build` (read, decode, preprocess, embed, write) into a fresh index.
    phases: dict[str, float] = {}
    embedder = _timed_embedder(encoder)
    with tempfile.TemporaryDirectory(dir=root, prefix="index-") as tmp:
        build_settings = settings.model_copy(update={"index_dir": Path(tmp)})
        with _phase_timers(phases):
            t0 = time.perf_counter()
            summary = build_index(build_settings, BuildOptions(catalog=catalog, progress=False), encoder=encoder,
                                  embedder=embedder)
            total_s = time.perf_counter() - t0
    if summary.images_failed or summary.embedded != len(paths):
        raise BenchError(f"the benchmark build embedded {summary.embedded} of {len(paths)} images "
                         f"({summary.images_failed} failed)")
    e2e_ips = summary.embedded / total_s
    image_s = phases.get("images", total_s)
    image_stage_ips = summary.embedded / image_s
    shared_bound = 1 / (1 / model_ips + 1 / decode_ips)
    data: dict[str, Any] = {
        "bench": "index",
        "model": settings.model,
        "model_id": encoder.model_id,
        "n": args.n,
        "images": len(paths),
        "end_to_end_ips": round(e2e_ips, 2),
        "model_only_ips": round(model_ips, 2),
        "decode_only_ips": round(decode_ips, 2),
        "image_stage_ips": round(image_stage_ips, 2),
        "end_to_end_vs_model_only": round(e2e_ips / model_ips, 3),
        "image_stage_vs_model_only": round(image_stage_ips / model_ips, 3),
        "end_to_end_vs_min_ceiling": round(e2e_ips / min(model_ips, decode_ips), 3),
        "shared_cpu_bound_ips": round(shared_bound, 2),
        "bottleneck": "model" if model_ips < decode_ips else "decode",
        "build_seconds": round(total_s, 2),
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "model_s_in_pipeline": {"images": round(embedder.pixel_s, 3), "texts": round(embedder.text_s, 3)},
        "texts_embedded": summary.texts_embedded,
        "rerank_features": settings.reranker if settings.rerank_features else None,
        "vectors": summary.vectors,
        "factory": summary.factory,
        "batch_size": settings.batch_size,
        "torch_threads": threads,
        "decode_workers": workers,
        "image_size": encoder.image_size,
        "dim": encoder.dim,
        "device": encoder.device,
        "catalog": str(catalog),
        "definitions": {
            "end_to_end_ips": "images / wall time of the whole `index build` (catalog read, metadata sync, "
                              "image read+hash+decode+thumbnail+preprocess+embed, cache and DB writes, "
                              "product-text embedding, FAISS build, version write + validation); model load excluded",
            "image_stage_ips": "images / wall time of the builder's image stage alone (read..embed..write)",
            "model_only_ips": "pre-decoded tensors through the image tower in batches of batch_size",
            "decode_only_ips": "the reader stage alone (read, sha256, decode, thumbnail, preprocess) "
                               "with decode_workers threads",
            "shared_cpu_bound_ips": "1 / (1/model_only + 1/decode_only): the ceiling when both stages "
                                    "compete for the same cores",
        },
        "machine": machine_info(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    name = f"index-{model_slug(settings.model)}-n{args.n}"
    write_result(args, name, data, plot_index)
    text = (f"bench index: {settings.model}, {len(paths)} images ({args.n} products), batch {settings.batch_size}, "
            f"{threads} torch threads, {workers} decode workers\n"
            f"  end to end   {e2e_ips:9.1f} img/s  ({e2e_ips / model_ips:.0%} of model-only)\n"
            f"  image stage  {image_stage_ips:9.1f} img/s  ({image_stage_ips / model_ips:.0%} of model-only)\n"
            f"  model only   {model_ips:9.1f} img/s\n"
            f"  decode only  {decode_ips:9.1f} img/s\n"
            f"  phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items()) +
            f"\nwrote {data['files']}")
    print_result(args, data, text)
    return 0


def plot_index(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    labels = ["end to end", "image stage", "model only", "decode only"]
    values = [data["end_to_end_ips"], data["image_stage_ips"], data["model_only_ips"], data["decode_only_ips"]]
    colours = ["#1f77b4", "#6baed6", "#2ca02c", "#ff7f0e"]
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    bars = ax.barh(labels[::-1], values[::-1], color=colours[::-1])
    for bar, value in zip(bars, values[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {value:,.1f}", va="center", fontsize=9)
    ax.axvline(data["shared_cpu_bound_ips"], color="grey", ls="--", lw=1,
               label=f"shared-CPU bound {data['shared_cpu_bound_ips']:,.0f}")
    ax.set_xlabel("images / second")
    ax.set_xlim(0, max(values) * 1.2)
    ax.set_title(f"Indexing throughput: {data['model']}, {data['images']} images, batch {data['batch_size']}, "
                 f"{data['torch_threads']} thr + {data['decode_workers']} dec\n{_machine_line(data)}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- bench query ---------------------------------------------------------------------------


def text_query_stream(seed: int) -> Iterator[str]:
    """Distinct shopper queries from the generated world's vocabulary, each string once."""
    from catalens import world

    rng = random.Random(seed)
    seen: set[str] = set()
    while True:
        spec = world.random_spec(rng)
        form = rng.random()
        if form < 0.45:
            text = world.plain_query(spec, rng)
        elif form < 0.6 and spec.secondary:
            text = world.swap_query(spec, rng)
        else:
            text = world.describe(spec, rng, brand=rng.choice(world.BRANDS) if rng.random() < 0.3 else "",
                                  material=rng.choice(world.MATERIALS[spec.category]) if rng.random() < 0.4 else "")
        if text not in seen:
            seen.add(text)
            yield text


class ZipfQueries:
    """Sample queries by Zipf popularity over a pool of distinct strings (head queries repeat)."""

    def __init__(self, pool: list[str], exponent: float, seed: int) -> None:
        self.pool = pool
        weights = 1.0 / np.arange(1, len(pool) + 1) ** exponent
        self.cdf = np.cumsum(weights / weights.sum())
        self.rng = np.random.default_rng(seed)
        self.sent: set[str] = set()
        self.requests = 0
        self.repeats = 0

    def __call__(self) -> str:
        index = min(int(np.searchsorted(self.cdf, self.rng.random())), len(self.pool) - 1)
        text = self.pool[index]
        self.requests += 1
        if text in self.sent:
            self.repeats += 1
        self.sent.add(text)
        return text


@dataclass
class Scenario:
    name: str
    request: Callable[[Any], Any]  # async (client) -> response
    detail: dict[str, Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_subprocess(args: argparse.Namespace, settings: Settings, index_dir: Path, threads: int,
                     log_path: Path) -> Iterator[str]:
    """`catalens serve` as a real process (its own interpreter); yields its URL once /readyz is 200."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "catalens.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--index-dir", str(index_dir), "--model", settings.model, "--threads", str(threads),
           "--device", settings.device]
    if settings.pretrained:
        cmd += ["--pretrained", settings.pretrained]
    env = {**os.environ, "CATALENS_THREADS": str(threads)}
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + args.server_timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text()[-800:].strip().splitlines()
                raise BenchError(f"catalens serve exited with {proc.returncode}: {tail[-1] if tail else ''} "
                                 f"(log: {log_path})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"catalens serve was not ready after {args.server_timeout}s (log: {log_path})")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stage_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """(sum seconds, count) per query stage from the server's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "catalens_stage_seconds":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "?")
            if sample.name.endswith("_sum"):
                out.setdefault(stage, [0.0, 0.0])[0] = sample.value
            elif sample.name.endswith("_count"):
                out.setdefault(stage, [0.0, 0.0])[1] = sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


async def _run_scenario(url: str, scenario: Scenario, *, concurrency: int, duration: float,
                        warmup: float, on_measure: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """C closed-loop clients for `duration` seconds after `warmup` seconds; latency per request."""
    import asyncio

    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        before = _stage_totals((await client.get("/metrics")).text)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        phase = {"measure": False}

        async def worker(stop_at: float) -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    resp = await scenario.request(client)
                    failed = None if resp.status_code == 200 else f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    failed = type(exc).__name__
                elapsed = time.perf_counter() - t0
                if not phase["measure"]:
                    continue
                if failed:
                    errors[failed] = errors.get(failed, 0) + 1
                else:
                    latencies.append(elapsed)

        if warmup > 0:
            stop = time.perf_counter() + warmup
            await asyncio.gather(*(worker(stop) for _ in range(concurrency)))
            before = _stage_totals((await client.get("/metrics")).text)
        phase["measure"] = True
        on_measure()
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + duration) for _ in range(concurrency)))
        wall = time.perf_counter() - start
        after = _stage_totals((await client.get("/metrics")).text)
    lat = np.array(latencies) * 1000
    n_err = sum(errors.values())
    stages = {}
    for stage, (total, count) in after.items():
        b_total, b_count = before.get(stage, (0.0, 0.0))
        if count > b_count:
            stages[stage] = round((total - b_total) / (count - b_count) * 1000, 3)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if len(lat) else None

    return {
        "qps": round(len(lat) / wall, 2),
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "mean_ms": round(float(lat.mean()), 2) if len(lat) else None,
        "max_ms": round(float(lat.max()), 2) if len(lat) else None,
        "errors": n_err,
        "error_kinds": errors,
        "requests": len(lat) + n_err,
        "seconds": round(wall, 2),
        "server_stage_mean_ms": stages,
        **scenario.detail,
    }


def ensure_query_index(args: argparse.Namespace, settings: Settings, catalog: Path) -> Path:
    """An index of the bench catalog for this model, built once under the work dir and reused."""
    from catalens import artifacts
    from indexer.builder import BuildOptions, build_index

    index_dir = work_dir(args) / f"query-index-{model_slug(settings.model)}-n{args.n}-s{args.seed}"
    encoder = _load_encoder(settings)
    try:
        manifest = artifacts.read_manifest(artifacts.active_version_path(index_dir))
        if manifest.model_id == encoder.model_id and not args.rebuild:
            log(args, f"reusing index {index_dir} ({manifest.count} vectors, {manifest.factory})")
            return index_dir
    except CatalensError:
        pass
    shutil.rmtree(index_dir, ignore_errors=True)
    log(args, f"building the index of {args.n} products in {index_dir}")
    t0 = time.perf_counter()
    summary = build_index(settings.model_copy(update={"index_dir": index_dir}),
                          BuildOptions(catalog=catalog, progress=False), encoder=encoder)
    log(args, f"built {summary.vectors} vectors ({summary.factory}) in {time.perf_counter() - t0:.1f}s")
    return index_dir


def cmd_bench_query(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    settings = with_random_weights(args, settings)
    threads = settings.torch_threads()
    server_threads = args.server_threads or threads
    set_threads(threads)
    catalog = ensure_catalog(args, args.n)
    index_dir = ensure_query_index(args, settings, catalog)
    sample_dir = catalog.parent
    with open(catalog, newline="") as fh:
        product_ids = [row["product_id"] for row in csv.DictReader(fh)]
    image_files = sorted((sample_dir / "queries").glob("image-*.jpg"))
    image_bytes = [p.read_bytes() for p in image_files]
    stream = text_query_stream(args.seed + 17)
    pool = [next(stream) for _ in range(args.query_pool)]
    zipf = ZipfQueries(pool, args.zipf, seed=args.seed)
    rng = random.Random(args.seed)
    unique_sent = {"n": 0}

    async def text_request(client):  # type: ignore[no-untyped-def]
        return await client.post("/v1/search/text", json={"query": zipf(), "k": args.k})

    async def text_unique_request(client):  # type: ignore[no-untyped-def]
        while True:  # a string never sent before: every request misses the server's embedding cache
            text = next(stream)
            if text not in zipf.sent:
                break
        unique_sent["n"] += 1
        return await client.post("/v1/search/text", json={"query": text, "k": args.k})

    async def rerank_request(client):  # type: ignore[no-untyped-def]
        return await client.post("/v1/search/text", json={"query": zipf(), "k": args.k, "rerank": True})

    async def image_request(client):  # type: ignore[no-untyped-def]
        data = image_bytes[rng.randrange(len(image_bytes))]
        return await client.post("/v1/search/image", files={"file": ("query.jpg", data, "image/jpeg")},
                                 data={"k": str(args.k)})

    async def similar_request(client):  # type: ignore[no-untyped-def]
        return await client.get(f"/v1/products/{product_ids[rng.randrange(len(product_ids))]}/similar",
                                params={"k": args.k})

    results: dict[str, Any] = {}
    log_path = work_dir(args) / f"serve-{model_slug(settings.model)}-n{args.n}.log"
    log(args, f"starting `catalens serve` ({server_threads} torch threads); log in {log_path}")
    with serve_subprocess(args, settings, index_dir, server_threads, log_path) as url:
        import httpx

        ready = httpx.get(f"{url}/readyz", timeout=5).json()
        probe = httpx.post(f"{url}/v1/search/text", json={"query": "red mug", "k": 1, "rerank": True}, timeout=30)
        rerank_available = probe.status_code == 200
        scenarios = [
            Scenario("text", text_request, {}),
            Scenario("text_uncached", text_unique_request, {"query_mix": "every query distinct (cache misses)"}),
            Scenario("image", image_request, {"query_pool": len(image_bytes)}),
            Scenario("similar", similar_request, {"query_pool": len(product_ids)}),
        ]
        if rerank_available:
            scenarios.append(Scenario("text_rerank", rerank_request, {}))
        else:
            results["text_rerank"] = None
        for scenario in scenarios:
            if scenario.name == "image" and not image_bytes:
                results["image"] = None
                continue
            log(args, f"{scenario.name}: {args.concurrency} clients for {args.duration}s")
            before = [zipf.requests, zipf.repeats]

            def mark(before: list[int] = before) -> None:
                before[:] = [zipf.requests, zipf.repeats]

            results[scenario.name] = asyncio.run(_run_scenario(url, scenario, concurrency=args.concurrency,
                                                               duration=args.duration, warmup=args.warmup,
                                                               on_measure=mark))
            if scenario.name == "text":
                # Over the measured window only; the warm-up's queries count as history (already cached).
                sent, repeats = zipf.requests - before[0], zipf.repeats - before[1]
                results["text"]["query_mix"] = {
                    "pool_distinct": len(pool), "zipf_exponent": args.zipf, "requests_sent": sent,
                    "distinct_sent": len(zipf.sent),
                    "repeat_share": round(repeats / max(1, sent), 3),
                    "note": "repeat_share ~ the server's text-embedding cache hit rate "
                            f"(LRU of {settings.text_cache_size} entries per process)",
                }
    data: dict[str, Any] = {
        "bench": "query",
        **results,
        "text_rerank_note": None if rerank_available else
        f"absent: the server answers rerank=true with HTTP {probe.status_code} (CATALENS_RERANKER=none?)",
        "model": settings.model,
        "n": args.n,
        "vectors": ready.get("vectors"),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "k": args.k,
        "server_threads": server_threads,
        "driver": "httpx.AsyncClient in the bench process (closed loop), server = `catalens serve` subprocess; "
                  "both share the machine's cores",
        "index_dir": str(index_dir),
        "machine": machine_info(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    name = f"query-{model_slug(settings.model)}-n{args.n}-c{args.concurrency}"
    write_result(args, name, data, plot_query)
    lines = [f"bench query: {settings.model}, {args.n} products ({data['vectors']} vectors), "
             f"{args.concurrency} clients x {args.duration}s, server threads {server_threads}",
             f"  {'scenario':<14}{'qps':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"]
    for key in ("text", "text_uncached", "image", "similar", "text_rerank"):
        r = data.get(key)
        if r is None:
            lines.append(f"  {key:<14}{'absent':>9}")
        else:
            lines.append(f"  {key:<14}{r['qps']:>9.1f}{r['p50_ms'] or 0:>9.1f}{r['p95_ms'] or 0:>9.1f}"
                         f"{r['p99_ms'] or 0:>9.1f}{r['errors']:>8}")
    if data["text"]:
        mix = data["text"]["query_mix"]
        lines.append(f"  text mix: Zipf {mix['zipf_exponent']} over {mix['pool_distinct']} distinct queries, "
                     f"repeat share {mix['repeat_share']:.0%}")
    lines.append(f"wrote {data['files']}")
    print_result(args, data, "\n".join(lines))
    return 0


def plot_query(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    names = [k for k in ("text", "text_uncached", "image", "similar", "text_rerank") if data.get(k)]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.26
    for j, (q, colour) in enumerate((("p50_ms", "#2ca02c"), ("p95_ms", "#ff7f0e"), ("p99_ms", "#d62728"))):
        xs = [i + (j - 1) * width for i in range(len(names))]
        ax.bar(xs, [data[n][q] or 0 for n in names], width, label=q.replace("_ms", ""), color=colour)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n{data[n]['qps']:.0f} QPS, {data[n]['errors']} err" for n in names], fontsize=8)
    ax.set_ylabel("latency (ms)")
    if not data.get("text_rerank"):
        ax.text(0.99, 0.97, "text_rerank: absent", transform=ax.transAxes, ha="right", va="top", fontsize=8)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"Query latency: {data['model']}, {data['n']} products, {data['concurrency']} clients, "
                 f"server threads {data['server_threads']}\n{_machine_line(data)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- bench ann -----------------------------------------------------------------------------


def clustered_vectors(n: int, dim: int, *, clusters: int, spread: float, decay: float,
                      seed: int) -> tuple[np.ndarray, Callable[[int], np.ndarray]]:
    """Normalised vectors around `clusters` centres, and a sampler for queries from the same law.

    Each vector is normalise(centre + spread * noise), cluster sizes are log-normal, and
    centres and noise share a power-law spectrum (variance of the i-th axis ~ i^-decay under
    a random rotation), so the data has the low intrinsic dimension and the common cone of
    real CLIP embeddings rather than being isotropic.
    """
    rng = np.random.default_rng(seed)
    scales = (np.arange(1, dim + 1, dtype=np.float32) ** (-decay / 2)).astype(np.float32)
    scales /= np.sqrt((scales ** 2).sum())
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    mean = rng.standard_normal(dim).astype(np.float32) * scales * np.sqrt(dim) * 0.5
    centres = (rng.standard_normal((clusters, dim)).astype(np.float32) * scales * np.sqrt(dim) + mean) @ rotation
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(0.0, 1.0, clusters)
    weights /= weights.sum()

    def sample(count: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((count, dim), np.float32)
        for start in range(0, count, 65536):
            m = min(65536, count - start)
            which = rng.choice(clusters, size=m, p=weights)
            noise = (rng.standard_normal((m, dim), dtype=np.float32) * scales) @ rotation
            block = centres[which] + spread * noise
            out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    base = sample(n, rng)
    query_rng = np.random.default_rng(seed + 1)
    return base, lambda count: sample(count, query_rng)


def _index_bytes(index: Any, tmp_dir: Path) -> int:
    import faiss

    path = tmp_dir / "probe.faiss"
    try:
        faiss.write_index(index, str(path))
        return path.stat().st_size
    finally:
        path.unlink(missing_ok=True)


def _single_query_qps(index: Any, queries: np.ndarray, k: int, budget_s: float) -> float:
    """One query per search call, as the service issues them; stops after budget_s (>= 20 queries)."""
    t0 = time.perf_counter()
    done = 0
    for i in range(len(queries)):
        index.search(queries[i:i + 1], k)
        done += 1
        if done >= 20 and time.perf_counter() - t0 > budget_s:
            break
    return done / (time.perf_counter() - t0)


def _recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def _ann_families(args: argparse.Namespace, n: int, dim: int) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(family, factory, parameter sweep) to run, in order."""
    nlist = args.nlist or int(2 ** round(np.log2(max(16.0, np.sqrt(n)))))
    nlist = max(1, min(nlist, n // 39 or 1))
    pq_m = args.pq_m or max(1, dim // 8)
    while dim % pq_m:
        pq_m -= 1
    wanted = set(args.factories)
    out: list[tuple[str, str, list[dict[str, Any]]]] = []
    if "flat" in wanted:
        out.append(("flat", "Flat", [{}]))
    if "hnsw" in wanted:
        for m in args.hnsw_m:
            out.append(("hnsw", f"HNSW{m}", [{"efSearch": ef} for ef in args.ef_search]))
    nprobes = [p for p in args.nprobe if p <= nlist] or [nlist]
    if "ivfsq8" in wanted:
        out.append(("ivfsq8", f"IVF{nlist},SQ8", [{"nprobe": p} for p in nprobes]))
    if "ivfpq" in wanted:
        out.append(("ivfpq", f"IVF{nlist},PQ{pq_m}", [{"nprobe": p} for p in nprobes]))
    return out


def cmd_bench_ann(args: argparse.Namespace, settings: Settings) -> int:
    import faiss

    threads = settings.torch_threads()
    set_threads(threads)
    n, dim, k = args.n, args.dim, 10
    clusters = args.clusters or max(8, n // 1000)
    log(args, f"generating {n:,} x {dim} clustered vectors ({clusters} clusters), {args.queries} queries")
    t0 = time.perf_counter()
    base, sample_queries = clustered_vectors(n, dim, clusters=clusters, spread=args.spread, decay=args.decay,
                                             seed=args.seed)
    queries = sample_queries(args.queries)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = faiss.IndexFlatIP(dim)
    exact.add(base)
    truth_scores, truth = exact.search(queries, k)
    del exact
    truth_s = time.perf_counter() - t0
    log(args, f"data in {gen_s:.1f}s, exact ground truth in {truth_s:.1f}s; "
              f"mean top-1 cosine {truth_scores[:, 0].mean():.3f}, top-10 {truth_scores[:, -1].mean():.3f}")
    sample_pairs = base[np.random.default_rng(args.seed + 2).integers(0, n, size=(2000, 2))]
    random_cos = float(np.einsum("ij,ij->i", sample_pairs[:, 0], sample_pairs[:, 1]).mean())

    runs: list[dict[str, Any]] = []
    root = work_dir(args)
    root.mkdir(parents=True, exist_ok=True)
    ids = np.arange(n, dtype=np.int64)
    with tempfile.TemporaryDirectory(dir=root, prefix="ann-") as tmp:
        for family, factory, sweep in _ann_families(args, n, dim):
            log(args, f"{factory}: building")
            t0 = time.perf_counter()
            # Exactly how Catalens builds its image index: IDMap2 around the factory, inner product.
            index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
            inner = faiss.downcast_index(index.index)
            if hasattr(inner, "do_polysemous_training"):
                # On by default for PQ: minutes of training for Hamming-filtered search we never use.
                inner.do_polysemous_training = False
            if not index.is_trained:
                train_n = min(n, args.train_size)
                pick = np.random.default_rng(args.seed + 3).choice(n, size=train_n, replace=False)
                index.train(base[np.sort(pick)])
            index.add_with_ids(base, ids)
            build_s = time.perf_counter() - t0
            bytes_per_vector = _index_bytes(index, Path(tmp)) / n
            params_space = faiss.ParameterSpace()
            for params in sweep:
                for key, value in params.items():
                    params_space.set_index_parameter(index, key, value)
                t0 = time.perf_counter()
                _, found = index.search(queries, k)
                batch_qps = len(queries) / (time.perf_counter() - t0)
                recall = _recall(found, truth, k)
                qps = _single_query_qps(index, queries, k, args.time_per_point)
                run = {"family": family, "factory": factory, "params": params, "recall@10": round(recall, 4),
                       "qps": round(qps, 1), "latency_ms": round(1000 / qps, 3), "qps_batch": round(batch_qps, 1),
                       "build_s": round(build_s, 2), "bytes_per_vector": round(bytes_per_vector, 1)}
                runs.append(run)
                log(args, f"{factory} {params or ''}: recall@10 {recall:.4f}, {qps:,.0f} QPS single, "
                          f"{batch_qps:,.0f} QPS batch, build {build_s:.1f}s, {bytes_per_vector:.0f} B/vector")
            del index
    recommendation = recommend_ann(runs, n=n)
    data: dict[str, Any] = {
        "bench": "ann",
        "runs": runs,
        "recommendation": recommendation,
        "n": n, "dim": dim, "queries": args.queries, "k": k,
        "data": {"clusters": clusters, "spread": args.spread, "decay": args.decay, "seed": args.seed,
                 "mean_top1_cosine": round(float(truth_scores[:, 0].mean()), 4),
                 "mean_top10_cosine": round(float(truth_scores[:, -1].mean()), 4),
                 "mean_random_pair_cosine": round(random_cos, 4),
                 "generate_s": round(gen_s, 1), "ground_truth_s": round(truth_s, 1)},
        "threads": threads,
        "definitions": {
            "qps": "queries/s issuing one query per search call (as the service does), one caller",
            "qps_batch": "queries/s searching all queries in one call (FAISS parallelises over queries)",
            "recall@10": "share of the exact (Flat inner-product) top 10 found in the top 10",
            "bytes_per_vector": "serialised IDMap2 index size / n (includes the 8-byte ids Catalens stores)",
            "build_s": "train (on at most train_size vectors) + add, with `threads` threads",
        },
        "train_size": args.train_size,
        "machine": machine_info(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    name = f"ann-n{n}-d{dim}"
    write_result(args, name, data, plot_ann)
    lines = [f"bench ann: {n:,} x {dim}, {args.queries} queries, {threads} threads",
             f"  {'factory':<18}{'params':<16}{'recall@10':>10}{'QPS':>10}{'QPS batch':>11}{'build s':>9}{'B/vec':>8}"]
    for r in runs:
        params = ",".join(f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"  {r['factory']:<18}{params:<16}{r['recall@10']:>10.4f}{r['qps']:>10,.0f}"
                     f"{r['qps_batch']:>11,.0f}{r['build_s']:>9.1f}{r['bytes_per_vector']:>8.0f}")
    lines.append(f"  recommendation: {recommendation['summary']}")
    lines.append(f"wrote {data['files']}")
    print_result(args, data, "\n".join(lines))
    return 0


def recommend_ann(runs: list[dict[str, Any]], *, n: int) -> dict[str, Any]:
    """The fastest run with recall@10 >= 0.95, and the smallest HNSW efSearch that reaches it."""
    good = [r for r in runs if r["recall@10"] >= RECALL_TARGET]
    out: dict[str, Any] = {"recall_target": RECALL_TARGET}
    if not good:
        out["summary"] = f"no configuration reached recall@10 >= {RECALL_TARGET} at n={n:,}"
        return out
    best = max(good, key=lambda r: r["qps"])
    out["fastest"] = {"factory": best["factory"], "params": best["params"], "recall@10": best["recall@10"],
                      "qps": best["qps"], "bytes_per_vector": best["bytes_per_vector"]}
    hnsw_ok: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r["family"] == "hnsw" and r["recall@10"] >= RECALL_TARGET:
            current = hnsw_ok.get(r["factory"])
            if current is None or r["params"]["efSearch"] < current["efSearch"]:
                hnsw_ok[r["factory"]] = {"efSearch": r["params"]["efSearch"], "recall@10": r["recall@10"],
                                         "qps": r["qps"]}
    out["hnsw_min_efSearch"] = hnsw_ok
    out["summary"] = (f"fastest at recall@10 >= {RECALL_TARGET}: {best['factory']} "
                      + " ".join(f"{k}={v}" for k, v in best["params"].items())
                      + f" ({best['recall@10']:.3f}, {best['qps']:,.0f} QPS single-query)")
    return out


def plot_ann(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    by_factory: dict[str, list[dict[str, Any]]] = {}
    for r in data["runs"]:
        by_factory.setdefault(r["factory"], []).append(r)
    for factory, rows in by_factory.items():
        xs = [r["recall@10"] for r in rows]
        ys = [r["qps"] for r in rows]
        ax.plot(xs, ys, marker="o", label=f"{factory} ({rows[0]['bytes_per_vector']:.0f} B/vec, "
                                          f"build {rows[0]['build_s']:.0f}s)")
        for r in rows:
            if r["params"]:
                key, value = next(iter(r["params"].items()))
                ax.annotate(f"{'ef' if key == 'efSearch' else 'np'}={value}", (r["recall@10"], r["qps"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(RECALL_TARGET, color="grey", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("recall@10 vs exact search")
    ax.set_ylabel("queries / second (one query per call)")
    ax.set_title(f"ANN: {data['n']:,} x {data['dim']} clustered vectors, inner product, {data['threads']} threads\n"
                 f"{_machine_line(data)}", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- bench rerank --------------------------------------------------------------------------


def random_hub_reranker(name: str):  # type: ignore[no-untyped-def]
    """A hub reranker's real architecture with random weights (timing only: no hub here)."""
    import open_clip

    if name.startswith("coca:"):
        from catalens.reranker_hub import CocaReranker

        model = name.removeprefix("coca:").partition("@")[0]
        net = open_clip.create_model(model).eval()
        return CocaReranker(net, open_clip.get_tokenizer(model),
                            open_clip.image_transform(net.visual.image_size, is_train=False), "cpu",
                            f"{name} (random init)")
    if name.startswith("blip:"):
        from transformers import (
            BertTokenizerFast,
            BlipConfig,
            BlipForImageTextRetrieval,
            BlipImageProcessor,
            BlipProcessor,
        )

        from catalens.reranker_hub import BlipItmReranker

        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", "red", "blue", "mug", "with", "dots"]
        with tempfile.TemporaryDirectory() as tmp:
            vocab = Path(tmp) / "vocab.txt"
            vocab.write_text("\n".join(words))
            tokenizer = BertTokenizerFast(vocab_file=str(vocab))
        config = BlipConfig()  # the base architecture (ViT-B/16 at 384 px, BERT-base text encoder)
        processor = BlipProcessor(BlipImageProcessor(size={"height": config.vision_config.image_size,
                                                           "width": config.vision_config.image_size}), tokenizer)
        return BlipItmReranker(BlipForImageTextRetrieval(config).eval(), processor, "cpu", f"{name} (random init)")
    raise BenchError(f"--random-init applies to blip:... and coca:... rerankers, not {name!r}")


def cmd_bench_rerank(args: argparse.Namespace, settings: Settings) -> int:
    """Index-time feature cost and query-time scoring latency of a reranker for top_n candidates."""
    import torch

    from catalens import world
    from catalens.reranker import load_reranker

    threads = settings.torch_threads()
    set_threads(threads)
    name = args.reranker or settings.reranker
    log(args, f"loading reranker {name}{' (random init)' if args.random_init else ''}; {threads} torch threads")
    reranker = random_hub_reranker(name) if args.random_init else load_reranker(name)
    if reranker is None:
        raise BenchError("no reranker to measure (--reranker none)")
    rng = random.Random(args.seed)
    images = [world.render_product(world.random_spec(rng), rng.getrandbits(31)) for _ in range(args.top_n)]
    pixels = torch.stack([reranker.preprocess(img) for img in images])
    reranker.image_features(pixels[:1])  # warm-up
    t0 = time.perf_counter()
    features = reranker.image_features(pixels)
    feature_ms = (time.perf_counter() - t0) * 1000 / len(images)
    specs = [spec for spec in (world.random_spec(rng) for _ in range(64)) if spec.secondary][:8]
    queries = [world.swap_query(spec, rng) for spec in specs]
    reranker.score(queries[0], features)  # warm-up
    latencies = []
    deadline = time.perf_counter() + args.duration
    i = 0
    while time.perf_counter() < deadline or len(latencies) < 5:
        t0 = time.perf_counter()
        reranker.score(queries[i % len(queries)], features)
        latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
    lat = np.array(latencies)
    data: dict[str, Any] = {
        "bench": "rerank",
        "reranker": reranker.reranker_id,
        "random_init": args.random_init,
        "top_n": args.top_n,
        "score_p50_ms": round(float(np.percentile(lat, 50)), 2),
        "score_p95_ms": round(float(np.percentile(lat, 95)), 2),
        "pairs_per_s": round(args.top_n / (float(np.percentile(lat, 50)) / 1000), 1),
        "feature_ms_per_image": round(feature_ms, 2),
        "feature_bytes_per_image": int(features[0].nbytes),
        "feature_shape": list(features.shape[1:]),
        "runs": len(latencies),
        "torch_threads": threads,
        "definitions": {
            "score_p50_ms": "one query against top_n candidates' stored features, one batched forward pass",
            "feature_ms_per_image": "index-time cost of the stored image features, batch of top_n",
        },
        "machine": machine_info(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    slug = model_slug(name.replace(":", "-").replace("@", "-"))
    write_result(args, f"rerank-{slug}-top{args.top_n}", data, plot_rerank)
    text = (f"bench rerank: {reranker.reranker_id}, top {args.top_n}, {threads} threads\n"
            f"  score    p50 {data['score_p50_ms']:.1f} ms  p95 {data['score_p95_ms']:.1f} ms  "
            f"({data['pairs_per_s']:.0f} pairs/s)\n"
            f"  features {feature_ms:.1f} ms/image at index time, {data['feature_bytes_per_image']:,} bytes/image "
            f"(fp16 {tuple(features.shape[1:])})\nwrote {data['files']}")
    print_result(args, data, text)
    return 0


def plot_rerank(data: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    values = [data["score_p50_ms"], data["score_p95_ms"], data["feature_ms_per_image"] * data["top_n"]]
    ax.barh(["score p50", "score p95", f"features x{data['top_n']}\n(index time)"], values, color="#4f46e5")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.1f} ms", va="center", fontsize=8)
    ax.set_xlabel("milliseconds")
    ax.set_title(f"{data['reranker'][:60]}\ntop {data['top_n']} - {_machine_line(data)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- parser --------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _common(p: argparse.ArgumentParser, *, model: bool) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default: bench-results/)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="cache for generated catalogs and indexes (default: $CATALENS_BENCH_DIR or "
                        "~/.cache/catalens/bench)")
    p.add_argument("--seed", type=int, default=CATALOG_SEED)
    p.add_argument("--threads", type=int, default=None,
                   help="torch/FAISS threads (default: $CATALENS_THREADS, else all cores)")
    p.add_argument("--no-plot", action="store_true", help="JSON only, no PNG")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    if model:
        p.add_argument("--model", default=None,
                       help=f"bundled name, model folder, or open_clip name (random weights without "
                            f"--pretrained; fine for timing) (default: {DEFAULT_MODEL})")
        p.add_argument("--pretrained", default=None)
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
        p.add_argument("--batch-size", type=int, default=None)
        p.add_argument("--render-workers", type=int, default=None,
                       help="processes rendering a new catalog (default: all cores)")


def add_bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `catalens bench index|query|ann`."""
    bench = sub.add_parser("bench", help="benchmarks: indexing throughput, query latency, ANN recall/QPS")
    kinds = bench.add_subparsers(dest="bench_command", required=True, metavar="KIND")

    p = kinds.add_parser("index", help="end-to-end indexing images/s next to model-only and decode-only ceilings")
    p.add_argument("--n", type=int, default=2000, help="products in the generated catalog (~1.4 images each)")
    p.add_argument("--decode-workers", type=int, default=None,
                   help="reader threads (default: $CATALENS_DECODE_WORKERS, else 2)")
    p.add_argument("--model-only-mb", type=float, default=1024,
                   help="memory for the pre-decoded tensors of the model-only run")
    _common(p, model=True)
    p.set_defaults(handler=cmd_bench_index)

    p = kinds.add_parser("query", help="QPS and latency percentiles of a real `catalens serve` under load")
    p.add_argument("--n", type=int, default=10_000, help="products in the generated catalog")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent closed-loop clients")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each scenario")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--server-threads", type=int, default=None,
                   help="torch/FAISS threads of the server (default: --threads)")
    p.add_argument("--query-pool", type=int, default=20_000, help="distinct text queries to sample from")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of text-query popularity")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached index")
    p.add_argument("--server-timeout", type=float, default=180.0, help="seconds to wait for /readyz")
    _common(p, model=True)
    p.set_defaults(handler=cmd_bench_query)

    p = kinds.add_parser("rerank", help="reranker cost: query-time scoring of top_n candidates, index-time features")
    p.add_argument("--reranker", default=None, help="catalens-itm (default), blip:<id>, coca:<model>@<pretrained>")
    p.add_argument("--random-init", action="store_true",
                   help="blip:/coca: only: the real architecture with random weights (no hub needed; timing only)")
    p.add_argument("--top-n", type=int, default=20, help="candidates per query")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of repeated scoring")
    _common(p, model=False)
    p.set_defaults(handler=cmd_bench_rerank)

    p = kinds.add_parser("ann", help="FAISS recall@10 / QPS / build time / bytes per vector on synthetic vectors")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--factories", type=lambda s: [x.strip().lower() for x in s.split(",") if x.strip()],
                   default=["flat", "hnsw", "ivfsq8", "ivfpq"], help="subset of flat,hnsw,ivfsq8,ivfpq")
    p.add_argument("--hnsw-m", type=_ints, default=[32], help="HNSW M values (comma-separated)")
    p.add_argument("--ef-search", type=_ints, default=[16, 32, 64, 128, 256])
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default: ~sqrt(n), a power of 2)")
    p.add_argument("--nprobe", type=_ints, default=[1, 4, 8, 16, 32, 64, 128])
    p.add_argument("--pq-m", type=int, default=None, help="PQ bytes per vector (default: dim/8)")
    p.add_argument("--train-size", type=int, default=65_536, help="vectors used to train IVF/PQ")
    p.add_argument("--clusters", type=int, default=None, help="default: n/1000 (at least 8)")
    p.add_argument("--spread", type=float, default=0.8, help="noise scale around cluster centres")
    p.add_argument("--decay", type=float, default=1.0, help="spectrum decay (variance of axis i ~ i^-decay)")
    p.add_argument("--time-per-point", type=float, default=2.0, help="seconds of single-query timing per point")
    _common(p, model=False)
    p.set_defaults(handler=cmd_bench_ann)
