"""The typed errors of Catalens; each knows its stable code and HTTP status."""

from __future__ import annotations


class CatalensError(Exception):
    """Base of every error Catalens raises on purpose."""

    code = "catalens_error"
    http_status = 500
    retry_after_s: int | None = None  # set on errors a client should retry (sent as Retry-After)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(CatalensError):
    code, http_status = "invalid_input", 422


class NotFoundError(CatalensError):
    code, http_status = "not_found", 404


class UnsupportedImageError(CatalensError):
    """The bytes are not an image we can decode (format, corruption, truncation)."""

    code, http_status = "unsupported_image", 415


class PayloadTooLargeError(CatalensError):
    """Too many bytes or too many pixels (decompression bomb)."""

    code, http_status = "payload_too_large", 413


class ImageFetchError(CatalensError):
    code, http_status = "image_fetch_failed", 422


class ImageSourceRefusedError(CatalensError):
    """An image reference the source policy forbids: a path outside the image roots, an
    internal address (SSRF), a device or FIFO."""

    code, http_status = "image_source_refused", 422


class UnauthorizedError(CatalensError):
    code, http_status = "unauthorized", 401


class ForbiddenError(CatalensError):
    """A wrong API key, or an admin route called while admin routes are off."""

    code, http_status = "forbidden", 403


class IndexNotReadyError(CatalensError):
    code, http_status = "index_not_ready", 503
    retry_after_s = 5


class IndexArtifactError(CatalensError):
    """An index version on disk is missing, corrupt or does not match its manifest."""

    code, http_status = "index_artifact_error", 503
    retry_after_s = 30


class ModelLoadError(CatalensError):
    code, http_status = "model_load_failed", 500


class CatalogError(CatalensError):
    """The catalog file as a whole cannot be read (missing, wrong format, no required column)."""

    code, http_status = "catalog_error", 422


class BuildLockedError(CatalensError):
    code, http_status = "build_locked", 409


class PublishRefusedError(CatalensError):
    """A build that must not become active (too many bad images, nothing indexed, failed smoke query)."""

    code, http_status = "publish_refused", 422


class CaptionUnsupportedError(CatalensError):
    code, http_status = "caption_unsupported", 422


class DatabaseError(CatalensError):
    """The metadata database cannot be opened, is malformed, or is busy past its timeout."""

    code, http_status = "database_error", 503
    retry_after_s = 5


class DatabaseUnavailableError(DatabaseError):
    """The database server cannot be reached (down, restarting, network); retry later."""

    code, http_status = "database_unavailable", 503
    retry_after_s = 5


class VectorStoreUnavailableError(CatalensError):
    """The vector store (Milvus) cannot be reached or did not answer within its timeout; retry later."""

    code, http_status = "vector_store_unavailable", 503
    retry_after_s = 5


class ConfigError(CatalensError):
    """A setting that cannot work (a URL with an unknown scheme, say): refused at start."""

    code, http_status = "config_error", 500


class BenchError(CatalensError):
    code, http_status = "bench_failed", 500


class InsufficientStorageError(CatalensError):
    """The disk holding the index is (nearly) full: refused before a build, or ENOSPC during one."""

    code, http_status = "insufficient_storage", 507


class DatabaseBusyError(DatabaseError):
    """A write waited past SQLite's busy_timeout for another writer's lock; retry later."""

    code, http_status = "database_busy", 503
    retry_after_s = 1  # for a Retry-After header
