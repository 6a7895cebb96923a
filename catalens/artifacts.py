"""The index format on disk: versioned folders, a manifest written last, an atomic active pointer.

<index-dir>/versions/<id>/{images.faiss, texts.faiss, manifest.json}
                          [+ rerank_ids.npy, rerank_features.npy: reranker image features, fp16]
<index-dir>/ACTIVE          JSON {"version_id": ...}, replaced by rename
<index-dir>/staging/<id>/   builds in progress; never read by the service
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from catalens.errors import IndexArtifactError, IndexNotReadyError

MANIFEST = "manifest.json"
ACTIVE = "ACTIVE"
IMAGE_INDEX = "images.faiss"
TEXT_INDEX = "texts.faiss"
RERANK_IDS = "rerank_ids.npy"
RERANK_FEATURES = "rerank_features.npy"
EXACT_LIMIT = 50_000  # below this many vectors exact search is fast enough and has recall 1.0
HNSW_EF_SEARCH = 128
IVF_NPROBE = 16
FORMAT_VERSION = 1


class VectorIndex(Protocol):
    """The small surface the rest of Catalens uses, so FAISS can be swapped for e.g. Milvus."""

    @property
    def ntotal(self) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def search_subset(self, queries: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def reconstruct(self, ids: np.ndarray) -> np.ndarray: ...


def default_factory(n: int) -> str:
    """Exact search for small catalogs, graph search (HNSW) above; see the ANN benchmark.

    IVF-SQ8 was faster (2,614 vs 1,273 QPS at recall >= 0.95) and 4x smaller there, but its
    coarse centroids are trained once per build while upserts keep changing the catalog,
    and its recall margin at the fast setting was thin (0.959); HNSW needs no training.
    """
    return "Flat" if n < EXACT_LIMIT else "HNSW32"


class FaissIndex:
    """Inner-product FAISS index over normalised vectors with explicit int64 ids (IDMap2)."""

    def __init__(self, index) -> None:  # type: ignore[no-untyped-def]
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, *, factory: str) -> FaissIndex:
        import faiss

        dim = vectors.shape[1] if vectors.ndim == 2 else 0
        try:
            index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexArtifactError(f"invalid FAISS factory string {factory!r}: {exc}") from exc
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not index.is_trained and len(vectors):
            index.train(vectors)
        inner = faiss.downcast_index(index.index)
        # Search-time knobs are saved with the index. Both values reach recall@10 >= 0.95 on
        # 1M x 512 clustered vectors in `catalens bench ann` (README): efSearch 128 -> 0.967,
        # nprobe 16 of 1024 lists -> 0.98 (faiss's own default, nprobe 1, gave 0.82).
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        elif hasattr(inner, "nprobe"):
            inner.nprobe = min(IVF_NPROBE, int(inner.nlist))
        if len(vectors):
            index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index)

    @classmethod
    def load(cls, path: Path) -> FaissIndex:
        import faiss

        try:
            return cls(faiss.read_index(str(path)))
        except RuntimeError as exc:
            raise IndexArtifactError(f"cannot read index file {path}: {exc}") from exc

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def search_subset(self, queries: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search restricted to the given ids, all of which must be in the index."""
        if len(ids) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        vectors = self.reconstruct(ids)
        scores = queries @ vectors.T
        k = min(k, len(ids))
        top = np.argsort(-scores, axis=1)[:, :k]
        return np.take_along_axis(scores, top, axis=1), ids[top]

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self.index.id_map)


@dataclass
class Manifest:
    """What a version holds; written last, so a folder with a manifest is complete."""

    version_id: str
    model: str
    pretrained: str | None
    dim: int
    count: int
    text_count: int
    factory: str
    catalog: str
    catalog_checksum: str
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    model_id: str = ""  # model + pretrained + weights digest; must match the serving encoder
    reranker: str | None = None  # id of the reranker whose image features this version stores


@dataclass(frozen=True)
class RerankFeatures:
    """Stored reranker features of a version: sorted vector ids and a memory-mapped (n, T, D) fp16 array."""

    ids: np.ndarray
    features: np.ndarray

    def lookup(self, vector_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ids that have features, their features in the given order)."""
        pos = np.searchsorted(self.ids, vector_ids)
        pos = np.clip(pos, 0, max(len(self.ids) - 1, 0))
        found = (self.ids[pos] == vector_ids) if len(self.ids) else np.zeros(len(vector_ids), bool)
        return found, self.features[pos[found]]

    @property
    def bytes_per_image(self) -> int:
        return int(self.features[0].nbytes) if len(self.features) else 0


def new_version_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file, fsync, rename: readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def staging_dir(index_dir: Path, version_id: str) -> Path:
    return index_dir / "staging" / version_id


def versions_dir(index_dir: Path) -> Path:
    return index_dir / "versions"


def write_version_files(staging: Path, *, manifest: Manifest, images: FaissIndex, texts: FaissIndex,
                        rerank: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Write index files and, last, the manifest with their checksums; fsync everything."""
    staging.mkdir(parents=True, exist_ok=True)
    for name, index in ((IMAGE_INDEX, images), (TEXT_INDEX, texts)):
        index.save(staging / name)
        with open(staging / name, "rb") as fh:
            os.fsync(fh.fileno())
        manifest.files[name] = file_sha256(staging / name)
    if rerank is not None:
        ids, features = rerank
        order = np.argsort(ids)  # sorted ids: lookups by binary search
        for name, array in ((RERANK_IDS, ids[order]), (RERANK_FEATURES, features[order])):
            with open(staging / name, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            manifest.files[name] = file_sha256(staging / name)
    atomic_write_text(staging / MANIFEST, json.dumps(asdict(manifest), indent=2))


def promote_staging(index_dir: Path, version_id: str) -> Path:
    """Move a complete staging folder into versions/ (same filesystem, so the rename is atomic)."""
    src = staging_dir(index_dir, version_id)
    dst = versions_dir(index_dir) / version_id
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    return dst


def read_manifest(version_path: Path) -> Manifest:
    try:
        data = json.loads((version_path / MANIFEST).read_text())
        return Manifest(**data)
    except FileNotFoundError as exc:
        raise IndexArtifactError(f"index version {version_path.name} has no manifest (incomplete build)") from exc
    except (json.JSONDecodeError, TypeError) as exc:
        raise IndexArtifactError(f"manifest of {version_path.name} is unreadable: {exc}") from exc


def verify_version(version_path: Path, *, checksums: bool = True) -> Manifest:
    """Check that a version's files are all there and match the manifest; raise if not."""
    manifest = read_manifest(version_path)
    for name, digest in manifest.files.items():
        path = version_path / name
        if not path.is_file():
            raise IndexArtifactError(f"index version {manifest.version_id}: {name} is missing")
        if checksums and file_sha256(path) != digest:
            raise IndexArtifactError(f"index version {manifest.version_id}: {name} is corrupt (checksum mismatch)")
    return manifest


def load_rerank_features(version_path: Path, manifest: Manifest) -> RerankFeatures | None:
    """The version's stored reranker features, memory-mapped (verified by load_version)."""
    if RERANK_FEATURES not in manifest.files:
        return None
    try:
        ids = np.load(version_path / RERANK_IDS, allow_pickle=False)
        features = np.load(version_path / RERANK_FEATURES, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise IndexArtifactError(f"index version {manifest.version_id}: unreadable reranker features: {exc}") from exc
    if len(ids) != len(features):
        raise IndexArtifactError(f"index version {manifest.version_id}: reranker ids and features differ in count")
    return RerankFeatures(ids, features)


def load_version(version_path: Path) -> tuple[Manifest, FaissIndex, FaissIndex]:
    """Verify, then load both indexes, checking count and dimension against the manifest."""
    manifest = verify_version(version_path)
    images = FaissIndex.load(version_path / IMAGE_INDEX)
    texts = FaissIndex.load(version_path / TEXT_INDEX)
    if images.ntotal != manifest.count or texts.ntotal != manifest.text_count:
        raise IndexArtifactError(f"index version {manifest.version_id}: vector counts do not match its manifest")
    if images.ntotal and images.dim != manifest.dim:
        raise IndexArtifactError(f"index version {manifest.version_id}: dimension {images.dim} != {manifest.dim}")
    return manifest, images, texts


def read_active(index_dir: Path) -> str | None:
    try:
        return json.loads((index_dir / ACTIVE).read_text())["version_id"]
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError) as exc:
        raise IndexArtifactError(f"{index_dir / ACTIVE} is unreadable: {exc}") from exc


def set_active(index_dir: Path, version_id: str) -> None:
    if not (versions_dir(index_dir) / version_id / MANIFEST).is_file():
        raise IndexArtifactError(f"no complete index version {version_id!r} in {versions_dir(index_dir)}")
    atomic_write_text(index_dir / ACTIVE, json.dumps({"version_id": version_id}))


def active_version_path(index_dir: Path) -> Path:
    version_id = read_active(index_dir)
    if version_id is None:
        raise IndexNotReadyError(
            f"no index in {index_dir}: build one with `catalens index build --catalog FILE`")
    return versions_dir(index_dir) / version_id


def list_versions(index_dir: Path) -> list[Manifest]:
    root = versions_dir(index_dir)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.iterdir()):
        try:
            out.append(read_manifest(path))
        except IndexArtifactError:
            continue
    return out


def prune_versions(index_dir: Path, keep: int) -> list[str]:
    """Delete the oldest versions beyond `keep`, never the active one."""
    active = read_active(index_dir)
    versions = [m.version_id for m in list_versions(index_dir)]
    removable = [v for v in versions if v != active][: max(0, len(versions) - keep)]
    for version_id in removable:
        shutil.rmtree(versions_dir(index_dir) / version_id, ignore_errors=True)
    return removable


def clean_staging(index_dir: Path) -> None:
    """Remove leftovers of crashed builds (the live index never reads staging/)."""
    shutil.rmtree(index_dir / "staging", ignore_errors=True)
