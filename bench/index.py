"""`bench index`: end-to-end indexing images/s next to two ceilings measured in the same run.

Same model, batch size and threads throughout: model-only (pre-decoded tensors through
the image tower) and decode-only (the reader stage alone: read + hash + decode + thumbnail
+ preprocess), then a real `index build` into a fresh index.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.machine import Log, machine_info, quiet, utc_now
from bench.workload import CATALOG_SEED, catalog_images, ensure_catalog, load_encoder
from catalens.config import Settings, set_threads
from catalens.errors import BenchError

# The stages a build reports in BuildSummary.stages (seconds each), in pipeline order.
BUILD_STAGES = ("sync", "plan", "embed", "write", "publish")
IMAGE_STAGE = "embed"  # the stage that reads, decodes and embeds the images

INDEX_DEFINITIONS = {
    "end_to_end_ips": "images / wall time of the whole `index build` (catalog read, metadata sync, "
                      "image read+hash+decode+thumbnail+preprocess+embed, cache and DB writes, "
                      "product-text embedding, FAISS build, version write + validation); model load excluded",
    "image_stage_ips": f"images / wall time of the builder's {IMAGE_STAGE!r} stage (read..embed..write) when the "
                       "build reports its stages in phases_s (" + ", ".join(BUILD_STAGES) + "), else of the whole "
                       "build (phases_s then holds only 'build')",
    "model_only_ips": "pre-decoded tensors through every model pass the build makes per image, in batches of "
                      "batch_size: the CLIP image tower and, when the build stores them, the reranker's features",
    "model_only_clip_ips": "pre-decoded tensors through the CLIP image tower alone",
    "decode_only_ips": "the reader stage alone (read, sha256, decode, thumbnail, preprocess) "
                       "with decode_workers threads",
    "shared_cpu_bound_ips": "1 / (1/model_only + 1/decode_only): the ceiling when both stages "
                            "compete for the same cores",
}


@dataclass(kw_only=True)
class IndexBench:
    """One `bench index` result; its fields are the JSON keys, in order."""

    bench: str = "index"
    model: str
    model_id: str
    n: int
    images: int
    runtime: str  # where the build's CLIP passes ran (CATALENS_RUNTIME; auto resolved)
    by_runtime: dict[str, dict[str, Any]] | None  # every runtime of the run, side by side
    end_to_end_ips: float
    model_only_ips: float
    model_only_clip_ips: float
    decode_only_ips: float
    image_stage_ips: float
    end_to_end_vs_model_only: float
    image_stage_vs_model_only: float
    end_to_end_vs_min_ceiling: float
    shared_cpu_bound_ips: float
    end_to_end_vs_shared_ceiling: float
    bottleneck: str
    build_seconds: float
    phases_s: dict[str, float]
    model_s_in_pipeline: dict[str, float]
    texts_embedded: int
    rerank_features: str | None
    vectors: int
    factory: str
    batch_size: int
    torch_threads: int
    openmp_wait_policy: str
    decode_workers: int
    image_size: int
    dim: int
    device: str
    catalog: str
    definitions: dict[str, str] = field(default_factory=lambda: dict(INDEX_DEFINITIONS))
    machine: dict[str, Any] = field(default_factory=machine_info)
    created_at: str = field(default_factory=utc_now)


def build_phases(summary: Any, total_s: float) -> dict[str, float]:
    """Seconds per build stage from the builder's own BuildSummary.stages, else the whole build."""
    stages = getattr(summary, "stages", None)
    if isinstance(stages, dict) and any(name in stages for name in BUILD_STAGES):
        return {name: float(stages[name]) for name in BUILD_STAGES if name in stages}
    return {"build": total_s}


def timed_embedder(encoder, reranker=None):
    """An Embedder that adds the seconds spent inside each model call to pixel_s or text_s."""
    from indexer.embedder import Embedder

    counters = {"embed_pixels": "pixel_s", "embed_pixels_with_features": "pixel_s", "rerank_features": "pixel_s",
                "embed_texts": "text_s"}
    missing = [name for name in counters if not callable(getattr(Embedder, name, None))]
    if missing:  # a renamed method would otherwise be timed as zero seconds, silently
        raise BenchError(f"indexer.embedder.Embedder has no {', '.join(missing)}: update bench/index.py")

    def timed(name: str, counter: str) -> Callable[..., Any]:
        def call(self: Any, *args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return getattr(Embedder, name)(self, *args)
            finally:
                setattr(self, counter, getattr(self, counter) + time.perf_counter() - t0)
        return call

    methods = {name: timed(name, counter) for name, counter in counters.items()}
    TimedEmbedder = type("TimedEmbedder", (Embedder,), {"pixel_s": 0.0, "text_s": 0.0, **methods})
    return TimedEmbedder(encoder, reranker=reranker)


def _images_per_s(run: Callable[[list[Any]], None], batches: list[list[Any]], images: int) -> float:
    """Images per second of run over the batches, after one untimed warm-up batch."""
    run(batches[0])
    t0 = time.perf_counter()
    for batch in batches:
        run(batch)
    return images / (time.perf_counter() - t0)


def measure_index(settings: Settings, *, n: int, seed: int = CATALOG_SEED, decode_workers: int | None = None,
                  model_only_mb: float = 1024, render_workers: int | None = None,
                  runtimes: Sequence[str] = ("auto",), log: Log = quiet) -> IndexBench:
    """Decode-only and model-only ceilings, then a real build of a generated n-product catalog; the model-only
    ceiling and the build once per CLIP runtime (the first one's figures are the top-level keys)."""
    from catalens.reranker import load_reranker
    from indexer.embedder import Embedder
    from indexer.reader import ImageJob, ImageReader

    threads = settings.torch_threads()
    workers = decode_workers or settings.decode_workers
    settings = settings.model_copy(update={"threads": threads, "decode_workers": workers})
    catalog = ensure_catalog(settings, n=n, seed=seed, render_workers=render_workers, log=log)
    paths = catalog_images(catalog)
    set_threads(threads)
    log(f"loading model {settings.model}; torch/FAISS threads {threads}, decode workers {workers}, "
        f"batch {settings.batch_size}, {len(paths)} images")
    encoder = load_encoder(settings)
    root = settings.bench_cache()
    root.mkdir(parents=True, exist_ok=True)
    # The reranker whose features the build stores (whose own preprocess the reader runs too, when
    # the reranker does not read this CLIP's pixels).
    reranker = load_reranker(settings.reranker, clip=encoder, device=encoder.device) if settings.rerank_features \
        else None
    separate_preprocess = Embedder(encoder, reranker=reranker).separate_rerank_preprocess()

    # 1. decode-only ceiling: the pipeline's reader stage alone, same worker count, thumbnails written.
    bytes_per_image = 3 * 4 * encoder.image_size ** 2
    keep = max(4 * settings.batch_size, min(len(paths), int(model_only_mb * 2**20 // bytes_per_image)))
    with tempfile.TemporaryDirectory(dir=root, prefix="decode-") as tmp:
        reader = ImageReader(settings.model_copy(update={"index_dir": Path(tmp)}), images_root=None,
                             preprocess=encoder.preprocess, image_size=encoder.image_size,
                             is_cached=lambda digest: False, rerank_preprocess=separate_preprocess)
        jobs = [ImageJob(i, str(p)) for i, p in enumerate(paths)]

        def read_one(job: ImageJob) -> Any:
            loaded = reader(job)
            if loaded.error:
                raise BenchError(f"cannot read {job.source}: {loaded.error}")
            return (loaded.pixels, loaded.rerank_pixels) if job.image_id < keep else None

        with ThreadPoolExecutor(workers) as pool:
            t0 = time.perf_counter()
            decoded = list(pool.map(read_one, jobs))
            decode_s = time.perf_counter() - t0
    decode_ips = len(paths) / decode_s
    log(f"decode-only: {decode_ips:.1f} img/s")
    pixels = [p for p in decoded if p is not None]
    del decoded
    batches = [pixels[i:i + settings.batch_size] for i in range(0, len(pixels), settings.batch_size)]

    # 2 and 3, per runtime: the model passes alone over the pre-decoded tensors, then a real build.
    runs = {runtime: _measure_runtime(settings.model_copy(update={"runtime": runtime}), encoder, reranker,
                                      batches, catalog=catalog, images=len(paths), decode_ips=decode_ips, log=log)
            for runtime in runtimes}
    first = runs[runtimes[0]]
    return IndexBench(
        model=settings.model,
        model_id=encoder.model_id,
        n=n,
        images=len(paths),
        runtime=first.runtime,
        by_runtime={name: run.figures() for name, run in runs.items()} if len(runs) > 1 else None,
        end_to_end_ips=round(first.e2e_ips, 2),
        model_only_ips=round(first.model_ips, 2),
        model_only_clip_ips=round(first.clip_ips, 2),
        decode_only_ips=round(decode_ips, 2),
        image_stage_ips=round(first.image_stage_ips, 2),
        end_to_end_vs_model_only=round(first.e2e_ips / first.model_ips, 3),
        image_stage_vs_model_only=round(first.image_stage_ips / first.model_ips, 3),
        end_to_end_vs_min_ceiling=round(first.e2e_ips / min(first.model_ips, decode_ips), 3),
        shared_cpu_bound_ips=round(first.shared_ips, 2),
        end_to_end_vs_shared_ceiling=round(first.e2e_ips / first.shared_ips, 3),
        bottleneck="model" if first.model_ips < decode_ips else "decode",
        build_seconds=round(first.total_s, 2),
        phases_s={k: round(v, 3) for k, v in first.phases.items()},
        model_s_in_pipeline=first.model_s,
        texts_embedded=first.summary.texts_embedded,
        rerank_features=settings.reranker if settings.rerank_features else None,
        vectors=first.summary.vectors,
        factory=first.summary.factory,
        batch_size=settings.batch_size,
        torch_threads=threads,
        openmp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
        decode_workers=workers,
        image_size=encoder.image_size,
        dim=encoder.dim,
        device=encoder.device,
        catalog=str(catalog),
    )


@dataclass
class RuntimeRun:
    """The model-only ceiling and the build of one CLIP runtime."""

    runtime: str  # what ran: auto resolves to torch or onnx
    model_ips: float
    clip_ips: float
    e2e_ips: float
    image_stage_ips: float
    decode_ips: float
    shared_ips: float
    total_s: float
    phases: dict[str, float]
    model_s: dict[str, float]
    summary: Any

    def figures(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "end_to_end_ips": round(self.e2e_ips, 2),
                "image_stage_ips": round(self.image_stage_ips, 2), "model_only_ips": round(self.model_ips, 2),
                "model_only_clip_ips": round(self.clip_ips, 2),
                "end_to_end_vs_min_ceiling": round(self.e2e_ips / min(self.model_ips, self.decode_ips), 3),
                "end_to_end_vs_shared_ceiling": round(self.e2e_ips / self.shared_ips, 3),
                "build_seconds": round(self.total_s, 2), "phases_s": {k: round(v, 3) for k, v in self.phases.items()}}


def _measure_runtime(settings: Settings, encoder: Any, reranker: Any, batches: list[list[Any]], *, catalog: Path,
                     images: int, decode_ips: float, log: Log) -> RuntimeRun:
    import torch

    from catalens.onnx_encoder import load_index_encoder
    from indexer.runner import BuildOptions, build_index

    embedder = timed_embedder(encoder, reranker=reranker)
    embedder.onnx = load_index_encoder(settings, encoder, reranker)
    runtime = embedder.runtime

    def clip_only(batch: list[Any]) -> None:
        clip = torch.stack([c for c, _ in batch])
        if embedder.onnx is None:
            encoder.encode_pixels(clip)
        else:
            embedder.onnx.encode_pixels(clip.numpy())

    def as_built(batch: list[Any]) -> None:  # the choices of indexer.embedder._embed_loaded
        clip = [c for c, _ in batch]
        if embedder.reranker is None:
            embedder.embed_pixels(clip)
        elif embedder.embed_pixels_with_features(clip) is None:  # the reranker does not read this CLIP
            embedder.embed_pixels(clip)
            embedder.rerank_features([r if r is not None else c for c, r in batch])

    decoded = sum(len(b) for b in batches)
    model_ips, clip_ips = (_images_per_s(run, batches, decoded) for run in (as_built, clip_only))
    embedder.pixel_s = 0.0
    log(f"[{settings.runtime} -> {runtime}] model-only: {model_ips:.1f} img/s as built ({clip_ips:.1f} CLIP alone) "
        f"over {decoded} images")

    # a real `index build` (read, decode, preprocess, embed, write) into a fresh index, on this embedder
    with tempfile.TemporaryDirectory(dir=settings.bench_cache(), prefix="index-") as tmp:
        build_settings = settings.model_copy(update={"index_dir": Path(tmp)})
        t0 = time.perf_counter()
        summary = build_index(build_settings, BuildOptions(catalog=catalog, progress=False), encoder=encoder,
                              embedder=embedder)
        total_s = time.perf_counter() - t0
    if summary.images_failed or summary.embedded != images:
        raise BenchError(f"the benchmark build embedded {summary.embedded} of {images} images "
                         f"({summary.images_failed} failed)")
    phases = build_phases(summary, total_s)
    e2e_ips = summary.embedded / total_s
    log(f"[{runtime}] end to end: {e2e_ips:.1f} img/s")
    return RuntimeRun(runtime=runtime, model_ips=model_ips, clip_ips=clip_ips, e2e_ips=e2e_ips,
                      image_stage_ips=summary.embedded / phases.get(IMAGE_STAGE, total_s), decode_ips=decode_ips,
                      shared_ips=1 / (1 / model_ips + 1 / decode_ips), total_s=total_s, phases=phases,
                      model_s={"images": round(embedder.pixel_s, 3), "texts": round(embedder.text_s, 3)},
                      summary=summary)
