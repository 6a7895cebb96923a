"""`bench ann`: FAISS factories on clustered synthetic vectors.

Build time, bytes per vector, recall@10 against exact search, single-query and batch QPS,
and which configuration to recommend.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Log, machine_info, quiet, utc_now
from bench.workload import CATALOG_SEED
from catalens.artifacts import FaissIndex
from catalens.config import Settings, set_threads

RECALL_TARGET = 0.95
FACTORIES = ("flat", "hnsw", "ivfsq8", "ivfpq")
ANN_DEFINITIONS = {
    "qps": "queries/s issuing one query per search call (as the service does), one caller",
    "qps_batch": "queries/s searching all queries in one call (FAISS parallelises over queries)",
    "recall@10": "share of the exact (Flat inner-product) top 10 found in the top 10",
    "bytes_per_vector": "serialised IDMap2 index size / n (includes the 8-byte ids Catalens stores)",
    "build_s": "train (on at most train_size vectors) + add, with `threads` threads",
}


@dataclass(kw_only=True)
class AnnBench:
    """One `bench ann` result; its fields are the JSON keys, in order.

    Each run: family, factory, params, recall@10, qps, latency_ms, qps_batch, build_s, bytes_per_vector.
    """

    bench: str = "ann"
    runs: list[dict[str, Any]]
    recommendation: dict[str, Any]
    n: int
    dim: int
    queries: int
    k: int
    data: dict[str, Any]
    threads: int
    definitions: dict[str, str] = field(default_factory=lambda: dict(ANN_DEFINITIONS))
    train_size: int
    machine: dict[str, Any] = field(default_factory=machine_info)
    created_at: str = field(default_factory=utc_now)


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


def ann_families(n: int, dim: int, *, factories: Sequence[str], hnsw_m: Sequence[int], ef_search: Sequence[int],
                 nlist: int | None, nprobe: Sequence[int],
                 pq_m: int | None) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(family, factory, parameter sweep) to run, in order."""
    nlist = nlist or int(2 ** round(np.log2(max(16.0, np.sqrt(n)))))
    nlist = max(1, min(nlist, n // 39 or 1))
    pq_m = pq_m or max(1, dim // 8)
    while dim % pq_m:
        pq_m -= 1
    wanted = set(factories)
    out: list[tuple[str, str, list[dict[str, Any]]]] = []
    if "flat" in wanted:
        out.append(("flat", "Flat", [{}]))
    if "hnsw" in wanted:
        for m in hnsw_m:
            out.append(("hnsw", f"HNSW{m}", [{"efSearch": ef} for ef in ef_search]))
    nprobes = [p for p in nprobe if p <= nlist] or [nlist]
    if "ivfsq8" in wanted:
        out.append(("ivfsq8", f"IVF{nlist},SQ8", [{"nprobe": p} for p in nprobes]))
    if "ivfpq" in wanted:
        out.append(("ivfpq", f"IVF{nlist},PQ{pq_m}", [{"nprobe": p} for p in nprobes]))
    return out


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


def measure_ann(settings: Settings, *, n: int = 1_000_000, dim: int = 512, queries: int = 1000,
                factories: Sequence[str] = FACTORIES, hnsw_m: Sequence[int] = (32,),
                ef_search: Sequence[int] = (16, 32, 64, 128, 256), nlist: int | None = None,
                nprobe: Sequence[int] = (1, 4, 8, 16, 32, 64, 128), pq_m: int | None = None,
                train_size: int = 65_536, clusters: int | None = None, spread: float = 0.8, decay: float = 1.0,
                time_per_point: float = 2.0, seed: int = CATALOG_SEED, log: Log = quiet) -> AnnBench:
    """Every factory's parameter sweep against exact search on n x dim clustered vectors."""
    import faiss

    threads = settings.torch_threads()
    set_threads(threads)
    k = 10
    clusters = clusters or max(8, n // 1000)
    log(f"generating {n:,} x {dim} clustered vectors ({clusters} clusters), {queries} queries")
    t0 = time.perf_counter()
    base, sample_queries = clustered_vectors(n, dim, clusters=clusters, spread=spread, decay=decay, seed=seed)
    query_vectors = sample_queries(queries)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = faiss.IndexFlatIP(dim)
    exact.add(base)
    truth_scores, truth = exact.search(query_vectors, k)
    del exact
    truth_s = time.perf_counter() - t0
    log(f"data in {gen_s:.1f}s, exact ground truth in {truth_s:.1f}s; "
        f"mean top-1 cosine {truth_scores[:, 0].mean():.3f}, top-10 {truth_scores[:, -1].mean():.3f}")
    sample_pairs = base[np.random.default_rng(seed + 2).integers(0, n, size=(2000, 2))]
    random_cos = float(np.einsum("ij,ij->i", sample_pairs[:, 0], sample_pairs[:, 1]).mean())

    runs: list[dict[str, Any]] = []
    root = settings.bench_cache()
    root.mkdir(parents=True, exist_ok=True)
    ids = np.arange(n, dtype=np.int64)
    families = ann_families(n, dim, factories=factories, hnsw_m=hnsw_m, ef_search=ef_search, nlist=nlist,
                            nprobe=nprobe, pq_m=pq_m)
    with tempfile.TemporaryDirectory(dir=root, prefix="ann-") as tmp:
        for family, factory, sweep in families:
            log(f"{factory}: building")
            t0 = time.perf_counter()
            # Catalens's own index construction (what a build writes), then the parameter sweep.
            index: Any = FaissIndex.build(base, ids, factory=factory, train_size=train_size, seed=seed + 3).index
            build_s = time.perf_counter() - t0
            bytes_per_vector = _index_bytes(index, Path(tmp)) / n
            params_space = faiss.ParameterSpace()
            for params in sweep:
                for key, value in params.items():
                    params_space.set_index_parameter(index, key, value)
                t0 = time.perf_counter()
                _, found = index.search(query_vectors, k)
                batch_qps = len(query_vectors) / (time.perf_counter() - t0)
                recall = _recall(found, truth, k)
                qps = _single_query_qps(index, query_vectors, k, time_per_point)
                runs.append({"family": family, "factory": factory, "params": params, "recall@10": round(recall, 4),
                             "qps": round(qps, 1), "latency_ms": round(1000 / qps, 3),
                             "qps_batch": round(batch_qps, 1), "build_s": round(build_s, 2),
                             "bytes_per_vector": round(bytes_per_vector, 1)})
                log(f"{factory} {params or ''}: recall@10 {recall:.4f}, {qps:,.0f} QPS single, "
                    f"{batch_qps:,.0f} QPS batch, build {build_s:.1f}s, {bytes_per_vector:.0f} B/vector")
            del index
    return AnnBench(
        runs=runs,
        recommendation=recommend_ann(runs, n=n),
        n=n, dim=dim, queries=queries, k=k,
        data={"clusters": clusters, "spread": spread, "decay": decay, "seed": seed,
              "mean_top1_cosine": round(float(truth_scores[:, 0].mean()), 4),
              "mean_top10_cosine": round(float(truth_scores[:, -1].mean()), 4),
              "mean_random_pair_cosine": round(random_cos, 4),
              "generate_s": round(gen_s, 1), "ground_truth_s": round(truth_s, 1)},
        threads=threads,
        train_size=train_size,
    )
