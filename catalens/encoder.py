"""Model loading and CLIP encoding: the only place that knows bundled, open_clip and local models apart."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from catalens.digests import file_sha256
from catalens.errors import ModelLoadError

LOG = logging.getLogger(__name__)
BUNDLED_DIR = Path(__file__).parent / "weights"
WEIGHTS_FILE = "model.safetensors"


def bundled_models() -> list[str]:
    """Names of the models that ship inside the package."""
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / f"{p.name}.json").is_file()) \
        if BUNDLED_DIR.is_dir() else []


def register_model_dir(path: Path) -> str | None:
    """Register a folder holding `<name>.json` (open_clip config) + weights; return the name."""
    configs = [c for c in path.glob("*.json") if c.stem not in ("metrics", "open_clip_config")]
    if len(configs) != 1:
        return None
    import open_clip

    open_clip.add_model_config(configs[0])
    return configs[0].stem


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a bundled name, an open_clip name + pretrained tag/file, or a local folder."""

    model: str
    pretrained: str | None = None

    @property
    def model_id(self) -> str:
        """Stable identity used in manifests and embedding caches."""
        return f"{self.model}:{self.pretrained}" if self.pretrained else self.model


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but no CUDA device is available")
    return device


def load_clip(spec: ModelSpec, *, device: str = "auto", allow_random: bool = False) -> "ClipEncoder":
    """Load a CLIP model by bundled name, open_clip name + pretrained (tag or file), or folder."""
    import open_clip
    import torch

    device = resolve_device(device)
    bundled = BUNDLED_DIR / spec.model
    model_path = Path(spec.model)
    weights: str | None = spec.pretrained if spec.pretrained and Path(spec.pretrained).is_file() else None
    try:
        if (bundled / f"{spec.model}.json").is_file():
            name = register_model_dir(bundled) or spec.model
            weights = weights or str(bundled / WEIGHTS_FILE)
            model = open_clip.create_model(name, pretrained=weights, device=device)
        elif model_path.is_dir() and (model_path / "open_clip_config.json").is_file():
            name = f"local-dir:{model_path}"
            model = open_clip.create_model(name, device=device)
            found = sorted(model_path.glob("*.safetensors")) + sorted(model_path.glob("*.bin"))
            weights = str(found[0]) if found else None
        elif model_path.is_dir() and (registered := register_model_dir(model_path)):
            name = registered
            weights = str(model_path / WEIGHTS_FILE)
            model = open_clip.create_model(name, pretrained=weights, device=device)
        else:
            name = spec.model
            if not spec.pretrained and not allow_random:
                raise ModelLoadError(
                    f"model {spec.model!r} needs --pretrained (a tag such as laion2b_s34b_b79k or a "
                    f"checkpoint file); bundled models: {', '.join(bundled_models()) or 'none'}")
            model = open_clip.create_model(name, pretrained=spec.pretrained, device=device)
    except ModelLoadError:
        raise
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError for bad names or files
        raise ModelLoadError(f"cannot load model {spec.model_id!r}: {exc}") from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    preprocess = open_clip.image_transform(
        model.visual.image_size, is_train=False,
        mean=getattr(model.visual, "image_mean", None), std=getattr(model.visual, "image_std", None))
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["probe"]).to(device)).shape[-1])
    model_id = f"{spec.model_id}@{weights_digest(Path(weights))}" if weights else spec.model_id
    return ClipEncoder(spec=spec, model=model, tokenizer=tokenizer, preprocess=preprocess,
                       device=device, dim=dim, model_id=model_id)


class QueryEncoder(Protocol):
    """What the query path needs of a CLIP: ClipEncoder (torch) or onnx_encoder.OnnxClipEncoder."""

    model_id: str
    dim: int
    runtime: str

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def encode_images(self, images: list) -> np.ndarray: ...


def weights_digest(path: Path) -> str:
    """A short content hash, so retrained weights under the same name never reuse old vectors."""
    return file_sha256(path)[:12]


@dataclass
class ClipEncoder:
    """A loaded CLIP: images and texts in, L2-normalised float32 vectors out."""

    runtime = "torch"  # what serves its towers (onnx_encoder.OnnxClipEncoder: "onnx")
    spec: ModelSpec
    model: Any
    tokenizer: Any
    preprocess: Any
    device: str
    dim: int
    model_id: str = ""  # spec + weights digest: what manifests and the embedding cache key on

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def preprocess_images(self, images: list) -> Any:
        import torch

        return torch.stack([self.preprocess(img) for img in images])

    def encode_pixels(self, pixels: Any) -> np.ndarray:
        """Preprocessed image batch (N, 3, H, W) -> (N, dim) normalised float32."""
        import torch

        with torch.inference_mode():
            out = self.model.encode_image(pixels.to(self.device), normalize=True)
        return out.float().cpu().numpy()

    def encode_images(self, images: list) -> np.ndarray:
        return self.encode_pixels(self.preprocess_images(images))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> (N, dim) normalised float32, running the text tower on unpadded tokens."""
        import torch

        tokens = self.tokenizer(texts).to(self.device)
        with torch.inference_mode():
            out = self._encode_unpadded(tokens) if self._can_unpad() else \
                self.model.encode_text(tokens, normalize=True)
        return out.float().cpu().numpy()

    def encode_texts_padded(self, texts: list[str]) -> np.ndarray:
        """The reference path over the full context length (kept to prove unpadding exact)."""
        import torch

        with torch.inference_mode():
            out = self.model.encode_text(self.tokenizer(texts).to(self.device), normalize=True)
        return out.float().cpu().numpy()

    def _can_unpad(self) -> bool:
        # Exact only for a causal mask with EOT (argmax) pooling: later positions never
        # influence earlier ones, so the pad tail can be cut off.
        m = self.model
        return (hasattr(m, "token_embedding") and getattr(m, "text_pool_type", None) == "argmax"
                and getattr(m, "attn_mask", None) is not None)

    def _encode_unpadded(self, tokens: Any) -> Any:
        import torch.nn.functional as F

        m = self.model
        length = int(tokens.argmax(dim=-1).max().item()) + 1
        tokens = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = x[tokens.new_tensor(range(x.shape[0])), tokens.argmax(dim=-1)]
        x = m.text_projection(x) if hasattr(m.text_projection, "weight") else x @ m.text_projection
        return F.normalize(x, dim=-1)
