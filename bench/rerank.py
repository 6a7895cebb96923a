"""`bench rerank`: a reranker's cost, query-time scoring of top_n candidates and index-time features."""

from __future__ import annotations

import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Log, machine_info, quiet, utc_now
from bench.workload import CATALOG_SEED
from catalens.config import Settings, set_threads
from catalens.errors import BenchError

RERANK_DEFINITIONS = {
    "score_p50_ms": "one query against top_n candidates' stored features, one batched forward pass",
    "feature_ms_per_image": "index-time cost of the stored image features, batch of top_n",
}


@dataclass(kw_only=True)
class RerankBench:
    """One `bench rerank` result; its fields are the JSON keys, in order."""

    bench: str = "rerank"
    reranker: str
    random_init: bool
    top_n: int
    score_p50_ms: float
    score_p95_ms: float
    pairs_per_s: float
    feature_ms_per_image: float
    feature_bytes_per_image: int
    feature_shape: list[int]
    runs: int
    torch_threads: int
    definitions: dict[str, str] = field(default_factory=lambda: dict(RERANK_DEFINITIONS))
    machine: dict[str, Any] = field(default_factory=machine_info)
    created_at: str = field(default_factory=utc_now)


def random_hub_reranker(name: str):
    """A hub reranker's real architecture with random weights (timing only: no hub here)."""
    import open_clip

    if name.startswith("coca:"):
        from catalens.reranker_hub import CocaReranker

        model = name.removeprefix("coca:").partition("@")[0]
        net = open_clip.create_model(model).eval()
        return CocaReranker(net, open_clip.get_tokenizer(model),
                            open_clip.image_transform(net.visual.image_size, is_train=False), "cpu",
                            f"{name} (random init)")
    if name.startswith("blip:"):
        from transformers import (
            BertTokenizerFast,
            BlipConfig,
            BlipForImageTextRetrieval,
            BlipImageProcessor,
            BlipProcessor,
        )

        from catalens.reranker_hub import BlipItmReranker

        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]", "red", "blue", "mug", "with", "dots"]
        with tempfile.TemporaryDirectory() as tmp:
            vocab = Path(tmp) / "vocab.txt"
            vocab.write_text("\n".join(words))
            tokenizer = BertTokenizerFast(vocab_file=str(vocab))
        config: Any = BlipConfig()  # the base architecture (ViT-B/16 at 384 px, BERT-base text encoder)
        processor = BlipProcessor(BlipImageProcessor(size={"height": config.vision_config.image_size,
                                                           "width": config.vision_config.image_size}), tokenizer)
        return BlipItmReranker(BlipForImageTextRetrieval(config).eval(), processor, "cpu", f"{name} (random init)")
    raise BenchError(f"--random-init applies to blip:... and coca:... rerankers, not {name!r}")


def measure_rerank(settings: Settings, *, reranker: str | None = None, random_init: bool = False, top_n: int = 20,
                   duration: float = 5.0, seed: int = CATALOG_SEED, log: Log = quiet) -> RerankBench:
    """Index-time feature cost and query-time scoring latency of a reranker for top_n candidates."""
    import torch

    from catalens.reranker import load_reranker
    from sampledata import texts, world

    threads = settings.torch_threads()
    set_threads(threads)
    name = reranker or settings.reranker
    log(f"loading reranker {name}{' (random init)' if random_init else ''}; {threads} torch threads")
    model = random_hub_reranker(name) if random_init else load_reranker(name)
    if model is None:
        raise BenchError("no reranker to measure (--reranker none)")
    rng = random.Random(seed)
    images = [world.render_product(world.random_spec(rng), rng.getrandbits(31)) for _ in range(top_n)]
    pixels = torch.stack([model.preprocess(img) for img in images])
    model.image_features(pixels[:1])  # warm-up
    t0 = time.perf_counter()
    features = model.image_features(pixels)
    feature_ms = (time.perf_counter() - t0) * 1000 / len(images)
    specs = [spec for spec in (world.random_spec(rng) for _ in range(64)) if spec.secondary][:8]
    queries = [texts.swap_query(spec, rng) for spec in specs]
    model.score(queries[0], features)  # warm-up
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < deadline or len(latencies) < 5:
        t0 = time.perf_counter()
        model.score(queries[i % len(queries)], features)
        latencies.append((time.perf_counter() - t0) * 1000)
        i += 1
    lat = np.array(latencies)
    return RerankBench(
        reranker=model.reranker_id,
        random_init=random_init,
        top_n=top_n,
        score_p50_ms=round(float(np.percentile(lat, 50)), 2),
        score_p95_ms=round(float(np.percentile(lat, 95)), 2),
        pairs_per_s=round(top_n / (float(np.percentile(lat, 50)) / 1000), 1),
        feature_ms_per_image=round(feature_ms, 2),
        feature_bytes_per_image=int(features[0].nbytes),
        feature_shape=list(features.shape[1:]),
        runs=len(latencies),
        torch_threads=threads,
    )
