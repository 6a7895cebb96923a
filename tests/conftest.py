"""Shared fixtures: one real sample catalog, index and model per test session."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CATALENS = str(Path(sys.executable).parent / "catalens")
SAMPLE_N = 400
SAMPLE_SEED = 11


@dataclass
class SampleIndex:
    sample_dir: Path
    index_dir: Path

    @property
    def catalog(self) -> Path:
        return self.sample_dir / "catalog.csv"

    def rows(self) -> list[dict[str, str]]:
        with open(self.catalog, newline="") as fh:
            return list(csv.DictReader(fh))


@pytest.fixture(scope="session", autouse=True)
def _quiet_threads() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sampledata.catalog import write_sample_catalog

    out = tmp_path_factory.mktemp("sample")
    write_sample_catalog(out, n=SAMPLE_N, seed=SAMPLE_SEED, n_queries=60, progress=False)
    return out


@pytest.fixture(scope="session")
def encoder():  # type: ignore[no-untyped-def]
    from catalens.encoder import ModelSpec, load_clip

    return load_clip(ModelSpec("catalens-demo"), device="cpu")


@pytest.fixture(scope="session")
def reranker(encoder):  # type: ignore[no-untyped-def]
    """The bundled ITM reranker on the same loaded CLIP."""
    from catalens.reranker import load_reranker

    return load_reranker("catalens-itm", clip=encoder)


@pytest.fixture(scope="session")
def sample_index(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, encoder, reranker) -> SampleIndex:  # type: ignore[no-untyped-def]
    from catalens.config import Settings
    from indexer.embedder import Embedder
    from indexer.runner import BuildOptions, build_index

    index_dir = tmp_path_factory.mktemp("index")
    settings = Settings(index_dir=index_dir, threads=1)
    build_index(settings, BuildOptions(catalog=sample_dir / "catalog.csv", progress=False), encoder=encoder,
                embedder=Embedder(encoder, reranker=reranker))
    return SampleIndex(sample_dir, index_dir)


@pytest.fixture(scope="session")
def searcher(sample_index: SampleIndex, encoder, reranker):  # type: ignore[no-untyped-def]
    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory
    from retrieval.searcher import Searcher

    settings = Settings(index_dir=sample_index.index_dir, threads=1)
    s = Searcher(settings, create_session_factory(create_db_engine(settings.db_url)), encoder, reranker=reranker)
    s.reload()
    return s


@pytest.fixture(scope="session")
def client(sample_index: SampleIndex, searcher) -> Iterator:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from retrieval.app import create_app

    app = create_app(searcher.settings.model_copy(update={"max_upload_bytes": 2 * 1024 * 1024}),
                     searcher=searcher)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def trusted_image_sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For modules whose catalogs name images in other tmp folders or on a 127.0.0.1 image host:
    allow both (CATALENS_IMAGE_ROOTS, CATALENS_URL_ALLOW) for in-process builds, CLIs and servers."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CATALENS_IMAGE_ROOTS", json.dumps([str(tmp_path_factory.getbasetemp())]))
        env.setenv("CATALENS_URL_ALLOW", json.dumps(["127.0.0.1"]))
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the installed `catalens` command in a subprocess, as a user would."""
    full_env = {**os.environ, "CATALENS_THREADS": "1", **(env or {})}
    return subprocess.run([CATALENS, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


@dataclass
class Server:
    url: str
    process: subprocess.Popen


def start_server(index_dir: Path, *, env: dict[str, str] | None = None, log: Path | None = None) -> Server:
    """`catalens serve` as a real process; returns once /readyz answers 200."""
    port = free_port()
    full_env = {**os.environ, "CATALENS_THREADS": "1", **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([CATALENS, "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--index-dir", str(index_dir)], env=full_env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"catalens serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return Server(url, proc)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("catalens serve did not become ready in 120 s")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()


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
