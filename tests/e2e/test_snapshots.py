"""A version is a whole snapshot; live edits cost what they change (issue: snapshots and live updates).

Each of the five defects of the old version model is reproduced here: a refused or killed build
changed what queries saw, a rollback moved only the vectors, a rebuild re-read an old file, an
edit republished the whole index, and (tests/retrieval/test_vector_search.py) filters ran
around FAISS. "What queries see" is read by a fresh Searcher on the index folder each time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalens import artifacts
from tests.support import (
    CATALENS,
    GatedImageServer,
    Server,
    absolute_images,
    build_in_process,
    milvus_url,
    read_rows,
    run_cli,
    start_server,
    stop_server,
    write_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("trusted_image_sources")]

KEY = "snapshot-admin-key"
QUERIES = ["red mug", "striped t-shirt", "blue cushion", "green tote bag", "yellow lamp"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "milvus"])
def backend(request: pytest.FixtureRequest) -> str:
    """The whole version model runs on both catalogs of record (SQLite, PostgreSQL) and on both
    vector stores (FAISS; Milvus, over SQLite)."""
    return request.param


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, encoder: Any, backend: str,
          request: pytest.FixtureRequest) -> tuple[list[dict[str, str]], Path]:
    """60 sample products; a built index of the first 50 (availability given for some). On
    PostgreSQL its catalog of record is a template database each test copies."""
    from sampledata.catalog import write_sample_catalog

    out = tmp_path_factory.mktemp("snapshot-world")
    write_sample_catalog(out, n=60, seed=43, n_queries=5, progress=False)
    rows = absolute_images(read_rows(out / "catalog.csv"), out)
    for i, row in enumerate(rows):  # the catalog file takes the spellings shops write
        row["availability"] = "out_of_stock" if i % 5 == 0 else "In stock"
    index_dir = out / "idx"
    with pytest.MonkeyPatch.context() as env:
        if backend == "postgresql":
            env.setenv("CATALENS_DATABASE_URL", request.getfixturevalue("postgres").create(f"world_{os.getpid()}"))
        if backend == "milvus":
            env.setenv("CATALENS_VECTOR_STORE", milvus_url(request.getfixturevalue("milvus")))
        build_in_process(index_dir, write_rows(out / "first.csv", rows[:50]), encoder)
    return rows, index_dir


@pytest.fixture()
def index(world: tuple[list[dict[str, str]], Path], tmp_path: Path, backend: str, request: pytest.FixtureRequest,
          monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the world's index (on PostgreSQL, of its database too; on Milvus, in collections
    of its own), named to every process of the test by CATALENS_DATABASE_URL / CATALENS_VECTOR_STORE."""
    from catalens.config import Settings
    from catalens.db import open_database
    from indexer.publish import to_vector_store

    dst = tmp_path / "idx"
    shutil.copytree(world[1], dst)
    if backend == "postgresql":
        pg = request.getfixturevalue("postgres")
        monkeypatch.setenv("CATALENS_DATABASE_URL", pg.create(template=f"world_{os.getpid()}"))
    if backend == "milvus":
        monkeypatch.setenv("CATALENS_VECTOR_STORE", milvus_url(request.getfixturevalue("milvus")))
        settings = Settings(index_dir=dst)
        state = artifacts.read_active_state(dst)
        engine, sessions = open_database(settings.db_url)
        to_vector_store(settings, sessions, state.version_id, since_seq=state.since_seq)
        engine.dispose()
    return dst


def answers(index_dir: Path, encoder: Any, k: int = 12, **filters: Any) -> dict[str, list[tuple]]:
    """What queries see now: (product_id, title, price, availability) of each query's results, in order."""
    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory
    from catalens.filters import Filters
    from retrieval.searcher import Searcher

    settings = Settings(index_dir=index_dir, threads=1)
    engine = create_db_engine(settings.db_url)
    try:
        searcher = Searcher(settings, create_session_factory(engine), encoder)
        searcher.reload()
        return {q: [(h.product.product_id, h.product.title, h.product.price, h.product.availability)
                    for h in searcher.search_text(q, k, Filters(**filters)).hits] for q in QUERIES}
    finally:
        engine.dispose()


def everything(index_dir: Path, encoder: Any) -> set[tuple]:
    """Every product queries can return, with its fields (k over the catalog's size)."""
    return {hit for hits in answers(index_dir, encoder, k=500).values() for hit in hits}


def api_record(row: dict[str, str], **changes: Any) -> dict[str, Any]:
    """A catalog row as the admin API takes it: typed values, images as a list."""
    from catalens.records import normalize_availability

    record: dict[str, Any] = {k: v for k, v in row.items() if v}
    record.update(image=row["image"].split("|"), price=float(row["price"]),
                  availability=normalize_availability(row["availability"]))
    return {**record, **changes}


def changed_rows(rows: list[dict[str, str]], *, tag: str) -> list[dict[str, str]]:
    return [{**r, "title": f"{r['title']} {tag}", "price": str(float(r["price"] or 1) * 3)} for r in rows]


def compact_in_process(index_dir: Path, encoder: Any) -> Any:
    from catalens.config import Settings
    from indexer.live import EditContext, compact

    return compact(EditContext(Settings(index_dir=index_dir, threads=1), encoder))


def edit_context(index_dir: Path, encoder: Any) -> Any:
    from catalens.config import Settings
    from indexer.live import EditContext

    return EditContext(Settings(index_dir=index_dir, threads=1, batch_size=4), encoder)


# --- the five defects --------------------------------------------------------------------------


def test_a_refused_build_changes_nothing_queries_see_nor_the_catalog_of_record(
        index: Path, world: tuple[list[dict[str, str]], Path], encoder: Any, tmp_path: Path) -> None:
    from catalens.errors import PublishRefusedError

    rows = world[0]
    before = answers(index, encoder)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    bad = changed_rows(rows[:30], tag="(bad import)")  # 20 products missing, titles and prices changed
    for row in bad[:20]:
        row["image"] = str(broken)
    with pytest.raises(PublishRefusedError):
        build_in_process(index, write_rows(tmp_path / "bad.csv", bad), encoder)
    assert answers(index, encoder) == before
    compact_in_process(index, encoder)  # a new snapshot of the catalog of record
    assert answers(index, encoder) == before


def test_a_killed_build_changes_nothing_queries_see(index: Path, world: tuple[list[dict[str, str]], Path],
                                                    encoder: Any, tmp_path: Path) -> None:
    rows = world[0]
    before = answers(index, encoder)
    gated = GatedImageServer(Path(rows[0]["image"].split("|")[0]).read_bytes())
    try:
        new = changed_rows(rows[:30], tag="(killed)")
        new[0]["image"] = gated.url()
        proc = subprocess.Popen([CATALENS, "index", "build", "--catalog", str(write_rows(tmp_path / "k.csv", new)),
                                 "--index-dir", str(index), "--quiet"], env={**os.environ, "CATALENS_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert gated.hit.wait(120), "the build never reached the gated image"
        assert answers(index, encoder) == before  # mid-build: synced, embedding
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        gated.close()
    assert answers(index, encoder) == before
    rebuilt = run_cli("index", "rebuild", "--index-dir", str(index), "--quiet")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert answers(index, encoder) == before


def test_rollback_restores_exactly_what_that_version_answered(
        index: Path, world: tuple[list[dict[str, str]], Path], encoder: Any, tmp_path: Path) -> None:
    rows = world[0]
    v1 = answers(index, encoder)
    v1_all = everything(index, encoder)
    build_in_process(index, write_rows(tmp_path / "v2.csv", changed_rows(rows[10:50], tag="v2")), encoder)
    assert answers(index, encoder) != v1
    done = run_cli("index", "rollback", "--index-dir", str(index), "--json")
    assert done.returncode == 0, done.stderr
    assert answers(index, encoder) == v1
    assert everything(index, encoder) == v1_all
    compact_in_process(index, encoder)  # the catalog of record is v1's again
    assert answers(index, encoder) == v1


def test_rebuild_builds_from_the_catalog_of_record(index: Path, world: tuple[list[dict[str, str]], Path],
                                                   encoder: Any) -> None:
    from indexer.live import delete_products, patch_product, upsert_rows
    from indexer.sync import read_rows as read_catalog_rows

    rows = world[0]
    ctx = edit_context(index, encoder)
    new_rows, _, _ = read_catalog_rows(write_rows(index.parent / "new.csv", rows[55:56]), images_root=None,
                                       strict=True)
    upsert_rows(ctx, new_rows, source="test", images_root=None)
    delete_products(ctx, [rows[0]["product_id"]])
    patch_product(ctx, rows[1]["product_id"], {"price": 999.5, "availability": "preorder"})
    live = everything(index, encoder)
    ids = {hit[0] for hit in live}
    assert rows[55]["product_id"] in ids and rows[0]["product_id"] not in ids
    assert (rows[1]["product_id"], rows[1]["title"], 999.5, "preorder") in live
    done = run_cli("index", "rebuild", "--index-dir", str(index), "--quiet")
    assert done.returncode == 0, done.stderr
    assert everything(index, encoder) == live
    state = artifacts.read_active_state(index)
    assert state is not None and artifacts.read_manifest(artifacts.versions_dir(index) / state.version_id) \
        .watermark == state.since_seq > 0


@pytest.fixture()
def server(index: Path, tmp_path: Path) -> Iterator[Server]:
    srv = start_server(index, env={"CATALENS_API_KEY": KEY, "CATALENS_ADMIN_SYNC_LIMIT": "5"},
                       log=tmp_path / "serve.log")
    yield srv
    stop_server(srv)


def admin(server: Server, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, server.url + path, json=body, headers={"X-API-Key": KEY}, timeout=120)


def search(server: Server, query: str, **filters: Any) -> list[dict[str, Any]]:
    resp = httpx.post(f"{server.url}/v1/search/text", json={"query": query, "k": 12, "filters": filters}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()["results"]


def test_live_edits_cost_what_they_change(server: Server, index: Path, world: tuple[list[dict[str, str]], Path]
                                          ) -> None:
    rows = world[0]
    active = artifacts.read_active(index)
    main_index = artifacts.versions_dir(index) / str(active) / "images.faiss"
    stamp = main_index.stat().st_mtime_ns
    resp = admin(server, "POST", "/v1/admin/products", {"products": [api_record(rows[56], price=4321.0)]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["visible"] and body["upserted"] == 1 and body["index_version"] == active
    assert body["images_embedded"] + body["images_cached"] == len(rows[56]["image"].split("|"))
    assert [r["product_id"] for r in search(server, "anything", price_min=4321.0)] == [rows[56]["product_id"]]
    # Reranked with the features the upsert stored for its image (a live product is not left unjudged).
    reranked = httpx.post(f"{server.url}/v1/search/text", json={"query": rows[56]["title"], "k": 3, "rerank": True,
                                                                "filters": {"price_min": 4321.0}}, timeout=30).json()
    assert reranked["reranked"] and reranked["results"][0]["rerank_score"] is not None
    # No new version, the main index untouched: the change lives in the live layer.
    assert artifacts.read_active(index) == active and main_index.stat().st_mtime_ns == stamp
    assert len(artifacts.list_versions(index)) == 1
    # A patch from another process (the CLI) reaches the server's queries within 2 s.
    started = time.monotonic()
    done = run_cli("index", "patch", rows[2]["product_id"], "--set", "price=5555", "--index-dir", str(index))
    assert done.returncode == 0, done.stderr
    cli_done = time.monotonic()
    while not search(server, "anything", price_min=5555.0):
        assert time.monotonic() - cli_done < 2.0, "a patch took over 2 s to reach the server's queries"
        time.sleep(0.05)
    assert time.monotonic() - started < 60
    deleted = admin(server, "POST", "/v1/admin/products/delete", {"ids": [rows[2]["product_id"]]})
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1 and deleted.json()["visible"]
    assert not search(server, "anything", price_min=5555.0)
    assert httpx.get(f"{server.url}/v1/products/{rows[2]['product_id']}", timeout=10).status_code == 404


def test_patch_bad_input_is_refused_whole(server: Server, world: tuple[list[dict[str, str]], Path]) -> None:
    pid = world[0][3]["product_id"]
    before = httpx.get(f"{server.url}/v1/products/{pid}", timeout=10).json()
    missing = admin(server, "PATCH", "/v1/admin/products/NO-SUCH-ID", {"price": 1.0})
    assert missing.status_code == 404 and "NO-SUCH-ID" in missing.json()["error"]["message"]
    for body, field in [({"price": 1.0, "availability": "sometimes"}, "availability"),
                        ({"price": -3.0}, "price"), ({"colour": "red"}, "colour"), ({"image": "x.jpg"}, "image"),
                        ({"title": ""}, "title")]:
        resp = admin(server, "PATCH", f"/v1/admin/products/{pid}", body)
        assert resp.status_code == 422, resp.text
        assert field in resp.json()["error"]["message"], resp.text
    assert httpx.get(f"{server.url}/v1/products/{pid}", timeout=10).json() == before
    ok = admin(server, "PATCH", f"/v1/admin/products/{pid}", {"availability": "out_of_stock", "price": 7.25})
    assert ok.status_code == 200 and ok.json()["visible"] and sorted(ok.json()["changed"]) in (
        ["availability", "price"], ["price"])
    after = httpx.get(f"{server.url}/v1/products/{pid}", timeout=10).json()
    assert (after["price"], after["availability"]) == (7.25, "out_of_stock")
    in_stock = {r["product_id"] for q in QUERIES for r in search(server, q, availability=["in_stock"])}
    assert pid not in in_stock and all(r["availability"] == "in_stock"
                                       for q in QUERIES for r in search(server, q, availability=["in_stock"]))


def test_a_large_batch_is_a_job_and_compaction_folds_the_live_layer(
        server: Server, index: Path, world: tuple[list[dict[str, str]], Path], encoder: Any) -> None:
    rows = world[0]
    batch = [api_record(r) for r in rows[50:58]]
    resp = admin(server, "POST", "/v1/admin/products", {"products": batch})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == job["url"] and job["total"] == 8
    deadline = time.monotonic() + 120
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
        job = admin(server, "GET", job["url"]).json()
    assert job["status"] == "done" and job["done"] == 8 and job["result"]["upserted"] == 8, job
    seen = {r["product_id"] for q in QUERIES for r in search(server, q)}
    assert {r["product_id"] for r in rows[50:58]} & seen
    assert admin(server, "GET", "/v1/admin/jobs/nope").status_code == 404
    before = {q: search(server, q) for q in QUERIES}
    old = artifacts.read_active(index)
    resp = admin(server, "POST", "/v1/admin/compact")
    assert resp.status_code == 202
    job = resp.json()
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline + 120
        time.sleep(0.2)
        job = admin(server, "GET", job["url"]).json()
    assert job["status"] == "done" and job["result"]["folded"] >= 8, job
    assert artifacts.read_active(index) != old
    for _ in range(40):  # the server swaps to the new version within its poll interval
        if httpx.get(f"{server.url}/readyz", timeout=10).json().get("index_version") == artifacts.read_active(index):
            break
        time.sleep(0.1)
    after = {q: search(server, q) for q in QUERIES}
    strip = lambda res: [(r["product_id"], r["title"], r["price"]) for r in res]  # noqa: E731
    assert {q: strip(r) for q, r in after.items()} == {q: strip(r) for q, r in before.items()}
    # Scores agree but for BM25's corpus statistics, which the folded products now belong to.
    for q in QUERIES:
        assert [r["score"] for r in after[q]] == pytest.approx([r["score"] for r in before[q]], abs=0.01)


def test_sigkill_during_a_compaction_leaves_what_queries_see(index: Path, world: tuple[list[dict[str, str]], Path],
                                                             encoder: Any) -> None:
    from indexer.live import delete_products, patch_product

    rows = world[0]
    ctx = edit_context(index, encoder)
    delete_products(ctx, [rows[4]["product_id"]])
    patch_product(ctx, rows[5]["product_id"], {"title": "a renamed product", "price": 77.0})
    expected = everything(index, encoder)
    command = [CATALENS, "index", "compact", "--index-dir", str(index), "--json"]
    env = {**os.environ, "CATALENS_THREADS": "1"}
    t0 = time.monotonic()
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["folded"] == 2
    assert everything(index, encoder) == expected
    patch_product(ctx, rows[6]["product_id"], {"price": 66.0})  # a change for the killed ones to fold
    expected = everything(index, encoder)
    for fraction in (0.3, 0.6, 0.75, 0.85, 0.9, 0.95, 0.98):  # the snapshot is written in the last part
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(fraction * took)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        assert everything(index, encoder) == expected, f"killed at {fraction:.0%} of a compaction"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["folded"] in (0, 1)  # 0 if a killed one got to publish
    assert everything(index, encoder) == expected
    assert not list((index / "compacting").glob("*")), "a killed compaction's staging was left behind"


def test_100_live_updates_while_clients_query(server: Server, world: tuple[list[dict[str, str]], Path]) -> None:
    """0 failed queries, and every returned product live with fields at least as new as the
    newest change committed before the query started."""
    import random

    rows = world[0]
    rng = random.Random(5)
    history: dict[str, list[tuple[float, dict[str, Any] | None]]] = {}  # id -> [(commit time, fields or None)]
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[str] = []
    observations: list[tuple[float, list[dict[str, Any]]]] = []

    def client(seed: int) -> None:
        local = random.Random(seed)
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                started = time.monotonic()
                body = {"query": local.choice(QUERIES), "k": 10}
                if local.random() < 0.5:
                    body["filters"] = {"availability": ["in_stock"]}
                resp = http.post(f"{server.url}/v1/search/text", json=body)
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code}: {resp.text[:200]}")
                    continue
                with lock:
                    observations.append((started, resp.json()["results"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        live_ids = [r["product_id"] for r in rows[:50]]
        fresh = iter(rows[50:])
        for i in range(100):
            kind = rng.choices(["patch", "delete", "upsert"], weights=[70, 15, 15])[0]
            if kind == "upsert" and (row := next(fresh, None)) is not None:
                record = api_record(row, price=float(1000 + i))
                resp = admin(server, "POST", "/v1/admin/products", {"products": [record]})
                fields: dict[str, Any] | None = {"price": record["price"], "title": row["title"]}
                pid = row["product_id"]
                live_ids.append(pid)
            elif kind == "delete" and len(live_ids) > 10:
                pid = live_ids.pop(rng.randrange(len(live_ids)))
                resp = admin(server, "POST", "/v1/admin/products/delete", {"ids": [pid]})
                fields = None
            else:
                pid = rng.choice(live_ids)
                change = {"price": float(i), "title": f"renamed {i}",
                          "availability": rng.choice(["in_stock", "out_of_stock"])}
                resp = admin(server, "PATCH", f"/v1/admin/products/{pid}", change)
                fields = {"price": change["price"], "title": change["title"]}
            assert resp.status_code == 200 and resp.json()["visible"], resp.text
            with lock:
                history.setdefault(pid, []).append((time.monotonic(), fields))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures[:5]
    assert len(observations) > 100
    checked = 0
    for started, results in observations:
        for r in results:
            changes = [(t, f) for t, f in history.get(r["product_id"], []) if t < started]
            later = [f for t, f in history.get(r["product_id"], []) if t >= started]
            if not changes:
                continue
            newest = changes[-1][1]
            allowed = [newest, *later]
            assert any(f is not None and (r["price"], r["title"]) == (f["price"], f["title"]) for f in allowed), \
                f"{r['product_id']}: served {(r['price'], r['title'])}, newest before the query: {newest}"
            checked += 1
    assert checked > 50


def test_a_job_cut_off_by_a_restart_runs_again(index: Path, world: tuple[list[dict[str, str]], Path],
                                              tmp_path: Path) -> None:
    """A batch accepted with 202 is not lost when the server dies mid-job: the next start runs it."""
    from catalens.config import Settings
    from catalens.db import open_database
    from catalens.schema import AdminJob

    rows = world[0]
    ids = [r["product_id"] for r in rows[:3]]
    engine, sessions = open_database(Settings(index_dir=index).db_url)
    with sessions.begin() as session:  # what a killed server leaves: a job marked running, half done
        session.add(AdminJob(job_id="cut-off", kind="delete", status="running", total=3, done=1, payload=ids,
                             errors=[]))
    engine.dispose()
    srv = start_server(index, env={"CATALENS_API_KEY": KEY}, log=tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 60
        while (job := admin(srv, "GET", "/v1/admin/jobs/cut-off").json())["status"] != "done":
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["done"] == 3 and job["result"]["deleted"] == 3, job
        for pid in ids:
            assert httpx.get(f"{srv.url}/v1/products/{pid}", timeout=10).status_code == 404
    finally:
        stop_server(srv)
