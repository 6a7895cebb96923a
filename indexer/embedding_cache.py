"""Writer stage: embeddings persisted in shards as they are computed, keyed by content hash.

One folder per model, so a model change never reuses vectors. Each shard is written to a
temp file, fsynced and renamed: a build killed at any point leaves only complete shards,
and the next build resumes from them (an unchanged image or text costs no model time).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalens.config import Settings
from catalens.reranker import Reranker


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

    def __contains__(self, key: str) -> bool:
        return key in self._vectors

    def get(self, key: str) -> np.ndarray | None:
        return self._vectors.get(key)

    def put_many(self, keys: list[str], vectors: np.ndarray) -> None:
        """Persist a batch as one shard (atomic), then make it visible in memory."""
        if not keys:
            return
        name = f"shard-{uuid.uuid4().hex}.npz"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(keys), vectors=np.asarray(vectors, dtype=self.dtype))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / name)
        self._loaded.add(name)
        for key, vec in zip(keys, vectors):
            self._vectors[key] = np.asarray(vec, dtype=self.dtype)

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
