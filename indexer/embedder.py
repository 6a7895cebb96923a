"""Embed stage: planned images and texts -> reader threads -> the models -> the embedding caches.

Only what the caches miss reaches a model: CLIP vectors, the reranker's stored features and,
when asked for, captions. Each image's outcome (ok, or its error) is recorded per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalens.db import Sessions
from catalens.encoder import ClipEncoder
from catalens.onnx_encoder import OnnxClipEncoder
from catalens.reranker import Reranker
from catalens.schema import IngestError, ProductImage
from indexer.embedding_cache import BackgroundWriter, Caches, EmbeddingCache
from indexer.reader import ImageJob, ImageReader, LoadedImage


@dataclass
class EmbedCounts:
    """What the embed stage did; the runner copies it into the build summary."""

    images_ok: int = 0
    images_failed: int = 0
    embedded: int = 0  # images run through the model
    cached: int = 0  # images whose vector came from the embedding cache (no model time)
    texts_embedded: int = 0
    error_lines: list[str] = field(default_factory=list)


@dataclass
class Embedder:
    """Wraps the encoder for the pipeline; `calls`/`items` let tests prove what was re-embedded."""

    encoder: ClipEncoder
    reranker: Reranker | None = None  # when its image features are stored
    onnx: OnnxClipEncoder | None = None  # the same CLIP (and one-pass features) on ONNX Runtime (CATALENS_RUNTIME)
    calls: int = 0
    items: int = 0

    @property
    def runtime(self) -> str:
        return "torch" if self.onnx is None else "onnx"

    def embed_pixels(self, pixels: list[Any]) -> np.ndarray:
        import torch

        self.calls += 1
        self.items += len(pixels)
        batch = torch.stack(pixels)
        return self.encoder.encode_pixels(batch) if self.onnx is None else self.onnx.encode_pixels(batch.numpy())

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.items += len(texts)
        return (self.onnx or self.encoder).encode_texts(texts)

    def embed_pixels_with_features(self, pixels: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """CLIP vectors and the reranker's features from one vision pass, when it reads this CLIP."""
        import torch

        if self.reranker is None:
            return None
        if self.onnx is not None:
            if self.onnx.image_pass is None:
                return None
            self.calls += 1
            self.items += len(pixels)
            return self.onnx.vectors_and_features(torch.stack(pixels).numpy())
        both = self.reranker.features_with_vectors(self.encoder, torch.stack(pixels))
        if both is not None:
            self.calls += 1
            self.items += len(pixels)
        return both

    def separate_rerank_preprocess(self) -> Any:
        """The reranker's own preprocess when it does not read this CLIP's pixels, else None."""
        if self.reranker is None or self.reranker.reads_pixels_of(self.encoder):
            return None
        return self.reranker.preprocess

    def rerank_features(self, pixels: list[Any]) -> np.ndarray:
        """The reranker's stored image features (fp16), from its own preprocessed pixels."""
        import torch

        if self.reranker is None:
            raise ValueError("no reranker to compute features with")
        self.calls += 1
        return self.reranker.image_features(torch.stack(pixels))

    def captions(self, pixels: list[Any]) -> list[str]:
        import torch

        if self.reranker is None:
            raise ValueError("no reranker to caption with")
        self.calls += 1
        return self.reranker.caption(torch.stack(pixels))


def _batches(items: list[ImageJob], size: int) -> Iterator[list[ImageJob]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def embed_images(jobs: list[ImageJob], reader: ImageReader, embedder: Embedder, caches: Caches, *,
                 sessions: Sessions, version_id: str, counts: EmbedCounts, batch_size: int, workers: int,
                 progress: bool) -> None:
    """Read + decode in worker threads one batch ahead of the model; each batch's shards and image
    records written on a writer thread, off the model loop (bench index: the loop waited on them)."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="embedding images", unit="img", disable=not progress)
    writer = BackgroundWriter()
    try:
        with ThreadPoolExecutor(workers) as pool, contextlib.ExitStack() as writes:
            for cache in (caches.vectors, caches.features):
                if cache is not None:
                    writes.enter_context(cache.writes_on(writer))
            batches = list(_batches(jobs, batch_size))
            # One batch ahead: decoding two ahead competed with the model for the cores (bench index:
            # 193 against 223 images/s end to end).
            pending = pool.map(reader, batches[0]) if batches else iter(())
            for i in range(len(batches)):
                loaded = list(pending)
                if i + 1 < len(batches):
                    pending = pool.map(reader, batches[i + 1])  # decode the next batch during inference
                _embed_loaded(loaded, embedder, caches, counts)
                # After the batch's shards (one writer thread, in order): a recorded image has its vector.
                writer.submit(_record_images, sessions, loaded, version_id, counts)
                bar.update(len(loaded))
    finally:
        writer.close()
    bar.close()


def _embed_loaded(loaded: list[LoadedImage], embedder: Embedder, caches: Caches, counts: EmbedCounts) -> None:
    """Run only what is missing through the models: CLIP vectors, reranker features, captions."""
    decoded = [item for item in loaded if item.pixels is not None]
    for item in loaded:
        if item.error:
            counts.images_failed += 1
        else:
            counts.images_ok += 1
    todo = [item for item in decoded if f"img:{item.content_hash}" not in caches.vectors]
    counts.cached += sum(1 for item in loaded if not item.error) - len(todo)
    feats = [item for item in decoded if f"rr:{item.content_hash}" not in caches.features] \
        if caches.features is not None else []
    same = todo and [id(item) for item in feats] == [id(item) for item in todo]
    both = embedder.embed_pixels_with_features([item.pixels for item in todo]) if same else None
    if both is not None and caches.features is not None:  # the reranker reads this CLIP: one vision pass
        caches.vectors.put_many([f"img:{item.content_hash}" for item in todo], both[0])
        caches.features.put_many([f"rr:{item.content_hash}" for item in todo], both[1])
        counts.embedded += len(todo)
        feats = []
    elif todo:
        vectors = embedder.embed_pixels([item.pixels for item in todo])
        caches.vectors.put_many([f"img:{item.content_hash}" for item in todo], vectors)
        counts.embedded += len(todo)
    if caches.features is not None:
        if feats:
            pixels = [item.rerank_pixels if item.rerank_pixels is not None else item.pixels for item in feats]
            caches.features.put_many([f"rr:{item.content_hash}" for item in feats], embedder.rerank_features(pixels))
    captions = [item for item in decoded if item.needs_caption]
    if captions:
        pixels = [item.rerank_pixels if item.rerank_pixels is not None else item.pixels for item in captions]
        for item, text in zip(captions, embedder.captions(pixels)):
            item.caption = text
    for item in decoded:
        item.pixels = item.rerank_pixels = None


def _record_images(sessions: Sessions, loaded: list[LoadedImage], version_id: str, counts: EmbedCounts) -> None:
    with sessions.begin() as session:
        for item in loaded:
            img = session.get(ProductImage, item.image_id)
            if img is None:
                continue
            img.content_hash, img.thumbnail = item.content_hash, item.thumbnail
            if item.caption is not None:
                img.caption = item.caption
            img.status, img.error = ("error", f"{item.error_code}: {item.error}") if item.error else ("ok", None)
            if item.error:
                session.add(IngestError(version_id=version_id, source_file=img.source, row=None,
                                        product_id=img.product.product_id, field="image",
                                        code=item.error_code or "image_error", message=item.error))
                counts.error_lines.append(f"{img.source} [{img.product.product_id}]: "
                                           f"{item.error_code or 'image_error'}: {item.error}")


def embed_texts(todo: dict[str, str], embedder: Embedder, cache: EmbeddingCache, counts: EmbedCounts, *,
                batch_size: int) -> None:
    """Embed the planned product texts ({text hash: text}) into the cache, in batches."""
    keys = list(todo)
    for i in range(0, len(keys), batch_size):
        chunk = keys[i:i + batch_size]
        cache.put_many([f"txt:{k}" for k in chunk], embedder.embed_texts([todo[k] for k in chunk]))
        counts.texts_embedded += len(chunk)
