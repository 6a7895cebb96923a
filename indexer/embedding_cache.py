"""Writer stage: embeddings persisted in shards as they are computed, keyed by content hash.

One folder per model, so a model change never reuses vectors. Each shard is written to a
temp file, fsynced and renamed: a build killed at any point leaves only complete shards,
and the next build resumes from them (an unchanged image or text costs no model time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catalens.config import Settings
from catalens.reranker import Reranker


class BackgroundWriter:
    """One thread for a build's writes (fsynced shards, image records), in submission order, so the
    model loop never waits on the disk or the database; at most `depth` writes behind, and a failed
    write is raised at the next submit or at close."""

    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="embed-writer")
        self._pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self.depth or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for every write; raise the first that failed."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True)


class EmbeddingCache:
    """Maps keys like `img:<sha256>` / `txt:<sha256>` to arrays (float32 vectors by default) for one model."""

    def __init__(self, root: Path, model_id: str, *, dtype: type = np.float32) -> None:
        self.dtype = dtype
        self.dir = root / hashlib.sha256(model_id.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = self.dir / "MODEL"
        if not marker.is_file() or marker.read_text() != model_id:
            marker.write_text(model_id)
        self._vectors: dict[str, np.ndarray] = {}
        self._loaded: set[str] = set()
        self._writer: BackgroundWriter | None = None
        self.refresh()

    def refresh(self) -> None:
        """Load the shards other processes wrote since (a long-lived cache: the service's editor)."""
        for shard in sorted(self.dir.glob("shard-*.npz")):
            if shard.name in self._loaded:
                continue
            try:
                with np.load(shard, allow_pickle=False) as data:
                    for key, vec in zip(data["keys"], data["vectors"]):
                        self._vectors[str(key)] = vec
            except FileNotFoundError:  # merged away by a compaction meanwhile: its vectors are in the merged shard
                continue
            self._loaded.add(shard.name)

    def __len__(self) -> int:
        return len(self._vectors)

    def keys(self) -> list[str]:
        return list(self._vectors)

    def __contains__(self, key: str) -> bool:
        return key in self._vectors

    def get(self, key: str) -> np.ndarray | None:
        return self._vectors.get(key)

    def put_many(self, keys: list[str], vectors: np.ndarray) -> None:
        """Persist a batch as one shard (atomic; on the writer's thread inside `writes_on`) and make it
        visible in memory."""
        if not keys:
            return
        array: np.ndarray = np.asarray(vectors, dtype=self.dtype)
        if self._writer is None:
            self._persist(keys, array)
        else:
            self._writer.submit(self._persist, keys, array)
        for key, vec in zip(keys, array):
            self._vectors[key] = vec

    @contextlib.contextmanager
    def writes_on(self, writer: BackgroundWriter) -> Iterator[None]:
        """Within the block, shards are written by the writer (the caller closes it to wait for them)."""
        self._writer = writer
        try:
            yield
        finally:
            self._writer = None

    def _persist(self, keys: list[str], array: np.ndarray) -> None:
        name = f"shard-{uuid.uuid4().hex}.npz"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(keys), vectors=array)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / name)
        self._loaded.add(name)

    def compact(self) -> None:
        """Merge all shards into one (fewer files to open on the next start)."""
        shards = sorted(self.dir.glob("shard-*.npz"))
        if len(shards) <= 1:
            return
        keys = list(self._vectors)
        self.put_many(keys, np.stack([self._vectors[k] for k in keys]))
        newest = max(self.dir.glob("shard-*.npz"), key=os.path.getmtime)
        for shard in shards:
            if shard != newest:
                shard.unlink(missing_ok=True)


@dataclass
class Caches:
    """The CLIP vector cache and, when stored, the reranker's feature cache."""

    vectors: EmbeddingCache
    features: EmbeddingCache | None = None

    def has(self, digest: str) -> bool:
        return f"img:{digest}" in self.vectors and (self.features is None or f"rr:{digest}" in self.features)


def feature_cache(settings: Settings, reranker: Reranker | None) -> EmbeddingCache | None:
    """Reranker image features, cached like vectors (fp16) under the reranker's own id."""
    if reranker is None:
        return None
    return EmbeddingCache(settings.index_dir / "features", reranker.reranker_id, dtype=np.float16)


def remove_partial_shards(cache: EmbeddingCache) -> None:
    """Temp files of shards a killed builder never finished (complete shards are kept)."""
    for tmp in cache.dir.glob(".shard-*.tmp"):
        tmp.unlink(missing_ok=True)
