"""The index format on disk: versioned folders, a manifest written last, an atomic active pointer.

<index-dir>/versions/<id>/{images.faiss, texts.faiss, products.parquet, manifest.json}
                          [+ rerank_ids.npy, rerank_features.npy: reranker image features, fp16]
<index-dir>/ACTIVE          JSON {"version_id": ..., "since_seq": N}, replaced by rename: the version
                            queries read, and the live changes (seq > N) served over it
<index-dir>/staging/<id>/   builds in progress; never read by the service
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from catalens.digests import file_sha256
from catalens.errors import CatalensError, IndexArtifactError, IndexNotReadyError, InsufficientStorageError

MANIFEST = "manifest.json"
ACTIVE = "ACTIVE"
IMAGE_INDEX = "images.faiss"
TEXT_INDEX = "texts.faiss"
RERANK_IDS = "rerank_ids.npy"
RERANK_FEATURES = "rerank_features.npy"
EXACT_LIMIT = 50_000  # below this many vectors exact search is fast enough and has recall 1.0
HNSW_EF_SEARCH = 128
IVF_NPROBE = 16
FORMAT_VERSION = 2  # 2: a version holds its products (products.parquet) and a change watermark
# Text-only fallback vectors (products whose every image failed) share the image index
# under ids offset by this base, so they can never collide with image row ids.
TEXT_ID_BASE = 1 << 40


def default_factory(n: int) -> str:
    """Exact search for small catalogs, graph search (HNSW) above; see the ANN benchmark.

    IVF-SQ8 was faster (2,614 vs 1,273 QPS at recall >= 0.95) and 4x smaller there, but its
    coarse centroids are trained once per build while upserts keep changing the catalog,
    and its recall margin at the fast setting was thin (0.959); HNSW needs no training.
    """
    return "Flat" if n < EXACT_LIMIT else "HNSW32"


class FaissIndex:
    """Inner-product FAISS index over normalised vectors with explicit int64 ids (IDMap2).

    Filtered search (`search_filtered`) runs inside FAISS: the allowed ids become an
    IDSelector over the rows of the index inside the IDMap2, passed in the SearchParameters
    of its type (their efSearch / nprobe default to 16 / 1, not to the values saved with
    the index, so those are always passed explicitly). Rows, not ids: IndexIDMap2 would
    translate a selector to the external ids (it does, faiss 1.15), but no bitmap spans
    ids that reach TEXT_ID_BASE. Each query gets exactly min(k, allowed) results on any
    index type and at any selectivity:

    * few allowed vectors (rows x dim <= GATHER_FLOATS): reconstruct and score them all,
      exact; cheaper than any search there (0.17 ms for 4,096 x 128 against 0.5 ms for
      a selector scan of 160k rows);
    * HNSW: the graph walk with the selector (_hnsw_search), else exact: the rows
      reconstructed in one chunk (up to GATHER_CHUNK_FLOATS), or a selector scan of the
      flat storage (at 160k x 128: 16k rows gathered in 1.1 ms, scanned in 2.1; even at 64k);
    * IVF: the nearest lists until enough allowed vectors are in (_ivf_search);
    * Flat and other exhaustive indexes: the search with the selector is exact already.
    Selectors: a bitmap over the rows (constant-time test; at 50% of 100k rows 1.5 ms a
    query against 7-8 ms for IDSelectorBatch, whose hash set is rebuilt per query), or
    IDSelectorBatch when the allowed rows are under 1/BATCH_SELECTOR_RATIO of the index,
    where the bitmap's O(ntotal) construction would dominate.
    """

    GATHER_FLOATS = 1 << 20  # 4 MB of float32
    GATHER_CHUNK_FLOATS = 1 << 22
    HNSW_MIN_SELECTIVITY = 0.05
    HNSW_EF_RETRIES = 1
    IVF_CANDIDATES = 20
    BATCH_SELECTOR_RATIO = 64

    @staticmethod
    def _faiss() -> Any:
        """The faiss module, untyped: the stubs bundled with faiss 1.15 lack most of the API used here."""
        import faiss

        return faiss

    def __init__(self, index: Any) -> None:
        self.index = index
        # (ntotal, id of each row, sorted ids, row of each sorted id): built on first filtered search
        self._rows: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._lists: tuple[int, np.ndarray] | None = None  # (ntotal, list of each row), IVF only

    @classmethod
    def build(cls, vectors: np.ndarray, ids: np.ndarray, *, factory: str, train_size: int | None = None,
              seed: int = 0) -> FaissIndex:
        """IDMap2 around the factory, inner product; IVF/PQ trained on at most train_size vectors."""
        faiss = FaissIndex._faiss()

        dim = vectors.shape[1] if vectors.ndim == 2 else 0
        try:
            index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexArtifactError(f"invalid FAISS factory string {factory!r}: {exc}") from exc
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        inner = faiss.downcast_index(index.index)
        if hasattr(inner, "do_polysemous_training"):
            # On by default for PQ: minutes of training for Hamming-filtered search Catalens never uses.
            inner.do_polysemous_training = False
        if not index.is_trained and len(vectors):
            sample = vectors
            if train_size is not None and len(vectors) > train_size:
                pick = np.random.default_rng(seed).choice(len(vectors), size=train_size, replace=False)
                sample = vectors[np.sort(pick)]
            index.train(sample)
        # Search-time knobs are saved with the index. Both values reach recall@10 >= 0.95 on
        # 1M x 512 clustered vectors in `catalens bench ann` (README): efSearch 128 -> 0.967,
        # nprobe 16 of 1024 lists -> 0.98 (faiss's own default, nprobe 1, gave 0.82).
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = HNSW_EF_SEARCH
        elif hasattr(inner, "nprobe"):
            inner.nprobe = min(IVF_NPROBE, int(inner.nlist))
        cls._ensure_direct_map(inner)
        if len(vectors):
            index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        return cls(index)

    @staticmethod
    def _ensure_direct_map(inner: Any) -> None:
        """IVF rows can be reconstructed only through a direct map (row -> list slot); saved with the index.

        Not for IVF fast-scan: in faiss 1.15 reconstructing from one that was saved and
        loaded with a direct map crashes the process (its filtered search needs none).
        """
        faiss = FaissIndex._faiss()

        ivf = faiss.try_extract_index_ivf(inner)  # also under a pre-transform (PCA, OPQ)
        if ivf is None:
            return
        ivf = faiss.downcast_index(ivf)
        if not isinstance(ivf, faiss.IndexIVFFastScan) and ivf.direct_map.type == faiss.DirectMap.NoMap:
            ivf.make_direct_map()

    @classmethod
    def load(cls, path: Path) -> FaissIndex:
        faiss = FaissIndex._faiss()

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexArtifactError(f"cannot read index file {path}: {exc}") from exc
        if hasattr(index, "index"):  # versions built before IVF indexes kept a direct map
            cls._ensure_direct_map(faiss.downcast_index(index.index))
        return cls(index)

    def save(self, path: Path) -> None:
        """Stream the index through Python file I/O, then fsync.

        A full disk then raises OSError(ENOSPC) here; faiss' own file writer reports a
        failed final flush only on stderr, leaving a silently truncated file.
        """
        faiss = FaissIndex._faiss()

        with open(path, "wb") as fh:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(fh.write))
            fh.flush()
            os.fsync(fh.fileno())

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

    def search_filtered(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best k among the allowed ids only (ids not in the index are ignored), best first.

        Every row holds exactly min(k, number of allowed ids in the index) results: no -1.
        """
        faiss = FaissIndex._faiss()

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        rows, id_of_row = self._rows_of(allowed)
        k = min(k, len(rows))
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        inner = faiss.downcast_index(self.index.index)
        found = None
        if len(rows) * self.dim <= self.GATHER_FLOATS:
            try:
                scores, found = self._exact_gather(inner, queries, k, rows)
            except RuntimeError:  # rows that cannot be reconstructed (IVF fast-scan): the index's own search
                found = None
        if found is None:
            scores, found = self._filtered_search(inner, queries, k, rows)
        return scores, id_of_row[found]

    def _filtered_search(self, inner: Any, queries: np.ndarray, k: int,
                         rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's own search of the inner index, restricted by a selector over rows; never short."""
        faiss = FaissIndex._faiss()

        sel = self._selector(rows)
        try:
            if isinstance(inner, faiss.IndexHNSW):
                scores, found = self._hnsw_search(inner, queries, k, rows, sel)
            elif isinstance(inner, faiss.IndexIVF):
                scores, found = self._ivf_search(inner, queries, k, rows, sel)
            else:  # Flat and the other exhaustive indexes: exact with the selector
                scores, found = inner.search(queries, k, params=faiss.SearchParameters(sel=sel))
        except RuntimeError:  # an index type without selector support: score the rows ourselves
            return self._exact_gather(inner, queries, k, rows)
        if (found >= 0).all():
            return scores, found
        return self._exact_gather(inner, queries, k, rows)

    def _hnsw_search(self, inner: Any, queries: np.ndarray, k: int, rows: np.ndarray,
                     sel: Any) -> tuple[np.ndarray, np.ndarray]:
        """The graph walk with the selector where it finds the matches, else exact search of the allowed rows.

        The walk keeps its efSearch best candidates, matching or not, and returns the matching
        ones: where too few of the vectors around the query match (a narrow filter, or a
        broad one that excludes the query's neighbourhood, as a category filter does) it
        comes back short or misses matches. So it runs only if >= HNSW_MIN_SELECTIVITY of all
        vectors, and of the unfiltered walk's candidates for every query, pass.
        """
        faiss = FaissIndex._faiss()

        scores = np.full((len(queries), k), -np.inf, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        ef = max(int(inner.hnsw.efSearch), k)
        walk = np.zeros(len(queries), bool)
        if len(rows) >= self.HNSW_MIN_SELECTIVITY * self.ntotal:
            _, near = inner.search(queries, ef, params=faiss.SearchParametersHNSW(efSearch=ef))
            inside = np.zeros(self.ntotal + 1, bool)  # last slot: the -1 of a short answer
            inside[rows] = True
            walk = inside[near].mean(axis=1) >= self.HNSW_MIN_SELECTIVITY
        for _ in range(1 + self.HNSW_EF_RETRIES):
            if not walk.any():
                break
            scores[walk], found[walk] = inner.search(queries[walk], k,
                                                     params=faiss.SearchParametersHNSW(sel=sel, efSearch=ef))
            walk &= (found < 0).any(axis=1)  # came back short: again with a deeper walk
            ef *= 4
        exact = (found < 0).any(axis=1)
        if exact.any() and len(rows) * self.dim <= self.GATHER_CHUNK_FLOATS:  # one chunk: cheaper than a scan
            scores[exact], found[exact] = self._exact_gather(inner, queries[exact], k, rows)
        elif exact.any():  # every stored vector tested against the selector, allowed ones scored
            storage = faiss.downcast_index(inner.storage)
            scores[exact], found[exact] = storage.search(queries[exact], k, params=faiss.SearchParameters(sel=sel))
        return scores, found

    def _ivf_search(self, inner: Any, queries: np.ndarray, k: int, rows: np.ndarray,
                    sel: Any) -> tuple[np.ndarray, np.ndarray]:
        """Probe the nearest lists until they hold allowed vectors in nprobe lists and IVF_CANDIDATES x k of them.

        Unfiltered, nprobe lists are searched; filtered, lists without an allowed vector add
        nothing (their codes cost one selector test each). So the probe goes on until nprobe
        lists with allowed vectors are in, as deep in the allowed subset as an unfiltered
        search goes in the whole index, and until they hold IVF_CANDIDATES allowed vectors
        per result (all of them, if fewer: then the search is exact), never short.
        """
        faiss = FaissIndex._faiss()

        nlist, nprobe = int(inner.nlist), max(1, int(inner.nprobe))
        per_list = np.bincount(self._list_of_row(inner)[rows], minlength=nlist)
        _, order = inner.quantizer.search(queries, min(nlist, max(256, 16 * nprobe)))  # nearest lists first
        held = per_list[np.maximum(order, 0)] * (order >= 0)
        enough_lists = min(nprobe, int((per_list > 0).sum()))
        enough_rows = min(len(rows), self.IVF_CANDIDATES * k)
        deep_enough = (np.cumsum(held > 0, axis=1) >= enough_lists) & (np.cumsum(held, axis=1) >= enough_rows)
        nprobe = int(np.where(deep_enough.any(axis=1), deep_enough.argmax(axis=1) + 1, nlist).max())
        while True:
            scores, found = inner.search(queries, k, params=faiss.SearchParametersIVF(sel=sel, nprobe=nprobe))
            if (found >= 0).all() or nprobe >= nlist:  # every list probed: exhaustive
                return scores, found
            nprobe = min(nlist, nprobe * 4)  # a quantizer whose order differs between searches

    def _list_of_row(self, ivf: Any) -> np.ndarray:
        """The inverted list of every row of an IVF index (cached while ntotal is unchanged)."""
        faiss = FaissIndex._faiss()

        cache = self._lists
        if cache is not None and cache[0] == self.ntotal:
            return cache[1]
        if ivf.direct_map.type == faiss.DirectMap.Array:
            lists = faiss.vector_to_array(ivf.direct_map.array) >> 32  # (list << 32) | offset
        else:
            lists = np.zeros(self.ntotal, np.int64)
            invlists = ivf.invlists
            for no in range(int(ivf.nlist)):
                size = int(invlists.list_size(no))
                if size:
                    ptr = invlists.get_ids(no)
                    lists[faiss.rev_swig_ptr(ptr, size)] = no
                    invlists.release_ids(no, ptr)
        self._lists = (self.ntotal, lists)
        return lists

    def _selector(self, rows: np.ndarray) -> Any:
        faiss = FaissIndex._faiss()

        if len(rows) * self.BATCH_SELECTOR_RATIO < self.ntotal:
            return faiss.IDSelectorBatch(rows)
        mask = np.zeros(self.ntotal, bool)
        mask[rows] = True
        # IDSelectorBitmap tests bit (i & 7) of byte i >> 3: little-endian bit order.
        return faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))

    def _exact_gather(self, inner: Any, queries: np.ndarray, k: int,
                      rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruct the rows (in bounded chunks) and rank them by inner product: exact on the stored codes.

        faiss.knn, not a numpy matmul: numpy's multithreaded BLAS took 16-24 ms for a
        single 10k x 64 product on a loaded 2-core machine, faiss's scan 0.05 ms.
        """
        faiss = FaissIndex._faiss()

        parts_s, parts_i = [], []
        step = max(1, self.GATHER_CHUNK_FLOATS // max(self.dim, 1))
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            vectors = inner.reconstruct_batch(chunk)
            scores, at = faiss.knn(queries, vectors, min(k, len(chunk)), metric=faiss.METRIC_INNER_PRODUCT)
            parts_s.append(scores)
            parts_i.append(chunk[at])
        scores, found = np.concatenate(parts_s, axis=1), np.concatenate(parts_i, axis=1)
        if len(parts_s) > 1:
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores, found = np.take_along_axis(scores, top, axis=1), np.take_along_axis(found, top, axis=1)
        return scores, found

    def _rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inner-index rows of the given ids, unique, ids not in the index dropped; the id of every row)."""
        faiss = FaissIndex._faiss()

        cache = self._rows
        if cache is None or cache[0] != self.ntotal:
            id_of_row = faiss.vector_to_array(self.index.id_map).astype(np.int64, copy=False)
            order = np.argsort(id_of_row, kind="stable")
            cache = self._rows = (self.ntotal, id_of_row, id_of_row[order], order)
        _, id_of_row, sorted_ids, row_of_sorted = cache
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            ids = np.unique(ids)
        if not len(ids) or not len(sorted_ids):
            return np.zeros(0, np.int64), id_of_row
        at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return row_of_sorted[at[sorted_ids[at] == ids]], id_of_row

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return self.index.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def ids(self) -> np.ndarray:
        faiss = FaissIndex._faiss()

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
    images_root: str = ""  # where relative image paths resolved; images are re-read only inside it
    watermark: int = 0  # the last live change (catalens.changes seq) this version holds

    def image_folder(self) -> Path | None:
        """The folder this version's image files may be re-read from (beside CATALENS_IMAGE_ROOTS)."""
        root = self.images_root or (str(Path(self.catalog).parent) if self.catalog else "")
        return Path(root) if root else None


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


class _PlainWriter:
    """A file seen by numpy as a plain writable object, so it writes in chunks via write()."""

    def __init__(self, fh: Any) -> None:
        self.write = fh.write


def write_version_files(staging: Path, *, manifest: Manifest, images: FaissIndex, texts: FaissIndex,
                        rerank: tuple[np.ndarray, np.ndarray] | None = None, written: tuple[str, ...] = ()) -> None:
    """Write index files and, last, the manifest with their checksums (and those of the files the
    caller `written` into staging already); fsync everything."""
    staging.mkdir(parents=True, exist_ok=True)
    for name in written:
        manifest.files[name] = file_sha256(staging / name)
    for name, index in ((IMAGE_INDEX, images), (TEXT_INDEX, texts)):
        index.save(staging / name)  # fsynced
        manifest.files[name] = file_sha256(staging / name)
    if rerank is not None:
        ids, features = rerank
        order = np.argsort(ids)  # sorted ids: lookups by binary search
        for name, array in ((RERANK_IDS, ids[order]), (RERANK_FEATURES, features[order])):
            with open(staging / name, "wb") as fh:
                # Through fh.write, not numpy's fwrite fast path: a full disk then raises
                # OSError(ENOSPC) instead of an errno-less "N requested and M written".
                np.save(_PlainWriter(fh), array, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            manifest.files[name] = file_sha256(staging / name)
    atomic_write_text(staging / MANIFEST, json.dumps(asdict(manifest), indent=2))


def promote_staging(index_dir: Path, version_id: str, src: Path | None = None) -> Path:
    """Move a complete staging folder (default staging/<id>) into versions/ (same filesystem: an atomic rename)."""
    src = src or staging_dir(index_dir, version_id)
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
    if manifest.format_version < FORMAT_VERSION:
        raise IndexArtifactError(
            f"index version {manifest.version_id} was built by an older Catalens (format {manifest.format_version}, "
            f"this one reads {FORMAT_VERSION}: a version now holds its products); "
            "build a new one from the catalog of record with `catalens index rebuild`")
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


@dataclass(frozen=True)
class ActiveState:
    """What queries read: a version, and the live changes after since_seq over it."""

    version_id: str
    since_seq: int


def read_active_state(index_dir: Path) -> ActiveState | None:
    try:
        data = json.loads((index_dir / ACTIVE).read_text())
        return ActiveState(str(data["version_id"]), int(data.get("since_seq", 0)))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise IndexArtifactError(f"{index_dir / ACTIVE} is unreadable: {exc}") from exc


def read_active(index_dir: Path) -> str | None:
    state = read_active_state(index_dir)
    return state.version_id if state else None


def set_active(index_dir: Path, version_id: str, *, since_seq: int) -> None:
    """Make a version (and the live changes after since_seq) what queries read: one atomic rename."""
    if not (versions_dir(index_dir) / version_id / MANIFEST).is_file():
        raise IndexArtifactError(f"no complete index version {version_id!r} in {versions_dir(index_dir)}")
    atomic_write_text(index_dir / ACTIVE, json.dumps({"version_id": version_id, "since_seq": since_seq}))


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


# --- disk space ------------------------------------------------------------------------------

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RESERVE = ".reserve"  # in staging/, so whatever removes staging frees it
RESERVE_BYTES = 1 << 20


def reserve_space(index_dir: Path, nbytes: int = RESERVE_BYTES) -> None:
    """Set aside room a failed build frees (with staging/) to record its failure when the disk is full."""
    path = index_dir / "staging" / RESERVE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(bytes(nbytes))  # real blocks, not a sparse file
        fh.flush()
        os.fsync(fh.fileno())


def version_bytes(version_path: Path) -> int:
    """Bytes the files of one version folder take."""
    return sum(p.stat().st_size for p in version_path.iterdir() if p.is_file())


def check_free_space(index_dir: Path, min_free_bytes: int, *, new_version: bool = True) -> None:
    """Preflight of a change: room for min_free_bytes plus, for a build, a new version as large as
    the active one (a live edit writes a few pages, not a version).

    Raises InsufficientStorageError (507) before anything is written; min_free_bytes 0 turns it off.
    """
    if min_free_bytes <= 0:
        return
    try:
        estimate = version_bytes(active_version_path(index_dir)) if new_version else 0
    except (CatalensError, OSError):
        estimate = 0  # no (readable) active version yet: the first build
    free = shutil.disk_usage(index_dir).free
    if free < min_free_bytes + estimate:
        raise InsufficientStorageError(
            f"not enough free disk space for a {'build' if new_version else 'change'} in {index_dir}: {free:,} bytes free, "
            f"{min_free_bytes + estimate:,} needed ({estimate:,} for a new version the size of the active one "
            f"+ CATALENS_MIN_FREE_BYTES {min_free_bytes:,}); the active index was not changed")


def is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """Whether an error, or one it was raised from, means the disk is full.

    ENOSPC / EDQUOT from any file write, SQLITE_FULL from the database (also when wrapped
    by SQLAlchemy), or a faiss writer error carrying the ENOSPC message. Given the path, an
    I/O error on a disk with no free space left counts too (SQLite reports a failed -shm
    allocation as a plain "disk I/O error").
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    io_error = False
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        io_error = io_error or isinstance(err, (OSError, sqlite3.OperationalError))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(err, sqlite3.Error) and (
                getattr(err, "sqlite_errorcode", None) == getattr(sqlite3, "SQLITE_FULL", 13)
                or "database or disk is full" in str(err)):
            return True
        if isinstance(err, RuntimeError) and os.strerror(errno.ENOSPC) in str(err):
            return True
        orig = getattr(err, "orig", None)  # SQLAlchemy's DBAPIError wraps the driver's error
        stack += [err.__cause__, err.__context__, orig if isinstance(orig, BaseException) else None]
    if io_error and path is not None:
        try:
            return shutil.disk_usage(path).free == 0
        except OSError:
            return False
    return False
