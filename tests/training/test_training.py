"""The training recipe never rots: a few real steps, the loss falls, the weights load back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from catalens.encoder import ModelSpec, load_clip
from tests.support import run_cli

pytestmark = pytest.mark.slow  # runs `catalens` as a process


def test_training_smoke_run_learns_and_its_weights_load(tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = run_cli("train-model", "--out", str(out), "--steps", "30", "--batch-size", "32", "--warmup", "3",
                     "--n-images", "320", "--eval-products", "0", "--threads", "1", "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["loss_history"]]
    assert losses[-1] < losses[0] - 0.3, losses
    assert (out / "train.log").read_text().count("step") >= 2
    assert "## Metrics" in (out / "MODEL_CARD.md").read_text()
    assert (out / "model.safetensors").stat().st_size < 25 * 1024 * 1024

    encoder = load_clip(ModelSpec(str(out)))  # a training output folder is a loadable model
    vec = encoder.encode_texts(["red striped mug"])
    assert vec.shape == (1, 128) and np.isclose(np.linalg.norm(vec), 1.0, atol=1e-4)


def test_fine_tuning_from_the_bundled_model_extends_its_text_context(tmp_path: Path) -> None:
    """--init-from starts from trained weights; a longer context keeps the old positions (Chinese
    captions need more than the first model's 24 tokens)."""
    import torch
    from safetensors.torch import load_file

    from catalens.encoder import BUNDLED_DIR
    from training.train_clip import load_initial_weights

    old = tmp_path / "old"
    old.mkdir()
    state = {k: v for k, v in load_file(str(BUNDLED_DIR / "catalens-demo" / "model.safetensors")).items()}
    state["positional_embedding"] = state["positional_embedding"][:24]  # as the first model had it
    from safetensors.torch import save_file

    save_file(state, str(old / "model.safetensors"))
    import open_clip

    from training.commands import DEFAULT_CONFIG

    open_clip.add_model_config(DEFAULT_CONFIG)
    model = open_clip.create_model(DEFAULT_CONFIG.stem)
    assert "24 -> 48" in load_initial_weights(model, old)
    pos = model.positional_embedding.detach()
    assert torch.equal(pos[:24], state["positional_embedding"].float())
    assert torch.equal(pos[30], pos[23])  # the new positions start where the old ones ended
    assert torch.equal(model.token_embedding.weight.detach(), state["token_embedding.weight"].float())


def test_captioner_training_smoke_run_learns_and_its_weights_load(tmp_path: Path) -> None:
    from catalens.captioner import load_captioner

    out = tmp_path / "captioner"
    result = run_cli("train-model", "--kind", "captioner", "--out", str(out), "--steps", "60", "--batch-size", "64",
                     "--warmup", "3", "--n-images", "400", "--eval-products", "40", "--threads", "1", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    losses = [h["loss"] for h in json.loads((out / "metrics.json").read_text())["loss_history"]]
    assert losses[-1] < losses[0] - 1.0, losses
    assert "Held-out renders" in (out / "MODEL_CARD.md").read_text()
    captioner = load_captioner(out)
    encoder = load_clip(ModelSpec("catalens-demo"))
    from sampledata import world

    vec = encoder.encode_images([world.render_product(world.ProductSpec("mug", "red", "blue", "striped"), 1)])
    assert isinstance(captioner.captions(vec)[0], str)


def test_reranker_training_smoke_run_learns_and_its_weights_load(tmp_path: Path) -> None:
    from catalens.reranker import load_reranker

    out = tmp_path / "itm"
    result = run_cli("train-model", "--kind", "itm", "--out", str(out), "--steps", "40", "--batch-size", "32",
                     "--warmup", "3", "--n-images", "200", "--eval-products", "40", "--threads", "1", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    # The evaluation ranks a held-out catalog both ways and sweeps the fusion weight.
    plain = metrics["metrics"]["plain"]
    assert plain["clip"]["n"] > 0 and set(plain["recall@1_by_weight"]) >= {"0.0", "20.0"}
    losses = [h["loss"] for h in metrics["loss_history"]]
    assert losses[-1] < losses[0], losses
    assert (out / "MODEL_CARD.md").is_file() and (out / "itm.safetensors").stat().st_size < 5 * 1024 * 1024

    reranker = load_reranker(str(out))
    import torch
    from PIL import Image

    pixels = torch.stack([reranker.preprocess(Image.new("RGB", (64, 64), (200, 30, 30)))] * 3)
    features = reranker.image_features(pixels)
    # its own 8 x 8 grid, then the CLIP's 16 patch tokens and class token, all 64 channels wide
    assert features.shape == (3, 64 + 17, 64) and features.dtype == np.float16
    # The indexer takes vectors and features from one vision pass of the same CLIP: equal to two passes.
    both = reranker.features_with_vectors(reranker.clip, pixels)
    assert both is not None and reranker.reads_pixels_of(reranker.clip)
    assert np.allclose(both[0], reranker.clip.encode_pixels(pixels), atol=1e-5)
    assert np.allclose(both[1].astype(np.float32), features.astype(np.float32), atol=1e-2)
    scores = reranker.score("red mug", features)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))


def test_reranker_extra_negatives_differ_from_the_caption_product_in_one_attribute() -> None:
    import random

    from sampledata import world
    from training.train_itm import ONE_OFF, _one_off, _one_off_index, itm_caption

    rng = random.Random(3)
    specs = [world.random_spec(rng) for _ in range(3000)]
    index = _one_off_index(specs)
    found = {attr: 0 for attr in ONE_OFF}
    for spec in specs[:200]:
        caption = itm_caption(spec, rng)
        for j in _one_off(specs, index, caption, 1, rng):
            differs = [a for a in ("category", "main", "secondary", "pattern") if getattr(specs[j], a) != getattr(spec, a)]
            assert len(differs) == 1 and differs[0] in ONE_OFF, (spec, specs[j])
            found[differs[0]] += 1
    assert all(n > 20 for n in found.values()), found
