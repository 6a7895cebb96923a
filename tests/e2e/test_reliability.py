"""RELIABILITY.md, one test per row: rows 1-10, 12-14, 16-19 here or renamed in place; the rest beside their code.

Real components only: SQLite files, FAISS, the bundled model, real processes and real
signals, a real full filesystem (an 8 MB tmpfs) for the disk-full row. The test a row
points at is named `test_rowNN_...` and carries the `reliability` marker;
test_every_reliability_row_has_a_test checks (by parsing tests/**/test_*.py) that all 26 rows have one.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from catalens import artifacts
from catalens.config import Settings
from tests.support import ROOT, SampleIndex, free_port, run_cli, start_server, stop_server, write_catalog_rows

pytestmark = pytest.mark.reliability

ROWS = range(1, 27)
API_KEY = "reliability-key"


# --- shared helpers ----------------------------------------------------------------------------


def absolute_rows(catalog: Path) -> list[dict[str, str]]:
    """Catalog rows whose image paths are absolute, so a catalog file can live anywhere."""
    with open(catalog, newline="") as fh:
        rows = list(csv.DictReader(fh))
    root = catalog.parent
    return [{**r, "image": "|".join(str(root / i) for i in r["image"].split("|"))} for r in rows]


def n_images(rows: list[dict[str, str]]) -> int:
    return sum(len(r["image"].split("|")) for r in rows)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sqlite_health(db: Path) -> tuple[str, list[Any]]:
    """(PRAGMA integrity_check, PRAGMA foreign_key_check rows), on a connection of its own."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0], conn.execute("PRAGMA foreign_key_check").fetchall()
    finally:
        conn.close()


def sql(db: Path, query: str, *params: Any) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".build.lock"))
    return dst


def make_searcher(index_dir: Path, encoder: Any, **settings: Any) -> Any:
    """The real query path over an index folder, sharing the session's loaded model (no reranker)."""
    from catalens.db import create_db_engine, create_session_factory
    from retrieval.searcher import Searcher

    s = Settings(index_dir=index_dir, threads=1, **settings)
    return Searcher(s, create_session_factory(create_db_engine(s.db_url)), encoder)


def app_client(searcher: Any) -> Any:
    """The real app over this searcher, admin writes on (wired as `catalens serve` wires them)."""
    from fastapi.testclient import TestClient

    from indexer.live import IndexEditor
    from retrieval.app import create_app

    app = create_app(searcher.settings, searcher=searcher, 
                     editor=IndexEditor(searcher.settings, searcher.encoder, searcher.reranker))
    return TestClient(app, raise_server_exceptions=False)


def in_process_build(index_dir: Path, catalog: Path, encoder: Any, reranker: Any, images: Path,
                     **settings: Any) -> Any:
    """A build sharing the session's loaded model; `images` may be read beside the catalog's own folder."""
    from indexer.embedder import Embedder
    from indexer.runner import BuildOptions, build_index

    s = Settings(index_dir=index_dir, threads=1, batch_size=8, image_roots=[images], **settings)
    return build_index(s, BuildOptions(catalog=catalog, progress=False), encoder=encoder,
                       embedder=Embedder(encoder, reranker=reranker))


def error_of(resp: httpx.Response) -> str:
    return resp.json()["error"]["code"]


# --- the matrix is complete ------------------------------------------------------------------


def _is_reliability_mark(expr: ast.expr) -> bool:
    """pytest.mark.reliability, with or without a call, or a list / tuple holding it."""
    if isinstance(expr, (ast.List, ast.Tuple)):
        return any(_is_reliability_mark(e) for e in expr.elts)
    if isinstance(expr, ast.Call):
        expr = expr.func
    return isinstance(expr, ast.Attribute) and expr.attr == "reliability" and \
        isinstance(expr.value, ast.Attribute) and expr.value.attr == "mark"


def _pytestmark(body: list[ast.stmt]) -> bool:
    for node in body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets) and node.value is not None \
                and _is_reliability_mark(node.value):
            return True
    return False


def reliability_tests(tests_dir: Path) -> dict[int, list[str]]:
    """Row -> the `file::test` names of tests called test_rowNN_... that carry the reliability marker.

    Read from the source (AST), not by importing: a marker counts on the function, on its
    Test class, or file-wide through `pytestmark`.
    """
    found: dict[int, list[str]] = {}

    def visit(func: ast.stmt, marked: bool, path: Path, owner: str = "") -> None:
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        match = re.match(r"test_row(\d+)_", func.name)
        if match and (marked or any(_is_reliability_mark(d) for d in func.decorator_list)):
            found.setdefault(int(match.group(1)), []).append(f"{path.name}::{owner}{func.name}")

    for path in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        file_marked = _pytestmark(tree.body)
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                class_marked = file_marked or _pytestmark(node.body) or \
                    any(_is_reliability_mark(d) for d in node.decorator_list)
                for item in node.body:
                    visit(item, class_marked, path, f"{node.name}::")
            else:
                visit(node, file_marked, path)
    return found


def test_every_reliability_row_has_a_test() -> None:
    found = reliability_tests(ROOT / "tests")
    missing = [row for row in ROWS if row not in found]
    unknown = sorted(set(found) - set(ROWS))
    assert not unknown, f"tests name rows RELIABILITY.md does not have: { {r: found[r] for r in unknown} }"
    assert not missing, (f"RELIABILITY.md rows without a test named test_rowNN_... marked reliability: {missing}; "
                         f"covered: {sorted(found)}")


def test_the_matrix_check_reads_markers_the_way_pytest_applies_them(tmp_path: Path) -> None:
    """The AST check itself: a decorator, a called one, class-wide and file-wide pytestmark count; no marker does not."""
    (tmp_path / "test_a.py").write_text(
        "import pytest\n"
        "@pytest.mark.reliability\n@pytest.mark.parametrize('x', [1])\ndef test_row01_x(x): pass\n"
        "def test_row02_unmarked(): pass\n"
        "@pytest.mark.reliability()\ndef test_row03_called(): pass\n"
        "class TestRows:\n    pytestmark = [pytest.mark.slow, pytest.mark.reliability]\n"
        "    def test_row04_in_a_class(self): pass\n")
    (tmp_path / "test_b.py").write_text("import pytest\npytestmark = [pytest.mark.reliability]\n"
                                        "def test_row05_file_wide(): pass\ndef test_other(): pass\n")
    assert sorted(reliability_tests(tmp_path)) == [1, 3, 4, 5]


# --- rows 1 and 7: SIGKILL at random points of a real build, 30 times ---------------------------

# A process that loads the model once, then forks a builder per request: each child runs
# the real build_index and can be SIGKILLed at any moment without paying the model load again.
ZYGOTE = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
from pathlib import Path
from catalens.config import Settings
from catalens.encoder import ModelSpec, load_clip
from catalens.reranker import load_reranker
from indexer.runner import BuildOptions, build_index
from indexer.embedder import Embedder

encoder = load_clip(ModelSpec("catalens-demo"), device="cpu")
reranker = load_reranker("catalens-itm", clip=encoder)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "build":
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stdout is the protocol pipe
            # A trace of SQL transactions (b: begin, w: a write statement, c: commit, r: rollback),
            # one unbuffered byte each, so the test knows whether a kill fell inside a write transaction.
            from sqlalchemy import Engine, event
            trace = os.open(cmd["trace"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
            event.listen(Engine, "begin", lambda *a: os.write(trace, b"b"))
            event.listen(Engine, "commit", lambda *a: os.write(trace, b"c"))
            event.listen(Engine, "rollback", lambda *a: os.write(trace, b"r"))
            event.listen(Engine, "before_cursor_execute", lambda conn, cur, statement, *a: os.write(trace, b"w")
                         if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE") else None)
            code = 0
            try:
                summary = build_index(
                    Settings(index_dir=Path(cmd["index_dir"]), threads=1, batch_size=cmd["batch"]),
                    BuildOptions(catalog=Path(cmd["catalog"]), images_root=Path(cmd["images_root"]), progress=False),
                    encoder=encoder, embedder=Embedder(encoder, reranker=reranker))
                Path(cmd["result"]).write_text(json.dumps(summary.as_dict()))
            except BaseException as exc:
                print(f"build {os.getpid()} failed: {exc!r}", file=sys.stderr, flush=True)
                code = 3
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                          "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
"""


class Zygote:
    def __init__(self, log: Path, images_root: Path) -> None:
        self.log, self.images_root = log, images_root
        self._log_fh = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log_fh,
                                     env={**os.environ, "CATALENS_THREADS": "1"})
        assert self._reply().get("ready"), self.log.read_text()[-3000:]

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line, f"the builder zygote died: {self.log.read_text()[-3000:]}"
        return json.loads(line)

    def _send(self, **cmd: Any) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self._reply()

    def start(self, catalog: Path, index_dir: Path, result: Path, batch: int = 8) -> int:
        return int(self._send(op="build", catalog=str(catalog), index_dir=str(index_dir), result=str(result),
                              trace=str(result.with_suffix(".trace")), images_root=str(self.images_root),
                              batch=batch)["pid"])

    def wait(self, pid: int) -> dict:
        return self._send(op="wait", pid=pid)

    def run(self, catalog: Path, index_dir: Path, result: Path) -> dict:
        status = self.wait(self.start(catalog, index_dir, result))
        assert status["code"] == 0, (status, self.log.read_text()[-3000:])
        return json.loads(result.read_text())

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log_fh.close()


Ranking = list[list[tuple[str, float]]]


def top_k(searcher: Any, queries: list[str], k: int = 10) -> Ranking:
    from retrieval.searcher import Filters

    searcher.reload()
    return [[(h.product.product_id, h.score) for h in searcher.search_text(q, k, Filters()).hits] for q in queries]


def assert_same_ranking(got: Ranking, want: Ranking, tol: float = 1e-4) -> None:
    """The same products in the same order; products whose scores tie (within tol) may swap."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert len(g) == len(w), (g, w)
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], atol=tol)
        i = 0
        while i < len(w):
            j = i + 1
            while j < len(w) and abs(w[j][1] - w[j - 1][1]) < tol:
                j += 1
            assert {p for p, _ in g[i:j]} == {p for p, _ in w[i:j]}, (g, w)
            i = j


def open_write_transactions(trace: str) -> tuple[int, bool]:
    """(write transactions begun, whether the last one is still open) from a ZYGOTE trace."""
    segments = trace.split("b")[1:]
    writes = [seg for seg in segments if "w" in seg]
    last = segments[-1] if segments else ""
    return len(writes), "w" in last and "c" not in last and "r" not in last


@dataclass
class KillObservation:
    """What a builder SIGKILLed at one point left behind (read back while no builder runs)."""

    mode: str  # "time": after a random delay; "txn": inside its k-th write transaction
    delay: float
    killed: bool
    integrity: str
    foreign_key_errors: int
    products: int
    images: dict[str, int]
    versions: dict[str, int]
    active: str | None
    active_catalog: str | None
    active_error: str | None
    staging_left: bool
    published: bool  # the active pointer moved during this run
    trace: str  # the killed builder's SQL transactions, see ZYGOTE
    ranking: Ranking = field(repr=False)

    @property
    def in_write_transaction(self) -> bool:
        """Killed after a write statement of a transaction it had not committed."""
        return open_write_transactions(self.trace)[1]

    @property
    def phase(self) -> str:
        """Where the builder was when it died, from what it left behind."""
        if self.published:
            return "after the publish"
        if self.in_write_transaction:
            return "inside a write transaction"
        if self.staging_left:
            return "writing the new version's files"
        if not self.trace:
            return "starting"
        return "before the catalog sync" if self.products == KILL_A else "reading, embedding or between transactions"


@dataclass
class KillCampaign:
    old: str
    catalog_b: Path
    index_dir: Path
    reference_dir: Path
    images_a: int
    images_b: int
    ranking_a: Ranking
    ranking_b: Ranking
    cold_s: float
    warm_s: float
    observations: list[KillObservation]
    final: dict
    final_ranking: Ranking

    def kills(self, mode: str | None = None) -> list[KillObservation]:
        return [o for o in self.observations if o.killed and mode in (None, o.mode)]


KILL_A, KILL_B = 120, 200  # products in the live catalog and in the rebuild that gets killed
TIME_KILLS = 20  # row 1: kills at random moments
TXN_KILLS = 30  # row 7: kills inside a write transaction
KILL_SEED = 1307


class KillRunner:
    """Starts a builder of catalog B, SIGKILLs it, reads back the state."""

    def __init__(self, zygote: Zygote, work: Path, searcher: Any, queries: list[str],
                 catalogs: dict[str, str]) -> None:
        self.zygote, self.searcher, self.queries, self.catalogs = zygote, searcher, queries, catalogs
        self.index_dir = work / "idx"
        self.result, self.trace = work / "kill.json", work / "kill.trace"

    def run(self, catalog: Path, *, delay: float | None = None, write_txn: int | None = None) -> KillObservation:
        self.result.unlink(missing_ok=True)
        self.trace.unlink(missing_ok=True)
        previous = artifacts.read_active(self.index_dir)
        started = time.monotonic()
        pid = self.zygote.start(catalog, self.index_dir, self.result)
        if delay is not None:
            time.sleep(delay)
        else:  # watch the trace; kill as soon as the k-th write transaction is open
            deadline = started + 20
            while time.monotonic() < deadline and not self.result.exists():
                began, still_open = open_write_transactions(self.trace.read_text() if self.trace.exists() else "")
                if began >= int(write_txn or 1) and still_open:
                    break
                time.sleep(0.0005)
        waited = time.monotonic() - started
        os.kill(pid, signal.SIGKILL)  # a zombie if it already finished: then the signal is a no-op
        status = self.zygote.wait(pid)
        return self.observe("time" if delay is not None else "txn", waited, status, previous)

    def observe(self, mode: str, delay: float, status: dict, previous: str | None) -> KillObservation:
        db = self.index_dir / "catalens.db"
        integrity, fk = sqlite_health(db)
        active = artifacts.read_active(self.index_dir)
        active_catalog = active_error = None
        ranking: Ranking = []
        try:
            manifest, _, _ = artifacts.load_version(artifacts.versions_dir(self.index_dir) / str(active))
            active_catalog = self.catalogs.get(manifest.catalog, "?")
            ranking = top_k(self.searcher, self.queries)
        except Exception as exc:  # recorded, asserted on by the tests
            active_error = f"{type(exc).__name__}: {exc}"
        staging = self.index_dir / "staging"
        return KillObservation(
            mode=mode, delay=delay, killed=status["signal"] == signal.SIGKILL, integrity=integrity,
            foreign_key_errors=len(fk), products=sql(db, "SELECT count(*) FROM products WHERE deleted = 0")[0][0],
            # Images of live products: a killed build's sync is put back by the next build (its
            # products deleted again), their image rows and what they recorded kept for a rerun.
            images=dict(sql(db, "SELECT i.status, count(*) FROM product_images i JOIN products p ON p.id = i.product_pk "
                                "WHERE p.deleted = 0 GROUP BY i.status")),
            versions=dict(sql(db, "SELECT status, count(*) FROM index_versions GROUP BY status")),
            active=active, active_catalog=active_catalog, active_error=active_error,
            staging_left=staging.is_dir() and any(p.is_dir() for p in staging.iterdir()),
            published=active != previous, trace=self.trace.read_text() if self.trace.exists() else "",
            ranking=ranking)


@pytest.fixture(scope="module")
def kill_campaign(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> KillCampaign:
    """A live index of catalog A; full rebuilds to catalog B (A + 80 new products) SIGKILLed 50 times.

    20 or more kills at random moments (until they fall in three stages), stratified (with jitter)
    over the length of a warm rebuild:
    the first rebuilds are cold, so these fall at startup, in the catalog sync, while
    embedding, then (once the embedding cache is complete) while writing the staging folder
    and around the publish. Then 30 kills inside a write transaction: the child
    traces its SQL transactions and is killed as soon as its k-th write transaction (k random:
    the version row, the catalog sync, image batches, status updates) has written and not
    committed. The state is read back after each kill; then a last rebuild runs to the end.
    """
    work = tmp_path_factory.mktemp("kills")
    rows = absolute_rows(sample_dir / "catalog.csv")
    catalog_a = write_catalog_rows(work / "a.csv", rows[:KILL_A])
    catalog_b = write_catalog_rows(work / "b.csv", rows[:KILL_B])
    index_dir, reference = work / "idx", work / "reference"
    result = work / "result.json"
    queries = [*(r["title"] for r in rows[KILL_A:KILL_A + 4]), "red mug", "striped sofa"]
    zygote = Zygote(work / "zygote.log", images_root=sample_dir)
    try:
        zygote.run(catalog_a, index_dir, result)
        old = str(artifacts.read_active(index_dir))
        started = time.monotonic()
        zygote.run(catalog_b, reference, result)  # a clean build of B: the reference, and how long a cold one takes
        cold = time.monotonic() - started
        started = time.monotonic()
        zygote.run(catalog_b, reference, result)  # and a warm one (everything in the embedding cache)
        warm = time.monotonic() - started
        searcher = make_searcher(index_dir, encoder)
        ranking_a = top_k(searcher, queries)
        ranking_b = top_k(make_searcher(reference, encoder), queries)
        runner = KillRunner(zygote, work, searcher, queries,
                            {str(catalog_a.resolve()): "A", str(catalog_b.resolve()): "B"})
        rng = random.Random(KILL_SEED)
        observations = []
        # Each killed build leaves more of B in the embedding cache, so later rounds of the schedule reach
        # later stages; on a slow or busy machine the first round can end still embedding: keep drawing.
        for n in range(TIME_KILLS * 3):
            killed = [o for o in observations if o.killed]
            if len(killed) >= TIME_KILLS and len({o.phase for o in killed}) >= 3:
                break
            observations.append(runner.run(catalog_b, delay=1.1 * warm * (n % TIME_KILLS + rng.random()) / TIME_KILLS))
        for _ in range(TXN_KILLS * 2):
            if sum(o.in_write_transaction for o in observations if o.mode == "txn") >= TXN_KILLS:
                break
            observations.append(runner.run(catalog_b, write_txn=rng.randint(1, 4)))
        final = zygote.run(catalog_b, index_dir, result)
        final_ranking = top_k(searcher, queries)
    finally:
        zygote.close()
    return KillCampaign(old, catalog_b, index_dir, reference, n_images(rows[:KILL_A]), n_images(rows[:KILL_B]),
                        ranking_a, ranking_b, cold, warm, observations, final, final_ranking)


def test_row01_sigkill_at_random_points_of_a_build_never_changes_what_is_served(kill_campaign: KillCampaign) -> None:
    c = kill_campaign
    assert len(c.kills("time")) >= TIME_KILLS, \
        f"{len(c.kills('time'))} of {TIME_KILLS} builds killed (rebuilds: {c.cold_s:.2f}s cold, {c.warm_s:.2f}s warm)"
    with pytest.raises(AssertionError):
        assert_same_ranking(c.ranking_a, c.ranking_b)  # the rebuild changes results: the check below means something
    for o in c.observations:
        # I1: the active version is the old build, or a complete new one; it verifies and answers.
        assert o.active_error is None, o
        assert o.active == c.old or o.active_catalog == "B", o
        assert_same_ranking(o.ranking, c.ranking_a if o.active == c.old else c.ranking_b)
    assert any(o.active == c.old for o in c.kills()), "no kill landed before the publish"
    phases = {o.phase for o in c.kills("time")}
    assert len(phases) >= 3, (f"the random kills fell in too few stages: {phases} "
                              f"(rebuilds: {c.cold_s:.2f}s cold, {c.warm_s:.2f}s warm; "
                              f"{[(round(o.delay, 2), o.phase) for o in c.kills('time')]})")
    # The rerun finishes, cleans the staging folder a killed builder left, and serves what a clean build serves.
    assert c.final["images_failed"] == 0 and c.final["vectors"] > 0
    assert not list((c.index_dir / "staging").glob("*")), "staging left behind"
    final_version = artifacts.active_version_path(c.index_dir)
    assert artifacts.read_manifest(final_version).catalog == str(c.catalog_b.resolve())
    assert_same_ranking(c.final_ranking, c.ranking_b)
    _, images, texts = artifacts.load_version(final_version)
    _, ref_images, ref_texts = artifacts.load_version(artifacts.active_version_path(c.reference_dir))
    for got, want in ((images, ref_images), (texts, ref_texts)):
        ids = np.sort(want.ids())
        assert np.array_equal(np.sort(got.ids()), ids)  # the same FAISS ids = the same DB keys
        np.testing.assert_allclose(got.reconstruct(ids), want.reconstruct(ids), atol=2e-5)


def test_row07_sigkill_30_times_mid_transaction_keeps_sqlite_intact_and_a_rerun_completes(
        kill_campaign: KillCampaign) -> None:
    c = kill_campaign
    in_txn = [o for o in c.kills("txn") if o.in_write_transaction]
    assert len(in_txn) >= TXN_KILLS, f"only {len(in_txn)} kills inside a write transaction"
    # Killed in different transactions of the build, not always the same one.
    assert len({open_write_transactions(o.trace)[0] for o in in_txn}) >= 3, [o.trace for o in in_txn]
    pending_after_sync: list[int] = []
    for o in c.observations:
        # I4: after every crash the database is intact ...
        assert o.integrity == "ok" and o.foreign_key_errors == 0, o
        # ... and the catalog sync is one transaction: all of B's rows or none, never a part.
        assert o.products in (KILL_A, KILL_B), o
        assert sum(o.images.values()) == (c.images_a if o.products == KILL_A else c.images_b), o
        assert set(o.versions) <= {"ready", "failed", "building"} and o.versions.get("building", 0) <= 1, o
        if o.products == KILL_B:
            pending_after_sync.append(o.images.get("pending", 0))
    # Resumable: images recorded by a killed build stay recorded; the next one never starts over.
    assert pending_after_sync == sorted(pending_after_sync, reverse=True), pending_after_sync
    # The rerun completes: exact counts, every interrupted version marked failed, nothing half-done.
    db = c.index_dir / "catalens.db"
    assert sqlite_health(db) == ("ok", [])
    assert c.final["indexed"] == KILL_B and c.final["images_ok"] == c.images_b and c.final["images_failed"] == 0
    assert c.final["embedded"] + c.final["cached"] == c.final["images_ok"]
    assert c.final["embedded"] < c.images_b - c.images_a  # work the killed builds finished was kept
    assert sql(db, "SELECT count(*) FROM products WHERE deleted = 0")[0][0] == KILL_B
    assert dict(sql(db, "SELECT status, count(*) FROM product_images GROUP BY status")) == {"ok": c.images_b}
    statuses = dict(sql(db, "SELECT status, count(*) FROM index_versions GROUP BY status"))
    assert set(statuses) <= {"ready", "failed"} and statuses.get("failed", 0) >= TXN_KILLS // 2, statuses
    assert not list(c.index_dir.glob("embeddings/*/.shard-*.tmp")) + list(c.index_dir.glob("features/*/.shard-*.tmp"))


# --- row 2: a corrupt or truncated index file ----------------------------------------------------


def damage_file(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture()
def two_versions(sample_index: SampleIndex, tmp_path: Path) -> tuple[Path, str, str, str]:
    """A copy of the sample index with a second real version (one product deleted live, then compacted)."""
    from indexer.live import EditContext, compact, delete_products

    index_dir = copy_index(sample_index.index_dir, tmp_path / "idx")
    v1 = str(artifacts.read_active(index_dir))
    gone = sample_index.rows()[0]["product_id"]
    ctx = EditContext(Settings(index_dir=index_dir, threads=1))
    assert delete_products(ctx, [gone]).deleted == 1
    v2 = compact(ctx).version_id
    assert v2 != v1 and artifacts.read_active(index_dir) == v2
    return index_dir, v1, v2, gone


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_row02_a_corrupt_or_truncated_index_file_is_never_served(two_versions: tuple[Path, str, str, str],
                                                                  encoder: Any, how: str) -> None:
    index_dir, v1, v2, _ = two_versions
    damage_file(artifacts.versions_dir(index_dir) / v2 / artifacts.IMAGE_INDEX, how)
    key = {"X-API-Key": API_KEY}
    with app_client(make_searcher(index_dir, encoder, api_key=API_KEY)) as client:
        # A cold start on the damaged active version: 503, never 200 with an empty list.
        ready = client.get("/readyz")
        assert ready.status_code == 503 and error_of(ready) in {"index_artifact_error", "index_not_ready"}
        search = client.post("/v1/search/text", json={"query": "red mug", "k": 5})
        assert search.status_code == 503, search.text
        # Roll back to the previous version: served at once.
        artifacts.set_active(index_dir, v1, since_seq=0)
        reload = client.post("/v1/admin/reload", headers=key)
        assert reload.status_code == 200 and reload.json()["index_version"] == v1, reload.text
        body = client.post("/v1/search/text", json={"query": "red mug", "k": 5}).json()
        assert body["index_version"] == v1 and len(body["results"]) == 5
        # The damaged version published again: refused with a 503, the good one keeps serving.
        artifacts.set_active(index_dir, v2, since_seq=1)
        refused = client.post("/v1/admin/reload", headers=key)
        assert refused.status_code == 503 and error_of(refused) == "index_artifact_error", refused.text
        assert "corrupt" in refused.json()["error"]["message"]
        body = client.post("/v1/search/text", json={"query": "red mug", "k": 5}).json()
        assert body["index_version"] == v1 and len(body["results"]) == 5


# --- row 3: index and metadata out of step --------------------------------------------------------


def test_row03_products_deleted_after_a_build_never_come_back_and_k_results_still_do(
        sample_index: SampleIndex, tmp_path: Path, encoder: Any) -> None:
    from indexer.live import EditContext, delete_products

    index_dir = copy_index(sample_index.index_dir, tmp_path / "idx")
    db = index_dir / "catalens.db"
    rows = sample_index.rows()
    searcher = make_searcher(index_dir, encoder)
    searcher.reload()  # loaded first: the deletes below happen after both the build and the load
    # A third of the catalog deleted live (the only way products leave without a new build);
    # the server's poll applies the change log.
    gone = [r["product_id"] for r in rows[::3]] + [r["product_id"] for r in rows[1:16:3]]
    deleted = delete_products(EditContext(Settings(index_dir=index_dir, threads=1)), gone)
    assert deleted.deleted == len(set(gone))
    searcher.refresh_live()
    live = {p for (p,) in sql(db, "SELECT product_id FROM products WHERE deleted = 0")}
    assert len(live) == len(rows) - len(set(gone))
    dead = [r for r in rows if r["product_id"] not in live]
    k = 10
    with app_client(searcher) as client:
        responses = [client.post("/v1/search/text", json={"query": r["title"], "k": k}) for r in dead[:6]]
        responses += [client.post("/v1/search/text", json={"query": q, "k": k, "filters": {"category": [c]}})
                      for q, c in (("red", rows[0]["category"]), ("striped", rows[3]["category"]))]
        for r in dead[:3]:  # the deleted product's own photo: its vector is the nearest one
            image = (sample_index.sample_dir / r["image"].split("|")[0]).read_bytes()
            responses.append(client.post("/v1/search/image", files={"file": ("q.jpg", image, "image/jpeg")},
                                         data={"k": str(k)}))
        for r in [r for r in rows if r["product_id"] in live][:3]:
            responses.append(client.get(f"/v1/products/{r['product_id']}/similar", params={"k": k}))
        returned: set[str] = set()
        for resp in responses:
            assert resp.status_code == 200, resp.text
            ids = [res["product_id"] for res in resp.json()["results"]]
            assert len(ids) == k, ids  # dead ids dropped, over-fetched to k
            assert set(ids) <= live, set(ids) - live  # I2
            returned.update(ids)
        for pid in sorted(returned)[:20]:
            assert client.get(f"/v1/products/{pid}").status_code == 200
        for r in dead[:6]:
            resp = client.get(f"/v1/products/{r['product_id']}")
            assert resp.status_code == 404 and error_of(resp) == "not_found"


# --- row 4: queries during repeated index swaps -------------------------------------------------


def test_row04_threads_querying_through_repeated_swaps_see_zero_errors(
        two_versions: tuple[Path, str, str, str], tmp_path: Path) -> None:
    index_dir, v1, v2, gone = two_versions
    server = start_server(index_dir, env={"CATALENS_API_KEY": API_KEY}, log=tmp_path / "serve.log")
    records: list[tuple[int, str | None, list[str]]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def query(i: int) -> None:
        queries = ("red mug", "striped sofa", "blue shoe", "black watch")
        with httpx.Client(base_url=server.url, timeout=30) as http:
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    resp = http.post("/v1/search/text", json={"query": queries[(i + n) % 4], "k": 5})
                    body = resp.json()
                    rec = (resp.status_code, body.get("index_version"), [r["product_id"] for r in body.get("results", [])])
                except httpx.HTTPError as exc:
                    rec = (0, repr(exc), [])
                with lock:
                    records.append(rec)

    threads = [threading.Thread(target=query, args=(i,), daemon=True) for i in range(4)]
    swaps = []
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        for n in range(12):  # alternate the active pointer, each time loaded while queries run
            target = v1 if n % 2 == 0 else v2
            artifacts.set_active(index_dir, target, since_seq=0 if target == v1 else 1)
            resp = httpx.post(f"{server.url}/v1/admin/reload", headers={"X-API-Key": API_KEY}, timeout=60)
            swaps.append((resp.status_code, resp.json().get("index_version")))
            time.sleep(0.25)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        stop_server(server)
    assert swaps == [(200, v1 if n % 2 == 0 else v2) for n in range(12)], swaps
    failed = [r for r in records if r[0] != 200]
    assert not failed and len(records) >= 50, (failed[:5], len(records))
    assert {v for _, v, _ in records} == {v1, v2}  # every response names its version, and both served
    # Each version answers exactly what it holds: the product is in v1 and was deleted in v2.
    assert all(len(ids) == 5 for _, _, ids in records)
    assert all(gone not in ids for _, version, ids in records if version == v2)


# --- row 5 is test_row05_* in tests/test_lifecycle.py -------------------------------------------


# --- row 6: concurrent SQLite writers -------------------------------------------------------------

WRITER = r"""
import json, os, sys, time
from sqlalchemy import select, update
from catalens.db import create_db_engine, create_session_factory
from catalens.schema import IndexVersion, Product, ProductImage

url, writer, n, batch, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sessions = create_session_factory(create_db_engine(url))
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.005)
written = deleted = 0
errors, longest = [], 0.0
for start in range(0, n, batch):
    ids = range(start, min(start + batch, n))
    t0 = time.monotonic()
    try:
        with sessions.begin() as session:  # one short transaction: a batch, its images, the counter
            for i in ids:
                session.add(Product(product_id=f"W{writer}-{i:04d}", title=f"writer {writer} product {i}",
                                    text_hash=f"{writer:02d}{i:062d}", attributes={"writer": writer},
                                    images=[ProductImage(position=p, source=f"/w{writer}/{i}/{p}.jpg")
                                            for p in range(2)]))
            gone = 0
            if start >= batch and (start // batch) % 3 == 0:  # now and then delete an earlier product
                session.delete(session.scalar(select(Product).where(
                    Product.product_id == f"W{writer}-{start - batch:04d}")))
                gone = 1
            session.flush()
            session.execute(update(IndexVersion).where(IndexVersion.version_id == "row06-counter")
                            .values(count=IndexVersion.count + len(ids) - gone))
        written, deleted = written + len(ids), deleted + gone
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}"[:300])
    longest = max(longest, time.monotonic() - t0)
print(json.dumps({"written": written, "deleted": deleted, "errors": errors, "longest_s": longest}), flush=True)
"""

READER = r"""
import json, os, sys, time
from catalens.db import create_db_engine

url, stop = sys.argv[1], sys.argv[2]
engine = create_db_engine(url)
print("ready", flush=True)
reads, bad, last = 0, [], None
while True:
    done = os.path.exists(stop)
    with engine.connect() as conn:  # one statement: one snapshot
        counter, products, images, orphans = conn.exec_driver_sql(
            "SELECT (SELECT count FROM index_versions WHERE version_id = 'row06-counter'), "
            "(SELECT count(*) FROM products), (SELECT count(*) FROM product_images), "
            "(SELECT count(*) FROM product_images i LEFT JOIN products p ON p.id = i.product_pk "
            "WHERE p.id IS NULL)").one()
    reads += 1
    if counter != products or images != 2 * products or orphans:
        bad.append([counter, products, images, orphans])
    last = [counter, products, images]
    if done:
        break
    time.sleep(0.002)
print(json.dumps({"reads": reads, "bad": bad[:10], "last": last}), flush=True)
"""

HOLDER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")  # the write lock, held until stdin closes
print("locked", flush=True)
sys.stdin.read()
conn.rollback()
"""


def python(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def row06_database(tmp_path: Path) -> tuple[Path, str]:
    from catalens.db import create_db_engine, create_session_factory, upgrade_database
    from catalens.schema import IndexVersion

    db = tmp_path / "catalens.db"
    url = f"sqlite:///{db}"
    upgrade_database(url)
    engine = create_db_engine(url)
    with create_session_factory(engine).begin() as session:
        session.add(IndexVersion(version_id="row06-counter", status="ready", model="-", count=0))
    engine.dispose()
    return db, url


def test_row06_concurrent_writer_and_reader_processes_get_exact_counts_and_an_intact_file(tmp_path: Path) -> None:
    from catalens.db import create_db_engine

    db, url = row06_database(tmp_path)
    engine = create_db_engine(url)
    with engine.connect() as conn:  # what every connection of the app gets
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
    engine.dispose()
    per_writer, batch = 120, 4
    go, stop = tmp_path / "go", tmp_path / "stop"
    readers = [python(READER, url, str(stop)) for _ in range(4)]
    writers = [python(WRITER, url, str(w), str(per_writer), str(batch), str(go)) for w in range(4)]
    try:
        for proc in readers + writers:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()  # type: ignore[union-attr]
        go.touch()  # all four writers start together
        wrote = []
        for proc in writers:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            wrote.append(json.loads(out.strip().splitlines()[-1]))
        stop.touch()
        read = []
        for proc in readers:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            read.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in readers + writers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert all(w["errors"] == [] and w["written"] == per_writer for w in wrote), wrote
    expected = {f"W{w}-{i:04d}" for w in range(4) for i in range(per_writer)}
    for w in range(4):
        expected -= {f"W{w}-{s - batch:04d}" for s in range(batch, per_writer, batch) if (s // batch) % 3 == 0}
    assert len(expected) == sum(w["written"] - w["deleted"] for w in wrote)
    assert {p for (p,) in sql(db, "SELECT product_id FROM products")} == expected
    assert sql(db, "SELECT count(*) FROM product_images")[0][0] == 2 * len(expected)
    assert sql(db, "SELECT count FROM index_versions WHERE version_id = 'row06-counter'")[0][0] == len(expected)
    assert sqlite_health(db) == ("ok", [])
    # Readers ran throughout: every snapshot was consistent, and the last one is the final state.
    assert all(r["bad"] == [] and r["reads"] >= 10 for r in read), read
    assert all(r["last"] == [len(expected), len(expected), 2 * len(expected)] for r in read), read


def test_row06_a_write_blocked_past_the_lock_timeout_is_a_typed_503_error(tmp_path: Path) -> None:
    from sqlalchemy import event

    from catalens.db import create_db_engine, create_session_factory
    from catalens.errors import CatalensError, DatabaseBusyError
    from catalens.schema import IngestError

    db, url = row06_database(tmp_path)
    engine = create_db_engine(url)
    # The production timeout is 30 s; the same engine with a short one keeps the test short.
    event.listen(engine.pool, "checkout", lambda conn, *_: conn.execute("PRAGMA busy_timeout = 300"))
    sessions = create_session_factory(engine)
    holder = python(HOLDER, str(db))
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()  # type: ignore[union-attr]
        started = time.monotonic()
        with pytest.raises(DatabaseBusyError) as caught, sessions.begin() as session:
            session.add(IngestError(source_file="x", code="x", message="x"))
        took = time.monotonic() - started
        assert 0.25 < took < 10, took
        assert isinstance(caught.value, CatalensError) and caught.value.code == "database_busy"
        assert caught.value.http_status == 503 and "busy" in caught.value.message
        # Readers never wait for the writer (WAL).
        started = time.monotonic()
        with create_db_engine(url).connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM index_versions").scalar() == 1
        assert time.monotonic() - started < 1
    finally:
        holder.communicate("", timeout=30)
    with sessions.begin() as session:  # the lock released: the same write goes through
        session.add(IngestError(source_file="x", code="x", message="x"))
    assert sql(db, "SELECT count(*) FROM ingest_errors")[0][0] == 1


def test_row06_the_api_answers_a_lock_timeout_with_503_and_retry_after(sample_index: SampleIndex, tmp_path: Path,
                                                                       encoder: Any) -> None:
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    index_dir = copy_index(sample_index.index_dir, tmp_path / "idx")
    db = index_dir / "catalens.db"

    def short_timeout(conn: Any, *_: Any) -> None:  # only for this test's copy of the database
        if any(str(db) == row[2] for row in conn.execute("PRAGMA database_list").fetchall()):
            conn.execute("PRAGMA busy_timeout = 300")

    event.listen(Pool, "checkout", short_timeout)
    holder = None
    try:
        with app_client(make_searcher(index_dir, encoder, api_key=API_KEY)) as client:
            holder = python(HOLDER, str(db))
            assert holder.stdout.readline().strip() == "locked"  # type: ignore[union-attr]
            resp = client.post("/v1/admin/products/delete", json={"ids": [sample_index.rows()[0]["product_id"]]},
                               headers={"X-API-Key": API_KEY})
            assert resp.status_code == 503 and error_of(resp) == "database_busy", resp.text
            search = client.post("/v1/search/text", json={"query": "red mug", "k": 3})
            assert search.status_code == 200  # queries only read: a held write lock never blocks them
            assert int(resp.headers["retry-after"]) >= 1
    finally:
        event.remove(Pool, "checkout", short_timeout)
        if holder is not None:
            holder.communicate("", timeout=30)


# --- row 8: disk full ----------------------------------------------------------------------------


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MB filesystem (tmpfs) that fills up for real; needs root (CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the preflight test still runs")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_disk(path: Path, leave: int) -> Path:
    """Write zeros until `leave` bytes stay free (rounded to the filesystem's pages)."""
    filler = path / "filler"
    free = shutil.disk_usage(path).free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def tree_state(index_dir: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file; not the lock files, nor SQLite's shared-memory file and
    empty write-ahead log, which any reader creates."""
    return {str(p.relative_to(index_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(index_dir.rglob("*")) if p.is_file() and p.name not in (".build.lock", ".compact.lock")
            and not p.name.endswith("-shm") and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


def test_row08_a_disk_that_fills_during_a_build_gives_507_and_leaves_the_live_index_untouched(
        small_disk: Path, sample_dir: Path, tmp_path: Path, encoder: Any, reranker: Any) -> None:
    from catalens.errors import InsufficientStorageError

    rows = absolute_rows(sample_dir / "catalog.csv")
    catalog_a = write_catalog_rows(tmp_path / "a.csv", rows[:30])  # the catalogs and images stay off the small disk
    catalog_b = write_catalog_rows(tmp_path / "b.csv", rows[:45])
    index_dir = small_disk / "idx"
    live = in_process_build(index_dir, catalog_a, encoder, reranker, sample_dir, min_free_bytes=0).version_id
    live_path = artifacts.versions_dir(index_dir) / live
    live_files = {p.name: sha256(p) for p in live_path.iterdir()}
    size = artifacts.version_bytes(live_path)
    db = index_dir / "catalens.db"
    where: dict[int, set[str]] = {}
    # Beside the 1 MB a build reserves to record its own failure: no room at all; room for a few
    # SQLite pages of a build with new products; room for half of a rebuilt version.
    levels = [(catalog_b, 0), (catalog_b, artifacts.RESERVE_BYTES + 48 * 1024),
              (catalog_a, artifacts.RESERVE_BYTES + 16 * 1024), (catalog_a, artifacts.RESERVE_BYTES + size // 2)]
    for n, (catalog, leave) in enumerate(levels):
        filler = fill_disk(small_disk, leave)
        try:
            with pytest.raises(InsufficientStorageError) as caught:
                in_process_build(index_dir, catalog, encoder, reranker, sample_dir, min_free_bytes=0)
        finally:
            filler.unlink()
        error = caught.value
        where[n] = {frame.name for frame in traceback.extract_tb(error.__cause__.__traceback__)}
        assert error.code == "insufficient_storage" and error.http_status == 507
        assert "\n" not in error.message and "active index was not changed" in error.message
        assert not list((index_dir / "staging").glob("*")), "staging not removed"
        assert not list(index_dir.glob("*/*/.shard-*.tmp")), "partial cache shards left"
        assert artifacts.read_active(index_dir) == live  # the live version untouched, still verifying
        assert {p.name: sha256(p) for p in live_path.iterdir()} == live_files
        artifacts.load_version(live_path)
        assert sqlite_health(db) == ("ok", [])
        statuses = dict(sql(db, "SELECT version_id, status FROM index_versions"))
        assert statuses.pop(live) == "ready" and set(statuses.values()) <= {"failed"}, statuses
    # The disk filled in different places: the reserve, opening SQLite, a SQLite commit, the version's files.
    places = {"reserve_space", "open_database", "commit", "write_version_files"}
    assert "reserve_space" in where[0] and "write_version_files" in where[3], where
    assert len({place for names in where.values() for place in names & places}) >= 3, where
    # Every build that got as far as its version row is recorded as failed, with the reason.
    failed = sql(db, "SELECT summary FROM index_versions WHERE status = 'failed'")
    assert len(failed) == sum("_build_locked" in names for names in where.values()) >= 2, (failed, where)
    assert all(json.loads(s)["error"].startswith("disk full: ") for (s,) in failed), failed
    # With room again the same build goes through.
    summary = in_process_build(index_dir, catalog_b, encoder, reranker, sample_dir, min_free_bytes=0)
    assert artifacts.read_active(index_dir) == summary.version_id != live and summary.indexed == 45

    # The API: an upsert that runs out of disk answers 507 with the typed error. (A live upsert
    # writes a few pages, not a version: with room for half a version it goes through.)
    filler = fill_disk(small_disk, artifacts.RESERVE_BYTES + 4 * 1024)
    try:
        with app_client(make_searcher(index_dir, encoder, api_key=API_KEY, min_free_bytes=0,
                                       image_roots=[sample_dir])) as client:
            record = {k: rows[50][k] for k in ("product_id", "title", "category", "brand")}
            resp = client.post("/v1/admin/products", json={"products": [{**record, "image": rows[50]["image"]}]},
                               headers={"X-API-Key": API_KEY})
        assert resp.status_code == 507 and error_of(resp) == "insufficient_storage", resp.text
    finally:
        filler.unlink()
    assert artifacts.read_active(index_dir) == summary.version_id
    assert sqlite_health(db) == ("ok", [])


def test_row08_preflight_refuses_a_build_without_room_before_writing_anything(
        sample_index: SampleIndex, tmp_path: Path, encoder: Any) -> None:
    from catalens.errors import InsufficientStorageError
    from indexer.runner import BuildOptions, build_index

    index_dir = copy_index(sample_index.index_dir, tmp_path / "idx")
    active = artifacts.read_active(index_dir)
    before = tree_state(index_dir)
    too_much = shutil.disk_usage(index_dir).free + 2**30  # more than this disk will have
    settings = Settings(index_dir=index_dir, threads=1, min_free_bytes=too_much)
    with pytest.raises(InsufficientStorageError, match="CATALENS_MIN_FREE_BYTES") as caught:
        build_index(settings, BuildOptions(catalog=sample_index.catalog, progress=False), encoder=encoder)
    assert caught.value.http_status == 507 and "the active index was not changed" in caught.value.message
    assert tree_state(index_dir) == before  # not a byte written: no DB row, no staging, no cache shard
    assert artifacts.read_active(index_dir) == active

    result = run_cli("index", "build", "--catalog", str(sample_index.catalog), "--index-dir", str(index_dir),
                     "--quiet", env={"CATALENS_MIN_FREE_BYTES": str(too_much)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("catalens: error: not enough free disk space"), lines
    assert tree_state(index_dir) == before

    with app_client(make_searcher(index_dir, encoder, api_key=API_KEY, min_free_bytes=too_much)) as client:
        row = sample_index.rows()[0]
        image = str(sample_index.sample_dir / row["image"].split("|")[0])
        resp = client.post("/v1/admin/products", json={"products": [{"product_id": "NEW-1", "title": "A new mug",
                                                                     "image": image}]},
                           headers={"X-API-Key": API_KEY})
        assert resp.status_code == 507 and error_of(resp) == "insufficient_storage", resp.text
        # A delete is refused the same way, before the product is flagged: nothing is half-applied.
        resp = client.post("/v1/admin/products/delete", json={"ids": [row["product_id"]]},
                           headers={"X-API-Key": API_KEY})
        assert resp.status_code == 507 and error_of(resp) == "insufficient_storage", resp.text
        assert client.get(f"/v1/products/{row['product_id']}").status_code == 200
        assert client.post("/v1/search/text", json={"query": "red mug", "k": 3}).status_code == 200
    assert tree_state(index_dir) == before


# --- row 9: corrupt images in a batch --------------------------------------------------------------


def test_row09_six_good_and_four_bad_images_give_six_vectors_four_error_rows_and_the_ratio_is_enforced(
        sample_dir: Path, tmp_path: Path, encoder: Any, reranker: Any) -> None:
    from catalens.artifacts import TEXT_ID_BASE
    from catalens.errors import PublishRefusedError

    good = [{**r, "image": r["image"].split("|")[0]} for r in absolute_rows(sample_dir / "catalog.csv")[:6]]
    jpeg = Path(good[0]["image"]).read_bytes()
    bad_files = {"corrupt": b"\xff\xd8\xff\xe0 not really a JPEG" * 40, "truncated": jpeg[: len(jpeg) // 2],
                 "empty": b"", "missing": None}
    bad = []
    for i, (kind, data) in enumerate(bad_files.items()):
        path = tmp_path / f"{kind}.jpg"
        if data is not None:
            path.write_bytes(data)
        bad.append({**good[0], "product_id": f"BAD-{kind}", "title": f"Zanzibar {kind} teapot {i}", "image": str(path)})
    mixed = [row for pair in zip(good, bad) for row in pair] + good[4:]  # bad ones inside the batches
    catalog = write_catalog_rows(tmp_path / "catalog.csv", mixed)
    index_dir = tmp_path / "idx"
    summary = in_process_build(index_dir, catalog, encoder, reranker, sample_dir, max_error_ratio=0.5)
    assert (summary.indexed, summary.images_ok, summary.images_failed) == (10, 6, 4)
    _, images, _ = artifacts.load_version(artifacts.active_version_path(index_dir))
    ids = images.ids()
    assert int((ids < TEXT_ID_BASE).sum()) == 6  # one vector per good image ...
    assert int((ids >= TEXT_ID_BASE).sum()) == 4  # ... and the bad ones' products stay findable by their text
    db = index_dir / "catalens.db"
    errors = sql(db, "SELECT product_id, field, code FROM ingest_errors WHERE version_id = ?", summary.version_id)
    assert sorted(errors) == sorted([(f"BAD-{k}", "image", "image_fetch_failed" if k == "missing"
                                      else "unsupported_image") for k in bad_files]), errors

    # Over the limit the build is refused and the active version stays: a live index of the
    # six good products, then the batch with its 4 bad of 10 (40%) against a 30% limit.
    index_dir = tmp_path / "idx-refused"
    live = in_process_build(index_dir, write_catalog_rows(tmp_path / "good.csv", good), encoder, reranker,
                            sample_dir, max_error_ratio=0.3).version_id
    with pytest.raises(PublishRefusedError, match="4 of 10 images failed"):
        in_process_build(index_dir, catalog, encoder, reranker, sample_dir, max_error_ratio=0.3)
    assert artifacts.read_active(index_dir) == live
    assert sql(index_dir / "catalens.db", "SELECT status FROM index_versions WHERE version_id != ?", live) == \
        [("failed",)]


# --- row 10: decompression bombs -----------------------------------------------------------------

PEAK_MEMORY = r"""
import sys
from catalens.errors import PayloadTooLargeError
from catalens.images import decode_image

def hwm_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

decode_image(open(sys.argv[1], "rb").read(), max_pixels=40_000_000)  # warm-up: a small real image
before = hwm_kb()
try:
    decode_image(open(sys.argv[2], "rb").read(), max_pixels=40_000_000)
    print("decoded")
except PayloadTooLargeError as exc:
    print((hwm_kb() - before) // 1024, exc)
"""


@pytest.mark.parametrize("side", [7_000, 20_000])  # 49 Mpx: over our cap, under Pillow's; 400 Mpx: over both
def test_row10_a_one_bit_png_bomb_is_a_fast_413_with_bounded_memory(client: Any, sample_index: SampleIndex,
                                                                    tmp_path: Path, side: int) -> None:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    bomb = buf.getvalue()
    assert len(bomb) < 100_000  # a few KB on the wire, hundreds of MB decoded
    started = time.perf_counter()
    resp = client.post("/v1/search/image", files={"file": ("bomb.png", bomb, "image/png")})
    assert time.perf_counter() - started < 2
    assert resp.status_code == 413 and error_of(resp) == "payload_too_large", resp.text
    assert "pixel" in resp.json()["error"]["message"]
    # Memory in a fresh process (a peak that earlier tests raised cannot hide a growth here).
    (tmp_path / "bomb.png").write_bytes(bomb)
    small = sample_index.sample_dir / sample_index.rows()[0]["image"].split("|")[0]
    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY, str(small), str(tmp_path / "bomb.png")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    grown_mb = int(done.stdout.split()[0])
    assert grown_mb < 20, done.stdout  # the decoded bitmap alone would be side * side bytes


# --- rows 12, 13, 14 are test_row12_*, test_row13_*, test_row14_* in tests/test_images.py ----------
# --- row 16 is test_row16_* in tests/test_artifacts.py; row 17 test_row17_* in tests/test_rerank.py --
# --- row 18 is test_row18_* in tests/test_migrations.py --------------------------------------------


# --- row 19: a malformed SQLite file --------------------------------------------------------------


@pytest.fixture()
def corrupt_db_index(sample_index: SampleIndex, tmp_path: Path) -> tuple[Path, str, int]:
    """A copy of the sample index whose catalens.db has one page overwritten with garbage."""
    index_dir = copy_index(sample_index.index_dir, tmp_path / "idx")
    db = index_dir / "catalens.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, so the damage counts
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'product_images'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(b"\xa5" * page_size)
    return index_dir, sha256(db), db.stat().st_ino


def assert_one_line_refusal(result: subprocess.CompletedProcess, index_dir: Path, digest: str, inode: int) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("catalens: error: database"), result.stderr[-2000:]
    assert "malformed" in lines[0] or "integrity check" in lines[0], lines[0]
    assert "left untouched" in lines[0], lines[0]
    db = index_dir / "catalens.db"  # never deleted, replaced or repaired for the user
    assert db.is_file() and db.stat().st_ino == inode and sha256(db) == digest


def test_row19_index_build_stops_on_a_malformed_sqlite_file_with_one_line_and_never_replaces_it(
        corrupt_db_index: tuple[Path, str, int], sample_index: SampleIndex) -> None:
    from catalens.db import check_integrity, create_db_engine
    from catalens.errors import DatabaseError

    index_dir, digest, inode = corrupt_db_index
    with pytest.raises(DatabaseError, match="malformed|integrity check"):
        check_integrity(create_db_engine(f"sqlite:///{index_dir / 'catalens.db'}"))
    for _ in range(2):  # a rerun does not "fix" it either
        result = run_cli("index", "build", "--catalog", str(sample_index.catalog), "--index-dir", str(index_dir),
                         "--quiet", timeout=120)
        assert_one_line_refusal(result, index_dir, digest, inode)
    assert artifacts.read_active(index_dir) == artifacts.read_active(sample_index.index_dir)


def test_row19_serve_stops_on_a_malformed_sqlite_file_with_one_line_and_never_replaces_it(
        corrupt_db_index: tuple[Path, str, int]) -> None:
    index_dir, digest, inode = corrupt_db_index
    result = run_cli("serve", "--index-dir", str(index_dir), "--port", str(free_port()), timeout=120)
    assert_one_line_refusal(result, index_dir, digest, inode)
