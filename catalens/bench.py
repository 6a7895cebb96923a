"""`catalens bench`: indexing throughput, query latency under load, ANN recall/QPS (issue 7)."""

from __future__ import annotations

import argparse


def add_bench_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `catalens bench ...` (the benchmark commands are filled in by the benchmarks work)."""
    sub.add_parser("bench", help="benchmarks (not built yet)")
