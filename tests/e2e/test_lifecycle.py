"""Index lifecycle with real processes and files: kill and resume, hot swap, upsert, delete, bad images."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from catalens import artifacts
from tests.support import (
    CATALENS,
    Background,
    GatedImageServer,
    Server,
    absolute_images,
    build_in_process,
    image_search,
    read_rows,
    run_cli,
    start_server,
    stop_server,
    text_search,
    write_rows,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("trusted_image_sources")]

SAMPLE_N = 150
SEED = 23
BATCH = "4"  # small batches: the embedding cache gets a shard every 4 images
THRESHOLD = "0.995"  # near-identical: a JPEG re-encode of one picture scores above this


# --- helpers -------------------------------------------------------------------------------


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    result = run_cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "CATALENS_THREADS": "1", **(env or {})}
    return subprocess.Popen([CATALENS, *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def shards(index_dir: Path) -> set[Path]:
    return set((index_dir / "embeddings").glob("*/shard-*.npz"))


def shard_count(index_dir: Path) -> int:
    return len(shards(index_dir))


def shard_keys(paths: set[Path]) -> set[str]:
    keys: set[str] = set()
    for path in paths:
        with np.load(path, allow_pickle=False) as data:
            keys.update(str(k) for k in data["keys"])
    return keys


def active_version(index_dir: Path) -> str:
    return json.loads((index_dir / "ACTIVE").read_text())["version_id"]


def version_statuses(index_dir: Path) -> dict[str, str]:
    with sqlite3.connect(index_dir / "catalens.db") as db:
        return dict(db.execute("SELECT version_id, status FROM index_versions"))


def wait_for_version(server: Server, version: str, timeout: float = 30) -> None:
    """The server's watcher notices a new ACTIVE pointer within a few seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{server.url}/readyz", timeout=10).json().get("index_version") == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"server did not switch to {version} in {timeout} s")


def load_index_contents(index_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(sorted ids, their vectors) of both FAISS indexes of the active version."""
    from catalens import artifacts

    _, images, texts = artifacts.load_version(artifacts.active_version_path(index_dir))
    out = {}
    for name, index in (("images", images), ("texts", texts)):
        ids = np.sort(index.ids())
        out[name] = (ids, index.reconstruct(ids))
    return out


class QueryLoad(Background):
    """Client threads sending text queries to a server; records (start, end, status, version)."""

    QUERIES = ("red mug", "striped sofa", "blue shoe", "black watch", "green lamp", "dotted bag")

    def __init__(self, server: Server, *, clients: int, max_seconds: float = 120) -> None:
        self.server = server
        self.stop = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.records: list[list[tuple[float, float, int, str | None]]] = [[] for _ in range(clients)]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            n = 0
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                query = self.QUERIES[(i + n) % len(self.QUERIES)]
                n += 1
                started = time.monotonic()
                try:
                    resp = client.post("/v1/search/text", json={"query": query, "k": 5})
                    version = resp.json().get("index_version") if resp.status_code == 200 else None
                    self.records[i].append((started, time.monotonic(), resp.status_code, version))
                except httpx.HTTPError as exc:
                    self.records[i].append((started, time.monotonic(), 0, repr(exc)))
                time.sleep(0.02)

    @property
    def all(self) -> list[tuple[float, float, int, str | None]]:
        return sorted(r for records in self.records for r in records)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sampledata.catalog import write_sample_catalog

    out = tmp_path_factory.mktemp("lifecycle-world")
    write_sample_catalog(out, n=SAMPLE_N, seed=SEED, n_queries=10, progress=False)
    return out


@pytest.fixture(scope="module")
def world_rows(world: Path) -> list[dict[str, str]]:
    return absolute_images(read_rows(world / "catalog.csv"), world)


@pytest.fixture
def gated(world: Path, world_rows: list[dict[str, str]]) -> Iterator[GatedImageServer]:
    # An image of a product that no test catalog uses, so its content is new to every index.
    server = GatedImageServer(Path(world_rows[-1]["image"].split("|")[0]).read_bytes())
    yield server
    server.close()


# --- tests ---------------------------------------------------------------------------------


def test_killed_rebuild_resumes_to_the_same_index_as_a_clean_build(
        tmp_path: Path, world_rows: list[dict[str, str]], gated: GatedImageServer, encoder: Any) -> None:
    old_rows, new_rows = world_rows[:50], world_rows[50:100]
    new_rows[25] = {**new_rows[25], "image": gated.url()}  # the builder waits here, mid-embedding
    catalog_a = write_rows(tmp_path / "a.csv", old_rows)
    catalog_b = write_rows(tmp_path / "b.csv", old_rows + new_rows)
    index_dir = tmp_path / "idx"
    old = build_in_process(index_dir, catalog_a, encoder).version_id
    shards_before = shards(index_dir)
    server = start_server(index_dir, log=tmp_path / "serve.log")
    builder: subprocess.Popen | None = None
    try:
        with QueryLoad(server, clients=2) as load:
            builder = start_cli("index", "rebuild", "--catalog", str(catalog_b), "--index-dir", str(index_dir),
                                "--quiet", env={"CATALENS_BATCH_SIZE": BATCH, "CATALENS_FETCH_TIMEOUT_S": "120"})
            deadline = time.monotonic() + 120
            while not (gated.hit.is_set() and shard_count(index_dir) >= len(shards_before) + 2):
                assert builder.poll() is None, builder.communicate()
                assert time.monotonic() < deadline, "the rebuild never reached the embedding stage"
                time.sleep(0.05)
            os.kill(builder.pid, signal.SIGKILL)
            builder.wait(30)
            partial = shard_keys(shards(index_dir) - shards_before)  # what the killed build embedded
            time.sleep(3)  # longer than the server's ACTIVE watch interval
            assert text_search(server, "red mug")["index_version"] == old
        served = load.all
        assert served and all(status == 200 and version == old for _, _, status, version in served), served[-5:]
        assert active_version(index_dir) == old
        killed = [v for v, s in version_statuses(index_dir).items() if s == "building"]
        assert len(killed) == 1  # the killed builder's version, until the next build finds it

        gated.open()
        summary = cli_json("index", "rebuild", "--catalog", str(catalog_b), "--index-dir", str(index_dir),
                           "--quiet", env={"CATALENS_BATCH_SIZE": BATCH})
        new_images = sum(len(r["image"].split("|")) for r in new_rows)
        # Resumed: what the killed build embedded is reused, only the rest reaches the model.
        assert len(partial) >= 2 and all(k.startswith("img:") for k in partial)
        assert 0 < summary["embedded"] == new_images - len(partial), (summary, len(partial))
        assert summary["embedded"] + summary["cached"] == summary["images_ok"]
        assert summary["images_failed"] == 0 and summary["indexed"] == 100
        assert summary["texts_embedded"] == len(new_rows) and summary["texts_cached"] == len(old_rows)
        assert version_statuses(index_dir)[killed[0]] == "failed"
        assert active_version(index_dir) == summary["version_id"] != old
        wait_for_version(server, summary["version_id"])
    finally:
        if builder is not None and builder.poll() is None:
            builder.kill()
        stop_server(server)

    clean_dir = tmp_path / "clean"
    build_in_process(clean_dir, catalog_b, encoder)
    resumed, clean = load_index_contents(index_dir), load_index_contents(clean_dir)
    for name in ("images", "texts"):
        assert np.array_equal(resumed[name][0], clean[name][0]), name  # the same FAISS ids
        np.testing.assert_allclose(resumed[name][1], clean[name][1], atol=2e-5, err_msg=name)


def test_queries_never_fail_while_a_rebuild_swaps_the_active_version(
        tmp_path: Path, world_rows: list[dict[str, str]], encoder: Any) -> None:
    catalog = write_rows(tmp_path / "catalog.csv", world_rows[:40])
    index_dir = tmp_path / "idx"
    old = build_in_process(index_dir, catalog, encoder).version_id
    server = start_server(index_dir, log=tmp_path / "serve.log")
    try:
        with QueryLoad(server, clients=4) as load:
            time.sleep(1)
            summary = cli_json("index", "rebuild", "--catalog", str(catalog), "--index-dir", str(index_dir), "--quiet")
            new = summary["version_id"]
            assert summary["embedded"] == 0 and summary["texts_embedded"] == 0  # nothing changed
            wait_for_version(server, new)
            time.sleep(1)
    finally:
        stop_server(server)
    records = load.all
    failed = [r for r in records if r[2] != 200]
    assert not failed and len(records) >= 20, (failed[:5], len(records))
    assert {r[3] for r in records} == {old, new}
    for client in load.records:  # each client sees old ... old new ... new: one change, never back
        versions = [v for _, _, _, v in client]
        assert versions == sorted(versions, key=lambda v: v == new), versions
    first_new_end = min(end for _, end, _, v in records if v == new)
    assert all(v == new for start, _, _, v in records if start > first_new_end)


def test_upsert_embeds_only_changes_and_delete_hides_a_product_everywhere(
        tmp_path: Path, world: Path, world_rows: list[dict[str, str]], encoder: Any) -> None:
    rows = world_rows[:40]
    catalog = write_rows(tmp_path / "catalog.csv", rows)
    index_dir = tmp_path / "idx"
    build_in_process(index_dir, catalog, encoder)
    changed, retitled, gone, neighbour = rows[5], rows[6], rows[7], rows[8]
    new_image = Path(world_rows[120]["image"].split("|")[0])  # never indexed before
    server = start_server(index_dir, log=tmp_path / "serve.log")
    try:
        assert image_search(server, new_image)["results"][0]["product_id"] != changed["product_id"]
        upsert = write_rows(tmp_path / "upsert.csv", [{**changed, "image": str(new_image)},
                                                     {**retitled, "title": "Limited edition " + retitled["title"]}])
        active = artifacts.read_active(index_dir)
        summary = cli_json("index", "upsert", "--catalog", str(upsert), "--index-dir", str(index_dir), "--quiet")
        assert summary["upserted"] == 2 and summary["seq"] > 0
        assert summary["images_embedded"] == 1  # the one new image; the retitled product's come from the cache
        assert summary["images_cached"] == len(retitled["image"].split("|"))
        assert summary["texts_embedded"] == 1 and summary["texts_cached"] == 1
        assert artifacts.read_active(index_dir) == active  # live: no new version
        wait_until(lambda: image_search(server, new_image)["results"][0]["product_id"] == changed["product_id"])
        body = httpx.get(f"{server.url}/v1/products/{changed['product_id']}", timeout=10).json()
        assert [img["url"] for img in body["images"]] and len(body["images"]) == 1

        pid = gone["product_id"]
        facets_before = httpx.get(f"{server.url}/v1/facets", timeout=10).json()
        assert pid in [r["product_id"] for r in text_search(server, gone["title"], k=5)["results"]]
        deleted = cli_json("index", "delete", "--ids", pid, "--index-dir", str(index_dir))
        assert deleted["deleted"] == 1 and deleted["missing"] == 0
        # Hidden within the server's poll (the live layer) ...
        wait_until(lambda: pid not in [r["product_id"] for r in text_search(server, gone["title"], k=50)["results"]])
        assert_product_hidden(server, gone, neighbour, facets_before)
        compacted = cli_json("index", "compact", "--index-dir", str(index_dir))
        assert compacted["folded"] == 3
        wait_for_version(server, compacted["version_id"])
        # ... and still hidden after the compaction: the new version has no vectors for it.
        assert_product_hidden(server, gone, neighbour, facets_before)
    finally:
        stop_server(server)
    contents = load_index_contents(index_dir)
    assert contents["texts"][0].size == len(rows) - 1
    # The version a compaction publishes keeps the reranker features of every remaining image.
    version = artifacts.active_version_path(index_dir)
    stored = artifacts.load_rerank_features(version, artifacts.read_manifest(version))
    assert stored is not None and len(stored.ids) == contents["images"][0].size


def wait_until(check: Any, timeout: float = 2.0) -> None:
    """A live change reaches the server's queries within its poll interval (2 s here at most)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "a live change took over 2 s to reach the server"
        time.sleep(0.05)


def assert_product_hidden(server: Server, gone: dict[str, str], neighbour: dict[str, str], facets_before: dict) -> None:
    pid, url = gone["product_id"], server.url
    assert pid not in [r["product_id"] for r in text_search(server, gone["title"], k=50)["results"]]
    reranked = httpx.post(f"{url}/v1/search/text", json={"query": gone["title"], "k": 50, "rerank": True,
                                                         "rerank_top_n": 100}, timeout=30).json()
    assert reranked["reranked"] and pid not in [r["product_id"] for r in reranked["results"]]
    own_image = Path(gone["image"].split("|")[0])
    assert pid not in [r["product_id"] for r in image_search(server, own_image, k=50)["results"]]
    similar = httpx.get(f"{url}/v1/products/{neighbour['product_id']}/similar", params={"k": 50}, timeout=30)
    assert similar.status_code == 200 and pid not in [r["product_id"] for r in similar.json()["results"]]
    for path in (f"/v1/products/{pid}", f"/v1/products/{pid}/similar", f"/v1/products/{pid}/image",
                 f"/v1/products/{pid}/image?size=thumb"):
        resp = httpx.get(url + path, timeout=30)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", path
    facets = httpx.get(f"{url}/v1/facets", timeout=10).json()
    for name in ("category", "brand"):
        before = {f["value"]: f["count"] for f in facets_before[name]}
        after = {f["value"]: f["count"] for f in facets[name]}
        assert after.get(gone[name], 0) == before[gone[name]] - 1, name


def write_bad_images(folder: Path, good_jpeg: bytes) -> dict[str, tuple[str, str]]:
    """One file per failure kind -> {kind: (path, expected error code)}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 50)
    (folder / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 Mpixel, a few KB on disk
    (folder / "bomb.png").write_bytes(buf.getvalue())
    return {"corrupt": (str(folder / "corrupt.jpg"), "unsupported_image"),
            "truncated": (str(folder / "truncated.jpg"), "unsupported_image"),
            "empty": (str(folder / "empty.jpg"), "unsupported_image"),
            "bomb": (str(folder / "bomb.png"), "payload_too_large"),
            "missing": (str(folder / "missing.jpg"), "image_fetch_failed")}


def test_bad_images_are_recorded_and_their_products_stay_findable_by_text(
        tmp_path: Path, world_rows: list[dict[str, str]], encoder: Any) -> None:
    good = world_rows[:30]
    bad_files = write_bad_images(tmp_path / "bad", Path(good[0]["image"].split("|")[0]).read_bytes())
    bad = [{**good[0], "product_id": f"BAD-{kind}", "title": f"Zanzibar {kind} heirloom teapot number {i}",
            "description": "", "image": path}
           for i, (kind, (path, _)) in enumerate(bad_files.items())]
    catalog = write_rows(tmp_path / "catalog.csv", good + bad)
    index_dir = tmp_path / "idx"
    summary = cli_json("index", "build", "--catalog", str(catalog), "--index-dir", str(index_dir), "--quiet")
    good_images = sum(len(r["image"].split("|")) for r in good)
    assert summary["indexed"] == 35 and summary["images_ok"] == good_images and summary["images_failed"] == 5
    assert summary["vectors"] == good_images + 5  # every good image + a text vector per imageless product

    errors = cli_json("index", "errors", "--index-dir", str(index_dir), "--version", summary["version_id"])
    by_product = {e["product_id"]: e for e in errors}
    assert set(by_product) == {f"BAD-{kind}" for kind in bad_files}
    for kind, (path, code) in bad_files.items():
        error = by_product[f"BAD-{kind}"]
        assert error["code"] == code and error["source"] == path and error["field"] == "image", error
        assert error["message"]
    assert "pixel" in by_product["BAD-bomb"]["message"] and "0 bytes" in by_product["BAD-empty"]["message"]

    from catalens.config import Settings
    from catalens.db import create_db_engine, create_session_factory
    from retrieval.searcher import Filters, Searcher

    settings = Settings(index_dir=index_dir, threads=1)
    searcher = Searcher(settings, create_session_factory(create_db_engine(settings.db_url)), encoder)
    searcher.reload()
    for row in bad:
        hits = searcher.search_text(row["title"], 5, Filters()).hits
        assert hits and hits[0].product.product_id == row["product_id"], [h.product.product_id for h in hits]
    for row in good[:5]:
        image = Image.open(row["image"].split("|")[0])
        assert searcher.search_image(image, 1, Filters()).hits[0].product.product_id == row["product_id"]


@pytest.mark.reliability
def test_row05_second_builder_exits_fast_with_one_line_and_a_killed_lock_holder_frees_the_lock(
        tmp_path: Path, world_rows: list[dict[str, str]], gated: GatedImageServer) -> None:
    rows = world_rows[:12]
    rows[6] = {**rows[6], "image": gated.url()}
    catalog = write_rows(tmp_path / "catalog.csv", rows)
    index_dir = tmp_path / "idx"
    first = start_cli("index", "build", "--catalog", str(catalog), "--index-dir", str(index_dir), "--quiet",
                      env={"CATALENS_FETCH_TIMEOUT_S": "120"})
    try:
        deadline = time.monotonic() + 120
        while not gated.hit.is_set():  # the first builder holds the lock and waits on an image
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        second = run_cli("index", "build", "--catalog", str(catalog), "--index-dir", str(index_dir), "--quiet")
        took = time.monotonic() - started
        assert second.returncode == 2 and first.poll() is None
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("catalens: error: another build is running"), second.stderr
        assert f"pid {first.pid}" in lines[0]
        assert took < 20, f"the second builder took {took:.1f} s to give up"
        assert not (index_dir / "ACTIVE").exists()
    finally:
        first.kill()
        first.wait(30)
    gated.open()
    third = cli_json("index", "build", "--catalog", str(catalog), "--index-dir", str(index_dir), "--quiet")
    assert third["indexed"] == 12 and third["images_failed"] == 0
    statuses = version_statuses(index_dir)
    assert statuses[third["version_id"]] == "ready"
    assert sorted(statuses.values()) == ["failed", "ready"]  # the killed builder's version


def test_duplicates_groups_identical_and_near_identical_images(
        tmp_path: Path, world_rows: list[dict[str, str]], encoder: Any) -> None:
    rows = [{**r, "image": r["image"].split("|")[0]} for r in world_rows[:30]]
    first, second = rows[0], rows[1]
    reencoded = tmp_path / "reencoded.jpg"
    Image.open(first["image"]).save(reencoded, quality=75)  # other bytes, the same picture
    rows += [{**second, "product_id": "COPY-1", "image": first["image"]},
             {**second, "product_id": "COPY-2", "image": str(reencoded)},
             {**second, "product_id": "COPY-3", "image": second["image"]}]
    catalog = write_rows(tmp_path / "catalog.csv", rows)
    index_dir = tmp_path / "idx"
    build_in_process(index_dir, catalog, encoder)

    groups = cli_json("index", "duplicates", "--index-dir", str(index_dir), "--threshold", THRESHOLD)
    by_member = {pid: g for g in groups for pid in g["product_ids"]}
    near = by_member[first["product_id"]]
    assert {first["product_id"], "COPY-1", "COPY-2"} <= set(near["product_ids"]), groups
    assert near["match"] == "near-identical" and "COPY-3" not in near["product_ids"]
    links = {tuple(link["products"]): link for link in near["links"]}
    assert links[tuple(sorted((first["product_id"], "COPY-1")))]["identical"] is True
    reencoded_links = [link for pair, link in links.items() if "COPY-2" in pair]
    assert reencoded_links and all(not link["identical"] and link["score"] >= float(THRESHOLD)
                                   for link in reencoded_links)
    same_file = by_member["COPY-3"]
    assert second["product_id"] in same_file["product_ids"]
    assert any(link["identical"] for link in same_file["links"])
