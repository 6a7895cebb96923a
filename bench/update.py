"""`bench update`: how fast a live change reaches search, and what a live layer costs a search.

Drives a real `catalens serve` (admin API) on a working copy of the bench query index: the
time from an upsert / patch / delete request until a search shows it (a price filter that
only the changed product matches), then single-client search latency with a live layer of
0, 1,000 and 10,000 changed products.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Log, machine_info, quiet, utc_now
from bench.query import ensure_query_index, query_stream, serve_subprocess
from bench.workload import CATALOG_SEED, ensure_catalog, with_random_weights
from catalens.config import Settings
from catalens.errors import BenchError

KEY = "bench-update"
BULK = 1000  # products per admin upsert while growing the live layer
PRICE_BASE = 10_000_000.0  # prices no generated product has: a filter on one finds only the changed product


@dataclass(kw_only=True)
class UpdateBench:
    bench: str = "update"
    upsert: dict[str, Any]
    patch: dict[str, Any]
    delete: dict[str, Any]
    search_live: dict[str, dict[str, Any]]
    baseline: dict[str, Any] | None  # the same changes measured on an earlier build (--baseline FILE)
    model: str
    n: int
    samples: int
    search_queries: int
    driver: str = ("httpx in the bench process, one request at a time; server = `catalens serve` subprocess; "
                   "visible = the first search (5 ms apart) whose results show the change")
    index_dir: str
    created_at: str = field(default_factory=utc_now)
    machine: dict[str, Any] = field(default_factory=machine_info)


def _percentiles(values_ms: list[float]) -> dict[str, Any]:
    arr = np.array(values_ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2), "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "mean_ms": round(float(arr.mean()), 2), "max_ms": round(float(arr.max()), 2), "samples": len(values_ms)}


def working_copy(index_dir: Path, dst: Path) -> Path:
    """The active version, the database and the caches, for changes that must not touch the cached index.

    Immutable files (version files, cache shards) are hard links; the database is copied.
    """
    from catalens import artifacts

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    active = artifacts.read_active_state(index_dir)
    if active is None:
        raise BenchError(f"no active index in {index_dir}")
    for sub in (f"versions/{active.version_id}", "embeddings", "features"):
        if (index_dir / sub).is_dir():
            shutil.copytree(index_dir / sub, dst / sub, copy_function=os.link)
    shutil.copy2(index_dir / "ACTIVE", dst / "ACTIVE")
    for name in ("catalens.db", "catalens.db-wal"):
        if (index_dir / name).is_file():
            shutil.copy2(index_dir / name, dst / name)
    return dst


class _Client:
    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=600, headers={"X-API-Key": KEY})

    def admin(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        resp = self.http.request(method, path, json=body)
        if resp.status_code not in (200, 202):
            raise BenchError(f"{method} {path}: HTTP {resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def priced(self, price: float) -> list[str]:
        resp = self.http.post("/v1/search/text", json={"query": "product", "k": 5,
                                                        "filters": {"price_min": price, "price_max": price}})
        if resp.status_code != 200:
            raise BenchError(f"search: HTTP {resp.status_code}: {resp.text[:300]}")
        return [r["product_id"] for r in resp.json()["results"]]

    def until(self, price: float, *, present: bool, since: float, timeout: float = 60.0) -> float:
        """Milliseconds from `since` until a search filtered to `price` shows (or stops showing) a product."""
        while (len(self.priced(price)) > 0) != present:
            if time.perf_counter() - since > timeout:
                raise BenchError(f"a change was not visible after {timeout}s")
            time.sleep(0.005)
        return (time.perf_counter() - since) * 1000


def _record(row: dict[str, str], *, product_id: str | None = None, price: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {k: v for k, v in row.items() if v and k not in ("price",)}
    out["image"] = row["image"].split("|") if row.get("image") else None
    if product_id:
        out["product_id"] = product_id
    out["price"] = price if price is not None else float(row["price"] or 1)
    return {k: v for k, v in out.items() if v is not None}


def _search_latency(client: _Client, queries: list[str]) -> dict[str, Any]:
    for q in queries:  # warm: the text embeddings are cached, so the figures are the search path
        client.http.post("/v1/search/text", json={"query": q, "k": 10})
    times = []
    for q in queries:
        t0 = time.perf_counter()
        resp = client.http.post("/v1/search/text", json={"query": q, "k": 10})
        times.append((time.perf_counter() - t0) * 1000)
        if resp.status_code != 200:
            raise BenchError(f"search: HTTP {resp.status_code}")
    return _percentiles(times)


def _grow_live_layer(client: _Client, rows: list[dict[str, str]], target: int, done: int) -> int:
    """Upsert existing products with new prices (no new images: the cache has them) until `target` changed."""
    while done < target:
        part = rows[done:min(target, done + BULK)]
        body = {"products": [_record(r, price=round(float(r["price"] or 1) * 1.1, 2)) for r in part]}
        job = client.admin("POST", "/v1/admin/products", body)
        while job.get("status") in ("queued", "running"):
            time.sleep(0.2)
            job = client.admin("GET", job["url"])
        if job.get("status") == "failed":
            raise BenchError(f"growing the live layer failed: {job.get('errors')}")
        done += len(part)
    return done


def measure_update(settings: Settings, *, n: int = 10_000, seed: int = CATALOG_SEED, samples: int = 20,
                   live_sizes: tuple[int, ...] = (0, 1000, 10_000), queries: int = 200,
                   baseline: Path | None = None, log: Log = quiet) -> UpdateBench:
    """Visibility latency of live upserts, patches and deletes, and search cost by live-layer size."""
    settings = with_random_weights(settings, log)
    catalog = ensure_catalog(settings, n=n, seed=seed, log=log)
    index_dir = ensure_query_index(settings, catalog, n=n, seed=seed, log=log)
    with open(catalog, newline="") as fh:
        rows = [{**r, "image": "|".join(str(catalog.parent / i) for i in r["image"].split("|") if i)}
                for r in csv.DictReader(fh)]
    sizes = tuple(s for s in live_sizes if s <= len(rows))
    work = working_copy(index_dir, settings.bench_cache() / f"update-work-n{n}")
    stream = query_stream(seed + 29)
    texts = [next(stream) for _ in range(queries)]
    log(f"serving a working copy of {index_dir} in {work}")
    threads = settings.torch_threads()
    env = {"CATALENS_API_KEY": KEY, "CATALENS_COMPACT_AFTER": "0", "CATALENS_ADMIN_SYNC_LIMIT": "1"}
    search_live: dict[str, dict[str, Any]] = {}
    timings: dict[str, list[float]] = {"upsert": [], "patch": [], "delete": []}
    try:
        with serve_subprocess(settings, work, threads=threads, log_path=work / "serve.log", timeout=600,
                              env=env) as url:
            client = _Client(url)
            if 0 in sizes:
                search_live["0"] = _search_latency(client, texts)
                log(f"search, no live changes: {search_live['0']}")
            # Changed products come from the end of the catalog; the live layer grows from the start.
            spare = rows[-3 * samples:]
            for i in range(samples):
                price = PRICE_BASE + i
                t0 = time.perf_counter()
                client.admin("POST", "/v1/admin/products",
                             {"products": [_record(spare[i], product_id=f"bench-new-{i}", price=price)]})
                timings["upsert"].append(client.until(price, present=True, since=t0))
                target = spare[samples + i]["product_id"]
                price = PRICE_BASE + samples + i
                t0 = time.perf_counter()
                client.admin("PATCH", f"/v1/admin/products/{target}", {"price": price})
                timings["patch"].append(client.until(price, present=True, since=t0))
                t0 = time.perf_counter()
                client.admin("POST", "/v1/admin/products/delete", {"ids": [target]})
                timings["delete"].append(client.until(price, present=False, since=t0))
            log("visibility (ms): " + ", ".join(f"{k} p50 {np.median(v):.1f}" for k, v in timings.items()))
            done = 0
            for size in sizes:
                if size == 0:
                    continue
                log(f"growing the live layer to {size} changed products")
                done = _grow_live_layer(client, rows, size, done)
                search_live[str(size)] = _search_latency(client, texts)
                log(f"search, {size} live changes: {search_live[str(size)]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return UpdateBench(upsert=_percentiles(timings["upsert"]), patch=_percentiles(timings["patch"]),
                       delete=_percentiles(timings["delete"]), search_live=search_live,
                       baseline=json.loads(baseline.read_text()) if baseline else None, model=settings.model, n=n,
                       samples=samples, search_queries=queries, index_dir=str(index_dir))
