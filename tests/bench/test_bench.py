"""`catalens bench` on tiny sizes: the commands run and their JSON has the documented shape.

Benchmarks are not tests: these only prove the machinery (sizes of seconds, not minutes);
the real figures live in bench-results/.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.index import BUILD_STAGES, build_phases
from tests.support import run_cli

pytestmark = pytest.mark.slow  # runs `catalens` as a process

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
    data = _bench("index", "--n", "16", "--decode-workers", "1", "--render-workers", "1", "--runtimes", "torch,onnx",
                  dirs=bench_dirs)
    assert data["model"] == "catalens-demo" and data["n"] == 16 and data["runtime"] == "torch"
    # side by side: one build per runtime on the same decoded images, each saying where it ran
    assert {name: f["runtime"] for name, f in data["by_runtime"].items()} == {"torch": "torch", "onnx": "onnx"}
    assert data["by_runtime"]["torch"]["end_to_end_ips"] == data["end_to_end_ips"]
    assert all(0 < f["end_to_end_ips"] < 1e6 and 0 < f["model_only_ips"] < 1e6 for f in data["by_runtime"].values())
    assert data["images"] >= 16
    for key in ("end_to_end_ips", "model_only_ips", "decode_only_ips", "image_stage_ips"):
        assert 0 < data[key] < 1e6, key
    # The pipeline cannot beat both of its own stages by much (a little timing noise allowed).
    assert data["image_stage_ips"] <= 1.5 * max(data["model_only_ips"], data["decode_only_ips"])
    assert data["end_to_end_ips"] <= data["image_stage_ips"] * 1.05
    assert data["torch_threads"] == 1 and data["decode_workers"] == 1
    assert data["vectors"] == data["images"]
    # The builder's own stage timings when it reports them, else the whole build.
    phases = data["phases_s"]
    assert set(phases) <= set(BUILD_STAGES) or set(phases) == {"build"}, phases
    assert all(v >= 0 for v in phases.values()) and 0 < sum(phases.values()) <= data["build_seconds"] + 0.01
    image_stage_s = phases.get("embed", data["build_seconds"])
    assert 0 < data["model_s_in_pipeline"]["images"] <= image_stage_s


def test_bench_query_real_server(bench_dirs: tuple[Path, Path]) -> None:
    data = _bench("query", "--n", "24", "--concurrency", "2", "--duration", "0.6", "--warmup", "0.2",
                  "--query-pool", "200", "--render-workers", "1", "--runtimes", "torch,onnx", dirs=bench_dirs)
    assert data["n"] == 24 and data["vectors"] >= 24 and data["concurrency"] == 2 and data["runtime"] == "torch"
    assert set(data["by_runtime"]) == {"torch", "onnx"}  # side by side, one server each
    assert data["served_runtime"] == {"torch": "torch", "onnx": "onnx"}
    assert data["by_runtime"]["torch"]["text"] == data["text"]
    for runtime, stats in data["by_runtime"].items():
        for name in ("single_text_uncached", "single_image"):
            assert stats[name]["errors"] == 0 and stats[name]["qps"] > 0, (runtime, name)
            assert set(stats[name]["server_stage_mean_ms"]) >= {"encode", "ann"}, (runtime, name)
    for name in ("text", "text_uncached", "text_filtered", "image", "similar", "single_text_uncached", "single_image"):
        stats = data[name]
        assert set(STAGES) <= set(stats), name
        assert stats["errors"] == 0, (name, stats["error_kinds"])
        assert stats["qps"] > 0
        assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] < 60_000
    assert data["text"]["server_stage_mean_ms"]["ann"] > 0
    # What the service adds to search: the HTTP floor of the same client and server, and each
    # single-client scenario's p50 over its own search stages, with and without that floor.
    assert data["single_healthz"]["errors"] == 0 and 0 < data["single_healthz"]["p50_ms"] < data["single_image"]["p50_ms"]
    service = data["service"]
    assert service["http_floor_p50_ms"] == data["single_healthz"]["p50_ms"]
    for name in ("single_text_uncached", "single_image"):
        figures = service[name]
        assert figures["p50_over_search"] >= figures["p50_less_http_floor_over_search"], (name, figures)
        assert figures["search_stages_ms"] >= data[name]["server_stage_mean_ms"]["encode"], name
    ratio = data["text_uncached"]["qps"] / service["in_process_bound_qps"]
    assert service["text_uncached_vs_bound"] > 0 and abs(service["text_uncached_vs_bound"] - ratio) < 0.01
    mix = data["text"]["query_mix"]
    assert mix["pool_distinct"] == 200 and 0 <= mix["repeat_share"] <= 1
    # The bundled reranker is on by default: the rerank scenario must have run, without errors.
    rerank = data["text_rerank"]
    assert rerank is not None, data["text_rerank_note"]
    assert data["text_rerank_note"] is None
    assert set(STAGES) <= set(rerank) and rerank["errors"] == 0, rerank["error_kinds"]
    assert rerank["qps"] > 0 and 0 < rerank["p50_ms"] <= rerank["p95_ms"] <= rerank["p99_ms"]


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


def test_query_mix_counts_repeats() -> None:
    from bench.query import ZipfQueries, query_stream

    stream = query_stream(3)
    pool = [next(stream) for _ in range(300)]
    assert len(set(pool)) == 300
    zipf = ZipfQueries(pool, 1.0, seed=1)
    sent = [zipf() for _ in range(1000)]
    assert zipf.requests == 1000 and zipf.repeats == 1000 - len(set(sent))
    assert sent.count(pool[0]) > sent.count(pool[-1])  # the head is popular


def test_query_stream_never_changes() -> None:
    """Pinned: the query benchmark's traffic, so results of different runs compare."""
    from bench.query import query_stream

    stream = query_stream(5)
    digest = hashlib.sha256("\n".join(next(stream) for _ in range(200)).encode()).hexdigest()
    assert digest == "275f0014bd505fd0cc914188b8254221683400018921b05c2be6e8c77849a746"


def test_build_phases_come_from_the_builder() -> None:
    stages = {"sync": 0.5, "plan": 0.25, "embed": 3.0, "write": 1.0, "publish": 0.125, "other": 9.0}
    assert build_phases(SimpleNamespace(stages=stages), 5.0) == {k: stages[k] for k in BUILD_STAGES}
    assert build_phases(SimpleNamespace(), 5.0) == {"build": 5.0}  # a builder that reports no stages
    assert build_phases(SimpleNamespace(stages={}), 5.0) == {"build": 5.0}


def test_bench_rerank_bundled(bench_dirs: tuple[Path, Path]) -> None:
    data = _bench("rerank", "--top-n", "8", "--duration", "0.3", dirs=bench_dirs)
    assert data["reranker"].startswith("itm:catalens-itm") and data["top_n"] == 8
    assert 0 < data["score_p50_ms"] <= data["score_p95_ms"]
    assert data["feature_bytes_per_image"] == 2 * data["feature_shape"][0] * data["feature_shape"][1]


def test_bench_update_tiny(bench_dirs: tuple[Path, Path]) -> None:
    """The issue's JSON shape, on a real server: every kind of change timed until a search shows it."""
    data = _bench("update", "--n", "24", "--samples", "2", "--live-sizes", "0,8", "--queries", "5",
                  "--render-workers", "1", dirs=bench_dirs)
    for kind in ("upsert", "patch", "delete"):
        assert data[kind]["samples"] == 2 and 0 < data[kind]["p50_ms"] <= data[kind]["p99_ms"] < 60_000, kind
    assert set(data["search_live"]) == {"0", "8"}
    assert all(0 < s["p50_ms"] <= s["p99_ms"] for s in data["search_live"].values())


def test_bench_clip_retrieval_without_clip_retrieval_is_one_line(bench_dirs: tuple[Path, Path]) -> None:
    """clip-retrieval is not a dependency: a missing command is a one-line error naming it, before any work."""
    out, work = bench_dirs
    result = run_cli("bench", "clip-retrieval", "--clip-retrieval", str(work / "no-such-clip-retrieval"), "--n", "4",
                     "--out", str(out), "--work-dir", str(work), timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no clip-retrieval at" in lines[0] and "Traceback" not in result.stderr, result.stderr
