"""Reader stage: image reference -> bytes -> content hash -> decoded, preprocessed tensor + thumbnail."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalens.config import Settings
from catalens.errors import CatalensError
from catalens.images import content_hash, decode_image, read_image_source


@dataclass
class ImageJob:
    image_id: int
    source: str
    needs_caption: bool = False


@dataclass
class LoadedImage:
    """The outcome for one image: a tensor to embed, a cache hit, or an error with its reason."""

    image_id: int
    content_hash: str | None = None
    pixels: Any = None
    rerank_pixels: Any = None  # only when the reranker preprocesses differently from the CLIP
    needs_caption: bool = False
    caption: str | None = None
    thumbnail: str | None = None
    error_code: str | None = None
    error: str | None = None


class ImageReader:
    """Reads, hashes and decodes images; skips decoding when the cache already has the vector.

    Every read goes through the source policy: URLs under CATALENS_URL_ALLOW's SSRF rules, paths
    confined to `roots` (None: unconfined, for benchmarks over trusted files), all capped.
    """

    def __init__(self, settings: Settings, *, images_root: Path | None, preprocess: Any,
                 image_size: int, is_cached: Any, rerank_preprocess: Any = None,
                 roots: Sequence[Path] | None = None) -> None:
        self.settings = settings
        self.images_root = images_root
        self.roots = tuple(roots) if roots is not None else None
        self.preprocess = preprocess
        self.rerank_preprocess = rerank_preprocess
        self.image_size = image_size
        self.is_cached = is_cached
        self.thumb_root = settings.index_dir / "thumbnails"

    def __call__(self, job: ImageJob) -> LoadedImage:
        out = LoadedImage(job.image_id, needs_caption=job.needs_caption)
        try:
            data = read_image_source(job.source, images_root=self.images_root,
                                     timeout_s=self.settings.fetch_timeout_s,
                                     max_bytes=self.settings.max_fetch_bytes, roots=self.roots,
                                     url_allow=self.settings.url_allow)
            out.content_hash = content_hash(data)
            thumb_rel = f"{out.content_hash[:2]}/{out.content_hash}.jpg"
            out.thumbnail = thumb_rel
            need_thumb = not (self.thumb_root / thumb_rel).is_file()
            cached = self.is_cached(out.content_hash)
            if cached and not need_thumb and not job.needs_caption:
                return out
            draft = max(self.image_size, self.settings.thumbnail_px)
            image = decode_image(data, max_pixels=self.settings.max_image_pixels, draft_size=draft,
                                 max_aspect=self.settings.max_aspect_ratio)
            if need_thumb:
                self._save_thumbnail(image, thumb_rel)
            if not cached or job.needs_caption:
                out.pixels = self.preprocess(image)
                if self.rerank_preprocess is not None:
                    out.rerank_pixels = self.rerank_preprocess(image)
        except CatalensError as exc:
            out.error_code, out.error = exc.code, exc.message
        return out

    def _save_thumbnail(self, image: Any, rel: str) -> None:
        path = self.thumb_root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        thumb = image.copy()
        thumb.thumbnail((self.settings.thumbnail_px, self.settings.thumbnail_px))
        # Decode threads can read the same image for two products at once: a temp file of their own
        # each; the name is the content's hash, so either rename leaves the same thumbnail.
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        thumb.save(tmp, format="JPEG", quality=85)
        tmp.replace(path)
