"""`catalens bench` on tiny sizes: the commands run and their JSON has the documented shape.

Benchmarks are not tests: these only prove the machinery (sizes of seconds, not minutes);
the real figures live in bench-results/.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
STAGES = ("qps", "p50_ms", "p95_ms", "p99_ms", "errors")


@pytest.fixture(scope="module")
def bench_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("bench-out"), tmp_path_factory.mktemp("bench-work")


def _bench(*args: str, dirs: tuple[Path, Path], timeout: float = 240) -> dict:
    out, work = dirs
    result = run_cli("bench", *args, "--json", "--out", str(out), "--work-dir", str(work), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert isinstance(data, dict)
    assert data["machine"]["cores"] >= 1 and data["machine"]["cpu_model"]
    assert Path(data["files"]["json"]).is_file()
    assert json.loads(Path(data["files"]["json"]).read_text())["bench"] == data["bench"]
    if HAS_MATPLOTLIB:
        assert Path(data["files"]["png"]).stat().st_size > 1000
    return data


def test_bench_index_default_model(bench_dirs: tuple[Path, Path]) -> None:
    data = _bench("index", "--n", "16", "--decode-workers", "1", "--render-workers", "1", dirs=bench_dirs)
    assert data["model"] == "catalens-demo" and data["n"] == 16
    assert data["images"] >= 16
    for key in ("end_to_end_ips", "model_only_ips", "decode_only_ips", "image_stage_ips"):
        assert 0 < data[key] < 1e6, key
    # The pipeline cannot beat both of its own stages by much (a little timing noise allowed).
    assert data["image_stage_ips"] <= 1.5 * max(data["model_only_ips"], data["decode_only_ips"])
    assert data["end_to_end_ips"] <= data["image_stage_ips"] * 1.05
    assert data["torch_threads"] == 1 and data["decode_workers"] == 1
    assert data["vectors"] == data["images"] and data["phases_s"]["images"] > 0
    assert 0 < data["model_s_in_pipeline"]["images"] <= data["phases_s"]["images"]


def test_bench_query_real_server(bench_dirs: tuple[Path, Path]) -> None:
    data = _bench("query", "--n", "24", "--concurrency", "2", "--duration", "0.6", "--warmup", "0.2",
                  "--query-pool", "200", "--render-workers", "1", dirs=bench_dirs)
    assert data["n"] == 24 and data["vectors"] >= 24 and data["concurrency"] == 2
    for name in ("text", "text_uncached", "image", "similar"):
        stats = data[name]
        assert set(STAGES) <= set(stats), name
        assert stats["errors"] == 0, (name, stats["error_kinds"])
        assert stats["qps"] > 0
        assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] < 60_000
    assert data["text"]["server_stage_mean_ms"]["ann"] > 0
    mix = data["text"]["query_mix"]
    assert mix["pool_distinct"] == 200 and 0 <= mix["repeat_share"] <= 1
    # No second stage exists yet: reported as absent, never faked.
    assert "text_rerank" in data
    if data["text_rerank"] is None:
        assert data["text_rerank_note"].startswith("absent")
    else:
        assert set(STAGES) <= set(data["text_rerank"])


def test_bench_ann_tiny(bench_dirs: tuple[Path, Path]) -> None:
    data = _bench("ann", "--n", "3000", "--dim", "32", "--queries", "50", "--time-per-point", "0.05",
                  "--ef-search", "16,64", "--nprobe", "1,8", "--train-size", "3000", dirs=bench_dirs)
    runs = data["runs"]
    assert {r["factory"].split(",")[0].rstrip("0123456789") for r in runs} >= {"Flat", "HNSW", "IVF"}
    for run in runs:
        assert {"factory", "params", "recall@10", "qps", "build_s", "bytes_per_vector"} <= set(run)
        assert 0 <= run["recall@10"] <= 1 and run["qps"] > 0 and run["build_s"] >= 0
        assert run["bytes_per_vector"] > 0
    flat = next(r for r in runs if r["factory"] == "Flat")
    assert flat["recall@10"] == 1.0 and flat["bytes_per_vector"] >= 4 * 32
    hnsw = [r["recall@10"] for r in runs if r["factory"] == "HNSW32"]
    assert hnsw == sorted(hnsw)  # more efSearch never loses recall
    assert data["recommendation"]["recall_target"] == 0.95


def test_parallel_catalog_matches_sample_catalog(tmp_path: Path) -> None:
    from catalens.bench import generate_catalog
    from catalens.world import write_sample_catalog

    reference = write_sample_catalog(tmp_path / "ref", n=12, seed=5, n_queries=5, progress=False).parent
    fast = generate_catalog(tmp_path / "fast", n=12, seed=5, workers=2, n_queries=5).parent
    assert (fast / "catalog.csv").read_bytes() == (reference / "catalog.csv").read_bytes()
    assert (fast / "queries.jsonl").read_bytes() == (reference / "queries.jsonl").read_bytes()
    images = sorted(p.name for p in (reference / "images").iterdir())
    assert images == sorted(p.name for p in (fast / "images").iterdir())
    assert all((fast / "images" / n).read_bytes() == (reference / "images" / n).read_bytes() for n in images)


def test_query_mix_counts_repeats() -> None:
    from catalens.bench import ZipfQueries, text_query_stream

    stream = text_query_stream(3)
    pool = [next(stream) for _ in range(300)]
    assert len(set(pool)) == 300
    zipf = ZipfQueries(pool, 1.0, seed=1)
    sent = [zipf() for _ in range(1000)]
    assert zipf.requests == 1000 and zipf.repeats == 1000 - len(set(sent))
    assert sent.count(pool[0]) > sent.count(pool[-1])  # the head is popular


def test_bench_rerank_bundled(bench_dirs: tuple[Path, Path]) -> None:
    data = _bench("rerank", "--top-n", "8", "--duration", "0.3", dirs=bench_dirs)
    assert data["reranker"].startswith("itm:catalens-itm") and data["top_n"] == 8
    assert 0 < data["score_p50_ms"] <= data["score_p95_ms"]
    assert data["feature_bytes_per_image"] == 2 * data["feature_shape"][0] * data["feature_shape"][1]
