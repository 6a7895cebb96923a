"""Embed stage on Ray Data: planned images -> decode tasks -> CLIP actors -> the driver's caches and DB.

The same contract as `embedder.embed_images`: the same cache entries, counts and image records.
Tasks and actors only compute; the driver alone writes the index folder (shards, thumbnails, DB),
so workers on other machines need to read the images and load the model, nothing more.
Ray is an optional extra (`catalens[ray]`); it is imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from catalens.config import Settings
from catalens.db import Sessions
from catalens.encoder import ModelSpec
from catalens.errors import CatalensError, ConfigError, ModelLoadError
from indexer.embedder import EmbedCounts, Embedder, _embed_loaded, _record_images
from indexer.embedding_cache import Caches, EmbeddingCache
from indexer.reader import ImageJob, ImageReader, LoadedImage

LOG = logging.getLogger(__name__)
LOCAL = "local"
INSTALL_HINT = "pip install 'catalens[ray]'"
_NONE = np.zeros(0, dtype=np.float32)  # an absent array in a tensor column (a real one is never empty)


def check_address(address: str | None) -> None:
    """Refuse a --ray-address that is not None, 'local', 'auto' or ray://HOST:PORT (before any work starts)."""
    if address is None or address in (LOCAL, "auto"):
        return
    try:
        parts = urlsplit(address)
        ok = parts.scheme == "ray" and bool(parts.hostname) and parts.port is not None
    except ValueError:  # a port that is not a number in 0..65535
        ok = False
    if not ok:
        raise ConfigError(f"--ray-address {address!r}: expected 'auto', 'local' or ray://HOST:PORT")


def import_ray() -> Any:
    """The ray module, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data: {INSTALL_HINT}") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, connected: a running one as it is, a local one started here (None/'local') or a cluster.

    What this function started or connected to, it shuts down or disconnects at the end.
    """
    check_address(address)
    ray = import_ray()
    if ray.is_initialized():  # the caller's Ray (a notebook, a test): used, and left running
        yield ray
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray Client warns before it raises; the error below says it in one line
            if address in (None, LOCAL):
                # "local", never None: None would join whatever cluster RAY_ADDRESS names.
                ray.init(address=LOCAL, num_cpus=os.cpu_count() or 1, include_dashboard=False,
                         log_to_driver=False, ignore_reinit_error=True, logging_level=logging.WARNING,
                         _node_ip_address="127.0.0.1")
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot start or reach Ray at {address or LOCAL!r}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class CachedKeys:
    """The `img:`/`rr:` keys the caches held when the build planned; travels to tasks and actors."""

    keys: frozenset[str]
    features: bool  # reranker features are stored: an image is cached only with both

    def __call__(self, digest: str) -> bool:
        """The rule of `Caches.has`, on the snapshot."""
        return f"img:{digest}" in self.keys and (not self.features or f"rr:{digest}" in self.keys)


def cached_keys(caches: Caches) -> CachedKeys:
    """Snapshot the image keys of both caches (text keys stay behind: no worker needs them)."""
    keys: set[str] = set()
    for cache in (caches.vectors, caches.features):
        if cache is not None:
            # EmbeddingCache lists no keys publicly; its in-memory map is the loaded shards.
            keys.update(k for k in cache._vectors if not k.startswith("txt:"))
    return CachedKeys(frozenset(keys), features=caches.features is not None)


@dataclass(frozen=True)
class ActorPool:
    """How many embedding actors, and what each one reserves and runs on."""

    size: int | tuple[int, int]  # fixed, or (min, max) for an autoscaling pool
    num_cpus: float
    num_gpus: float
    device: str
    threads: int

    def strategy(self, ray: Any) -> Any:
        """The Ray Data ActorPoolStrategy of this pool."""
        if isinstance(self.size, tuple):
            return ray.data.ActorPoolStrategy(min_size=self.size[0], max_size=self.size[1])
        return ray.data.ActorPoolStrategy(size=self.size)


def plan_actors(settings: Settings, resources: dict[str, float], *, local: bool) -> ActorPool:
    """GPU actors (one GPU each) when cuda is asked for or found; else CPU actors sized to the cluster."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if settings.device == "cuda" and not gpus:  # a GPU actor there could never be scheduled: the build would hang
        raise ConfigError("--device cuda: the Ray cluster has no GPU (use --device auto or cpu)")
    if settings.device == "cuda" or (settings.device == "auto" and gpus):
        return ActorPool(size=(1, max(1, gpus)), num_cpus=1, num_gpus=1, device="cuda", threads=1)
    if local:
        # Fractional CPUs: two whole-CPU actors would take both cores of a small machine and the
        # decode tasks that feed them could never be scheduled (the pipeline deadlocks).
        share = max(0.5, (cpus - 1) / 2)
        return ActorPool(size=2, num_cpus=share, num_gpus=0, device="cpu",
                         threads=settings.threads or max(1, int(share)))
    return ActorPool(size=(1, max(1, int(cpus) // 2)), num_cpus=1, num_gpus=0, device="cpu",
                     threads=settings.threads or 1)


@dataclass(frozen=True)
class ActorConfig:
    """What an actor loads: the driver's CLIP (and reranker, when the build needs one), checked by id."""

    spec: ModelSpec
    model_id: str
    device: str
    threads: int
    known: CachedKeys
    reranker: str | None = None  # a load_reranker name
    reranker_id: str | None = None
    features: bool = False  # store the reranker's features (else it only captions)


class TaskReader(ImageReader):
    """The project's ImageReader (same limits, errors, source policy); thumbnails come back as JPEG
    bytes instead of files, for the driver to write."""

    thumbnails: dict[str, bytes]  # thumbnail path -> JPEG, of the batch being read

    def for_batch(self) -> TaskReader:
        """A copy with its own thumbnail buffer (one reader object may serve several tasks in a worker)."""
        reader = copy.copy(self)
        reader.thumbnails = {}
        return reader

    def _save_thumbnail(self, image: Any, rel: str) -> None:
        # ImageReader's own encoding, into a scratch folder: both engines write identical thumbnails.
        with tempfile.TemporaryDirectory() as scratch:
            writer = copy.copy(self)
            writer.thumb_root = Path(scratch)
            ImageReader._save_thumbnail(writer, image, rel)
            self.thumbnails[rel] = (Path(scratch) / rel).read_bytes()


def create_task_reader(reader: ImageReader, known: CachedKeys) -> TaskReader:
    """A picklable copy of the build's reader whose cache check is the planned snapshot."""
    return TaskReader(reader.settings, images_root=reader.images_root, preprocess=reader.preprocess,
                      image_size=reader.image_size, is_cached=known, rerank_preprocess=reader.rerank_preprocess,
                      roots=reader.roots)


def _array(value: Any) -> np.ndarray:
    return _NONE if value is None else np.asarray(value)


def _present(value: Any) -> np.ndarray | None:
    return None if value is None or value.size == 0 else value


def _strings(values: list[str | None]) -> list[str]:
    # Optional strings travel as "" for None: Arrow turns a block's all-None column into float NaNs,
    # and those into "nan" strings when blocks merge. (No hash, path or error is empty; an empty caption is none.)
    return [value or "" for value in values]


def _text(value: Any) -> str | None:
    return str(value) or None


def decode_batch(batch: dict[str, np.ndarray], *, reader: TaskReader) -> dict[str, Any]:
    """Read, hash, thumbnail and preprocess one batch of jobs (a Ray task), CATALENS_DECODE_WORKERS at a time."""
    jobs = [ImageJob(int(i), str(s), needs_caption=bool(c))
            for i, s, c in zip(batch["image_id"], batch["source"], batch["needs_caption"])]
    reader = reader.for_batch()
    with ThreadPoolExecutor(reader.settings.decode_workers) as pool:
        loaded = list(pool.map(reader, jobs))
    return {
        "image_id": np.array([item.image_id for item in loaded], dtype=np.int64),
        "content_hash": _strings([item.content_hash for item in loaded]),
        "thumbnail": _strings([item.thumbnail for item in loaded]),
        "thumbnail_jpeg": [reader.thumbnails.get(item.thumbnail or "", b"") for item in loaded],
        "needs_caption": np.array([item.needs_caption for item in loaded], dtype=bool),
        "error_code": _strings([item.error_code for item in loaded]),
        "error": _strings([item.error for item in loaded]),
        "pixels": [_array(None if item.pixels is None else item.pixels.numpy()) for item in loaded],
        "rerank_pixels": [_array(None if item.rerank_pixels is None else item.rerank_pixels.numpy())
                          for item in loaded],
    }


class BatchCache(EmbeddingCache):
    """What `_embed_loaded` stores inside an actor, held in memory for the driver (which owns the shards).

    Only what `_embed_loaded` uses: `in` (the planned snapshot, then this batch) and `put_many`.
    """

    def __init__(self, known: CachedKeys) -> None:  # no super().__init__: an actor has no cache folder
        self.known = known.keys
        self.new: dict[str, np.ndarray] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.known or key in self.new

    def __len__(self) -> int:
        return len(self.new)

    def put_many(self, keys: list[str], vectors: np.ndarray) -> None:
        self.new.update(zip(keys, vectors))


def _loaded_from(batch: dict[str, np.ndarray], i: int) -> LoadedImage:
    """Row i of a decoded batch as the LoadedImage `_embed_loaded` takes (pixels as torch tensors)."""
    import torch

    pixels, rerank = _present(batch["pixels"][i]), _present(batch["rerank_pixels"][i])
    return LoadedImage(int(batch["image_id"][i]), content_hash=_text(batch["content_hash"][i]),
                       pixels=None if pixels is None else torch.from_numpy(np.array(pixels)),
                       rerank_pixels=None if rerank is None else torch.from_numpy(np.array(rerank)),
                       needs_caption=bool(batch["needs_caption"][i]), thumbnail=_text(batch["thumbnail"][i]),
                       error_code=_text(batch["error_code"][i]), error=_text(batch["error"][i]))


def load_actor_embedder(config: ActorConfig) -> Embedder:
    """The CLIP (and reranker) an actor embeds with, refused unless it is exactly the driver's."""
    from catalens.config import set_threads
    from catalens.encoder import load_clip
    from catalens.reranker import load_reranker

    set_threads(config.threads)
    encoder = load_clip(config.spec, device=config.device)
    reranker = load_reranker(config.reranker, clip=encoder, device=encoder.device) if config.reranker else None
    # A worker with other weights (another node's install) would fill the caches with wrong vectors.
    if encoder.model_id != config.model_id or (reranker and reranker.reranker_id != config.reranker_id):
        raise ModelLoadError(f"a Ray worker loaded {encoder.model_id!r}, not the build's {config.model_id!r} "
                             "(or another reranker): install the same Catalens and models on every node")
    return Embedder(encoder, reranker=reranker)


class ClipActor:
    """Loads CLIP (and the reranker the build needs) once per actor; embeds decoded batches."""

    def __init__(self, config: ActorConfig) -> None:
        self.config = config
        self.pid = os.getpid()
        self.failure: CatalensError | None = None
        try:
            self.embedder = load_actor_embedder(config)
        except CatalensError as exc:
            # Ray keeps only the text of an error raised while an actor starts; raised from a call,
            # it reaches the driver whole (typed: one line on the command line).
            self.failure = exc

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """CLIP vectors, reranker features and captions of the batch's images the caches miss."""
        if self.failure is not None:
            raise self.failure
        loaded = [_loaded_from(batch, i) for i in range(len(batch["image_id"]))]
        vectors = BatchCache(self.config.known)
        features = BatchCache(self.config.known) if self.config.features else None
        _embed_loaded(loaded, self.embedder, Caches(vectors, features), EmbedCounts())
        new_vectors, new_features = vectors.new, features.new if features is not None else {}
        return {
            "image_id": batch["image_id"], "content_hash": _strings([item.content_hash for item in loaded]),
            "thumbnail": _strings([item.thumbnail for item in loaded]), "thumbnail_jpeg": batch["thumbnail_jpeg"],
            "error_code": _strings([item.error_code for item in loaded]),
            "error": _strings([item.error for item in loaded]), "caption": _strings([item.caption for item in loaded]),
            "vector": [_array(new_vectors.get(f"img:{item.content_hash}")) for item in loaded],
            "feature": [_array(new_features.get(f"rr:{item.content_hash}")) for item in loaded],
            "pid": np.full(len(loaded), self.pid, dtype=np.int64),
        }


def _write_thumbnails(thumb_root: Path, batch: dict[str, np.ndarray]) -> None:
    """The thumbnails the tasks made, written like ImageReader writes them (temp file, rename)."""
    for rel, data in zip(batch["thumbnail"], batch["thumbnail_jpeg"]):
        if not rel or not len(data):
            continue
        path = thumb_root / str(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(bytes(data))
        tmp.replace(path)


def _store(batch: dict[str, np.ndarray], caches: Caches, counts: EmbedCounts) -> list[LoadedImage]:
    """Put one result batch's new vectors and features into the caches (a shard each); count it as
    `_embed_loaded` does; return its images for `_record_images`."""
    loaded = [LoadedImage(int(batch["image_id"][i]), content_hash=_text(batch["content_hash"][i]),
                          thumbnail=_text(batch["thumbnail"][i]), caption=_text(batch["caption"][i]),
                          error_code=_text(batch["error_code"][i]), error=_text(batch["error"][i]))
              for i in range(len(batch["image_id"]))]
    vectors = [(item.content_hash, v) for item, v in zip(loaded, batch["vector"]) if _present(v) is not None]
    caches.vectors.put_many([f"img:{digest}" for digest, _ in vectors], _stack(vectors))
    if caches.features is not None:
        features = [(item.content_hash, f) for item, f in zip(loaded, batch["feature"]) if _present(f) is not None]
        caches.features.put_many([f"rr:{digest}" for digest, _ in features], _stack(features))
    ok = sum(1 for item in loaded if not item.error)
    counts.images_ok += ok
    counts.images_failed += len(loaded) - ok
    counts.embedded += len(vectors)
    counts.cached += ok - len(vectors)
    return loaded


def _stack(rows: list[tuple[str | None, np.ndarray]]) -> np.ndarray:
    return np.stack([v for _, v in rows]) if rows else _NONE


def embed_images_ray(jobs: list[ImageJob], reader: ImageReader, embedder: Embedder, caches: Caches, *,
                     sessions: Sessions, version_id: str, counts: EmbedCounts, batch_size: int, progress: bool,
                     address: str | None = None) -> None:
    """`embed_images` on Ray: decode in tasks, embed on an actor pool, store and record in this process.

    Texts stay in-process (`embed_texts`): one short pass, not worth shipping. Unlike the local
    engine, an image repeated within one build may be embedded once per occurrence (the workers
    see the caches as planned); the vectors are the same.
    """
    from tqdm import tqdm

    if not jobs:
        return
    known = cached_keys(caches)
    with ray_session(address) as ray:
        pool = plan_actors(reader.settings, ray.cluster_resources(), local=address in (None, LOCAL))
        needs_reranker = caches.features is not None or any(job.needs_caption for job in jobs)
        reranker = embedder.reranker if needs_reranker else None
        config = ActorConfig(spec=embedder.encoder.spec, model_id=embedder.encoder.model_id, device=pool.device,
                             threads=pool.threads, known=known,
                             reranker=reader.settings.reranker if reranker else None,
                             reranker_id=reranker.reranker_id if reranker else None,
                             features=caches.features is not None)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = context.print_on_execution_start = False  # ours below counts what is stored
        context.raise_original_map_exception = True  # a Catalens error from a task or actor, not its text only
        items = [{"image_id": j.image_id, "source": j.source, "needs_caption": j.needs_caption} for j in jobs]
        results = (ray.data.from_items(items)
                   .map_batches(decode_batch, fn_kwargs={"reader": create_task_reader(reader, known)},
                                batch_size=batch_size, batch_format="numpy")
                   .map_batches(ClipActor, fn_constructor_kwargs={"config": config}, batch_size=batch_size,
                                batch_format="numpy", compute=pool.strategy(ray), num_cpus=pool.num_cpus,
                                num_gpus=pool.num_gpus))
        bar = tqdm(total=len(jobs), desc="embedding images (ray)", unit="img", disable=not progress)
        pids: set[int] = set()
        try:
            for batch in results.iter_batches(batch_size=batch_size, batch_format="numpy"):
                _write_thumbnails(reader.thumb_root, batch)
                loaded = _store(batch, caches, counts)
                _record_images(sessions, loaded, version_id, counts)
                pids.update(int(p) for p in batch["pid"])
                bar.update(len(loaded))
        except Exception as exc:
            typed = _catalens_cause(exc)
            if typed is None:
                raise
            raise typed from exc
        finally:
            bar.close()
    LOG.info("ray engine: %d images on %d actors (pids %s)", len(jobs), len(pids), sorted(pids))


def _catalens_cause(exc: BaseException) -> CatalensError | None:
    """The Catalens error a task or actor raised (a model that will not load), inside Ray's wrappers
    (which subclass it, but print a remote traceback: the innermost one is the error itself)."""
    found: CatalensError | None = None
    seen: BaseException | None = exc
    for _ in range(8):  # Ray nests a few wrappers; never follow a chain for ever
        if seen is None:
            break
        if isinstance(seen, CatalensError):
            found = seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return found
