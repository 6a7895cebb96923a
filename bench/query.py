"""`bench query`: QPS and latency percentiles of a real `catalens serve` subprocess under load.

This process drives the server over HTTP (httpx, asyncio, C closed-loop clients for T
seconds per scenario): text (Zipf-popular queries), text_uncached (every query new), image,
similar items and, when the server has a reranker, text_rerank.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Log, machine_info, model_slug, quiet, utc_now
from bench.workload import CATALOG_SEED, ensure_catalog, load_encoder, with_random_weights
from catalens.config import Settings, set_threads
from catalens.errors import BenchError, CatalensError

SCENARIOS = ("text", "text_uncached", "text_filtered", "image", "similar", "text_rerank",
             "single_text_uncached", "single_image", "single_healthz")
# one client: the request path alone; single_healthz is the HTTP floor (the same client, server and
# middleware on a route that does nothing)
SINGLE = {"single_text_uncached": "text_uncached", "single_image": "image", "single_healthz": None}
SEARCH_STAGES = ("encode", "keyword", "ann", "rerank")  # the server's stages that are search (metadata is not)
DRIVER = ("httpx.AsyncClient in the bench process (closed loop), server = `catalens serve` subprocess; "
          "both share the machine's cores")

ScenarioStats = dict[str, Any]  # qps, p50_ms, p95_ms, p99_ms, mean_ms, max_ms, errors, ... and the scenario's detail


@dataclass(kw_only=True)
class QueryBench:
    """One `bench query` result; its fields are the JSON keys, in order. A scenario that could not run is None."""

    bench: str = "query"
    text: ScenarioStats | None
    text_uncached: ScenarioStats | None
    text_filtered: ScenarioStats | None  # the text mix, each request filtered to one category
    image: ScenarioStats | None
    similar: ScenarioStats | None
    text_rerank: ScenarioStats | None
    single_text_uncached: ScenarioStats | None  # text_uncached with one client
    single_image: ScenarioStats | None  # image with one client
    single_healthz: ScenarioStats | None  # GET /healthz with one client: what HTTP costs this client and server
    service: dict[str, Any] | None  # what the service adds to search, from the single-client scenarios
    text_rerank_note: str | None
    runtime: str  # the query-time CLIP runtime of the scenarios above (CATALENS_RUNTIME)
    by_runtime: dict[str, dict[str, ScenarioStats | None]] | None  # every runtime of the run, side by side
    engine: str  # vector store + catalog of record of the top-level figures
    by_engine: dict[str, dict[str, ScenarioStats | None]] | None  # every engine pair of the run, side by side
    served_runtime: dict[str, str | None]  # runtime asked for -> what the server ran (/readyz; auto picks one)
    model: str
    n: int
    vectors: int | None
    concurrency: int
    duration_s: float
    warmup_s: float
    k: int
    server_threads: int
    driver: str = DRIVER
    index_dir: str
    machine: dict[str, Any] = field(default_factory=machine_info)
    created_at: str = field(default_factory=utc_now)


# --- query traffic ---------------------------------------------------------------------------


def query_stream(seed: int) -> Iterator[str]:
    """Distinct shopper queries from the generated world's vocabulary, each string once."""
    from sampledata import texts, world

    rng = random.Random(seed)
    seen: set[str] = set()
    while True:
        text = texts.shopper_text(world.random_spec(rng), rng, texts.QUERY_MIX)
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


# --- the server ------------------------------------------------------------------------------


def catalens_command() -> list[str]:
    """How to run `catalens`: the console script installed beside this interpreter, else the cli package."""
    script = Path(sys.executable).with_name("catalens")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cli.main"]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(index_dir: Path, *, flags: Sequence[str] = (), env: dict[str, str] | None = None,
                log_path: Path | None = None, timeout: float = 120.0) -> tuple[str, subprocess.Popen[bytes]]:
    """`catalens serve` on a free loopback port as its own process; (url, process) once /readyz is 200.

    The one way benchmarks and tests start a server: a server that exits or is not ready in time
    is killed and named in a BenchError (with the last line of its log).
    """
    import httpx

    port = free_port()
    cmd = [*catalens_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--index-dir", str(index_dir),
           *flags]
    # The child keeps its own copy of the log's descriptor; ours closes at once.
    with open(log_path, "w") if log_path else contextlib.nullcontext(subprocess.DEVNULL) as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text()[-800:].strip().splitlines() if log_path else []
            raise BenchError(f"catalens serve exited with {proc.returncode}: {tail[-1] if tail else ''}"
                             + (f" (log: {log_path})" if log_path else ""))
        with contextlib.suppress(httpx.HTTPError, ValueError):
            ready = httpx.get(f"{url}/readyz", timeout=2)
            # Warm, not just ready: the reranker loads after the server answers searches.
            if ready.status_code == 200 and ready.json().get("reranker") != "loading":
                return url, proc
        if time.monotonic() > deadline:
            proc.kill()
            raise BenchError(f"catalens serve was not ready after {timeout}s" + (f" (log: {log_path})" if log_path else ""))
        time.sleep(0.2)


def stop_serve(proc: subprocess.Popen[bytes], *, grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within grace_s."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serve_subprocess(settings: Settings, index_dir: Path, *, threads: int, log_path: Path,
                     timeout: float, env: dict[str, str] | None = None) -> Iterator[str]:
    """`catalens serve` for a benchmark: this model and thread count; yields its URL once ready."""
    flags = ["--model", settings.model, "--threads", str(threads), "--device", settings.device]
    if settings.pretrained:
        flags += ["--pretrained", settings.pretrained]
    url, proc = start_serve(index_dir, flags=flags, env={"CATALENS_THREADS": str(threads), **(env or {})},
                            log_path=log_path, timeout=timeout)
    try:
        yield url
    finally:
        stop_serve(proc)


def ensure_query_index(settings: Settings, catalog: Path, *, n: int, seed: int, rebuild: bool = False,
                       log: Log = quiet) -> Path:
    """An index of the bench catalog for this model, built once under the bench dir and reused."""
    from catalens import artifacts
    from indexer.runner import BuildOptions, build_index

    index_dir = settings.bench_cache() / f"query-index-{model_slug(settings.model)}-n{n}-s{seed}"
    encoder = load_encoder(settings)
    try:
        manifest = artifacts.read_manifest(artifacts.active_version_path(index_dir))
        if manifest.model_id != encoder.model_id or rebuild:
            shutil.rmtree(index_dir, ignore_errors=True)
        else:
            artifacts.verify_version(artifacts.active_version_path(index_dir), checksums=False)
            log(f"reusing index {index_dir} ({manifest.count} vectors, {manifest.factory})")
            return index_dir
    except CatalensError as exc:  # e.g. built by an older Catalens: the build below reuses its embeddings
        log(f"building a new version in {index_dir}: {exc}")
    log(f"building the index of {n} products in {index_dir}")
    t0 = time.perf_counter()
    summary = build_index(settings.model_copy(update={"index_dir": index_dir}),
                          BuildOptions(catalog=catalog, progress=False), encoder=encoder)
    log(f"built {summary.vectors} vectors ({summary.factory}) in {time.perf_counter() - t0:.1f}s")
    return index_dir


ENGINES = ("faiss+sqlite", "milvus+postgresql", "faiss+postgresql", "milvus+sqlite")


@contextlib.contextmanager
def engine_servers(settings: Settings, engine: str, log: Log) -> Iterator[dict[str, str]]:
    """The environment a server of this engine pair needs ({} for FAISS + SQLite): the configured
    PostgreSQL / Milvus URL, else a throwaway local server started here (bench/engines.py)."""
    from bench.engines import milvus_server, postgres_server

    if engine not in ENGINES:
        raise BenchError(f"unknown engine pair {engine!r}: use {', '.join(ENGINES)}")
    store, _, database = engine.partition("+")
    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if database == "postgresql":
            url = settings.database_url if (settings.database_url or "").startswith("postgresql") else None
            if url is None:
                log("starting a local PostgreSQL for the benchmark")
                url = stack.enter_context(postgres_server()).create("catalens_bench")
            env["CATALENS_DATABASE_URL"] = url
        if store == "milvus":
            if settings.milvus:
                env["CATALENS_VECTOR_STORE"] = settings.vector_store
            else:
                log("starting a local Milvus for the benchmark")
                env["CATALENS_VECTOR_STORE"] = stack.enter_context(milvus_server()).url + "/bench"
        yield env


def engine_index(settings: Settings, faiss_index: Path, catalog: Path, engine: str, env: dict[str, str], *,
                 log: Log = quiet) -> Path:
    """The same catalog built on these engines, in a folder of its own; embeddings are hard links to
    the FAISS index's caches, so nothing is embedded twice."""
    from indexer.runner import BuildOptions, build_index

    index_dir = faiss_index.parent / f"{faiss_index.name}-{engine.replace('+', '-')}"
    shutil.rmtree(index_dir, ignore_errors=True)
    index_dir.mkdir(parents=True)
    for cache in ("embeddings", "features"):
        if (faiss_index / cache).is_dir():
            shutil.copytree(faiss_index / cache, index_dir / cache, copy_function=os.link)
    engine_settings = settings.model_copy(update={
        "index_dir": index_dir, "database_url": env.get("CATALENS_DATABASE_URL"),
        "vector_store": env.get("CATALENS_VECTOR_STORE", "faiss")})
    log(f"building the index on {engine} in {index_dir} (embeddings from the cache)")
    t0 = time.perf_counter()
    summary = build_index(engine_settings, BuildOptions(catalog=catalog, progress=False), encoder=load_encoder(settings))
    log(f"built {summary.vectors} vectors on {engine} in {time.perf_counter() - t0:.1f}s")
    return index_dir


# --- one scenario ----------------------------------------------------------------------------


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
                        warmup: float, on_measure: Callable[[], None] = lambda: None) -> ScenarioStats:
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


def service_figures(results: dict[str, ScenarioStats | None], *, cores: int, threads: int) -> dict[str, Any]:
    """What the service adds to search (#18's targets), from one run's scenarios.

    Per single-client scenario: its search stages (encode + keyword + ann [+ rerank], the server's own
    means), p50 over them, and p50 less the HTTP floor (single_healthz) over them. Under 4 clients:
    text_uncached QPS against the in-process bound cores x 1000 / (encode + ann) of single_text_uncached,
    and against the same bound when each request's stages already run on `threads` of the cores (the
    server's intra-op threads: a single-client stage time measured on every core cannot run cores-fold).
    """
    floor = (results.get("single_healthz") or {}).get("p50_ms")
    out: dict[str, Any] = {"http_floor_p50_ms": floor}
    for name in ("single_text_uncached", "single_image"):
        stats = results.get(name)
        if not stats or not stats.get("p50_ms"):
            continue
        stages = stats["server_stage_mean_ms"]
        search = sum(stages.get(stage, 0.0) for stage in SEARCH_STAGES)
        if search <= 0:
            continue
        out[name] = {"search_stages_ms": round(search, 3), "p50_ms": stats["p50_ms"],
                     "p50_over_search": round(stats["p50_ms"] / search, 2),
                     "p50_less_http_floor_over_search": round((stats["p50_ms"] - floor) / search, 2)
                     if floor is not None else None}
    single, loaded = results.get("single_text_uncached"), results.get("text_uncached")
    if single and loaded:
        stages = single["server_stage_mean_ms"]
        bound = cores * 1000 / max(1e-6, stages.get("encode", 0.0) + stages.get("ann", 0.0))
        out["text_uncached_qps"] = loaded["qps"]
        out["in_process_bound_qps"] = round(bound, 1)
        out["text_uncached_vs_bound"] = round(loaded["qps"] / bound, 3)
        threaded = bound / max(1, min(threads, cores))
        out["in_process_bound_qps_at_server_threads"] = round(threaded, 1)
        out["text_uncached_vs_bound_at_server_threads"] = round(loaded["qps"] / threaded, 3)
    return out


# --- the benchmark ---------------------------------------------------------------------------


def measure_query(settings: Settings, *, n: int, seed: int = CATALOG_SEED, concurrency: int = 4,
                  duration: float = 10.0, warmup: float = 2.0, k: int = 10, server_threads: int | None = None,
                  query_pool: int = 20_000, zipf_exponent: float = 1.0, rebuild: bool = False,
                  server_timeout: float = 180.0, render_workers: int | None = None,
                  runtimes: Sequence[str] = ("auto",), engines: Sequence[str] = ("faiss+sqlite",),
                  log: Log = quiet) -> QueryBench:
    """Every scenario for `duration` seconds against a `catalens serve` of an n-product generated catalog."""
    import asyncio

    import httpx

    settings = with_random_weights(settings, log)
    threads = settings.torch_threads()
    server_threads = server_threads or threads
    set_threads(threads)
    catalog = ensure_catalog(settings, n=n, seed=seed, render_workers=render_workers, log=log)
    index_dir = ensure_query_index(settings, catalog, n=n, seed=seed, rebuild=rebuild, log=log)
    with open(catalog, newline="") as fh:
        rows = list(csv.DictReader(fh))
    product_ids = [row["product_id"] for row in rows]
    categories = sorted({row["category"] for row in rows if row.get("category")})
    image_bytes = [p.read_bytes() for p in sorted((catalog.parent / "queries").glob("image-*.jpg"))]
    stream = query_stream(seed + 17)
    pool = [next(stream) for _ in range(query_pool)]
    zipf = ZipfQueries(pool, zipf_exponent, seed=seed)
    rng = random.Random(seed)

    async def text_request(client):
        return await client.post("/v1/search/text", json={"query": zipf(), "k": k})

    async def text_unique_request(client):
        while True:  # a string never sent before: every request misses the server's embedding cache
            text = next(stream)
            if text not in zipf.sent:
                break
        return await client.post("/v1/search/text", json={"query": text, "k": k})

    async def filtered_request(client):
        category = categories[rng.randrange(len(categories))]
        return await client.post("/v1/search/text", json={"query": zipf(), "k": k, "filters": {"category": [category]}})

    async def rerank_request(client):
        return await client.post("/v1/search/text", json={"query": zipf(), "k": k, "rerank": True})

    async def image_request(client):
        data = image_bytes[rng.randrange(len(image_bytes))]
        return await client.post("/v1/search/image", files={"file": ("query.jpg", data, "image/jpeg")},
                                 data={"k": str(k)})

    async def healthz_request(client):
        return await client.get("/healthz")

    async def similar_request(client):
        return await client.get(f"/v1/products/{product_ids[rng.randrange(len(product_ids))]}/similar",
                                params={"k": k})

    by_runtime: dict[str, dict[str, ScenarioStats | None]] = {}
    by_engine: dict[str, dict[str, ScenarioStats | None]] = {}
    served: dict[str, str | None] = {}
    ready: dict[str, Any] = {}
    rerank_available, probe_status = False, 0
    runs = [(engine, runtime) for engine in engines for runtime in (runtimes if engine == engines[0] else runtimes[:1])]
    stack = contextlib.ExitStack()
    engine_env: dict[str, tuple[Path, dict[str, str]]] = {}
    for engine, runtime in runs:
        if engine not in engine_env:
            env = stack.enter_context(engine_servers(settings, engine, log))
            engine_env[engine] = (index_dir if not env else
                                  engine_index(settings, index_dir, catalog, engine, env, log=log), env)
        served_dir, env = engine_env[engine]
        results: dict[str, ScenarioStats | None] = dict.fromkeys(SCENARIOS)
        log_path = settings.bench_cache() / f"serve-{model_slug(settings.model)}-n{n}-{runtime}-{engine}.log"
        log(f"starting `catalens serve` ({server_threads} threads, runtime {runtime}, {engine}); log in {log_path}")
        with serve_subprocess(settings, served_dir, threads=server_threads, log_path=log_path,
                              timeout=server_timeout, env={"CATALENS_RUNTIME": runtime, **env}) as url:
            ready = httpx.get(f"{url}/readyz", timeout=5).json()
            served[runtime] = ready.get("runtime")
            probe = httpx.post(f"{url}/v1/search/text", json={"query": "red mug", "k": 1, "rerank": True}, timeout=30)
            rerank_available, probe_status = probe.status_code == 200, probe.status_code
            scenarios = [
                Scenario("text", text_request, {}),
                Scenario("text_uncached", text_unique_request, {"query_mix": "every query distinct (cache misses)"}),
                Scenario("text_filtered", filtered_request, {"filter": f"one category of {len(categories)} per request"}),
                Scenario("image", image_request, {"query_pool": len(image_bytes)}),
                Scenario("similar", similar_request, {"query_pool": len(product_ids)}),
            ]
            if rerank_available:
                scenarios.append(Scenario("text_rerank", rerank_request, {}))
            scenarios += [Scenario("single_text_uncached", text_unique_request, {"clients": 1}),
                          Scenario("single_image", image_request, {"clients": 1}),
                          Scenario("single_healthz", healthz_request, {"clients": 1})]
            for scenario in scenarios:
                if (scenario.name in ("image", "single_image") and not image_bytes) or \
                        (scenario.name == "text_filtered" and not categories):
                    continue
                clients = 1 if scenario.name in SINGLE else concurrency
                log(f"{scenario.name}: {clients} clients for {duration}s")
                before = [zipf.requests, zipf.repeats]

                def mark(before: list[int] = before) -> None:
                    before[:] = [zipf.requests, zipf.repeats]

                stats = asyncio.run(_run_scenario(url, scenario, concurrency=clients, duration=duration,
                                                  warmup=warmup, on_measure=mark))
                if scenario.name == "text":
                    # Over the measured window only; the warm-up's queries count as history (already cached).
                    sent, repeats = zipf.requests - before[0], zipf.repeats - before[1]
                    stats["query_mix"] = {
                        "pool_distinct": len(pool), "zipf_exponent": zipf_exponent, "requests_sent": sent,
                        "distinct_sent": len(zipf.sent),
                        "repeat_share": round(repeats / max(1, sent), 3),
                        "note": "repeat_share ~ the server's text-embedding cache hit rate "
                                f"(LRU of {settings.text_cache_size} entries per process)",
                    }
                results[scenario.name] = stats
        if engine == engines[0]:
            by_runtime[runtime] = results
        if runtime == runtimes[0]:
            by_engine[engine] = results
    stack.close()
    results = by_runtime[runtimes[0]]
    return QueryBench(
        text=results["text"],
        text_uncached=results["text_uncached"],
        text_filtered=results["text_filtered"],
        image=results["image"],
        similar=results["similar"],
        text_rerank=results["text_rerank"],
        single_text_uncached=results["single_text_uncached"],
        single_image=results["single_image"],
        single_healthz=results["single_healthz"],
        service=service_figures(results, cores=os.cpu_count() or 1, threads=server_threads),
        text_rerank_note=None if rerank_available else
        f"absent: the server answers rerank=true with HTTP {probe_status} (CATALENS_RERANKER=none?)",
        runtime=runtimes[0],
        by_runtime=by_runtime if len(runtimes) > 1 else None,
        engine=engines[0],
        by_engine=by_engine if len(engines) > 1 else None,
        served_runtime=served,
        model=settings.model,
        n=n,
        vectors=ready.get("vectors"),
        concurrency=concurrency,
        duration_s=duration,
        warmup_s=warmup,
        k=k,
        server_threads=server_threads,
        index_dir=str(index_dir),
    )
