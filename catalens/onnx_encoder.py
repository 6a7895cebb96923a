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
from typing import TYPE_CHECKING, Any

import numpy as np

from catalens.config import Settings
from catalens.encoder import BUNDLED_DIR, WEIGHTS_FILE, ClipEncoder, ModelSpec, load_clip
from catalens.errors import ModelLoadError

if TYPE_CHECKING:
    from catalens.reranker import Reranker

LOG = logging.getLogger(__name__)
TEXT, IMAGE, META = "text.onnx", "image.onnx", "meta.json"
OPSET = 18  # torch's dynamo exporter writes 18; asking it for 17 fails its down-conversion
SPEED_RUNS = 20
SPEED_TEXT = "red leather ankle boots"
SPEED_BATCH = 32


@dataclass(frozen=True)
class OnnxMeta:
    model_id: str
    dim: int
    context_length: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    speed_ms: dict[str, float]  # median ms at export: torch_/onnx_ text, image (batch 1), image_b32

    @property
    def onnx_faster(self) -> bool:
        """Whether ONNX Runtime answered a query (text, then image, at batch 1) faster here."""
        s = self.speed_ms
        return s["onnx_text"] + s["onnx_image"] < s["torch_text"] + s["torch_image"]

    @property
    def onnx_faster_in_batches(self) -> bool:
        """Whether ONNX Runtime embedded a batch of images faster here (the indexer's case); exports
        from before this was measured fall back to the query measurement."""
        s, key = self.speed_ms, f"image_b{SPEED_BATCH}"
        if f"onnx_{key}" not in s or f"torch_{key}" not in s:
            return self.onnx_faster
        return s[f"onnx_{key}"] < s[f"torch_{key}"]


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
    try:
        _export(text_tower, tokens, tmp / TEXT, ["tokens"], ["text_embeds"],
                {"tokens": {0: _batch_dim(), 1: torch.export.Dim("seq", min=2, max=ctx)}}, label=repr(encoder.model_id))
        _export(image_tower, torch.randn(2, 3, size, size), tmp / IMAGE, ["pixels"], ["image_embeds"],
                {"pixels": {0: _batch_dim()}}, label=repr(encoder.model_id))
    except ModelLoadError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    normalize = next(t for t in encoder.preprocess.transforms if type(t).__name__ == "Normalize")
    meta = OnnxMeta(model_id=encoder.model_id, dim=encoder.dim, context_length=ctx, image_size=size,
                    mean=tuple(float(v) for v in normalize.mean), std=tuple(float(v) for v in normalize.std),  # type: ignore[arg-type]
                    speed_ms={})
    # Both runtimes timed on the same thread count (torch's, set by the caller): ONNX on one thread
    # against torch on two timed ViT-B-32's batch of 32 at 3.2 s against 1.8 s, while the build's
    # model-only pass ran both at the same speed.
    onnx_encoder = OnnxClipEncoder(tmp, meta, spec=encoder.spec, threads=torch.get_num_threads())
    meta = OnnxMeta(**{**asdict(meta), "speed_ms": _speeds(encoder, onnx_encoder)})
    (tmp / META).write_text(json.dumps(asdict(meta), indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    LOG.info("exported %s to ONNX in %s: %s", encoder.model_id, folder, meta.speed_ms)
    return meta


def _batch_dim() -> Any:
    import torch

    return torch.export.Dim("batch", min=1, max=4096)


def _export(module: Any, example: Any, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, Any], *, label: str) -> None:
    """torch.onnx.export of one module (dynamo, opset OPSET) to path; a typed error when it cannot."""
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        # The exporter prints its progress on stdout, which belongs to --json output: onto stderr.
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False, input_names=inputs,
                              output_names=outputs, opset_version=OPSET, dynamic_shapes=dynamic)
    except Exception as exc:  # torch's exporter raises many types for an unsupported graph
        raise ModelLoadError(f"cannot export {label} to ONNX: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def image_pass_name(reranker_id: str) -> str:
    """The indexer's one-pass file (vectors + a reranker's features) of one reranker, in a model's folder."""
    return f"image-pass-{hashlib.sha256(reranker_id.encode()).hexdigest()[:12]}.onnx"


def export_image_pass(module: Any, image_size: int, path: Path, *, label: str) -> None:
    """Export pixels -> (vectors, reranker features) to path, atomically."""
    import torch

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.onnx")
    _export(module, torch.randn(2, 3, image_size, image_size), tmp, ["pixels"], ["image_embeds", "features"],
            {"pixels": {0: _batch_dim()}}, label=label)
    os.replace(tmp, path)


def _speeds(torch_encoder: ClipEncoder, onnx_encoder: OnnxClipEncoder) -> dict[str, float]:
    """Median ms of a one-text and a one-image query on each runtime, on this machine now."""
    from PIL import Image

    image = Image.new("RGB", (320, 240), (180, 40, 40))

    def median_ms(fn: Any, runs: int = SPEED_RUNS) -> float:
        fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(times), 3)

    batch = [image] * SPEED_BATCH
    return {"torch_text": median_ms(lambda: torch_encoder.encode_texts([SPEED_TEXT])),
            "onnx_text": median_ms(lambda: onnx_encoder.encode_texts([SPEED_TEXT])),
            "torch_image": median_ms(lambda: torch_encoder.encode_images([image])),
            "onnx_image": median_ms(lambda: onnx_encoder.encode_images([image])),
            # the indexer's case: a batch; fewer runs, as a ViT-B-32 batch takes seconds
            f"torch_image_b{SPEED_BATCH}": median_ms(lambda: torch_encoder.encode_images(batch), runs=3),
            f"onnx_image_b{SPEED_BATCH}": median_ms(lambda: onnx_encoder.encode_images(batch), runs=3)}


# --- serving (onnxruntime, numpy, PIL: no torch) ---------------------------------------------


class OnnxClipEncoder:
    """A CLIP whose towers run on ONNX Runtime: texts and images in, normalised float32 vectors out."""

    runtime = "onnx"

    def __init__(self, folder: Path, meta: OnnxMeta, *, spec: ModelSpec, threads: int = 1, int8: bool = False) -> None:
        from catalens.clip_tokenizer import ClipTokenizer

        self.threads = max(1, threads)
        text, image = (int8_name(TEXT), int8_name(IMAGE)) if int8 else (TEXT, IMAGE)
        self.text, self.image = self._session(folder / text), self._session(folder / image)
        self.image_pass: Any = None
        self.meta, self.spec = meta, spec
        self.model_id, self.dim, self.image_size = meta.model_id, meta.dim, meta.image_size
        self.tokenizer = ClipTokenizer(meta.context_length)
        self._mean = np.asarray(meta.mean, np.float32)
        self._std = np.asarray(meta.std, np.float32)

    def _session(self, path: Path) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Spinning threads hold a core between requests; on 2 shared cores that halved throughput.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.text.run(None, {"tokens": self.tokenizer(texts)})[0]

    def encode_images(self, images: list[Any]) -> np.ndarray:
        return self.encode_pixels(np.stack([self._pixels(img) for img in images]))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed images (N, 3, H, W) float32 -> (N, dim) normalised float32."""
        return self.image.run(None, {"pixels": pixels})[0]

    def load_image_pass(self, path: Path) -> None:
        """Also run the indexer's one-pass file (vectors + a reranker's features), exported beside the towers."""
        self.image_pass = self._session(path)

    def vectors_and_features(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors, the reranker's fp16 features) from the one-pass file."""
        if self.image_pass is None:
            raise ValueError("no image pass loaded")
        vectors, features = self.image_pass.run(None, {"pixels": pixels})
        return vectors, features.astype(np.float16)

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


def _exported(settings: Settings, spec: ModelSpec, torch_encoder: ClipEncoder | None
              ) -> tuple[Path, OnnxMeta | None, ClipEncoder | None]:
    """(folder, meta or None if it cannot export, the torch encoder if one was loaded): the towers exported
    once per model, under a lock, so that replicas starting together export once and the others read it."""
    folder = onnx_folder(settings.onnx_cache(), spec)
    meta = read_meta(folder)
    if meta is None:
        with _export_lock(folder):
            meta = read_meta(folder)
            if meta is None:
                torch_encoder = torch_encoder or load_clip(spec, device=settings.device)
                try:
                    meta = export(torch_encoder, folder)
                except ModelLoadError as exc:
                    if settings.runtime == "onnx":
                        raise
                    LOG.warning("%s; the CLIP runs on torch", exc.message)
                    return folder, None, torch_encoder
    return folder, meta, torch_encoder


def load_query_encoder(settings: Settings) -> ClipEncoder | OnnxClipEncoder:
    """The CLIP the query path runs, by CATALENS_RUNTIME: ONNX Runtime over the exported towers (exported
    on first use, which needs torch once), torch, or auto: ONNX if it measured faster here at export."""
    spec = ModelSpec(settings.model, settings.pretrained)
    if settings.runtime == "torch":
        return load_clip(spec, device=settings.device)
    folder, meta, torch_encoder = _exported(settings, spec, None)
    if meta is None or (settings.runtime == "auto" and not meta.onnx_faster):
        return torch_encoder or load_clip(spec, device=settings.device)
    if settings.onnx_int8:
        with _export_lock(folder):
            ensure_int8(folder)
    return OnnxClipEncoder(folder, meta, spec=spec, threads=settings.torch_threads(), int8=settings.onnx_int8)


def load_index_encoder(settings: Settings, encoder: ClipEncoder, reranker: Reranker | None) -> OnnxClipEncoder | None:
    """The indexer's CLIP passes on ONNX Runtime when CATALENS_RUNTIME picks it (auto: if a batch of images
    ran faster at export), with the reranker's features from the same pass; None means torch.

    fp32 only: int8 changes the vectors an index is built from, which is a different model."""
    if settings.runtime == "torch" or encoder.device != "cpu":
        return None
    folder, meta, _ = _exported(settings, encoder.spec, encoder)
    if meta is None or (settings.runtime == "auto" and not meta.onnx_faster_in_batches):
        return None
    onnx = OnnxClipEncoder(folder, meta, spec=encoder.spec, threads=settings.torch_threads())
    module = reranker.image_pass(encoder) if reranker is not None else None
    if module is not None and reranker is not None:
        path = folder / image_pass_name(reranker.reranker_id)
        with _export_lock(folder):
            if not path.is_file():
                try:
                    export_image_pass(module, encoder.image_size, path,
                                      label=f"the image pass of {reranker.reranker_id!r}")
                except ModelLoadError as exc:
                    if settings.runtime == "onnx":
                        raise
                    LOG.warning("%s; the indexer runs on torch", exc.message)
                    return None
        onnx.load_image_pass(path)
    return onnx
