"""CLIP on ONNX Runtime: the text and image towers of a loaded open_clip model exported once per
model, then served without torch.

The text tower takes tokens of any length up to the context (a short query is not padded),
the image tower any batch. Exported files live in CATALENS_ONNX_DIR/<key>/ with a meta.json
that records the model id, the preprocessing and the speed of both runtimes measured at export
on this machine, which CATALENS_RUNTIME=auto follows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catalens.config import Settings
from catalens.encoder import BUNDLED_DIR, WEIGHTS_FILE, ClipEncoder, ModelSpec, load_clip
from catalens.errors import ModelLoadError

LOG = logging.getLogger(__name__)
TEXT, IMAGE, META = "text.onnx", "image.onnx", "meta.json"
OPSET = 18  # torch's dynamo exporter writes 18; asking it for 17 fails its down-conversion
SPEED_RUNS = 20
SPEED_TEXT = "red leather ankle boots"


@dataclass(frozen=True)
class OnnxMeta:
    model_id: str
    dim: int
    context_length: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    speed_ms: dict[str, float]  # median ms at export: torch_text, onnx_text, torch_image, onnx_image (batch 1)

    @property
    def onnx_faster(self) -> bool:
        """Whether ONNX Runtime answered a query (text, then image, at batch 1) faster here."""
        s = self.speed_ms
        return s["onnx_text"] + s["onnx_image"] < s["torch_text"] + s["torch_image"]


def cache_key(spec: ModelSpec) -> str:
    """Where a model's export lives: its spec and weights file (path, size, mtime), without loading it."""
    weights = _weights_file(spec)
    stamp = f"{weights}|{weights.stat().st_size}|{weights.stat().st_mtime_ns}" if weights else ""
    return hashlib.sha256(f"{spec.model_id}|{stamp}".encode()).hexdigest()[:16]


def _weights_file(spec: ModelSpec) -> Path | None:
    if spec.pretrained and Path(spec.pretrained).is_file():
        return Path(spec.pretrained)
    for candidate in (BUNDLED_DIR / spec.model / WEIGHTS_FILE, Path(spec.model) / WEIGHTS_FILE):
        if candidate.is_file():
            return candidate
    return None


# --- export (needs torch, open_clip, onnx, onnxscript) ------------------------------------------


def _towers(model: Any) -> tuple[Any, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TextTower(nn.Module):
        """tokens (B, L <= context) -> (B, D) normalised; the causal mask follows L."""

        def __init__(self) -> None:
            super().__init__()
            self.token_embedding, self.positional_embedding = model.token_embedding, model.positional_embedding
            self.transformer, self.ln_final, self.text_projection = model.transformer, model.ln_final, \
                model.text_projection
            self.mask = model.attn_mask.clone()

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            length = tokens.shape[1]
            x = self.token_embedding(tokens) + self.positional_embedding[:length]
            x = self.transformer(x, attn_mask=self.mask[:length, :length])
            x = self.ln_final(x)[torch.arange(tokens.shape[0]), tokens.argmax(dim=-1)]
            x = self.text_projection(x) if isinstance(self.text_projection, nn.Linear) else x @ self.text_projection
            return F.normalize(x, dim=-1)

    class ImageTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = model.visual

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.visual(pixels), dim=-1)

    return TextTower().eval(), ImageTower().eval()


def exportable(encoder: ClipEncoder) -> str | None:
    """Why this model's towers cannot run on ONNX Runtime here, or None."""
    from open_clip.tokenizer import SimpleTokenizer

    m = encoder.model
    if not isinstance(encoder.tokenizer, SimpleTokenizer) or encoder.tokenizer.reduction_fn is not None \
            or getattr(encoder.tokenizer.clean_fn, "__name__", "") != "_clean_lower":
        return "its tokenizer is not CLIP's BPE tokenizer with lower-case cleaning"
    if not (hasattr(m, "token_embedding") and getattr(m, "text_pool_type", None) == "argmax"
            and getattr(m, "attn_mask", None) is not None):
        return "its text tower is not a causal transformer pooled at the end token"
    return None


def export(encoder: ClipEncoder, folder: Path) -> OnnxMeta:
    """Export both towers into folder (atomically: a temp folder renamed), measure both runtimes, write meta."""
    import torch

    problem = exportable(encoder)
    if problem:
        raise ModelLoadError(f"model {encoder.model_id!r} cannot run on ONNX Runtime: {problem}")
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    text_tower, image_tower = _towers(encoder.model)
    ctx, size = int(encoder.tokenizer.context_length), encoder.image_size
    tokens = torch.zeros(2, min(8, ctx), dtype=torch.long)
    tokens[:, 0], tokens[:, 1:5], tokens[:, 5] = 49406, 320, 49407
    batch = torch.export.Dim("batch", min=1, max=4096)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # The exporter prints its progress on stdout, which belongs to --json output: onto stderr.
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(text_tower, (tokens,), str(tmp / TEXT), dynamo=True, external_data=False,
                              input_names=["tokens"], output_names=["text_embeds"], opset_version=OPSET,
                              dynamic_shapes={"tokens": {0: batch, 1: torch.export.Dim("seq", min=2, max=ctx)}})
            torch.onnx.export(image_tower, (torch.randn(2, 3, size, size),), str(tmp / IMAGE), dynamo=True,
                              external_data=False, input_names=["pixels"], output_names=["image_embeds"],
                              opset_version=OPSET, dynamic_shapes={"pixels": {0: batch}})
    except Exception as exc:  # torch's exporter raises many types for an unsupported graph
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"cannot export {encoder.model_id!r} to ONNX: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    normalize = next(t for t in encoder.preprocess.transforms if type(t).__name__ == "Normalize")
    meta = OnnxMeta(model_id=encoder.model_id, dim=encoder.dim, context_length=ctx, image_size=size,
                    mean=tuple(float(v) for v in normalize.mean), std=tuple(float(v) for v in normalize.std),  # type: ignore[arg-type]
                    speed_ms={})
    onnx_encoder = OnnxClipEncoder(tmp, meta, spec=encoder.spec)
    meta = OnnxMeta(**{**asdict(meta), "speed_ms": _speeds(encoder, onnx_encoder)})
    (tmp / META).write_text(json.dumps(asdict(meta), indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    LOG.info("exported %s to ONNX in %s: %s", encoder.model_id, folder, meta.speed_ms)
    return meta


def _speeds(torch_encoder: ClipEncoder, onnx_encoder: OnnxClipEncoder) -> dict[str, float]:
    """Median ms of a one-text and a one-image query on each runtime, on this machine now."""
    from PIL import Image

    image = Image.new("RGB", (320, 240), (180, 40, 40))

    def median_ms(fn: Any) -> float:
        fn()
        times = []
        for _ in range(SPEED_RUNS):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(times), 3)

    return {"torch_text": median_ms(lambda: torch_encoder.encode_texts([SPEED_TEXT])),
            "onnx_text": median_ms(lambda: onnx_encoder.encode_texts([SPEED_TEXT])),
            "torch_image": median_ms(lambda: torch_encoder.encode_images([image])),
            "onnx_image": median_ms(lambda: onnx_encoder.encode_images([image]))}


# --- serving (onnxruntime, numpy, PIL: no torch) ---------------------------------------------


class OnnxClipEncoder:
    """A CLIP whose towers run on ONNX Runtime: texts and images in, normalised float32 vectors out."""

    runtime = "onnx"

    def __init__(self, folder: Path, meta: OnnxMeta, *, spec: ModelSpec, threads: int = 1, int8: bool = False) -> None:
        import onnxruntime as ort

        from catalens.clip_tokenizer import ClipTokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # Spinning threads hold a core between requests; on 2 shared cores that halved throughput.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        text, image = (int8_name(TEXT), int8_name(IMAGE)) if int8 else (TEXT, IMAGE)
        self.text = ort.InferenceSession(str(folder / text), options, providers=providers)
        self.image = ort.InferenceSession(str(folder / image), options, providers=providers)
        self.meta, self.spec = meta, spec
        self.model_id, self.dim, self.image_size = meta.model_id, meta.dim, meta.image_size
        self.tokenizer = ClipTokenizer(meta.context_length)
        self._mean = np.asarray(meta.mean, np.float32)
        self._std = np.asarray(meta.std, np.float32)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.text.run(None, {"tokens": self.tokenizer(texts)})[0]

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self.image.run(None, {"pixels": np.stack([self._pixels(img) for img in images])})[0]

    def _pixels(self, img: Any) -> np.ndarray:
        """open_clip's eval transform (shortest side bicubic, centre crop, RGB, normalise) in PIL + numpy."""
        from PIL import Image

        size = self.image_size
        w, h = img.size
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        x = np.asarray(img.crop((left, top, left + size, top + size)).convert("RGB"), dtype=np.float32) / 255
        return ((x - self._mean) / self._std).transpose(2, 0, 1)


@contextlib.contextmanager
def _export_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock beside the export folder, held while one process exports (fcntl: freed if it dies)."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.with_name(f".{folder.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def int8_name(name: str) -> str:
    return name.replace(".onnx", ".int8.onnx")


def ensure_int8(folder: Path) -> None:
    """Dynamically quantised (int8 weights) copies of both towers beside the fp32 ones (onnxruntime, no torch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in (TEXT, IMAGE):
        target = folder / int8_name(name)
        if not target.is_file():
            tmp = target.with_name(f".{target.stem}.{os.getpid()}.onnx")
            quantize_dynamic(str(folder / name), str(tmp), weight_type=QuantType.QInt8)
            os.replace(tmp, target)


def onnx_folder(root: Path, spec: ModelSpec) -> Path:
    return root / cache_key(spec)


def read_meta(folder: Path) -> OnnxMeta | None:
    try:
        data = json.loads((folder / META).read_text())
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return OnnxMeta(**data)
    except (OSError, ValueError, TypeError):
        return None


def load_query_encoder(settings: Settings) -> ClipEncoder | OnnxClipEncoder:
    """The CLIP the query path runs, by CATALENS_RUNTIME: ONNX Runtime over the exported towers (exported
    on first use, which needs torch once), torch, or auto: ONNX if it measured faster here at export."""
    spec = ModelSpec(settings.model, settings.pretrained)
    if settings.runtime == "torch":
        return load_clip(spec, device=settings.device)
    folder = onnx_folder(settings.onnx_cache(), spec)
    meta = read_meta(folder)
    torch_encoder = None
    if meta is None:
        with _export_lock(folder):  # replicas starting together export once; the others wait and read it
            meta = read_meta(folder)
            if meta is None:
                torch_encoder = load_clip(spec, device=settings.device)
                try:
                    meta = export(torch_encoder, folder)
                except ModelLoadError as exc:
                    if settings.runtime == "onnx":
                        raise
                    LOG.warning("%s; the query path runs on torch", exc.message)
                    return torch_encoder
    if settings.runtime == "auto" and not meta.onnx_faster:
        return torch_encoder or load_clip(spec, device=settings.device)
    if settings.onnx_int8:
        with _export_lock(folder):
            ensure_int8(folder)
    return OnnxClipEncoder(folder, meta, spec=spec, threads=settings.torch_threads(), int8=settings.onnx_int8)
