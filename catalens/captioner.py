"""The bundled captioner: a small GRU decoder that writes a caption from a frozen CLIP's image vector.

It reads what the retrieval CLIP already computes (the pooled, normalised image embedding), so a
caption costs one tiny decoder pass on top of an image search. Its output vocabulary is the few
BPE tokens its training captions use (a caption head for the generated world, as `catalens-demo`
is a CLIP for it); real catalogs caption with a CoCa (`CATALENS_RERANKER=coca:...`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from catalens.clip_tokenizer import EOT, SOT, ClipTokenizer

CAPTIONER_CONFIG = "captioner.json"
CAPTIONER_WEIGHTS = "captioner.safetensors"
BUNDLED_CAPTIONER = "catalens-captioner"


@dataclass(frozen=True)
class CaptionerConfig:
    """The decoder's shape, the CLIP whose image vectors it reads, and its vocabulary (BPE ids)."""

    base_model: str
    embed_dim: int
    vocab: tuple[int, ...]  # BPE token ids; index 0 is SOT, index 1 EOT
    hidden: int = 256
    layers: int = 2
    max_tokens: int = 24

    def save(self, folder: Path) -> None:
        (folder / CAPTIONER_CONFIG).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> CaptionerConfig:
        data = json.loads((folder / CAPTIONER_CONFIG).read_text())
        return cls(**{**data, "vocab": tuple(data["vocab"])})


def vocabulary(captions: list[str], tokenizer: ClipTokenizer) -> tuple[int, ...]:
    """SOT, EOT, then every BPE id the captions use (sorted)."""
    ids = sorted({i for text in captions for i in tokenizer.encode(text)})
    return (SOT, EOT, *ids)


class CaptionHead(nn.Module):
    """Image vector -> initial GRU state; tokens in the head's vocabulary, greedy decoding."""

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        self.config = config
        self.start = nn.Sequential(nn.Linear(config.embed_dim, config.hidden * config.layers), nn.Tanh())
        self.image_in = nn.Linear(config.embed_dim, config.hidden)
        self.embed = nn.Embedding(len(config.vocab), config.hidden)
        self.gru = nn.GRU(config.hidden, config.hidden, num_layers=config.layers, batch_first=True)
        self.out = nn.Linear(config.hidden, len(config.vocab))

    def _state(self, image: torch.Tensor) -> torch.Tensor:
        h = self.start(image).view(len(image), self.config.layers, self.config.hidden)
        return h.transpose(0, 1).contiguous()

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits for the next token at every position of `tokens` (vocabulary indexes, SOT first)."""
        x = self.embed(tokens) + self.image_in(image)[:, None, :]
        y, _ = self.gru(x, self._state(image))
        return self.out(y)

    @torch.inference_mode()
    def generate(self, image: torch.Tensor) -> list[list[int]]:
        """Greedy decoding: vocabulary indexes per image, without SOT and EOT."""
        n = len(image)
        state = self._state(image)
        bias = self.image_in(image)[:, None, :]
        token = torch.zeros(n, 1, dtype=torch.long)  # SOT
        out: list[list[int]] = [[] for _ in range(n)]
        done = torch.zeros(n, dtype=torch.bool)
        for _ in range(self.config.max_tokens):
            y, state = self.gru(self.embed(token) + bias, state)
            token = self.out(y[:, -1]).argmax(-1, keepdim=True)
            for i, t in enumerate(token[:, 0].tolist()):
                if not done[i] and t != 1:
                    out[i].append(t)
            done |= token[:, 0] == 1
            if bool(done.all()):
                break
        return out


class Captioner:
    """A loaded captioner: captions from CLIP image vectors of the model it was trained on."""

    def __init__(self, head: CaptionHead, tokenizer: ClipTokenizer, captioner_id: str) -> None:
        self.head = head.eval()
        self.tokenizer = tokenizer
        self.captioner_id = captioner_id
        self.base_model = head.config.base_model

    def captions(self, image_vectors: np.ndarray) -> list[str]:
        image = torch.from_numpy(np.asarray(image_vectors, np.float32))
        vocab = self.head.config.vocab
        # BPE splits "t-shirt" into three words; the decoder puts spaces between them.
        return [re.sub(r" ?- ?", "-", self.tokenizer.decode([vocab[i] for i in seq]))
                for seq in self.head.generate(image)]


def bundled_captioner_dir() -> Path:
    return Path(__file__).parent / "weights" / BUNDLED_CAPTIONER


def load_captioner(folder: Path | None = None) -> Captioner:
    """The captioner in `folder` (default: the bundled one)."""
    from safetensors.torch import load_file

    from catalens.digests import file_sha256

    folder = folder or bundled_captioner_dir()
    config = CaptionerConfig.load(folder)
    head = CaptionHead(config)
    head.load_state_dict({k: v.float() for k, v in load_file(str(folder / CAPTIONER_WEIGHTS)).items()})
    digest = file_sha256(folder / CAPTIONER_WEIGHTS)[:12]
    return Captioner(head, ClipTokenizer(), f"captioner:{folder.name}@{digest}+{config.base_model}")
