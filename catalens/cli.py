"""The `catalens` command line: sample data, index lifecycle, search, serve, evaluate, benchmark."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from catalens.config import DEFAULT_MODEL, Settings
from catalens.errors import CatalensError

Handler = Callable[[argparse.Namespace, Settings], int]


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given on the command line."""
    overrides: dict[str, Any] = {}
    for name in ("index_dir", "model", "pretrained", "device", "batch_size", "threads", "database_url", "reranker",
                 "rerank_features"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


# --- sample / train ----------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    from catalens.world import write_sample_catalog

    catalog = write_sample_catalog(args.out, n=args.n, seed=args.seed, progress=not args.quiet)
    emit(args, {"catalog": str(catalog), "queries": str(args.out / "queries.jsonl")},
         f"wrote {catalog} ({args.n} products), images in {args.out / 'images'}, "
         f"queries in {args.out / 'queries.jsonl'}")
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from training.train_clip import run

    summary = run(args)
    emit(args, summary, f"weights, log and metrics written to {args.out}: {json.dumps(summary['metrics'])}")
    return 0


# --- index -------------------------------------------------------------------------------


def _build(args: argparse.Namespace, settings: Settings, *, full: bool) -> int:
    from indexer.builder import BuildOptions, build_index

    catalog = args.catalog or _last_catalog(settings)
    options = BuildOptions(catalog=catalog, images_root=args.images_root, strict=args.strict,
                           factory=args.faiss_factory, full=full, progress=not args.quiet, keep=args.keep,
                           caption=args.caption)
    summary = build_index(settings, options)
    text = (f"index version {summary.version_id} is active: read {summary.read} rows, indexed "
            f"{summary.indexed}, skipped {summary.skipped}, deleted {summary.deleted}; images ok "
            f"{summary.images_ok}, failed {summary.images_failed}; embedded {summary.embedded}, "
            f"from cache {summary.cached}; texts embedded {summary.texts_embedded}, from cache "
            f"{summary.texts_cached}; {summary.vectors} vectors ({summary.factory}) in {summary.seconds}s")
    if summary.errors_hint:
        text += f"\nerrors were recorded; list them with: {summary.errors_hint}"
        for line in summary.error_lines[:5]:
            text += f"\n  {line}"
    emit(args, summary.as_dict(), text)
    return 0


def _last_catalog(settings: Settings) -> Path:
    from catalens import artifacts

    versions = artifacts.list_versions(settings.index_dir)
    if not versions:
        raise CatalensError(f"no --catalog given and no earlier build in {settings.index_dir} to take it from")
    return Path(versions[-1].catalog)


def cmd_index_build(args: argparse.Namespace, settings: Settings) -> int:
    return _build(args, settings, full=True)


def cmd_index_upsert(args: argparse.Namespace, settings: Settings) -> int:
    return _build(args, settings, full=False)


def cmd_index_delete(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.maintenance import delete_products

    ids = list(args.ids or [])
    if args.ids_file:
        ids += [line.strip() for line in args.ids_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise CatalensError("give product ids with --ids or --ids-file")
    result = delete_products(settings, ids)
    emit(args, result, f"deleted {result['deleted']} products ({result['missing']} not found); "
                       f"index version {result['version_id']} is active")
    return 0


def cmd_index_versions(args: argparse.Namespace, settings: Settings) -> int:
    from catalens import artifacts

    active = artifacts.read_active(settings.index_dir)
    rows = [{"version_id": m.version_id, "active": m.version_id == active, "count": m.count,
             "model": m.model_id, "factory": m.factory, "created_at": m.created_at}
            for m in artifacts.list_versions(settings.index_dir)]
    lines = [f"{'*' if r['active'] else ' '} {r['version_id']}  {r['count']:>8} vectors  {r['factory']:<10} "
             f"{r['model']}  {r['created_at']}" for r in rows]
    emit(args, rows, "\n".join(lines) or f"no index versions in {settings.index_dir}")
    return 0


def cmd_index_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from catalens import artifacts

    versions = [m.version_id for m in artifacts.list_versions(settings.index_dir)]
    active = artifacts.read_active(settings.index_dir)
    target = args.version
    if target is None:
        older = [v for v in versions if active is None or v < active]
        if not older:
            raise CatalensError(f"no version older than {active} to roll back to")
        target = older[-1]
    artifacts.set_active(settings.index_dir, target)
    emit(args, {"active": target, "previous": active}, f"active index version is now {target} (was {active})")
    return 0


def cmd_index_errors(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from catalens.schema import IngestError
    from indexer.builder import open_database

    _, sessions = open_database(settings)
    with sessions() as session:  # type: ignore[operator]
        query = select(IngestError).order_by(IngestError.id)
        if args.version:
            query = query.where(IngestError.version_id == args.version)
        rows = session.scalars(query.limit(args.limit)).all()
    data = [{"version_id": e.version_id, "source": e.source_file, "row": e.row, "product_id": e.product_id,
             "field": e.field, "code": e.code, "message": e.message} for e in rows]
    lines = [f"{d['source']}" + (f": row {d['row']}" if d["row"] else "") + (f" [{d['product_id']}]" if d["product_id"] else "")
             + (f", field {d['field']}" if d["field"] else "") + f": {d['code']}: {d['message']}" for d in data]
    emit(args, data, "\n".join(lines) or "no ingest errors recorded")
    return 0


def cmd_index_duplicates(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from indexer.maintenance import find_duplicates

    groups = find_duplicates(settings, threshold=args.threshold)
    lines = [f"{len(g.product_ids):>3} products  {g.match:<14} min score {g.min_score:.4f}  "
             + " ".join(g.product_ids) for g in groups]
    emit(args, [asdict(g) for g in groups],
         "\n".join(lines) or f"no duplicate images at cosine >= {args.threshold}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from catalens.db import upgrade_database

    upgrade_database(settings.db_url, args.revision)
    emit(args, {"database": settings.db_url, "revision": args.revision},
         f"database {settings.db_url} upgraded to {args.revision}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace, settings: Settings) -> int:
    from catalens.db import downgrade_database

    downgrade_database(settings.db_url, args.revision)
    emit(args, {"database": settings.db_url, "revision": args.revision},
         f"database {settings.db_url} downgraded to {args.revision}")
    return 0


# --- search / serve / eval ----------------------------------------------------------------


def _loaded_searcher(settings: Settings):  # type: ignore[no-untyped-def]
    from retrieval.app import create_searcher

    searcher = create_searcher(settings)
    searcher.reload()
    return searcher


def _print_results(args: argparse.Namespace, outcome: Any) -> None:
    from retrieval.schemas import result_from_hit

    results = [result_from_hit(h).model_dump() for h in outcome.hits]
    lines = [f"{i + 1:>3}. {r['score']:.4f}  {r['product_id']}  {r['title']}"
             f"  [{r['category'] or '-'} | {r['brand'] or '-'} | {r['price'] if r['price'] is not None else '-'}]"
             for i, r in enumerate(results)]
    emit(args, {"results": results, "index_version": outcome.index_version, "reranked": outcome.reranked},
         "\n".join(lines) or "no results")


def _filters(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from retrieval.searcher import Filters

    return Filters(tuple(args.category or ()), tuple(args.brand or ()), args.price_min, args.price_max)


def cmd_search_text(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from retrieval.schemas import TextSearchIn

    try:
        TextSearchIn(query=args.query, k=args.k)
    except ValidationError as exc:
        raise CatalensError(f"invalid query: {exc.errors()[0]['msg']}") from exc
    _print_results(args, _loaded_searcher(settings).search_text(args.query.strip(), args.k, _filters(args),
                                                                rerank=args.rerank, rerank_top_n=args.rerank_top_n))
    return 0


def cmd_search_image(args: argparse.Namespace, settings: Settings) -> int:
    from catalens.images import decode_image, read_image_source

    data = read_image_source(str(args.path), images_root=None, timeout_s=settings.fetch_timeout_s,
                             max_bytes=settings.max_upload_bytes)
    image = decode_image(data, max_pixels=settings.max_image_pixels)
    _print_results(args, _loaded_searcher(settings).search_image(image, args.k, _filters(args), rerank=args.rerank,
                                                                 rerank_top_n=args.rerank_top_n))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from retrieval.app import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from catalens import artifacts
    from catalens.world import write_sample_catalog
    from indexer.builder import BuildOptions, build_index

    sample_dir = settings.index_dir / "sample"
    catalog = sample_dir / "catalog.csv"
    if not catalog.is_file():
        print(f"generating the sample catalog ({args.n} products) in {sample_dir}", file=sys.stderr)
        write_sample_catalog(sample_dir, n=args.n, seed=args.seed)
    if artifacts.read_active(settings.index_dir) is None:
        summary = build_index(settings, BuildOptions(catalog=catalog))
        print(f"built index version {summary.version_id}: {summary.vectors} vectors", file=sys.stderr)
    print(f"serving Catalens on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
    return cmd_serve(args, settings)


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from retrieval.evaluation import evaluate_queries

    report = evaluate_queries(_loaded_searcher(settings), args.queries, k=10, rerank=args.rerank,
                              progress=not args.json)
    lines = [f"{name:<11} n={m['n']:<4} R@1 {m['recall@1']:.3f}  R@5 {m['recall@5']:.3f}  "
             f"R@10 {m['recall@10']:.3f}  MRR {m['mrr']:.3f}  nDCG@10 {m['ndcg@10']:.3f}"
             for name, m in report.items()]
    emit(args, report, "\n".join(lines))
    return 0


# --- parser ------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser, *, model: bool = False, json_flag: bool = True) -> None:
    p.add_argument("--index-dir", type=Path, default=None,
                   help="index folder (default: $CATALENS_INDEX_DIR or ./catalens-data)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object")
    if model:
        p.add_argument("--model", default=None,
                       help=f"bundled name, open_clip name or model folder (default: {DEFAULT_MODEL})")
        p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
        p.add_argument("--batch-size", type=int, default=None)
        p.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: cores)")
        p.add_argument("--reranker", default=None,
                       help="second stage: catalens-itm (default), blip:<id or folder>, "
                            "coca:<model or config.json>@<pretrained>, or none")


def _top_n(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..100")
    return value


def _filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=10, help="results to return (1..100)")
    p.add_argument("--category", action="append", help="keep only this category (repeatable)")
    p.add_argument("--brand", action="append", help="keep only this brand (repeatable)")
    p.add_argument("--price-min", type=float, default=None)
    p.add_argument("--price-max", type=float, default=None)
    p.add_argument("--rerank", action="store_true", help="reorder the top candidates with the reranker")
    p.add_argument("--rerank-top-n", type=_top_n, default=None, metavar="N",
                   help="candidates the reranker reads (1..100, default 20)")


def _build_flags(p: argparse.ArgumentParser, *, catalog_required: bool) -> None:
    p.add_argument("--catalog", type=Path, required=catalog_required, help="CSV, JSONL or Parquet file")
    p.add_argument("--images-root", type=Path, default=None,
                   help="base folder for relative image paths (default: the catalog's folder)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    p.add_argument("--faiss-factory", default=None, help="FAISS factory string (default: by size)")
    p.add_argument("--keep", type=int, default=3, help="index versions to keep")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--caption", action="store_true",
                   help="store a generated caption per image (needs a reranker that can caption, e.g. coca:...)")
    p.add_argument("--no-rerank-features", dest="rerank_features", action="store_false", default=None,
                   help="do not store reranker image features (smaller index; reranking then decodes images)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catalens", description="Cross-modal product search.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="generate the sample catalog, images and labelled queries")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quiet", action="store_true")
    _common(p)
    p.set_defaults(handler=cmd_sample)

    from training.train_clip import build_parser as train_parser

    p = sub.add_parser("train-model", help="train the bundled CLIP (or, --kind itm, the reranker) on the generated world (CPU)")
    train_parser(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_train)

    index = sub.add_parser("index", help="build and maintain the index").add_subparsers(
        dest="index_command", required=True, metavar="ACTION")
    p = index.add_parser("build", help="build a new index version from a catalog and make it active")
    _build_flags(p, catalog_required=True)
    _common(p, model=True)
    p.set_defaults(handler=cmd_index_build)
    p = index.add_parser("rebuild", help="full offline rebuild into a new version, then an atomic swap")
    _build_flags(p, catalog_required=False)
    _common(p, model=True)
    p.set_defaults(handler=cmd_index_build)
    p = index.add_parser("upsert", help="add new and update changed products (only changes are embedded)")
    _build_flags(p, catalog_required=True)
    _common(p, model=True)
    p.set_defaults(handler=cmd_index_upsert)
    p = index.add_parser("delete", help="remove products from the index")
    p.add_argument("--ids", nargs="+", help="product ids")
    p.add_argument("--ids-file", type=Path, help="file with one product id per line")
    _common(p, model=True)
    p.set_defaults(handler=cmd_index_delete)
    p = index.add_parser("versions", help="list index versions (* = active)")
    _common(p)
    p.set_defaults(handler=cmd_index_versions)
    p = index.add_parser("rollback", help="make an earlier version active (default: the one before)")
    p.add_argument("version", nargs="?")
    _common(p)
    p.set_defaults(handler=cmd_index_rollback)
    p = index.add_parser("errors", help="list rows and images that could not be ingested")
    p.add_argument("--version", default=None, help="only this build's errors")
    p.add_argument("--limit", type=int, default=1000)
    _common(p)
    p.set_defaults(handler=cmd_index_errors)
    p = index.add_parser("duplicates", help="group products whose images are identical or near-identical")
    p.add_argument("--threshold", type=float, default=0.98,
                   help="cosine similarity at or above which two images count as near-identical")
    _common(p)
    p.set_defaults(handler=cmd_index_duplicates)

    db = sub.add_parser("db", help="database schema migrations").add_subparsers(
        dest="db_command", required=True, metavar="ACTION")
    p = db.add_parser("upgrade", help="create or upgrade the schema (Alembic)")
    p.add_argument("revision", nargs="?", default="head")
    _common(p)
    p.set_defaults(handler=cmd_db_upgrade)
    p = db.add_parser("downgrade", help="downgrade the schema (Alembic)")
    p.add_argument("revision", nargs="?", default="base")
    _common(p)
    p.set_defaults(handler=cmd_db_downgrade)

    search = sub.add_parser("search", help="query the active index").add_subparsers(
        dest="search_command", required=True, metavar="KIND")
    p = search.add_parser("text", help="text-to-image product search")
    p.add_argument("query")
    _filter_flags(p)
    _common(p, model=True)
    p.set_defaults(handler=cmd_search_text)
    p = search.add_parser("image", help="find products that look like an image file")
    p.add_argument("path", type=Path)
    _filter_flags(p)
    _common(p, model=True)
    p.set_defaults(handler=cmd_search_image)

    for name, handler, text in (("serve", cmd_serve, "serve the HTTP API and search page"),
                                ("demo", cmd_demo, "generate the sample catalog, build its index, serve")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        if name == "demo":
            p.add_argument("--n", type=int, default=2000, help="sample catalog size")
            p.add_argument("--seed", type=int, default=7)
        _common(p, model=True, json_flag=False)
        p.set_defaults(handler=handler)

    p = sub.add_parser("eval", help="retrieval quality on labelled queries (queries.jsonl)")
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--rerank", action="store_true",
                   help="also report every query set reranked (as '<set>+rerank'), with the configured reranker")
    _common(p, model=True)
    p.set_defaults(handler=cmd_eval)

    from catalens.bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("CATALENS_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args, settings_from(args))
    except CatalensError as exc:
        print(f"catalens: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("catalens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # pydantic settings errors and the like: one line, no traceback
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            print(f"catalens: error: invalid setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
