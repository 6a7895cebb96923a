"""Model loading through the one loader, and the exactness of the unpadded text path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalens.encoder import ModelSpec, bundled_models, load_clip
from catalens.errors import ModelLoadError
from tests.support import ROOT


def test_bundled_model_is_listed_and_small() -> None:
    assert "catalens-demo" in bundled_models()
    weights = ROOT / "catalens" / "weights" / "catalens-demo" / "model.safetensors"
    assert weights.stat().st_size < 25 * 1024 * 1024


def test_embeddings_are_normalised_float32(encoder) -> None:
    from PIL import Image

    texts = encoder.encode_texts(["red mug", "a blue striped sofa with yellow stripes"])
    images = encoder.encode_images([Image.new("RGB", (100, 80), "red")])
    for arr in (texts, images):
        assert arr.dtype == np.float32 and arr.shape[1] == encoder.dim == 128
        assert np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)


def test_unpadded_text_tower_equals_the_padded_path(encoder) -> None:
    texts = ["mug", "red mug", "navy blue checkered table with orange check squares", "x " * 40]
    assert np.allclose(encoder.encode_texts(texts), encoder.encode_texts_padded(texts), atol=1e-5)


def test_unpadded_equals_padded_for_an_open_clip_architecture() -> None:
    enc = load_clip(ModelSpec("ViT-B-32"), allow_random=True)
    texts = ["a photo of a red mug", "sofa"]
    assert np.allclose(enc.encode_texts(texts), enc.encode_texts_padded(texts), atol=1e-4)


def test_real_model_name_without_weights_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="needs --pretrained"):
        load_clip(ModelSpec("ViT-B-32"))


@pytest.mark.parametrize("spec", [ModelSpec("no-such-model", "x"), ModelSpec("ViT-B-32", "/nonexistent/weights.pt")])
def test_unknown_models_and_files_are_model_load_errors(spec: ModelSpec) -> None:
    with pytest.raises(ModelLoadError):
        load_clip(spec)


@pytest.mark.slow  # open_clip builds the ViT before it asks the hub for the XLM-R tower
def test_a_multilingual_open_clip_model_takes_the_real_loading_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chinese queries on real catalogs: open_clip's XLM-R CLIPs. Offline the path runs up to the
    model hub (open_clip knows the name: an XLM-R text tower) and ends in a typed error, not a crash."""
    import open_clip

    config = open_clip.get_model_config("xlm-roberta-base-ViT-B-32")
    assert config["text_cfg"]["hf_tokenizer_name"] == "xlm-roberta-base"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never a 1 GB download, even on a machine with internet
    with pytest.raises(ModelLoadError, match="xlm-roberta-base-ViT-B-32"):
        load_clip(ModelSpec("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"), device="cpu")


def test_local_checkpoint_file_loads_through_the_same_loader(tmp_path: Path, encoder) -> None:
    from safetensors.torch import save_file

    from catalens.encoder import BUNDLED_DIR

    # The bundled config is registered by name; its weights as a separate local checkpoint file.
    state = {k: v.contiguous() for k, v in encoder.model.state_dict().items()}
    save_file(state, str(tmp_path / "ckpt.safetensors"))
    other = load_clip(ModelSpec("catalens-demo", str(tmp_path / "ckpt.safetensors")))
    assert (BUNDLED_DIR / "catalens-demo").is_dir()
    assert np.allclose(other.encode_texts(["red mug"]), encoder.encode_texts(["red mug"]), atol=1e-5)


def test_one_vision_pass_gives_the_clip_embedding_and_the_reranker_tokens(encoder) -> None:
    import torch
    from PIL import Image

    from catalens.itm import clip_image_embeddings_and_tokens, clip_image_tokens

    pixels = encoder.preprocess_images([Image.new("RGB", (80, 60), c) for c in ((200, 20, 20), (20, 20, 200))])
    both = clip_image_embeddings_and_tokens(encoder.model, pixels)
    assert both is not None
    with torch.inference_mode():
        tokens = clip_image_tokens(encoder.model, pixels)
    assert np.allclose(both[0].detach().numpy(), encoder.encode_pixels(pixels), atol=1e-5)
    assert torch.allclose(both[1], tokens, atol=1e-5)
