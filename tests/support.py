"""Helpers the test modules share (fixtures live in conftest.py); no test module imports another."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.query import free_port as free_port  # re-exported: the tests' one way to pick a port
from bench.query import start_serve, stop_serve

ROOT = Path(__file__).resolve().parent.parent
CATALENS = str(Path(sys.executable).parent / "catalens")


@dataclass
class SampleIndex:
    sample_dir: Path
    index_dir: Path
    database_url: str | None = None  # None: SQLite in the index folder
    vector_store: str = "faiss"

    @property
    def catalog(self) -> Path:
        return self.sample_dir / "catalog.csv"

    def rows(self) -> list[dict[str, str]]:
        with open(self.catalog, newline="") as fh:
            return list(csv.DictReader(fh))


def searcher_on(index: SampleIndex, encoder: Any, reranker: Any) -> Any:
    """A loaded Searcher over a built index, on the engines it was built with."""
    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory
    from retrieval.searcher import Searcher

    settings = Settings(index_dir=index.index_dir, database_url=index.database_url,
                        vector_store=index.vector_store, threads=1)
    from retrieval.app import load_bundled_captioner

    s = Searcher(settings, create_session_factory(create_db_engine(settings.db_url)), encoder, reranker=reranker)
    s.captioner = load_bundled_captioner(settings)
    s.reload()
    return s


def milvus_url(server: Any) -> str:
    """A vector-store URL of its own on a shared Milvus server: collections and alias under a fresh name."""
    import uuid

    return f"{server.url}/t{uuid.uuid4().hex[:10]}"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `catalens` command in a subprocess, as a user would."""
    full_env = {**os.environ, "CATALENS_THREADS": "1", **(env or {})}
    return subprocess.run([CATALENS, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


@dataclass
class Server:
    url: str
    process: subprocess.Popen


def start_server(index_dir: Path, *, env: dict[str, str] | None = None, log: Path | None = None) -> Server:
    """`catalens serve` as a real process (one thread); returns once /readyz answers 200."""
    url, process = start_serve(index_dir, env={"CATALENS_THREADS": "1", **(env or {})}, log_path=log)
    return Server(url, process)


def stop_server(server: Server) -> None:
    stop_serve(server.process, grace_s=10)


def tiny_coca_config(context_length: int = 16) -> dict:
    """A small open_clip CoCa of the real class (no pretrained CoCa exists offline)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
                       "attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 8,
                       "output_tokens": True},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "embed_cls": True, "output_tokens": True},
        "multimodal_cfg": {"context_length": context_length, "vocab_size": 49408, "width": 32, "heads": 2,
                           "layers": 1, "attn_pooler_heads": 2},
        "custom_text": True,
    }


def write_catalog_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    """A catalog CSV holding these sample rows (their image paths stay relative)."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(catalog: Path) -> list[dict[str, str]]:
    with open(catalog, newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def absolute_images(rows: list[dict[str, str]], root: Path) -> list[dict[str, str]]:
    """Rows whose image paths are absolute, so a catalog file can live in any folder."""
    return [{**r, "image": "|".join(i if i.startswith("http") else str(root / i) for i in r["image"].split("|"))}
            for r in rows]


def build_in_process(index_dir: Path, catalog: Path, encoder: Any, *, batch_size: int = 4, **options: Any) -> Any:
    """A setup build sharing the session's loaded model (the behaviour under test runs as processes);
    small batches, so the embedding cache gets a shard every few images."""
    from catalens.config import Settings
    from indexer.runner import BuildOptions, build_index

    settings = Settings(index_dir=index_dir, threads=1, batch_size=batch_size)
    return build_index(settings, BuildOptions(catalog=catalog, progress=False, **options), encoder=encoder)


def text_search(server: Server, query: str, k: int = 10) -> dict:
    resp = httpx.post(f"{server.url}/v1/search/text", json={"query": query, "k": k}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def image_search(server: Server, path: Path, k: int = 10) -> dict:
    resp = httpx.post(f"{server.url}/v1/search/image", files={"file": ("q.jpg", path.read_bytes(), "image/jpeg")},
                      data={"k": str(k)}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


class GatedImageServer:
    """An HTTP image host on 127.0.0.1 that holds every request until `open()` is called.

    A catalog that points one image here stops its builder at a known point (mid-embedding,
    lock held) for as long as a test needs, with no sleeps and no races.
    """

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.gate = threading.Event()
        self.hit = threading.Event()
        gate, hit = self.gate, self.hit

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hit.set()
                gate.wait(120)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(image)))
                    self.end_headers()
                    self.wfile.write(image)
                except OSError:
                    pass  # the builder was killed while we held it

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str = "gated.jpg") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


class Background:
    """Threads (`self.threads`, set by a subclass) that run beside the block and stop at its end."""

    stop: threading.Event
    threads: list[threading.Thread]

    def __enter__(self) -> Any:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
