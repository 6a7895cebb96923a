"""`catalens bench index|query|ann|rerank|update`: run a measure_* function, write its JSON + PNG, print it.

Each command prints one JSON object with --json (else a short table) and writes
<out>/<name>.json and <out>/<name>.png, with the machine named. Generated catalogs and
query indexes are cached in the bench dir (--work-dir, else CATALENS_BENCH_DIR, else
~/.cache/catalens/bench) and reused by later runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.machine import DEFAULT_OUT, Log, model_slug, quiet, to_stderr, write_result
from bench.workload import CATALOG_SEED
from catalens.commandline import Subcommands, add_model_flags, emit
from catalens.config import Settings

if TYPE_CHECKING:
    from bench.ann import AnnBench
    from bench.index import IndexBench
    from bench.query import QueryBench
    from bench.rerank import RerankBench
    from bench.update import UpdateBench


def _log(args: argparse.Namespace) -> Log:
    return quiet if args.quiet else to_stderr


def _bench_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """--work-dir is the settings' bench_dir for this run."""
    return settings.model_copy(update={"bench_dir": args.work_dir}) if args.work_dir else settings


def _write(args: argparse.Namespace, name: str, result: Any, plot: Callable[[Any, Path], None]) -> dict[str, Any]:
    """The result as JSON (its dataclass fields, then "files") and, unless --no-plot, its PNG."""
    return write_result(args.out, name, asdict(result), None if args.no_plot else (lambda path: plot(result, path)),
                        _log(args))


# --- text output -------------------------------------------------------------------------------


def index_text(r: IndexBench, files: dict[str, str]) -> str:
    side = "".join(f"  runtime {name} ({f['runtime']}): end to end {f['end_to_end_ips']:.1f} img/s, model only "
                   f"{f['model_only_ips']:.1f} (CLIP alone {f['model_only_clip_ips']:.1f}), "
                   f"{f['end_to_end_vs_min_ceiling']:.0%} of min(model, decode)\n"
                   for name, f in (r.by_runtime or {}).items())
    return (f"bench index: {r.model}, {r.images} images ({r.n} products), batch {r.batch_size}, "
            f"{r.torch_threads} torch threads, {r.decode_workers} decode workers, runtime {r.runtime}\n"
            f"  end to end   {r.end_to_end_ips:9.1f} img/s  ({r.end_to_end_vs_model_only:.0%} of model-only)\n"
            f"  image stage  {r.image_stage_ips:9.1f} img/s  ({r.image_stage_vs_model_only:.0%} of model-only)\n"
            f"  model only   {r.model_only_ips:9.1f} img/s  (every model pass of the build; CLIP alone "
            f"{r.model_only_clip_ips:.1f})\n"
            f"  decode only  {r.decode_only_ips:9.1f} img/s\n"
            f"  shared-CPU ceiling {r.shared_cpu_bound_ips:.1f} img/s: end to end is {r.end_to_end_vs_shared_ceiling:.0%} "
            f"of it, {r.end_to_end_vs_min_ceiling:.0%} of min(model, decode)\n"
            f"  phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r.phases_s.items()) + "\n" + side +
            f"wrote {files}")


def query_text(r: QueryBench, files: dict[str, str]) -> str:
    from bench.query import SCENARIOS

    lines = [f"bench query: {r.model}, {r.n} products ({r.vectors} vectors), "
             f"{r.concurrency} clients x {r.duration_s}s, server threads {r.server_threads}",
             f"  {'scenario':<14}{'qps':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"]
    for key in SCENARIOS:
        s = getattr(r, key)
        if s is None:
            lines.append(f"  {key:<14}{'absent':>9}")
        else:
            lines.append(f"  {key:<14}{s['qps']:>9.1f}{s['p50_ms'] or 0:>9.1f}{s['p95_ms'] or 0:>9.1f}"
                         f"{s['p99_ms'] or 0:>9.1f}{s['errors']:>8}")
    for engine, stats in (r.by_engine or {}).items():
        lines.append(f"  {engine}: " + ", ".join(
            f"{key} {s['qps']:.0f} qps p50 {s['p50_ms']:.1f} p99 {s['p99_ms']:.1f} ms ({s['errors']} errors)"
            for key, s in stats.items() if s and key in ("text", "text_filtered", "similar")))
    for runtime, stats in (r.by_runtime or {}).items():
        lines.append(f"  runtime {runtime}: " + ", ".join(
            f"{key} p50 {s['p50_ms']:.1f} ms" for key, s in stats.items() if s and key in ("single_text_uncached",
                                                                                       "single_image", "text")))
    if r.text:
        mix = r.text["query_mix"]
        lines.append(f"  text mix: Zipf {mix['zipf_exponent']} over {mix['pool_distinct']} distinct queries, "
                     f"repeat share {mix['repeat_share']:.0%}")
    lines.append(f"wrote {files}")
    return "\n".join(lines)


def ann_text(r: AnnBench, files: dict[str, str]) -> str:
    lines = [f"bench ann: {r.n:,} x {r.dim}, {r.queries} queries, {r.threads} threads",
             f"  {'factory':<18}{'params':<16}{'recall@10':>10}{'QPS':>10}{'QPS batch':>11}{'build s':>9}{'B/vec':>8}"]
    for run in r.runs:
        params = ",".join(f"{k}={v}" for k, v in run["params"].items()) or "-"
        lines.append(f"  {run['factory']:<18}{params:<16}{run['recall@10']:>10.4f}{run['qps']:>10,.0f}"
                     f"{run['qps_batch']:>11,.0f}{run['build_s']:>9.1f}{run['bytes_per_vector']:>8.0f}")
    lines.append(f"  recommendation: {r.recommendation['summary']}")
    lines.append(f"wrote {files}")
    return "\n".join(lines)


def rerank_text(r: RerankBench, files: dict[str, str]) -> str:
    return (f"bench rerank: {r.reranker}, top {r.top_n}, {r.torch_threads} threads\n"
            f"  score    p50 {r.score_p50_ms:.1f} ms  p95 {r.score_p95_ms:.1f} ms  ({r.pairs_per_s:.0f} pairs/s)\n"
            f"  features {r.feature_ms_per_image:.1f} ms/image at index time, {r.feature_bytes_per_image:,} "
            f"bytes/image (fp16 {tuple(r.feature_shape)})\nwrote {files}")


# --- handlers ----------------------------------------------------------------------------------


def cmd_bench_index(args: argparse.Namespace, settings: Settings) -> int:
    from bench.index import measure_index
    from bench.plots import plot_index

    result = measure_index(_bench_settings(args, settings), n=args.n, seed=args.seed,
                           decode_workers=args.decode_workers, model_only_mb=args.model_only_mb,
                           render_workers=args.render_workers, runtimes=args.runtimes, log=_log(args))
    data = _write(args, f"index-{model_slug(result.model)}-n{result.n}", result, plot_index)
    emit(args, data, index_text(result, data["files"]))
    return 0


def cmd_bench_clip_retrieval(args: argparse.Namespace, settings: Settings) -> int:
    from bench.plots import plot_versus
    from bench.versus import measure_versus

    result = measure_versus(_bench_settings(args, settings), clip_retrieval=args.clip_retrieval, n=args.n,
                            seed=args.seed, render_workers=args.render_workers, log=_log(args))
    data = _write(args, f"clip-retrieval-{model_slug(result.model)}-n{args.n}", result, plot_versus)
    emit(args, data, f"bench clip-retrieval: {result.model}, {result.images} images, whole processes\n"
                     f"  catalens index build ({result.catalens_runtime})  {result.catalens_wall_s:7.1f} s  "
                     f"{result.catalens_ips:6.1f} img/s\n"
                     f"  clip-retrieval inference       {result.clip_retrieval_wall_s:7.1f} s  "
                     f"{result.clip_retrieval_ips:6.1f} img/s (its own, after load and warm-up: "
                     f"{result.clip_retrieval_own_ips})\n"
                     f"  catalens is {result.speedup:.2f}x; embeddings agree to cosine >= "
                     f"{result.embeddings_cosine_min}\nwrote {data['files']}")
    return 0


def cmd_bench_query(args: argparse.Namespace, settings: Settings) -> int:
    from bench.plots import plot_query
    from bench.query import measure_query

    result = measure_query(_bench_settings(args, settings), n=args.n, seed=args.seed, concurrency=args.concurrency,
                           duration=args.duration, warmup=args.warmup, k=args.k, server_threads=args.server_threads,
                           query_pool=args.query_pool, zipf_exponent=args.zipf, rebuild=args.rebuild,
                           server_timeout=args.server_timeout, render_workers=args.render_workers,
                           runtimes=args.runtimes, engines=args.engines, log=_log(args))
    data = _write(args, f"query-{model_slug(result.model)}-n{result.n}-c{result.concurrency}", result, plot_query)
    emit(args, data, query_text(result, data["files"]))
    return 0


def cmd_bench_ann(args: argparse.Namespace, settings: Settings) -> int:
    from bench.ann import measure_ann
    from bench.plots import plot_ann

    result = measure_ann(_bench_settings(args, settings), n=args.n, dim=args.dim, queries=args.queries,
                         factories=args.factories, hnsw_m=args.hnsw_m, ef_search=args.ef_search, nlist=args.nlist,
                         nprobe=args.nprobe, pq_m=args.pq_m, train_size=args.train_size, clusters=args.clusters,
                         spread=args.spread, decay=args.decay, time_per_point=args.time_per_point, seed=args.seed,
                         log=_log(args))
    data = _write(args, f"ann-n{result.n}-d{result.dim}", result, plot_ann)
    emit(args, data, ann_text(result, data["files"]))
    return 0


def cmd_bench_rerank(args: argparse.Namespace, settings: Settings) -> int:
    from bench.plots import plot_rerank
    from bench.rerank import measure_rerank

    name = args.reranker or settings.reranker
    result = measure_rerank(_bench_settings(args, settings), reranker=name, random_init=args.random_init,
                            top_n=args.top_n, duration=args.duration, seed=args.seed, log=_log(args))
    slug = model_slug(name.replace(":", "-").replace("@", "-"))
    data = _write(args, f"rerank-{slug}-top{result.top_n}", result, plot_rerank)
    emit(args, data, rerank_text(result, data["files"]))
    return 0


def update_text(r: UpdateBench, files: dict[str, str]) -> str:
    lines = [f"bench update: {r.model}, {r.n} products, {r.samples} changes of each kind"]
    for kind in ("upsert", "patch", "delete"):
        stats = getattr(r, kind)
        base = (r.baseline or {}).get(kind)
        lines.append(f"  {kind:<7} visible p50 {stats['p50_ms']:8.1f} ms  p99 {stats['p99_ms']:8.1f} ms"
                     + (f"   (full republish: p50 {base['p50_ms']:.0f}, p99 {base['p99_ms']:.0f})" if base else ""))
    for size, stats in r.search_live.items():
        lines.append(f"  search with {int(size):>6} live changes: p50 {stats['p50_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms")
    return "\n".join(lines) + f"\nwrote {files}"


def cmd_bench_update(args: argparse.Namespace, settings: Settings) -> int:
    from bench.plots import plot_update
    from bench.update import measure_update

    result = measure_update(_bench_settings(args, settings), n=args.n, seed=args.seed, samples=args.samples,
                            live_sizes=tuple(args.live_sizes), queries=args.queries, baseline=args.baseline,
                            log=_log(args))
    data = _write(args, f"update-{model_slug(result.model)}-n{result.n}", result, plot_update)
    emit(args, data, update_text(result, data["files"]))
    return 0


# --- parser ------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _runtimes(text: str) -> list[str]:
    names = _names(text)
    bad = [n for n in names if n not in ("auto", "torch", "onnx")]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"runtimes are auto, torch and onnx, comma-separated; got {text!r}")
    return names


def _engines(text: str) -> list[str]:
    from bench.query import ENGINES

    names = _names(text)
    bad = [n for n in names if n not in ENGINES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"engines are {', '.join(ENGINES)}, comma-separated; got {text!r}")
    return names


def _names(text: str) -> list[str]:
    return [x.strip().lower() for x in text.split(",") if x.strip()]


def _bench_flags(p: argparse.ArgumentParser, *, model: bool) -> None:
    """Every bench command's output and cache flags; with model=True, the CLIP and catalog flags."""
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder (default: bench-results/)")
    p.add_argument("--work-dir", type=Path, default=None,
                   help="cache for generated catalogs and indexes (default: $CATALENS_BENCH_DIR or "
                        "~/.cache/catalens/bench)")
    p.add_argument("--seed", type=int, default=CATALOG_SEED)
    p.add_argument("--no-plot", action="store_true", help="JSON only, no PNG")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    if model:
        add_model_flags(p)  # --model, --pretrained, --device, --batch-size, --threads
        p.add_argument("--render-workers", type=int, default=None,
                       help="processes rendering a new catalog (default: all cores)")
    else:
        p.add_argument("--threads", type=int, default=None,
                       help="torch/FAISS threads (default: $CATALENS_THREADS, else all cores)")


def register(sub: Subcommands) -> None:
    """Add `bench index|clip-retrieval|query|ann|rerank|update` to the `catalens` command."""
    bench = sub.add_parser("bench", help="benchmarks: indexing throughput, query latency, ANN recall/QPS, rerank cost")
    kinds = bench.add_subparsers(dest="bench_command", required=True, metavar="KIND")

    p = kinds.add_parser("index", help="end-to-end indexing images/s next to model-only and decode-only ceilings")
    p.add_argument("--n", type=int, default=2000, help="products in the generated catalog (~1.4 images each)")
    p.add_argument("--decode-workers", type=int, default=None,
                   help="reader threads (default: $CATALENS_DECODE_WORKERS, else 2)")
    p.add_argument("--model-only-mb", type=float, default=1024,
                   help="memory for the pre-decoded tensors of the model-only run")
    p.add_argument("--runtimes", type=_runtimes, default=["auto"],
                   help="CLIP runtimes of the build, side by side on the same decoded images: e.g. torch,onnx "
                        "(the first one's figures are the top-level keys)")
    _bench_flags(p, model=True)
    p.set_defaults(handler=cmd_bench_index)

    p = kinds.add_parser("clip-retrieval", help="the same images and weights through `clip-retrieval inference` and "
                         "`catalens index build`, whole processes side by side")
    p.add_argument("--clip-retrieval", type=Path, required=True, metavar="COMMAND",
                   help="the clip-retrieval command of its own virtualenv, e.g. /opt/crvenv/bin/clip-retrieval")
    p.add_argument("--n", type=int, default=300, help="products in the generated catalog (~1.4 images each)")
    _bench_flags(p, model=True)
    p.set_defaults(handler=cmd_bench_clip_retrieval)

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
    p.add_argument("--runtimes", type=_runtimes, default=["auto"],
                   help="query-time CLIP runtimes, each its own server, side by side: e.g. torch,onnx "
                        "(the first one's figures are the top-level keys)")
    p.add_argument("--engines", type=_engines, default=["faiss+sqlite"],
                   help="vector store + catalog of record pairs, each its own server on the same catalog, side by "
                        "side: faiss+sqlite, milvus+postgresql, faiss+postgresql, milvus+sqlite (PostgreSQL and "
                        "Milvus: --database-url / --vector-store, else local servers started for the run)")
    p.add_argument("--database-url", default=None, help="PostgreSQL for the +postgresql pairs (default: a local one)")
    p.add_argument("--vector-store", default=None, help="Milvus for the milvus+ pairs (default: a local one)")
    _bench_flags(p, model=True)
    p.set_defaults(handler=cmd_bench_query)

    p = kinds.add_parser("update", help="live upsert / patch / delete: time until search shows it; search cost "
                                        "by live-layer size")
    p.add_argument("--n", type=int, default=10_000, help="products in the generated catalog")
    p.add_argument("--samples", type=int, default=20, help="changes of each kind timed")
    p.add_argument("--live-sizes", type=_ints, default=[0, 1000, 10_000],
                   help="live-layer sizes to time searches at (comma-separated)")
    p.add_argument("--queries", type=int, default=200, help="searches timed per live-layer size")
    p.add_argument("--baseline", type=Path, default=None,
                   help="JSON of the same changes on an earlier build ({kind: {p50_ms, p99_ms}}), shown beside")
    _bench_flags(p, model=True)
    p.set_defaults(handler=cmd_bench_update)

    p = kinds.add_parser("rerank", help="reranker cost: query-time scoring of top_n candidates, index-time features")
    p.add_argument("--reranker", default=None, help="catalens-itm (default), blip:<id>, coca:<model>@<pretrained>")
    p.add_argument("--random-init", action="store_true",
                   help="blip:/coca: only: the real architecture with random weights (no hub needed; timing only)")
    p.add_argument("--top-n", type=int, default=20, help="candidates per query")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of repeated scoring")
    _bench_flags(p, model=False)
    p.set_defaults(handler=cmd_bench_rerank)

    p = kinds.add_parser("ann", help="FAISS recall@10 / QPS / build time / bytes per vector on synthetic vectors")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--factories", type=_names, default=["flat", "hnsw", "ivfsq8", "ivfpq"],
                   help="subset of flat,hnsw,ivfsq8,ivfpq")
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
    _bench_flags(p, model=False)
    p.set_defaults(handler=cmd_bench_ann)

