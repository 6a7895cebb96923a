"""The bundled image-text matching (ITM) model: query tokens cross-attend to image patch tokens.

It sits on a frozen CLIP: the CLIP text tower gives per-token states of the query. The image
tokens come either from the CLIP vision tower (`image_encoder="clip"`) or from the head's own
small convolutional encoder on the same pixels (`"conv"`: an 8x8 grid, finer than the bundled
CLIP's 4x4 patches, trained with the head; `"conv+clip"`: the grid and the CLIP's ViT tokens
together). They are computed once at index time and stored,
and a few cross-attention blocks with a binary match head read the query against them. Unlike
two pooled vectors, this can tell "red mug with blue dots" from "blue mug with red dots".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

ITM_CONFIG = "itm.json"
ITM_WEIGHTS = "itm.safetensors"


@dataclass(frozen=True)
class ItmConfig:
    """Shape of the ITM head and the CLIP it reads features from."""

    base_model: str
    text_width: int
    image_width: int
    width: int = 128
    layers: int = 2
    heads: int = 4
    token_layer: int = -1  # image tokens after this many ViT blocks (0: patch embeddings); -1: final, normed
    image_encoder: str = "clip"  # "clip": the CLIP's ViT tokens; "conv": the head's own encoder; "conv+clip": both
    grid_width: int = 64  # channels of the conv encoder's tokens (what is stored per grid cell)
    clip_width: int = 0  # width of the CLIP ViT tokens that "conv+clip" reads beside its grid

    def save(self, folder: Path) -> None:
        (folder / ITM_CONFIG).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, folder: Path) -> ItmConfig:
        return cls(**json.loads((folder / ITM_CONFIG).read_text()))


class CrossBlock(nn.Module):
    """Pre-norm block: text self-attention, text-to-image cross-attention, MLP."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_self = nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_cross = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, pad: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.ln_self(x)
        x = x + self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        h = self.ln_cross(x)
        x = x + self.cross_attn(h, image, image, need_weights=False)[0]
        return x + self.mlp(self.ln_mlp(x))


class ConvTokens(nn.Module):
    """Pixels (N, 3, H, W) -> an (H/8 x W/8) grid of tokens: (N, H*W/64, grid_width), position-encoded."""

    def __init__(self, grid_width: int, grid: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
            nn.Conv2d(64, grid_width, 3, stride=2, padding=1),
        )
        self.position = nn.Parameter(torch.zeros(1, grid * grid, grid_width))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.net(pixels).flatten(2).transpose(1, 2)
        return x + self.position[:, : x.shape[1]]


class ItmHead(nn.Module):
    """(query token states, padding mask, image tokens) -> one match logit per pair."""

    def __init__(self, config: ItmConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ConvTokens(config.grid_width) if config.image_encoder.startswith("conv") else None
        # "conv+clip": the CLIP's ViT tokens join the grid (projected to its width), so the head can
        # take category and pattern from the well-trained CLIP and colour placement from the finer grid
        self.clip_token = nn.Linear(config.clip_width, config.grid_width) if config.image_encoder == "conv+clip" else None
        self.text_in = nn.Linear(config.text_width, config.width)
        self.image_in = nn.Linear(config.image_width, config.width)
        self.image_ln = nn.LayerNorm(config.width)
        self.blocks = nn.ModuleList(CrossBlock(config.width, config.heads) for _ in range(config.layers))
        self.ln_out = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, 1)

    def image_tokens(self, pixels: torch.Tensor, clip_tokens: torch.Tensor | None) -> torch.Tensor:
        """The conv grid of `pixels`, followed by the projected CLIP ViT tokens for "conv+clip"."""
        if self.encoder is None:
            raise ValueError("this head reads the CLIP's tokens only: it has no conv grid of its own")
        grid = self.encoder(pixels)
        if self.clip_token is None:
            return grid
        if clip_tokens is None:
            raise ValueError("a conv+clip head needs the CLIP's ViT tokens of these pixels")
        return torch.cat([grid, self.clip_token(clip_tokens.to(grid.dtype))], dim=1)

    def forward(self, text: torch.Tensor, pad: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.text_in(text)
        img = self.image_ln(self.image_in(image.to(x.dtype)))
        for block in self.blocks:
            x = block(x, pad, img)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (self.ln_out(x) * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.head(pooled).squeeze(-1)


def clip_text_states(model: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token states of an open_clip CLIP text tower, cut after the longest EOT; (states, pad mask)."""
    eot = tokens.argmax(dim=-1)  # open_clip's EOT has the highest id, as its argmax pooling assumes
    length = int(eot.max().item()) + 1
    tokens = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    pad = torch.arange(length, device=tokens.device)[None, :] > eot[:, None]
    return x, pad


def _vit_blocks(model: Any, pixels: torch.Tensor, token_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens after `token_layer` blocks, or the final normed tokens if -1; final normed tokens)."""
    visual = model.visual
    x = visual._embeds(pixels)
    blocks = visual.transformer.resblocks
    if not visual.transformer.batch_first:
        raise ValueError("expected a batch-first open_clip ViT")
    taken = x if token_layer == 0 else None
    for i, block in enumerate(blocks, start=1):
        x = block(x)
        if i == token_layer:
            taken = x
    final = visual.ln_post(x)
    return (final if taken is None else taken), final


def clip_image_tokens(model: Any, pixels: torch.Tensor, token_layer: int = -1) -> torch.Tensor:
    """Image tokens (class token first) of an open_clip ViT: (N, T, width)."""
    return _vit_blocks(model, pixels, token_layer)[0]


def itm_image_features(clip_model: Any, head: ItmHead, pixels: torch.Tensor,
                       clip_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """The image tokens `head` reads: its own conv grid (and the CLIP's ViT tokens), or the CLIP's ViT tokens.

    `clip_tokens` are the CLIP's ViT tokens of `pixels` when a caller already has them (the indexer's one pass).
    """
    if clip_tokens is None and reads_clip_tokens(head):
        clip_tokens = clip_image_tokens(clip_model, pixels, head.config.token_layer)
    if head.encoder is not None:
        return head.image_tokens(pixels, clip_tokens)
    if clip_tokens is None:
        raise ValueError("a CLIP-token head needs the CLIP's ViT tokens")
    return clip_tokens


def reads_clip_tokens(head: ItmHead) -> bool:
    """True when the head's features include the CLIP's own ViT tokens."""
    return head.encoder is None or head.clip_token is not None


def pools_from_tokens(model: Any) -> bool:
    """True for a ViT whose embedding is its normed class token, projected: the embedding and the
    reranker's tokens then come from one vision pass (the bundled model)."""
    visual = model.visual
    return (getattr(visual, "pool_type", None) == "tok" and getattr(visual, "attn_pool", None) is None
            and not getattr(visual, "final_ln_after_pool", False) and getattr(visual, "proj", None) is not None)


def clip_image_embeddings_and_tokens(model: Any, pixels: torch.Tensor,
                                     token_layer: int = -1) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One vision pass giving both the normalised CLIP embedding and the reranker's tokens.

    Exact when `pools_from_tokens(model)`; None for other towers, which then take two passes.
    """
    if not pools_from_tokens(model):
        return None
    tokens, final = _vit_blocks(model, pixels, token_layer)
    pooled = final[:, 0] @ model.visual.proj
    return torch.nn.functional.normalize(pooled, dim=-1), tokens


class ImagePass(nn.Module):
    """pixels -> (normalised CLIP embeddings, the head's stored features): the indexer's one vision
    pass, as a module so that it also exports to ONNX."""

    def __init__(self, clip_model: Any, head: ItmHead) -> None:
        super().__init__()
        if not (pools_from_tokens(clip_model) and reads_clip_tokens(head)):
            raise ValueError("this CLIP and head need two passes")
        self.clip_model, self.head = clip_model, head

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = clip_image_embeddings_and_tokens(self.clip_model, pixels, self.head.config.token_layer)
        assert both is not None  # checked in __init__
        vectors, tokens = both
        return vectors, itm_image_features(self.clip_model, self.head, pixels, tokens)
