"""Real engines past one machine: PostgreSQL shared by replicas, Milvus as the vector store, and
what happens when either goes away under load (issue: scale past one machine)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Background,
    SampleIndex,
    Server,
    absolute_images,
    build_in_process,
    milvus_url,
    read_rows,
    run_cli,
    searcher_on,
    start_server,
    stop_server,
    write_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("trusted_image_sources")]
KEY = "scale-admin-key"
QUERIES = ["red mug", "striped t-shirt", "blue cushion", "green tote bag"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, str]], Path]:
    from sampledata.catalog import write_sample_catalog

    out = tmp_path_factory.mktemp("scale-world")
    write_sample_catalog(out, n=60, seed=47, n_queries=5, progress=False)
    return absolute_images(read_rows(out / "catalog.csv"), out), out


def answers(server: Server, k: int = 10) -> dict[str, tuple[str, list[str]]]:
    """(index version, product ids) of each query."""
    out = {}
    for q in QUERIES:
        resp = httpx.post(f"{server.url}/v1/search/text", json={"query": q, "k": k}, timeout=30)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        out[q] = (body["index_version"], [r["product_id"] for r in body["results"]])
    return out


def admin(server: Server, method: str, path: str, body: Any = None, timeout: float = 30) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, headers={"X-API-Key": KEY}, timeout=timeout)


def wait_for(predicate: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_two_replicas_over_one_postgres_answer_alike_and_both_switch(
        world: tuple[list[dict[str, str]], Path], tmp_path: Path, postgres: Any, encoder: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rows, _ = world
    monkeypatch.setenv("CATALENS_DATABASE_URL", postgres.create())
    index = tmp_path / "shared"  # one folder on a shared volume, as in docker-compose.yml's scale profile
    first = build_in_process(index, write_rows(tmp_path / "a.csv", rows[:40]), encoder)
    a = start_server(index, env={"CATALENS_API_KEY": KEY}, log=tmp_path / "a.log")
    b = start_server(index, env={"CATALENS_API_KEY": KEY}, log=tmp_path / "b.log")
    try:
        assert answers(a) == answers(b)
        assert {v for v, _ in answers(a).values()} == {first.version_id}
        # A live edit taken by one replica reaches the other through PostgreSQL's change log.
        target = answers(a)["red mug"][1][0]
        assert admin(a, "PATCH", f"/v1/admin/products/{target}", {"title": "Renamed by replica A"}).status_code == 200
        wait_for(lambda: httpx.get(f"{b.url}/v1/products/{target}", timeout=10).json()["title"]
                 == "Renamed by replica A")
        # A new version built by another process: both replicas switch to it, and agree again.
        second = build_in_process(index, write_rows(tmp_path / "b.csv", rows[:60]), encoder)
        assert second.version_id != first.version_id
        wait_for(lambda: {v for s in (a, b) for v, _ in answers(s).values()} == {second.version_id})
        assert answers(a) == answers(b)
        assert any(set(ids) & {r["product_id"] for r in rows[40:]} for _, ids in answers(a, k=20).values())
    finally:
        stop_server(a)
        stop_server(b)


class Load(Background):
    """Clients searching and an admin patching prices for as long as it runs; every answer recorded."""

    def __init__(self, server: Server, product_id: str) -> None:
        self.server, self.product_id = server, product_id
        self.stop = threading.Event()
        self.searches: list[tuple[int, str | None]] = []  # (status, Retry-After)
        self.edits: list[tuple[int, float, str | None]] = []  # (status, price sent, Retry-After)
        self.errors: list[str] = []  # timeouts, refused connections: never allowed
        self.threads = [threading.Thread(target=self._search, daemon=True) for _ in range(2)]
        self.threads.append(threading.Thread(target=self._edit, daemon=True))

    def _search(self) -> None:
        while not self.stop.is_set():
            try:
                resp = httpx.post(f"{self.server.url}/v1/search/text", json={"query": "red mug", "k": 5}, timeout=20)
                self.searches.append((resp.status_code, resp.headers.get("retry-after")))
            except httpx.HTTPError as exc:
                self.errors.append(f"search: {type(exc).__name__}")
            time.sleep(0.02)

    def _edit(self) -> None:
        price = 1.0
        while not self.stop.is_set():
            price += 1
            try:
                resp = admin(self.server, "PATCH", f"/v1/admin/products/{self.product_id}", {"price": price},
                             timeout=20)
                self.edits.append((resp.status_code, price, resp.headers.get("retry-after")))
            except httpx.HTTPError as exc:
                self.errors.append(f"edit: {type(exc).__name__}")
            time.sleep(0.1)

    def check(self) -> float:
        """Only 200 or 503-with-Retry-After, no hang; returns the last price the server acknowledged."""
        assert not self.errors, self.errors[:5]
        for status, retry in self.searches:
            assert status == 200 or (status == 503 and retry), (status, retry)
        for status, _, retry in self.edits:
            assert status == 200 or (status == 503 and retry), (status, retry)
        acknowledged = [price for status, price, _ in self.edits if status == 200]
        assert acknowledged, "no edit went through"
        return acknowledged[-1]


@contextlib.contextmanager
def served(index: Path, rows: list[dict[str, str]], tmp_path: Path, encoder: Any) -> Iterator[Server]:
    """A server over an index of 30 rows, built on the engines the environment names; 2 s engine timeout."""
    build_in_process(index, write_rows(tmp_path / "catalog.csv", rows[:30]), encoder)
    server = start_server(index, env={"CATALENS_API_KEY": KEY, "CATALENS_ENGINE_TIMEOUT_S": "2"},
                          log=tmp_path / "serve.log")
    try:
        yield server
    finally:
        stop_server(server)


def outage_under_load(server: Server, product_id: str, engine: Any, *, back: Callable[[Load], bool],
                      pause_s: float = 0.0) -> Load:
    """Load, the engine stopped for ~4 s (plus pause_s) and started again, until `back` says the
    service recovered (its answers are then checked by the caller)."""
    with Load(server, product_id) as load:
        time.sleep(2)
        engine.stop()
        time.sleep(4 + pause_s)
        engine.start()
        wait_for(lambda: back(load), 90)
        time.sleep(1)
    return load


def test_postgres_stopped_and_restarted_under_load(world: tuple[list[dict[str, str]], Path], tmp_path: Path,
                                                  encoder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Searches never touch the database; edits get 503 + Retry-After while it is down, and none acknowledged is lost."""
    from bench.engines import postgres_server

    rows, _ = world
    target = rows[0]["product_id"]
    with postgres_server() as pg:  # its own server: this test stops it
        monkeypatch.setenv("CATALENS_DATABASE_URL", pg.create())
        with served(tmp_path / "idx", rows, tmp_path, encoder) as server:
            load = outage_under_load(server, target, pg, back=lambda load: load.edits[-1][0] == 200
                                     and any(s == 503 for s, _, _ in load.edits))
            last = load.check()
            assert any(s == 503 for s, _, _ in load.edits), "the outage was never seen by an edit"
            assert all(s == 200 for s, _ in load.searches), "a search needed the database"
            wait_for(lambda: httpx.get(f"{server.url}/v1/products/{target}", timeout=10).json()["price"] == last)


def test_milvus_stopped_and_restarted_under_load(world: tuple[list[dict[str, str]], Path], tmp_path: Path,
                                                encoder: Any, monkeypatch: pytest.MonkeyPatch, milvus: Any) -> None:
    """Searches get 503 + Retry-After while Milvus is down and come back by themselves; edits taken
    meanwhile are logged (200) and reach Milvus when it returns."""
    rows, _ = world
    target = rows[0]["product_id"]
    mv = milvus  # the session's server (two embedded Milvus servers do not start side by side): stopped, restarted
    with contextlib.ExitStack() as restore:
        restore.callback(lambda: mv.server.running or mv.start())
        monkeypatch.setenv("CATALENS_VECTOR_STORE", milvus_url(mv))
        with served(tmp_path / "idx", rows, tmp_path, encoder) as server:
            # pause_s: the old process's ports are free again, so the same port comes back.
            load = outage_under_load(server, target, mv, pause_s=2, back=lambda load: load.searches[-1][0] == 200
                                     and any(s == 503 for s, _ in load.searches))
            last = load.check()
            assert any(s == 503 for s, _ in load.searches), "the outage was never seen by a search"
            # The last acknowledged price is what Milvus filters on now: no edit lost.
            resp = httpx.post(f"{server.url}/v1/search/text", timeout=30, json={
                "query": rows[0]["title"], "k": 5, "filters": {"price_min": last, "price_max": last}})
            assert resp.status_code == 200 and [r["product_id"] for r in resp.json()["results"]] == [target]


def test_engine_urls_with_a_wrong_scheme_are_one_line_errors_at_start(tmp_path: Path) -> None:
    for flag, url, word in [("--database-url", "mysql://db/shop", "mysql"),
                            ("--vector-store", "redis://cache:6379", "redis")]:
        done = run_cli("serve", "--index-dir", str(tmp_path), flag, url, timeout=60)
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and word in done.stderr, done.stderr
    unreachable = run_cli("db", "upgrade", "--index-dir", str(tmp_path),
                          "--database-url", "postgresql://nobody@127.0.0.1:1/none", timeout=60)
    assert unreachable.returncode == 2
    assert len(unreachable.stderr.strip().splitlines()) == 1 and "unreachable" in unreachable.stderr, \
        unreachable.stderr


@pytest.fixture(scope="module")
def searchers(sample_index: SampleIndex, encoder: Any, request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    yield (searcher_on(sample_index, encoder, None),
           searcher_on(request.getfixturevalue("milvus_sample_index"), encoder, None))


def test_milvus_matches_faiss_on_the_held_out_evaluation(sample_index: SampleIndex,
                                                         searchers: tuple[Any, Any]) -> None:
    from retrieval.evaluation import evaluate_queries

    on_milvus = searchers[1]

    def no_faiss(*args: Any) -> Any:
        raise AssertionError("a Milvus-backed searcher searched its FAISS file")

    on_milvus.snapshot.images.search = on_milvus.snapshot.images.search_filtered = no_faiss
    faiss_scores, milvus_scores = (evaluate_queries(s, sample_index.sample_dir / "queries.jsonl")
                                   for s in searchers)
    assert faiss_scores.keys() == milvus_scores.keys()
    for query_set, scores in faiss_scores.items():
        for metric, value in scores.items():
            # Both are HNSW over the same vectors: only the graphs' approximation may differ.
            assert abs(milvus_scores[query_set][metric] - value) <= 0.02, (query_set, metric)


def test_a_milvus_sync_cut_off_after_its_first_write_loses_nothing(
        world: tuple[list[dict[str, str]], Path], tmp_path: Path, encoder: Any, milvus: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Applying the change log to Milvus can stop anywhere (Milvus goes away mid-batch): the next
    sync finishes it and every product keeps its vectors."""
    from catalens import artifacts, milvus_store
    from catalens.config import Settings
    from catalens.db import open_database
    from catalens.errors import VectorStoreUnavailableError
    from indexer.live import EditContext, patch_product

    rows, _ = world
    monkeypatch.setenv("CATALENS_VECTOR_STORE", milvus_url(milvus))
    index = tmp_path / "idx"
    build_in_process(index, write_rows(tmp_path / "e.csv", rows[:20]), encoder)
    settings = Settings(index_dir=index)
    target = rows[3]["product_id"]
    patch_product(EditContext(settings, encoder), target, {"price": 4321.0, "brand": "Cutoff"})
    store = milvus_store.MilvusStore(settings.vector_store)
    version = artifacts.read_active(index)
    _, sessions = open_database(settings.db_url)
    real_call, writes = store.call, []

    def cut_off(method: str, *args: Any, **kwargs: Any) -> Any:
        if method in ("insert", "upsert", "delete"):
            writes.append(method)
            if len(writes) == 2:
                raise VectorStoreUnavailableError("Milvus went away")
        return real_call(method, *args, **kwargs)

    monkeypatch.setattr(store, "call", cut_off)
    with pytest.raises(VectorStoreUnavailableError):
        milvus_store.sync(store, sessions, version)
    time.sleep(2)  # whatever the first attempt did is visible to the second (Milvus applies deletes lazily)
    monkeypatch.setattr(store, "call", real_call)
    milvus_store.sync(store, sessions, version)
    found = store.call("query", store.name(version), filter='brand == "Cutoff"', output_fields=["pk", "price"])
    assert found and {r["price"] for r in found} == {4321.0}, "the patched product lost its vectors"
