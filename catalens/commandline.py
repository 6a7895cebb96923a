"""What every package's subcommands share: the handler signature, settings from flags, output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalens.config import DEFAULT_MODEL, Settings

Handler = Callable[[argparse.Namespace, Settings], int]
# argparse keeps _SubParsersAction private (and generic only in typeshed); this alias is what
# every package's `register(sub)` takes.
if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subcommands = argparse._SubParsersAction

SETTING_FLAGS = ("index_dir", "model", "pretrained", "device", "batch_size", "threads", "database_url",
                 "vector_store", "reranker", "rerank_features", "runtime")


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags given on the command line."""
    overrides: dict[str, Any] = {}
    for name in SETTING_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print one JSON object with --json, else the human-readable line."""
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def add_common_flags(p: argparse.ArgumentParser, *, model: bool = False, json_flag: bool = True) -> None:
    """--index-dir and --json, and with model=True the flags that choose and run the models."""
    p.add_argument("--index-dir", type=Path, default=None,
                   help="index folder (default: $CATALENS_INDEX_DIR or ./catalens-data)")
    p.add_argument("--database-url", default=None,
                   help="catalog of record: postgresql+psycopg://user@host:port/db or sqlite:///FILE "
                        "(default: $CATALENS_DATABASE_URL, else SQLite in the index folder)")
    p.add_argument("--vector-store", default=None,
                   help="faiss (default: $CATALENS_VECTOR_STORE, else faiss) or milvus://host:19530")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object")
    if model:
        add_model_flags(p)
        p.add_argument("--reranker", default=None,
                       help="second stage: catalens-itm (default), blip:<id or folder>, "
                            "coca:<model or config.json>@<pretrained>, or none")


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags that choose the CLIP and how it runs."""
    p.add_argument("--model", default=None,
                   help=f"bundled name, open_clip name or model folder (default: {DEFAULT_MODEL}); "
                        "an open_clip name without --pretrained has random weights (timing only)")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=None,
                   help="CLIP runtime of queries and indexing (default $CATALENS_RUNTIME, else auto: the faster one here)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch/FAISS threads (default: cores)")
