"""One settings object for every process; read from CATALENS_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "catalens-demo"


def set_threads(threads: int) -> None:
    """Torch and FAISS threads, set explicitly (never left to the libraries' defaults, which
    oversubscribe a small machine: FAISS's default made a batch reconstruct 100x slower here).
    Torch only if something imported it: a query served by ONNX Runtime never does."""
    import sys

    import faiss

    faiss.omp_set_num_threads(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


class Settings(BaseSettings):
    """Runtime configuration; pass it down, never read the environment elsewhere."""

    model_config = SettingsConfigDict(env_prefix="CATALENS_", extra="ignore")

    index_dir: Path = Field(default=Path("catalens-data"), description="where versions and the DB live")
    database_url: str | None = Field(default=None, description="the catalog of record: sqlite:///FILE or "
                                     "postgresql+psycopg://user@host:port/db (default: SQLite in index_dir)")
    vector_store: str = Field(default="faiss", description="where search reads vectors: faiss (files in each "
                              "index version) or milvus://host:19530[/database] (a collection per version)")
    engine_timeout_s: float = Field(default=5.0, gt=0, le=120, description="how long a request waits for "
                                    "PostgreSQL or Milvus before answering 503")
    model: str = DEFAULT_MODEL
    pretrained: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    runtime: Literal["auto", "torch", "onnx"] = Field(
        default="auto", description="CLIP runtime of queries and of the indexer's image and text passes: onnx "
        "(ONNX Runtime; a query imports no torch), torch, or auto (whichever the export's measurement found faster "
        "on this machine: a one-text and a one-image query for serving, a batch of 32 images for indexing)")
    onnx_int8: bool = Field(default=False, description="serve the ONNX towers with int8 weights (dynamic "
                            "quantization; see the README for what it costs in recall)")
    onnx_dir: Path | None = Field(default=None, description="exported ONNX towers, per model "
                                  "(default: $XDG_CACHE_HOME/catalens/onnx)")
    threads: int = Field(default=0, ge=0, description="torch/FAISS threads; 0 = all cores / workers")
    batch_size: int = Field(default=64, ge=1, le=4096)
    decode_workers: int = Field(default=2, ge=1, le=64)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    max_fetch_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="cap on every image read: URL or file")
    max_aspect_ratio: float = Field(default=20.0, ge=1, description="longest side / shortest side an image may have")
    image_roots: list[Path] = Field(default_factory=list, description="folders image paths may point into, "
                                    "beside the catalog's own images root")
    url_allow: list[str] = Field(default_factory=list, description="hosts or CIDRs image URLs may reach even "
                                 "though they are loopback, private, link-local or reserved")
    max_json_bytes: int = Field(default=1024 * 1024, ge=1, description="body limit of JSON search requests")
    max_admin_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1, description="body limit of admin requests")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed by CORS; empty = CORS off")
    max_error_ratio: float = Field(default=0.5, ge=0, le=1, description="refuse to publish above this")
    thumbnail_px: int = Field(default=192, ge=32, le=1024)
    text_cache_size: int = Field(default=4096, ge=0)
    api_key: str | None = None
    reranker: str = Field(default="catalens-itm", description="second stage: bundled name, 'blip:<id>', "
                          "'coca:<model>@<pretrained>' or 'none'")
    describe: Literal["off", "missing"] = Field(default="off", description="missing: builds write a generated "
                                                "description for products without one (as index build --describe)")
    rerank_features: bool = Field(default=True, description="store the reranker's image features at index time")
    rerank_top_n: int = Field(default=20, ge=1, le=100, description="candidates the reranker reads by default")
    rerank_budget_ms: float = Field(default=500.0, gt=0, description="past it, the first-stage order is returned")
    rerank_weight: float = Field(default=20.0, ge=0, le=1000,
                                 description="final score = logit(rerank score) + w * first-stage score (0: reranker only)")

    search_mode: Literal["hybrid", "vector", "keyword"] = Field(
        default="hybrid", description="text search: keyword (BM25) and vector rankings fused, or one of them")
    fusion: Literal["rrf", "rsf"] = Field(default="rsf", description="how hybrid fuses the two rankings: reciprocal "
                                          "rank fusion or relative score fusion (min-max scaled scores)")
    rrf_k: float = Field(default=60.0, gt=0, description="the RRF constant: score = sum of weight / (k + rank)")
    vector_weight: float = Field(default=1.0, ge=0, le=100, description="weight of the vector ranking in hybrid")
    keyword_weight: float = Field(default=0.05, ge=0, le=100, description="weight of the keyword ranking in hybrid")
    facet_weights: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(
        default={"category": 3.0, "pattern": 0.5},
        description="text search orders hits by how far they are from the facet values a query names "
                    "(the version's lexicon), then by score: each column's weight (others 1, a secondary colour 0.5)")
    full_match_weight: float = Field(default=1.0, ge=0, le=100, description="hybrid: a product containing every "
                                     "query word gets this many first-place votes")
    fusion_depth: int = Field(default=50, ge=1, le=1000, description="candidates each ranking gives to fusion")
    match_threshold: float = Field(default=0.5, ge=0, le=1, description="a response has no_good_match when no "
                                   "result's match probability reaches this")

    compact_after: int = Field(default=10_000, ge=0, description="live changes after which the service folds them "
                               "into a new snapshot in the background (0: only `catalens index compact`)")
    admin_sync_limit: int = Field(default=100, ge=1, le=1000, description="admin batches larger than this run as a "
                                  "background job (202 with a job id)")
    live_poll_s: float = Field(default=0.25, gt=0, le=10, description="how often the service looks for live changes "
                               "and a new active version")

    log_level: str = Field(default="WARNING", description="logging level of the catalens command and service")
    bench_dir: Path | None = Field(default=None, description="cache for benchmark catalogs and indexes "
                                   "(default: $XDG_CACHE_HOME/catalens/bench)")
    min_free_bytes: int = Field(default=64 * 1024 * 1024, ge=0,
                                description="a build refuses to start (507) unless the index dir's disk has this much "
                                "free space beyond the size of the active version; 0 = no preflight")

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("sqlite://", "postgresql+psycopg://")):
            return value
        for plain in ("postgresql://", "postgres://"):
            if value.startswith(plain):  # SQLAlchemy's default PostgreSQL driver is psycopg2: name psycopg 3
                return "postgresql+psycopg://" + value.removeprefix(plain)
        raise ValueError(f"{value.split('://')[0]!r} is not a supported database: use sqlite:///FILE or "
                         "postgresql+psycopg://user@host:port/db")

    @field_validator("vector_store")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        if value == "faiss" or (value.startswith("milvus://") and len(value) > len("milvus://")):
            return value
        raise ValueError(f"{value!r} is not a vector store: use faiss or milvus://host:port")

    @property
    def milvus(self) -> bool:
        return self.vector_store.startswith("milvus://")

    @field_validator("index_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.index_dir / 'catalens.db').resolve()}"

    def bench_cache(self) -> Path:
        """Where benchmarks keep generated catalogs and indexes between runs."""
        if self.bench_dir is not None:
            return self.bench_dir.expanduser()
        import os

        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "catalens" / "bench"

    def onnx_cache(self) -> Path:
        """Where exported ONNX towers are kept, one folder per model."""
        if self.onnx_dir is not None:
            return self.onnx_dir.expanduser()
        import os

        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "catalens" / "onnx"

    def torch_threads(self, workers: int = 1) -> int:
        """Threads per worker so that workers x threads never exceeds the cores."""
        import os

        if self.threads:
            return self.threads
        return max(1, (os.cpu_count() or 1) // max(1, workers))
