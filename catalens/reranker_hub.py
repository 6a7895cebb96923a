"""Rerankers built on real pretrained models, for machines that can reach a model hub.

- BLIP ITM (transformers `BlipForImageTextRetrieval`, extra `catalens[blip]`): the ITM head's
  match probability. Stored features: the ViT's output tokens.
- open_clip CoCa: mean log P(query | image) from the caption decoder, mapped to (0, 1].
  Stored features: the attentional pooler's image tokens. CoCa can also write captions.
Both load from a hub name or a local path; cost per pair is far above the bundled ITM head
(see the README's reranking table), so keep rerank_top_n small on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catalens.encoder import ClipEncoder, weights_digest
from catalens.errors import CaptionUnsupportedError, ModelLoadError
from catalens.reranker import scores_by_query

MAX_CAPTION_TOKENS = 24


@dataclass
class BlipItmReranker:
    """BLIP's image-text matching head over stored ViT tokens."""

    model: Any
    processor: Any
    device: str
    reranker_id: str
    can_caption: bool = False

    def preprocess(self, image: Any) -> Any:
        return self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]

    def reads_pixels_of(self, encoder: ClipEncoder) -> bool:
        return False

    def image_pass(self, encoder: ClipEncoder) -> Any | None:
        return None

    def features_with_vectors(self, encoder: ClipEncoder, pixels: Any) -> tuple[np.ndarray, np.ndarray] | None:
        return None

    def image_features(self, pixels: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.vision_model(pixel_values=pixels.to(self.device))[0]
        return out.to(torch.float16).cpu().numpy()

    def score(self, query: str, features: np.ndarray) -> np.ndarray:
        import torch

        if not len(features):
            return np.zeros(0, np.float32)
        n = len(features)
        text = self.processor.tokenizer([query], return_tensors="pt", truncation=True, max_length=64)
        with torch.inference_mode():
            image = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(self.device)
            hidden = self.model.text_encoder(
                input_ids=text["input_ids"].expand(n, -1).to(self.device),
                attention_mask=text["attention_mask"].expand(n, -1).to(self.device),
                encoder_hidden_states=image,
                encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long, device=self.device),
                return_dict=True).last_hidden_state
            probs = torch.softmax(self.model.itm_head(hidden[:, 0, :]), dim=-1)[:, 1]
        return probs.float().cpu().numpy()

    def score_pairs(self, queries: list[str], features: np.ndarray) -> np.ndarray:
        return scores_by_query(self, queries, features)

    def caption(self, pixels: Any) -> list[str]:

        raise CaptionUnsupportedError("BLIP ITM has no caption decoder; use a CoCa reranker for --caption")


def load_blip_reranker(name_or_path: str, *, device: str = "cpu") -> BlipItmReranker:
    """BLIP ITM from a hub id (e.g. Salesforce/blip-itm-base-coco) or a local save_pretrained folder."""
    try:
        from transformers import BlipForImageTextRetrieval, BlipProcessor
    except ImportError as exc:
        raise ModelLoadError("BLIP reranking needs transformers: pip install 'catalens[blip]'") from exc
    try:
        model = BlipForImageTextRetrieval.from_pretrained(name_or_path).eval().to(device)
        processor = BlipProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load BLIP ITM {name_or_path!r}: {exc}") from exc
    digest = _folder_digest(Path(name_or_path))
    return BlipItmReranker(model, processor, device, f"blip:{name_or_path}{digest}")


@dataclass
class CocaReranker:
    """open_clip CoCa: caption likelihood of the query given stored image tokens."""

    model: Any
    tokenizer: Any
    transform: Any
    device: str
    reranker_id: str
    can_caption: bool = True

    def preprocess(self, image: Any) -> Any:
        return self.transform(image)

    def reads_pixels_of(self, encoder: ClipEncoder) -> bool:
        return False

    def image_pass(self, encoder: ClipEncoder) -> Any | None:
        return None

    def features_with_vectors(self, encoder: ClipEncoder, pixels: Any) -> tuple[np.ndarray, np.ndarray] | None:
        return None

    def image_features(self, pixels: Any) -> np.ndarray:
        import torch

        with torch.inference_mode():
            _, tokens = self.model._encode_image(pixels.to(self.device))
        return tokens.to(torch.float16).cpu().numpy()

    def score(self, query: str, features: np.ndarray) -> np.ndarray:
        """exp(mean log P(token | image, previous tokens)) over the query's tokens, in [0, 1]."""
        import torch

        if not len(features):
            return np.zeros(0, np.float32)
        n = len(features)
        tokens = self.tokenizer([query]).to(self.device)
        length = int(tokens.argmax(dim=-1).max().item()) + 1  # through EOT (the highest id)
        tokens = tokens[:, :length].expand(n, -1)
        with torch.inference_mode():
            embs = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(self.device)
            latent = torch.zeros(n, 1, device=self.device)  # unused when image_embs is given
            out = self.model(None, tokens, image_latent=latent, image_embs=embs)
            logp = torch.log_softmax(out["logits"].float(), dim=-1)
            token_logp = logp.gather(-1, out["labels"].unsqueeze(-1)).squeeze(-1)
            mean = token_logp.double().mean(dim=-1)
        return torch.exp(mean).float().cpu().numpy()  # can underflow to 0 for a very unlikely query

    def score_pairs(self, queries: list[str], features: np.ndarray) -> np.ndarray:
        return scores_by_query(self, queries, features)

    def caption(self, pixels: Any) -> list[str]:
        """Greedy decoding through the model's own forward (CoCa.generate needs transformers)."""
        import open_clip
        import torch

        tok = self.tokenizer
        sot = getattr(tok, "sot_token_id", None) or tok.encoder["<start_of_text>"]
        eot = getattr(tok, "eot_token_id", None) or tok.encoder["<end_of_text>"]
        with torch.inference_mode():
            latent, embs = self.model._encode_image(pixels.to(self.device))
            seq = torch.full((len(pixels), 1), sot, dtype=torch.long, device=self.device)
            done = torch.zeros(len(pixels), dtype=torch.bool, device=self.device)
            context = int(getattr(self.model.text, "context_length", MAX_CAPTION_TOKENS + 1))
            for _ in range(min(MAX_CAPTION_TOKENS, context - 1)):
                logits = self.model(None, seq, image_latent=latent, image_embs=embs, output_labels=False)["logits"]
                nxt = logits[:, -1].argmax(dim=-1)
                nxt = torch.where(done, torch.full_like(nxt, eot), nxt)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                done |= nxt == eot
                if bool(done.all()):
                    break
        return [open_clip.decode(row).replace("<start_of_text>", "").split("<end_of_text>")[0].strip()
                for row in seq.cpu()]


def load_coca_reranker(model: str, pretrained: str | None, *, device: str = "cpu") -> CocaReranker:
    """An open_clip CoCa by name (or a JSON config file) + pretrained tag or checkpoint file.

    e.g. coca_ViT-B-32@mscoco_finetuned_laion2b_s13b_b90k, or ./my-coca.json@./my-coca.pt
    """
    import open_clip

    if model.endswith(".json") and Path(model).is_file():
        open_clip.add_model_config(Path(model))  # registered in this process before create_model
        model = Path(model).stem
    try:
        net = open_clip.create_model(model, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model)
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/OSError for names and files
        raise ModelLoadError(f"cannot load CoCa {model!r} ({pretrained}): {exc}") from exc
    if not hasattr(net, "text_decoder"):
        raise ModelLoadError(f"{model!r} is not a CoCa model (no caption decoder)")
    net.eval()
    transform = open_clip.image_transform(net.visual.image_size, is_train=False)
    digest = f"@{weights_digest(Path(pretrained))}" if pretrained and Path(pretrained).is_file() else ""
    return CocaReranker(net, tokenizer, transform, device, f"coca:{model}:{pretrained}{digest}")


def _folder_digest(path: Path) -> str:
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
    return f"@{weights_digest(weights[0])}" if weights else ""



