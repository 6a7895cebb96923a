"""The query-time CLIP on ONNX Runtime: same tokens, same vectors as torch, and no torch import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

TEXTS = [
    "", "red mug", "Red MUG", "a teal t-shirt with white stripes", "blue cushion, dotted; 40x40 cm!",
    "café crème & l'été", "北京 红色 杯子", "emoji 🙂 mug", "&amp; html &lt;escaped&gt;", "   spaces   everywhere   ",
    "don't won't it's they're we've I'm you'll he'd", "SKU LM-2048/XL", "1234567890",
    " ".join(["long"] * 100), "a" * 300, "zero\u200bwidth", "ümlaut Straße", "tab\tand\nnewline",
]


def _texts(n: int) -> list[str]:
    rng = np.random.default_rng(3)
    words = ["red", "blue", "striped", "mug", "vase", "lamp", "dotted", "wool", "shirt", "with", "and", "green"]
    extra = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(n)]
    return (TEXTS + extra)[:n]


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(4)
    sizes = [(64, 64), (300, 200), (120, 480), (97, 53), (640, 640)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        mode = ("RGB", "L", "RGBA", "P")[i % 4]
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        out.append(img)
    return out


@pytest.mark.parametrize("context_length", [24, 77])
def test_the_tokenizer_gives_open_clips_tokens(context_length: int) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    from catalens.clip_tokenizer import ClipTokenizer

    ours, theirs = ClipTokenizer(context_length), SimpleTokenizer(context_length=context_length)
    texts = _texts(120)
    np.testing.assert_array_equal(ours(texts, pad_to_context=True), theirs(texts).numpy())
    cut = ours(["red mug", "a teal t-shirt with white stripes"])
    assert cut.shape[1] == max(len(ours.encode(t)) for t in ["red mug", "a teal t-shirt with white stripes"]) + 2


@pytest.fixture(scope="module")
def exported(encoder: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from catalens.onnx_encoder import export

    folder = tmp_path_factory.mktemp("onnx") / "catalens-demo"
    return folder, export(encoder, folder)


@pytest.mark.slow
def test_onnx_vectors_equal_torch_on_50_texts_and_50_images(exported: tuple[Path, Any], encoder: Any) -> None:
    from catalens.onnx_encoder import OnnxClipEncoder

    folder, meta = exported
    onnx = OnnxClipEncoder(folder, meta, spec=encoder.spec)
    assert (onnx.model_id, onnx.dim) == (encoder.model_id, encoder.dim)
    texts, images = _texts(50), _images(50)
    for got, want in ((onnx.encode_texts(texts), encoder.encode_texts(texts)),
                      (onnx.encode_images(images), encoder.encode_images(images)),
                      (np.concatenate([onnx.encode_texts([t]) for t in texts[:10]]), encoder.encode_texts(texts[:10]))):
        cosine = (got * want).sum(axis=1)
        assert cosine.min() >= 0.9999, cosine.min()
    assert set(meta.speed_ms) == {"torch_text", "onnx_text", "torch_image", "onnx_image", "torch_image_b32",
                                  "onnx_image_b32"}


@pytest.mark.slow
def test_a_query_on_onnx_runtime_never_imports_torch(exported: tuple[Path, Any], tmp_path: Path) -> None:
    """CATALENS_RUNTIME=onnx with the towers exported: the query path loads without torch or open_clip."""
    import shutil

    from catalens.encoder import ModelSpec
    from catalens.onnx_encoder import cache_key

    folder, _ = exported
    root = tmp_path / "onnx-cache"
    shutil.copytree(folder, root / cache_key(ModelSpec("catalens-demo")))
    code = (
        "import sys, json\n"
        "from catalens.config import Settings\n"
        "from catalens.onnx_encoder import load_query_encoder\n"
        f"enc = load_query_encoder(Settings(runtime='onnx', onnx_dir={str(root)!r}))\n"
        "vec = enc.encode_texts(['blue mug'])\n"
        "print(json.dumps({'runtime': type(enc).__name__, 'dim': int(vec.shape[1]),\n"
        "                  'torch': 'torch' in sys.modules, 'open_clip': 'open_clip' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"runtime": "OnnxClipEncoder", "dim": 128, "torch": False, "open_clip": False}


@pytest.mark.slow
def test_auto_follows_the_speed_measured_at_export(exported: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil
    from dataclasses import asdict

    from catalens.config import Settings
    from catalens.encoder import ClipEncoder, ModelSpec
    from catalens.onnx_encoder import META, OnnxClipEncoder, cache_key, load_query_encoder

    folder, meta = exported
    for onnx_fast, expected in ((True, OnnxClipEncoder), (False, ClipEncoder)):
        root = tmp_path / f"cache-{onnx_fast}"
        target = root / cache_key(ModelSpec("catalens-demo"))
        shutil.copytree(folder, target)
        speed = {"torch_text": 2.0, "onnx_text": 1.0, "torch_image": 2.0, "onnx_image": 1.0} if onnx_fast else \
            {"torch_text": 1.0, "onnx_text": 2.0, "torch_image": 1.0, "onnx_image": 2.0}
        (target / META).write_text(json.dumps({**asdict(meta), "speed_ms": speed}))
        assert isinstance(load_query_encoder(Settings(runtime="auto", onnx_dir=root, device="cpu")), expected)
    assert isinstance(load_query_encoder(Settings(runtime="torch", onnx_dir=tmp_path / "x", device="cpu")),
                      ClipEncoder)
    assert not (tmp_path / "x").exists()  # torch never exports



@pytest.mark.slow
def test_the_indexer_follows_the_batch_speed_measured_at_export(exported: tuple[Path, Any], tmp_path: Path,
                                                               encoder: Any) -> None:
    """auto: the indexer runs on ONNX Runtime only where a batch of images was faster there, whatever the
    one-query figures say (a query and a build are different workloads)."""
    import shutil
    from dataclasses import asdict

    from catalens.config import Settings
    from catalens.encoder import ModelSpec
    from catalens.onnx_encoder import META, OnnxClipEncoder, cache_key, load_index_encoder

    folder, meta = exported
    query_fast = {"torch_text": 2.0, "onnx_text": 1.0, "torch_image": 2.0, "onnx_image": 1.0}
    for batch_fast, expected in ((True, OnnxClipEncoder), (False, type(None))):
        root = tmp_path / f"cache-{batch_fast}"
        target = root / cache_key(ModelSpec("catalens-demo"))
        shutil.copytree(folder, target)
        batches = {"torch_image_b32": 20.0, "onnx_image_b32": 10.0 if batch_fast else 30.0}
        (target / META).write_text(json.dumps({**asdict(meta), "speed_ms": {**query_fast, **batches}}))
        assert isinstance(load_index_encoder(Settings(runtime="auto", onnx_dir=root), encoder, None), expected)
    assert load_index_encoder(Settings(runtime="torch", onnx_dir=tmp_path / "y"), encoder, None) is None


@pytest.mark.slow
def test_int8_towers_are_made_on_request_and_stay_close(exported: tuple[Path, Any], tmp_path: Path,
                                                        encoder: Any) -> None:
    import shutil

    from catalens.config import Settings
    from catalens.encoder import ModelSpec
    from catalens.onnx_encoder import cache_key, int8_name, load_query_encoder

    folder, _ = exported
    root = tmp_path / "cache"
    target = root / cache_key(ModelSpec("catalens-demo"))
    shutil.copytree(folder, target)
    int8 = load_query_encoder(Settings(runtime="onnx", onnx_dir=root, onnx_int8=True))
    assert (target / int8_name("text.onnx")).stat().st_size < (target / "text.onnx").stat().st_size / 2
    texts, images = _texts(30), _images(10)
    for got, want in ((int8.encode_texts(texts), encoder.encode_texts(texts)),
                      (int8.encode_images(images), encoder.encode_images(images))):
        assert (got * want).sum(axis=1).min() >= 0.99  # close, not equal: see the README for its recall


@pytest.mark.slow
def test_an_index_built_on_onnx_runtime_equals_one_built_on_torch(sample_dir: Path, encoder: Any, reranker: Any,
                                                                   tmp_path: Path) -> None:
    """`index build` with CATALENS_RUNTIME=onnx: every image and text vector, and the reranker's features from the
    same pass, as torch gives them; the held-out evaluation equal to the third decimal."""
    from catalens.config import Settings
    from indexer.embedder import Embedder
    from indexer.embedding_cache import EmbeddingCache, feature_cache
    from indexer.runner import BuildOptions, build_index
    from retrieval.evaluation import evaluate_queries
    from tests.support import SampleIndex, searcher_on

    built: dict[str, Settings] = {}
    for runtime in ("torch", "onnx"):
        settings = Settings(index_dir=tmp_path / runtime, threads=1, runtime=runtime, onnx_dir=tmp_path / "onnx-cache")
        summary = build_index(settings, BuildOptions(catalog=sample_dir / "catalog.csv", progress=False),
                              encoder=encoder, embedder=Embedder(encoder, reranker=reranker))
        assert summary.runtime == runtime and summary.images_failed == 0
        built[runtime] = settings
    assert list((tmp_path / "onnx-cache").glob("*/image-pass-*.onnx")), "the one-pass file was not exported"

    def cache(runtime: str, kind: str) -> EmbeddingCache:
        folder = built[runtime].index_dir
        return EmbeddingCache(folder / "embeddings", encoder.model_id) if kind == "vectors" else \
            feature_cache(built[runtime], reranker)  # type: ignore[return-value]

    for kind in ("vectors", "features"):
        torch_cache, onnx_cache = cache("torch", kind), cache("onnx", kind)
        keys = sorted(torch_cache.keys())
        assert keys and keys == sorted(onnx_cache.keys())
        for key in keys:
            want, got = torch_cache.get(key).astype(np.float32), onnx_cache.get(key).astype(np.float32)
            if kind == "vectors":
                assert float(want.ravel() @ got.ravel()) >= 0.9999, key
            else:  # fp16 features: a rounding step apart at most
                np.testing.assert_allclose(got, want, atol=2e-2, rtol=1e-2)
    metrics = {runtime: evaluate_queries(searcher_on(SampleIndex(sample_dir, settings.index_dir), encoder, reranker),
                                         sample_dir / "queries.jsonl")
               for runtime, settings in built.items()}
    for name, figures in metrics["torch"].items():
        for metric, value in figures.items():
            assert round(metrics["onnx"][name][metric], 3) == round(value, 3), (name, metric)
