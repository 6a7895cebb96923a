"""Embedder stage: batches of preprocessed images or texts -> vectors, counting model calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from catalens.encoder import ClipEncoder


@dataclass
class Embedder:
    """Wraps the encoder for the pipeline; `calls`/`items` let tests prove what was re-embedded."""

    encoder: ClipEncoder
    reranker: Any = None  # a catalens.reranker.Reranker when its image features are stored
    calls: int = 0
    items: int = 0

    def embed_pixels(self, pixels: list[Any]) -> np.ndarray:
        import torch

        self.calls += 1
        self.items += len(pixels)
        return self.encoder.encode_pixels(torch.stack(pixels))

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.items += len(texts)
        return self.encoder.encode_texts(texts)

    def embed_pixels_with_features(self, pixels: list[Any]) -> tuple[np.ndarray, np.ndarray] | None:
        """CLIP vectors and the bundled reranker's features from one vision pass, when it reads this CLIP."""
        import torch

        from catalens.itm import clip_image_embeddings_and_tokens

        if getattr(self.reranker, "clip", None) is not self.encoder or not self.reranker.reads_clip_tokens:
            return None
        batch = torch.stack(pixels).to(self.encoder.device)
        with torch.inference_mode():
            both = clip_image_embeddings_and_tokens(self.encoder.model, batch, self.reranker.head.config.token_layer)
        if both is None:
            return None
        self.calls += 1
        self.items += len(pixels)
        vectors, tokens = both
        return vectors.float().cpu().numpy(), self.reranker.image_features(batch, tokens)

    def rerank_features(self, pixels: list[Any]) -> np.ndarray:
        """The reranker's stored image features (fp16), from its own preprocessed pixels."""
        import torch

        self.calls += 1
        return self.reranker.image_features(torch.stack(pixels))

    def captions(self, pixels: list[Any]) -> list[str]:
        import torch

        self.calls += 1
        return self.reranker.caption(torch.stack(pixels))
