"""`catalens`: each package registers its own subcommands; serve, demo and db are wired here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from catalens.commandline import Subcommands, add_common_flags, emit, settings_from
from catalens.config import Settings
from catalens.errors import CatalensError


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


def torch_clip(searcher: Any) -> Any:
    """The torch CLIP edits embed with, if the query path loaded one (else the editor loads it)."""
    from catalens.encoder import ClipEncoder

    return searcher.encoder if isinstance(searcher.encoder, ClipEncoder) else None


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from indexer.live import IndexEditor
    from retrieval.app import create_app, create_searcher
    from retrieval.limits import server_http_protocol

    # Open the database and load the query encoder before uvicorn starts, so a malformed database
    # or a missing model is one line and exit code 2 here, not a traceback from the server's
    # startup. The reranker (torch, seconds) loads after the server is ready (warm_reranker).
    searcher = create_searcher(settings, rerank=False)
    app = create_app(settings, searcher=searcher, editor=IndexEditor(settings, torch_clip(searcher)),
                     warm_reranker=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", http=server_http_protocol())
    return 0


def _servable(settings: Settings) -> bool:
    """Whether the index folder holds an active version this Catalens can serve (an older format is rebuilt)."""
    from catalens import artifacts
    from catalens.errors import CatalensError

    try:
        artifacts.verify_version(artifacts.active_version_path(settings.index_dir), checksums=False)
    except CatalensError as exc:
        if artifacts.read_active(settings.index_dir) is not None:
            print(f"rebuilding the demo index: {exc}", file=sys.stderr)
        return False
    return True


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from indexer.runner import BuildOptions, build_index
    from sampledata.catalog import write_sample_catalog

    sample_dir = settings.index_dir / "sample"
    catalog = sample_dir / "catalog.csv"
    if not catalog.is_file():
        print(f"generating the sample catalog ({args.n} products) in {sample_dir}", file=sys.stderr)
        write_sample_catalog(sample_dir, n=args.n, seed=args.seed)
    if not _servable(settings):
        summary = build_index(settings, BuildOptions(catalog=catalog))
        print(f"built index version {summary.version_id}: {summary.vectors} vectors", file=sys.stderr)
    print(f"serving Catalens on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
    return cmd_serve(args, settings)


def _register_db(sub: Subcommands) -> None:
    db = sub.add_parser("db", help="database schema migrations").add_subparsers(
        dest="db_command", required=True, metavar="ACTION")
    p = db.add_parser("upgrade", help="create or upgrade the schema (Alembic)")
    p.add_argument("revision", nargs="?", default="head")
    add_common_flags(p)
    p.set_defaults(handler=cmd_db_upgrade)
    p = db.add_parser("downgrade", help="downgrade the schema (Alembic)")
    p.add_argument("revision", nargs="?", default="base")
    add_common_flags(p)
    p.set_defaults(handler=cmd_db_downgrade)


def _register_serve(sub: Subcommands) -> None:
    from sampledata.commands import DEFAULT_N, DEFAULT_SEED

    for name, handler, text in (("serve", cmd_serve, "serve the HTTP API and search page"),
                                ("demo", cmd_demo, "generate the sample catalog, build its index, serve")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        if name == "demo":
            p.add_argument("--n", type=int, default=DEFAULT_N, help="sample catalog size")
            p.add_argument("--seed", type=int, default=DEFAULT_SEED)
        add_common_flags(p, model=True, json_flag=False)
        p.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree, in the order `catalens --help` lists it."""
    import bench.commands
    import indexer.commands
    import retrieval.commands
    import sampledata.commands
    import training.commands

    parser = argparse.ArgumentParser(prog="catalens", description="Cross-modal product search.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sampledata.commands.register(sub)
    training.commands.register(sub)
    indexer.commands.register(sub)
    _register_db(sub)
    retrieval.commands.register(sub)
    _register_serve(sub)
    bench.commands.register(sub)
    return parser


DECODES_BESIDE_TORCH = {"cmd_index_build", "cmd_index_rebuild", "cmd_index_upsert", "cmd_bench_index"}


def main(argv: list[str] | None = None) -> int:
    """Run one command; typed errors become one line on stderr and exit code 2."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    args = build_parser().parse_args(argv)
    if getattr(args.handler, "__name__", "") in DECODES_BESIDE_TORCH:
        # Before torch loads OpenMP: its threads sleep between parallel regions instead of spinning on
        # the cores the image decoders need (bench index: the bundled model ran 8x slower inside a
        # build than alone; end to end 174 -> ~225 images/s, ViT-B-32 unchanged).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"catalens: error: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # an environment value that is not JSON where a list or an object is expected
        print(f"catalens: error: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args, settings))
    except CatalensError as exc:
        print(f"catalens: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("catalens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
