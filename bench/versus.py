"""`bench clip-retrieval`: the same images and CLIP weights through clip-retrieval's `inference` and
through `catalens index build`, each timed as a whole process (imports, model load, reading,
embedding, writing), side by side.

clip-retrieval is not a dependency: it pins an old open_clip and numpy, so it lives in its own
virtualenv and is passed by path (README, Benchmarks, has the two pins it needs to install).
Both embed images only: Catalens runs without reranker features here, as clip-retrieval has none;
it still writes what an index needs (thumbnails, the catalog of record, product-text vectors,
FAISS and a version).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Log, machine_info, quiet, utc_now
from bench.workload import CATALOG_SEED, catalog_images, ensure_catalog
from catalens.config import Settings
from catalens.errors import BenchError

VERSUS_DEFINITIONS = {
    "catalens_ips": "images / wall time of the whole `catalens index build` process (start to exit: imports, "
                    "model load, catalog sync, read + decode + thumbnail + embed, product texts, FAISS, publish)",
    "clip_retrieval_ips": "images / wall time of the whole `clip-retrieval inference` process (start to exit: "
                          "imports, model load, its warm-up, read + decode + embed, write)",
    "clip_retrieval_own_ips": "clip-retrieval's own figure (its stats file: after model load and warm-up)",
    "speedup": "catalens_ips / clip_retrieval_ips",
}


@dataclass(kw_only=True)
class VersusBench:
    """One `bench clip-retrieval` result; its fields are the JSON keys, in order."""

    bench: str = "clip-retrieval"
    model: str
    pretrained: str | None
    images: int
    catalens_runtime: str
    catalens_wall_s: float
    catalens_ips: float
    clip_retrieval_wall_s: float
    clip_retrieval_ips: float
    clip_retrieval_own_ips: float | None
    speedup: float
    embeddings_cosine_min: float  # the same image's vector from both, over every image
    clip_retrieval: str
    batch_size: int
    threads: int
    decode_workers: int
    catalog: str
    definitions: dict[str, str] = field(default_factory=lambda: dict(VERSUS_DEFINITIONS))
    machine: dict[str, Any] = field(default_factory=machine_info)
    created_at: str = field(default_factory=utc_now)


def measure_versus(settings: Settings, *, clip_retrieval: Path, n: int, seed: int = CATALOG_SEED,
                   render_workers: int | None = None, log: Log = quiet) -> VersusBench:
    """Run both tools on one generated catalog's images, one after the other, and compare their walls."""
    if not clip_retrieval.is_file():
        raise BenchError(f"no clip-retrieval at {clip_retrieval}: install it in its own virtualenv (README, "
                         "Benchmarks) and pass its `clip-retrieval` command")
    catalog = ensure_catalog(settings, n=n, seed=seed, render_workers=render_workers, log=log)
    paths = catalog_images(catalog)
    root = settings.bench_cache()
    root.mkdir(parents=True, exist_ok=True)
    threads, workers = settings.torch_threads(), settings.decode_workers
    with tempfile.TemporaryDirectory(dir=root, prefix="versus-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, path in enumerate(paths):  # clip-retrieval reads a folder; its files in catalog order
            (folder / f"{i:06d}{path.suffix}").symlink_to(path)
        model = f"open_clip:{settings.model}" + (f"/{settings.pretrained}" if settings.pretrained else "")
        log(f"clip-retrieval inference: {len(paths)} images, {model}")
        cr_out = Path(tmp) / "clip-retrieval"
        cr_wall, _ = _timed([str(clip_retrieval), "inference", "--input_dataset", str(folder),
                          "--output_folder", str(cr_out), "--input_format", "files", "--clip_model", model,
                          "--enable_text", "False", "--enable_metadata", "False",
                          "--batch_size", str(settings.batch_size), "--num_prepro_workers", str(workers)],
                         {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"})
        theirs = np.load(cr_out / "img_emb" / "img_emb_0.npy").astype(np.float32)
        own = _own_ips(cr_out)
        log(f"clip-retrieval: {cr_wall:.1f} s; catalens index build ({settings.runtime})")
        index_dir = Path(tmp) / "index"
        catalens = Path(sys.executable).with_name("catalens")
        env = {"CATALENS_RERANKER": "none", "CATALENS_RUNTIME": settings.runtime, "CATALENS_THREADS": str(threads),
               "CATALENS_DECODE_WORKERS": str(workers), "CATALENS_BATCH_SIZE": str(settings.batch_size),
               "CATALENS_ONNX_DIR": str(settings.onnx_cache()), "CATALENS_MODEL": settings.model,
               **({"CATALENS_PRETRAINED": settings.pretrained} if settings.pretrained else {})}
        ours_wall, stdout = _timed([str(catalens), "index", "build", "--catalog", str(catalog), "--index-dir",
                                    str(index_dir), "--device", "cpu", "--json"], env)
        ours = _catalens_vectors(index_dir, paths)
        runtime = str(json.loads(stdout).get("runtime", "unknown"))
    if theirs.shape != ours.shape:
        raise BenchError(f"clip-retrieval wrote {theirs.shape} embeddings for {len(paths)} images, catalens {ours.shape}")
    cosine = float(np.min(np.sum(theirs * ours, axis=1) /
                          (np.linalg.norm(theirs, axis=1) * np.linalg.norm(ours, axis=1))))
    return VersusBench(
        model=settings.model, pretrained=settings.pretrained, images=len(paths), catalens_runtime=runtime,
        catalens_wall_s=round(ours_wall, 2), catalens_ips=round(len(paths) / ours_wall, 2),
        clip_retrieval_wall_s=round(cr_wall, 2), clip_retrieval_ips=round(len(paths) / cr_wall, 2),
        clip_retrieval_own_ips=own, speedup=round(cr_wall / ours_wall, 3), embeddings_cosine_min=round(cosine, 6),
        clip_retrieval=str(clip_retrieval), batch_size=settings.batch_size, threads=threads, decode_workers=workers,
        catalog=str(catalog))


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of the whole process, and its stdout; a failure is a BenchError with its last line."""
    t0 = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise BenchError(f"{Path(command[0]).name} {command[1]} failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return wall, done.stdout


def _own_ips(out: Path) -> float | None:
    try:
        stats = json.loads((out / "stats" / "0.json").read_text())
        return round(stats["sample_count"] / stats["total_duration"], 2)
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return None


def _catalens_vectors(index_dir: Path, paths: list[Path]) -> np.ndarray:
    """Each image's vector from the build's embedding cache (keyed by content hash), in `paths` order."""
    from catalens.images import content_hash
    from indexer.embedding_cache import EmbeddingCache

    caches = [d for d in (index_dir / "embeddings").iterdir() if (d / "MODEL").is_file()]
    if len(caches) != 1:
        raise BenchError(f"expected one model's embedding cache in {index_dir / 'embeddings'}")
    cache = EmbeddingCache(index_dir / "embeddings", (caches[0] / "MODEL").read_text())
    vectors = [cache.get(f"img:{content_hash(path.read_bytes())}") for path in paths]
    missing = sum(v is None for v in vectors)
    if missing:
        raise BenchError(f"{missing} of {len(paths)} images have no vector in the catalens build")
    return np.stack([v for v in vectors if v is not None]).astype(np.float32)
