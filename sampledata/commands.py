"""`catalens sample`: generate the sample catalog, its images and labelled queries."""

from __future__ import annotations

import argparse
from pathlib import Path

from catalens.commandline import Subcommands, add_common_flags, emit
from catalens.config import Settings

DEFAULT_N = 2000
DEFAULT_SEED = 7  # the sample catalog's world; benchmarks and tests draw other seeds


def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    from sampledata.catalog import write_sample_catalog

    catalog = write_sample_catalog(args.out, n=args.n, seed=args.seed, progress=not args.quiet)
    emit(args, {"catalog": str(catalog), "queries": str(args.out / "queries.jsonl")},
         f"wrote {catalog} ({args.n} products), images in {args.out / 'images'}, "
         f"queries in {args.out / 'queries.jsonl'}")
    return 0


def register(sub: Subcommands) -> None:
    """Add `sample` to the `catalens` command."""
    p = sub.add_parser("sample", help="generate the sample catalog, images and labelled queries")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=DEFAULT_N)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--quiet", action="store_true")
    add_common_flags(p)
    p.set_defaults(handler=cmd_sample)
