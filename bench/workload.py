"""What the indexing and query benchmarks run on: generated catalogs and the model, cached in the bench dir."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

from bench.machine import Log, model_slug, quiet
from catalens.config import Settings

CATALOG_SEED = 101  # bench catalogs are their own world, disjoint from the sample (7) and tests


def ensure_catalog(settings: Settings, *, n: int, seed: int, render_workers: int | None = None,
                   log: Log = quiet) -> Path:
    """A generated catalog of n products under the bench dir, written once (in parallel) and reused."""
    from sampledata.catalog import catalog_complete, write_sample_catalog

    out = settings.bench_cache() / f"catalog-n{n}-s{seed}"
    if catalog_complete(out, n=n, seed=seed):
        return out / "catalog.csv"
    cores = os.cpu_count() or 1
    workers = max(1, min(cores, render_workers or cores))
    log(f"generating a {n}-product catalog in {out} ({workers} render processes)")
    t0 = time.perf_counter()
    catalog = write_sample_catalog(out, n=n, seed=seed, workers=workers, progress=False)
    log(f"catalog generated in {time.perf_counter() - t0:.1f}s")
    return catalog


def catalog_images(catalog: Path) -> list[Path]:
    """Every image file a catalog names, in catalog order."""
    with open(catalog, newline="") as fh:
        return [catalog.parent / rel for row in csv.DictReader(fh) for rel in row["image"].split("|") if rel]


def with_random_weights(settings: Settings, log: Log = quiet) -> Settings:
    """An open_clip name without pretrained weights: save one random init to a file both processes load.

    The build and the `catalens serve` subprocess then run the same weights (timing only;
    a random CLIP's results mean nothing).
    """
    from catalens.encoder import BUNDLED_DIR

    if settings.pretrained or (BUNDLED_DIR / settings.model).is_dir() or Path(settings.model).exists():
        return settings
    import open_clip
    import torch

    path = settings.bench_cache() / f"random-{model_slug(settings.model)}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(open_clip.create_model(settings.model).state_dict(), path)
    log(f"{settings.model} has no --pretrained: using random weights saved in {path} (timing only)")
    return settings.model_copy(update={"pretrained": str(path)})


def load_encoder(settings: Settings):
    """The CLIP the settings name; an open_clip name without pretrained weights loads a random init."""
    from catalens.encoder import ModelSpec, load_clip

    # allow_random: `--model ViT-B-32` without --pretrained measures the real architecture
    # (random weights are as fast as trained ones); results are meaningless, timings are not.
    return load_clip(ModelSpec(settings.model, settings.pretrained), device=settings.device, allow_random=True)
