"""Second stage: a reranker reads the query against each first-stage candidate image.

Every reranker turns images into features once, at index time (stored fp16 beside the
FAISS files, memory-mapped by the service), and scores (query, features) pairs in one
batched forward pass, so a query never decodes a candidate image.
Implementations: the bundled ITM head on the bundled CLIP (`catalens-itm`), BLIP ITM
(`blip:<name or path>`, extra `catalens[blip]`) and open_clip CoCa caption likelihood
(`coca:<model>[@<pretrained>]`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from catalens.encoder import BUNDLED_DIR, ClipEncoder, ModelSpec, load_clip, weights_digest
from catalens.errors import CaptionUnsupportedError, ModelLoadError

LOG = logging.getLogger(__name__)
NO_RERANKER = "none"
PAIR_BATCH = 256


def scores_by_query(reranker: Reranker, queries: list[str], features: np.ndarray) -> np.ndarray:
    """score_pairs for rerankers that read one query at a time: one pass per distinct query."""
    out = np.zeros(len(queries), np.float32)
    slots: dict[str, list[int]] = {}
    for i, query in enumerate(queries):
        slots.setdefault(query, []).append(i)
    for query, at in slots.items():
        out[at] = reranker.score(query, features[at])
    return out


class Reranker(Protocol):
    """What the indexer and the searcher need from a second stage."""

    reranker_id: str  # name + weights digest: keys the feature cache and the manifest
    can_caption: bool

    def preprocess(self, image: Any) -> Any:
        """A decoded RGB image -> the tensor `image_features` takes (runs in reader threads)."""

    def reads_pixels_of(self, encoder: ClipEncoder) -> bool:
        """True when this reranker reads `encoder`'s own preprocessed pixels (the indexer decodes once)."""

    def image_pass(self, encoder: ClipEncoder) -> Any | None:
        """A torch module pixels -> (`encoder`'s normalised image vectors, this reranker's features): one
        vision pass for both, exportable to ONNX; None when the reranker does not read that CLIP's tokens."""

    def features_with_vectors(self, encoder: ClipEncoder, pixels: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """`encoder`'s image vectors and this reranker's features from ONE vision pass, or None when
        the reranker does not read that CLIP's tokens (then the indexer runs two passes)."""

    def image_features(self, pixels: Any) -> np.ndarray:
        """A batch of preprocessed images -> (N, T, D) float16 features, stored at index time."""

    def score(self, query: str, features: np.ndarray) -> np.ndarray:
        """One query against N candidates' stored features -> (N,) match scores in [0, 1]."""

    def score_pairs(self, queries: list[str], features: np.ndarray) -> np.ndarray:
        """N (query, features) pairs -> (N,) match scores (the calibration's thousand generated searches)."""

    def caption(self, pixels: Any) -> list[str]:
        """Generated captions for a batch of preprocessed images (if `can_caption`)."""


@dataclass
class BundledItmReranker:
    """The ITM head trained by `catalens train-model --kind itm` on a frozen bundled CLIP's text tower."""

    clip: ClipEncoder
    head: Any
    reranker_id: str
    can_caption: bool = False

    def preprocess(self, image: Any) -> Any:
        return self.clip.preprocess(image)

    def image_features(self, pixels: Any, clip_tokens: Any = None) -> np.ndarray:
        import torch

        from catalens.itm import itm_image_features

        with torch.inference_mode():
            tokens = itm_image_features(self.clip.model, self.head, pixels.to(self.clip.device), clip_tokens)
        return tokens.to(torch.float16).cpu().numpy()

    def reads_pixels_of(self, encoder: ClipEncoder) -> bool:
        return encoder is self.clip

    def image_pass(self, encoder: ClipEncoder) -> Any | None:
        from catalens.itm import ImagePass, pools_from_tokens, reads_clip_tokens

        if encoder is not self.clip or not (reads_clip_tokens(self.head) and pools_from_tokens(encoder.model)):
            return None
        return ImagePass(encoder.model, self.head).eval()

    def features_with_vectors(self, encoder: ClipEncoder, pixels: Any) -> tuple[np.ndarray, np.ndarray] | None:
        import torch

        one_pass = self.image_pass(encoder)
        if one_pass is None:
            return None
        with torch.inference_mode():
            vectors, features = one_pass(pixels.to(encoder.device))
        return vectors.float().cpu().numpy(), features.to(torch.float16).cpu().numpy()

    def score(self, query: str, features: np.ndarray) -> np.ndarray:
        import torch

        from catalens.itm import clip_text_states

        if not len(features):
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            states, pad = clip_text_states(self.clip.model, self.clip.tokenizer([query]).to(self.clip.device))
            n = len(features)
            image = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(self.clip.device)
            logits = self.head(states.expand(n, -1, -1), pad.expand(n, -1), image)
        return torch.sigmoid(logits).float().cpu().numpy()

    def score_pairs(self, queries: list[str], features: np.ndarray) -> np.ndarray:
        import torch

        from catalens.itm import clip_text_states

        out = []
        for i in range(0, len(queries), PAIR_BATCH):  # one text-tower pass per batch, not per query
            with torch.inference_mode():
                states, pad = clip_text_states(self.clip.model,
                                               self.clip.tokenizer(queries[i:i + PAIR_BATCH]).to(self.clip.device))
                image = torch.from_numpy(np.asarray(features[i:i + PAIR_BATCH], dtype=np.float32)).to(self.clip.device)
                out.append(torch.sigmoid(self.head(states, pad, image)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def caption(self, pixels: Any) -> list[str]:
        raise CaptionUnsupportedError(
            "the bundled reranker cannot write captions; use a CoCa reranker (--reranker coca:...) for --caption")


def load_reranker(name: str, *, clip: ClipEncoder | None = None, device: str = "cpu") -> Reranker | None:
    """A reranker by name: 'none', a bundled ITM folder name, 'blip:<id or path>' or 'coca:<model>[@<pretrained>]'."""
    if not name or name == NO_RERANKER:
        return None
    if name.startswith("blip:"):
        from catalens.reranker_hub import load_blip_reranker

        return load_blip_reranker(name.removeprefix("blip:"), device=device)
    if name.startswith("coca:"):
        from catalens.reranker_hub import load_coca_reranker

        model, _, pretrained = name.removeprefix("coca:").partition("@")
        return load_coca_reranker(model, pretrained or None, device=device)
    folder = BUNDLED_DIR / name if (BUNDLED_DIR / name).is_dir() else Path(name)
    return load_itm_reranker(folder, clip=clip, device=device)


def load_itm_reranker(folder: Path, *, clip: ClipEncoder | None = None, device: str = "cpu") -> BundledItmReranker:
    """Load an ITM head folder (itm.json + itm.safetensors), sharing `clip` when it is the base model."""
    from safetensors.torch import load_file

    from catalens.itm import ITM_CONFIG, ITM_WEIGHTS, ItmConfig, ItmHead

    if not (folder / ITM_CONFIG).is_file():
        raise ModelLoadError(f"no reranker {str(folder)!r}: expected a folder with {ITM_CONFIG} and {ITM_WEIGHTS}, "
                             "'none', 'blip:<model>' or 'coca:<model>@<pretrained>'")
    config = ItmConfig.load(folder)
    if clip is None or clip.spec.model != config.base_model:
        clip = load_clip(ModelSpec(config.base_model), device=device)
    head = ItmHead(config)
    try:
        state = load_file(str(folder / ITM_WEIGHTS))
        head.load_state_dict({k: v.float() for k, v in state.items()})
    except (OSError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load reranker weights {folder / ITM_WEIGHTS}: {exc}") from exc
    head.eval().to(clip.device)
    reranker_id = f"itm:{folder.name}@{weights_digest(folder / ITM_WEIGHTS)}+{clip.model_id}"
    return BundledItmReranker(clip=clip, head=head, reranker_id=reranker_id)
