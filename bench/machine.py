"""What every benchmark shares: the machine a result was measured on, threads, progress lines, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("bench-results")

Log = Callable[[str], None]  # a progress line; never on stdout, which holds the result


def quiet(message: str) -> None:
    """A Log that drops every line."""


def to_stderr(message: str) -> None:
    """A Log printing progress to stderr, so stdout stays one JSON object under --json."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on: cores, CPU model, memory, library versions."""
    cpu_model, flags = "unknown", set[str]()
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


def utc_now() -> str:
    """A result's created_at."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def model_slug(model: str) -> str:
    """A model or reranker name as a file-name part."""
    name = Path(model).name if ("/" in model or os.sep in model) else model
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def write_result(out: Path, name: str, data: dict[str, Any], plot: Callable[[Path], None] | None,
                 log: Log = quiet) -> dict[str, Any]:
    """<out>/<name>.json and, with a plot, <out>/<name>.png; records the paths in data["files"]."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / f"{name}.json")}
    if plot is not None:
        try:
            plot(out / f"{name}.png")
            files["png"] = str(out / f"{name}.png")
        except ImportError:
            log("matplotlib is not installed (pip install 'catalens[bench]'): no plot written")
    data["files"] = files
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return data
