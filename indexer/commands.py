"""`catalens index ...`: build, rebuild, upsert, patch, delete, compact, versions, rollback, errors, duplicates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from catalens.commandline import Subcommands, add_common_flags, emit
from catalens.config import Settings
from catalens.errors import CatalensError, ConfigError

if TYPE_CHECKING:
    from indexer.live import EditContext


def _build(args: argparse.Namespace, settings: Settings, *, full: bool) -> int:
    from indexer.runner import BuildOptions, build_index

    _check_engine(args.engine, args.ray_address)
    options = BuildOptions(catalog=args.catalog, images_root=args.images_root, strict=args.strict,
                           factory=args.faiss_factory, full=full, progress=not args.quiet, keep=args.keep,
                           caption=args.caption, describe=args.describe, engine=args.engine,
                           ray_address=args.ray_address)
    summary = build_index(settings, options)
    text = (f"index version {summary.version_id} is active: read {summary.read} rows, indexed "
            f"{summary.indexed}, skipped {summary.skipped}, deleted {summary.deleted}; images ok "
            f"{summary.images_ok}, failed {summary.images_failed}; embedded {summary.embedded}, "
            f"from cache {summary.cached}; texts embedded {summary.texts_embedded}, from cache "
            f"{summary.texts_cached}; {summary.vectors} vectors ({summary.factory}) in {summary.seconds}s"
            + (f"; {summary.described} descriptions generated" if summary.described else ""))
    if summary.errors_hint:
        text += f"\nerrors were recorded; list them with: {summary.errors_hint}"
        for line in summary.error_lines[:5]:
            text += f"\n  {line}"
    emit(args, summary.as_dict(), text)
    return 0


def _check_engine(engine: str, ray_address: str | None) -> None:
    """Refuse a bad --engine/--ray-address pair before the build starts (Ray itself is imported here only to
    say that it is missing)."""
    if engine != "ray":
        if ray_address is not None:
            raise ConfigError("--ray-address needs --engine ray")
        return
    from indexer.ray_engine import check_address, import_ray

    check_address(ray_address)
    import_ray()


def cmd_index_build(args: argparse.Namespace, settings: Settings) -> int:
    return _build(args, settings, full=True)


def _edit_context(settings: Settings) -> EditContext:
    from indexer.live import EditContext

    return EditContext(settings)


def _then_compact(args: argparse.Namespace, ctx: EditContext, text: str) -> str:
    """Apply the edit to Milvus when it holds the vectors, and fold the live changes into a new
    snapshot once CATALENS_COMPACT_AFTER are pending."""
    from indexer.live import compact, compact_due, sync_vector_store

    text += sync_vector_store(ctx)
    if not compact_due(ctx):
        return text
    result = compact(ctx)
    return text + (f"\n{result.folded} live changes passed CATALENS_COMPACT_AFTER: folded into index version "
                   f"{result.version_id} ({result.seconds}s)")


def cmd_index_upsert(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from indexer.live import upsert_file

    ctx = _edit_context(settings)
    summary = upsert_file(ctx, args.catalog, images_root=args.images_root, strict=args.strict,
                          progress=not args.quiet)
    text = (f"upserted {summary.upserted} products live (change {summary.seq}): images ok {summary.images_ok}, "
            f"failed {summary.images_failed}; embedded {summary.images_embedded}, from cache {summary.images_cached}; "
            f"texts embedded {summary.texts_embedded}")
    for line in summary.errors[:5]:
        text += f"\n  {line}"
    emit(args, asdict(summary), _then_compact(args, ctx, text))
    return 0


def _field_value(text: str) -> tuple[str, object]:
    """NAME=VALUE from --set: VALUE as JSON when it parses (numbers, null, objects), else the string."""
    import json

    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise CatalensError(f"--set {text!r}: expected NAME=VALUE, e.g. --set price=19.99")
    try:
        return name.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return name.strip(), raw


def cmd_index_patch(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from indexer.live import patch_product

    ctx = _edit_context(settings)
    result = patch_product(ctx, args.product_id, dict(_field_value(item) for item in args.set))
    text = (f"patched {args.product_id}: {', '.join(result.changed)} (change {result.seq})" if result.changed
            else f"{args.product_id}: no field changed")
    emit(args, asdict(result), _then_compact(args, ctx, text))
    return 0


def cmd_index_delete(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from indexer.live import delete_products

    ids = list(args.ids or [])
    if args.ids_file:
        ids += [line.strip() for line in args.ids_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise CatalensError("give product ids with --ids or --ids-file")
    ctx = _edit_context(settings)
    result = delete_products(ctx, ids)
    emit(args, asdict(result), _then_compact(args, ctx, f"deleted {result.deleted} products live "
                                                        f"({result.missing} not found; change {result.seq})"))
    return 0


def cmd_index_compact(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from indexer.live import compact

    result = compact(_edit_context(settings), keep=args.keep)
    emit(args, asdict(result), f"folded {result.folded} live changes into index version {result.version_id} "
                               f"({result.vectors} vectors, {result.seconds}s)")
    return 0


def cmd_index_versions(args: argparse.Namespace, settings: Settings) -> int:
    from catalens import artifacts

    state = artifacts.read_active_state(settings.index_dir)
    active = state.version_id if state else None
    rows = [{"version_id": m.version_id, "active": m.version_id == active, "count": m.count,
             "model": m.model_id, "factory": m.factory, "watermark": m.watermark, "created_at": m.created_at}
            for m in artifacts.list_versions(settings.index_dir)]
    lines = [f"{'*' if r['active'] else ' '} {r['version_id']}  {r['count']:>8} vectors  {r['factory']:<10} "
             f"{r['model']}  {r['created_at']}" for r in rows]
    if state is not None:
        from catalens.db import open_database
        from indexer.live import pending_changes

        engine, sessions = open_database(settings.db_url)
        try:
            pending = pending_changes(settings, sessions)
        finally:
            engine.dispose()
        for r in rows:
            r["live_changes"] = pending if r["active"] else None
        lines.append(f"{pending} live changes over the active version (`catalens index compact` folds them in)")
    emit(args, rows, "\n".join(lines) or f"no index versions in {settings.index_dir}")
    return 0


def cmd_index_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.publish import rollback

    target, previous = rollback(settings, args.version)
    emit(args, {"active": target, "previous": previous},
         f"active index version is now {target} (was {previous}); the catalog of record holds its products again")
    return 0


def cmd_index_errors(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from catalens.db import open_database
    from catalens.schema import IngestError

    engine, sessions = open_database(settings.db_url)
    try:
        with sessions() as session:
            query = select(IngestError).order_by(IngestError.id)
            if args.version:
                query = query.where(IngestError.version_id == args.version)
            rows = session.scalars(query.limit(args.limit)).all()
    finally:
        engine.dispose()
    data = [{"version_id": e.version_id, "source": e.source_file, "row": e.row, "product_id": e.product_id,
             "field": e.field, "code": e.code, "message": e.message} for e in rows]
    lines = [f"{d['source']}" + (f": row {d['row']}" if d["row"] else "")
             + (f" [{d['product_id']}]" if d["product_id"] else "")
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
    p.add_argument("--describe", action="store_true",
                   help="write a generated description for products without one (the bundled captioner; "
                        "CATALENS_DESCRIBE=missing does it on every build)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="where images are decoded and embedded: this process, or Ray Data tasks and actors "
                        "(needs catalens[ray])")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="with --engine ray: 'auto' or ray://HOST:PORT joins a cluster (default: a local Ray)")
    p.add_argument("--no-rerank-features", dest="rerank_features", action="store_false", default=None,
                   help="do not store reranker image features (smaller index; reranking then decodes images)")


def register(sub: Subcommands) -> None:
    """Add `catalens index ACTION`."""
    index = sub.add_parser("index", help="build and maintain the index").add_subparsers(
        dest="index_command", required=True, metavar="ACTION")
    p = index.add_parser("build", help="build a new index version from a catalog and make it active")
    _build_flags(p, catalog_required=True)
    add_common_flags(p, model=True)
    p.set_defaults(handler=cmd_index_build)
    p = index.add_parser("rebuild", help="a new version of the catalog of record (or of --catalog), then an atomic "
                                         "swap")
    _build_flags(p, catalog_required=False)
    add_common_flags(p, model=True)
    p.set_defaults(handler=cmd_index_build)
    p = index.add_parser("upsert", help="add new and update changed products live (only changes are embedded)")
    p.add_argument("--catalog", type=Path, required=True, help="CSV, JSONL or Parquet file of the products")
    p.add_argument("--images-root", type=Path, default=None,
                   help="base folder for relative image paths (default: the catalog's folder)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_common_flags(p, model=True)
    p.set_defaults(handler=cmd_index_upsert)
    p = index.add_parser("patch", help="change fields of one product live (price, availability, title, ...)")
    p.add_argument("product_id")
    p.add_argument("--set", action="append", required=True, metavar="NAME=VALUE",
                   help="a field and its new value, e.g. --set price=19.99 --set availability=out_of_stock")
    add_common_flags(p)
    p.set_defaults(handler=cmd_index_patch)
    p = index.add_parser("delete", help="remove products live")
    p.add_argument("--ids", nargs="+", help="product ids")
    p.add_argument("--ids-file", type=Path, help="file with one product id per line")
    add_common_flags(p)
    p.set_defaults(handler=cmd_index_delete)
    p = index.add_parser("compact", help="fold the live changes into a new snapshot (no model runs; edits go on)")
    p.add_argument("--keep", type=int, default=3, help="index versions to keep")
    add_common_flags(p)
    p.set_defaults(handler=cmd_index_compact)
    p = index.add_parser("versions", help="list index versions (* = active)")
    add_common_flags(p)
    p.set_defaults(handler=cmd_index_versions)
    p = index.add_parser("rollback", help="make an earlier version active with its products (default: the one "
                                          "before); live changes since are dropped")
    p.add_argument("version", nargs="?")
    add_common_flags(p)
    p.set_defaults(handler=cmd_index_rollback)
    p = index.add_parser("errors", help="list rows and images that could not be ingested")
    p.add_argument("--version", default=None, help="only this build's errors")
    p.add_argument("--limit", type=int, default=1000)
    add_common_flags(p)
    p.set_defaults(handler=cmd_index_errors)
    p = index.add_parser("duplicates", help="group products whose images are identical or near-identical")
    p.add_argument("--threshold", type=float, default=0.98,
                   help="cosine similarity at or above which two images count as near-identical")
    add_common_flags(p)
    p.set_defaults(handler=cmd_index_duplicates)
