"""Train the bundled reranker: an ITM head on a frozen CLIP text tower, taught binding with hard negatives.

Each batch holds whole families of specs that differ in one attribute (swapped colours,
another pattern, main or secondary colour), rendered as images. Every caption is scored
against every image of its family, one random image, images mined from the frozen CLIP's
own top 20 for that caption (the candidates the reranker will see when serving) and images
that differ from its product only in category or only in secondary colour; a pair is a match
when every attribute the caption names agrees with the image. The image side is the head's
own conv grid, trained with it, and/or the CLIP's ViT tokens (precomputed once).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sampledata import catalog, texts, world
from training.train_clip import (
    EVAL_SEED,
    TRAIN_SEED_OFFSET,
    encode_images,
    lr_at,
    param_groups,
    render_training_set,
    write_summary,
)

LOG = logging.getLogger("catalens.train")
ITM_SEED_OFFSET = 2_000  # another slice of the world than the CLIP's training data
FUSION_WEIGHTS = (0.0, 5.0, 10.0, 20.0)  # first-stage weights the evaluation also reports


@dataclass(frozen=True)
class Caption:
    """A caption of `spec` and the attributes it names (the others it leaves open)."""

    text: str
    names: dict[str, str | None]
    spec: world.ProductSpec

    def agrees_with(self, spec: world.ProductSpec) -> bool:
        return all(getattr(spec, attr) == value for attr, value in self.names.items())


def itm_caption(spec: world.ProductSpec, rng: random.Random) -> Caption:
    """Shopper-style captions in the forms `catalens sample` queries use, with what they name."""
    text, names = texts.labelled_caption(spec, rng)
    return Caption(text, names, spec)


def train_itm(args: argparse.Namespace) -> dict:
    """Train the ITM head and write itm.json, itm.safetensors, train.log and metrics.json into args.out."""
    import torch
    from safetensors.torch import save_file

    from catalens.itm import ItmConfig, ItmHead, clip_image_tokens, clip_text_states

    handler, rng, clip = start_head_run(args)
    t0 = time.time()
    specs, images, groups = render_training_set(args.n_images, args.seed + TRAIN_SEED_OFFSET + ITM_SEED_OFFSET,
                                                clip.image_size, args.threads, views=1)
    pixels = normalised(images[:, 0])
    LOG.info("rendered %d specs in %d families in %.0fs", len(specs), len(groups), time.time() - t0)
    one_off = _one_off_index(specs)
    conv = args.image_encoder.startswith("conv")
    with torch.inference_mode():
        clip_emb = encode_images(clip.model, pixels)
        tokens = None if args.image_encoder == "conv" else torch.cat([clip_image_tokens(clip.model, pixels[i:i + 256], args.token_layer)
                                             .to(torch.float16) for i in range(0, len(pixels), 256)])
    text_width = int(clip.model.ln_final.weight.shape[0])
    config = ItmConfig(base_model=args.base_model, text_width=text_width,
                       image_width=args.grid_width if conv else int(clip.model.visual.transformer.width),
                       width=args.itm_width, layers=args.itm_layers, token_layer=args.token_layer,
                       image_encoder=args.image_encoder, grid_width=args.grid_width,
                       clip_width=int(tokens.shape[2]) if args.image_encoder == "conv+clip" else 0)
    head = ItmHead(config)
    if args.init_from:
        from safetensors.torch import load_file

        from catalens.itm import ITM_WEIGHTS

        file = args.init_from / ITM_WEIGHTS if args.init_from.is_dir() else args.init_from
        head.load_state_dict({k: v.float() for k, v in load_file(str(file)).items()})
        LOG.info("starting from %s", file)
    LOG.info("itm head: %.2fM parameters, image encoder %s; args %s",
             sum(p.numel() for p in head.parameters()) / 1e6, args.image_encoder, vars(args))
    opt = torch.optim.AdamW(param_groups(head, 0.05), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    history: list[dict] = []
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base=args.lr, warmup=args.warmup, total=args.steps)
        captions, families = _captions(specs, groups, args.batch_size, rng)
        with torch.no_grad():
            text = clip.tokenizer([c.text for c in captions])
            states, pad = clip_text_states(clip.model, text)
            text_emb = clip.model.encode_text(text, normalize=True)
            mined = _mine(text_emb @ clip_emb.T, args.mined, rng)
            for extra, caption in zip(mined, captions):
                extra.extend(_one_off(specs, one_off, caption, args.one_off_negatives, rng))
        text_idx, image_idx, labels = _pairs(specs, captions, families, mined, rng)
        if conv:
            used = sorted(set(image_idx))
            slot = {j: k for k, j in enumerate(used)}
            clip_tokens = None if tokens is None else tokens[used].float()
            image = head.image_tokens(pixels[used], clip_tokens)[[slot[j] for j in image_idx]]
        else:
            image = tokens[image_idx].float()
        logits = head(states[text_idx], pad[text_idx], image)
        target = torch.tensor(labels, dtype=torch.float32)
        pos_weight = (target.numel() - target.sum()) / target.sum().clamp(min=1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            acc = ((logits > 0).float() == target).float().mean().item()
            history.append({"step": step, "loss": round(loss.item(), 4), "accuracy": round(acc, 4)})
            LOG.info("step %d/%d loss %.4f acc %.3f pairs %d lr %.2e %.3fs/step", step, args.steps, loss.item(),
                     acc, len(labels), opt.param_groups[0]["lr"], (time.time() - t0) / (step + 1))
    train_s = time.time() - t0
    head.eval()
    metrics = evaluate_reranking(clip, head, n_products=args.eval_products) if args.eval_products else {}
    LOG.info("final metrics: %s", json.dumps(metrics))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in head.state_dict().items()}
    from catalens.itm import ITM_WEIGHTS

    save_file(state, str(args.out / ITM_WEIGHTS), metadata={"format": "pt", "base_model": args.base_model})
    config.save(args.out)
    LOG.removeHandler(handler)
    return write_summary(args, model="itm", train_s=train_s, metrics=metrics, history=history,
                         base_model=args.base_model)


def start_head_run(args: argparse.Namespace) -> tuple[logging.Handler, random.Random, Any]:
    """What a head's recipe starts with: the output folder and its log, seeds, threads, and the
    frozen CLIP (--base-model) it reads."""
    import torch

    from catalens.encoder import ModelSpec, load_clip

    args.out.mkdir(parents=True, exist_ok=True)
    handler = log_to(args.out / "train.log")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    clip = load_clip(ModelSpec(args.base_model), device="cpu")
    clip.model.requires_grad_(False)
    return handler, random.Random(args.seed), clip


def log_to(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in LOG.handlers):
        LOG.addHandler(logging.StreamHandler())
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    return handler


def normalised(images: np.ndarray):
    """uint8 (n, H, W, 3) images -> float (n, 3, H, W), normalised as the CLIP expects."""
    import open_clip
    import torch

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def _captions(specs: list[world.ProductSpec], groups: list[list[int]], batch_size: int,
              rng: random.Random) -> tuple[list[Caption], list[list[int]]]:
    """Whole families until the batch is full: a caption per member, with its family's images."""
    captions: list[Caption] = []
    families: list[list[int]] = []
    while len(captions) < batch_size:
        family = rng.choice(groups)
        for i in family:
            captions.append(itm_caption(specs[i], rng))
            families.append(family)
    return captions, families


def _mine(sims, per_caption: int, rng: random.Random, top: int = 20) -> list[list[int]]:
    """Per caption, `per_caption` images drawn from the frozen CLIP's top `top` for it."""
    if per_caption <= 0:
        return [[] for _ in range(len(sims))]
    ranked = sims.topk(top, dim=1).indices.tolist()
    return [rng.sample(row, per_caption) for row in ranked]


ONE_OFF = ("category", "secondary")  # attributes in which extra negatives differ from the caption's product


def _one_off_index(specs: list[world.ProductSpec]) -> dict[tuple, list[int]]:
    """Spec indices keyed by (attribute left out, the other attributes' values)."""
    index: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        for attr in ONE_OFF:
            index.setdefault(_one_off_key(spec, attr), []).append(i)
    return index


def _one_off_key(spec: world.ProductSpec, attr: str) -> tuple:
    return (attr, *(getattr(spec, a) for a in ("category", "main", "secondary", "pattern") if a != attr))


def _one_off(specs: list[world.ProductSpec], index: dict[tuple, list[int]], caption: Caption, n: int,
             rng: random.Random) -> list[int]:
    """Per attribute in ONE_OFF, up to n images that differ from the caption's product only there."""
    spec = caption.spec
    out: list[int] = []
    for attr in ONE_OFF:
        others = [i for i in index.get(_one_off_key(spec, attr), []) if getattr(specs[i], attr) != getattr(spec, attr)]
        out.extend(rng.sample(others, min(n, len(others))))
    return out


def _pairs(specs: list[world.ProductSpec], captions: list[Caption], families: list[list[int]],
           mined: list[list[int]], rng: random.Random) -> tuple[list[int], list[int], list[float]]:
    """(caption index, image index, label) for each caption against its family, a random and mined images."""
    text_idx: list[int] = []
    image_idx: list[int] = []
    labels: list[float] = []
    for t, (caption, family, extra) in enumerate(zip(captions, families, mined)):
        for j in dict.fromkeys([*family, rng.randrange(len(specs)), *extra]):
            text_idx.append(t)
            image_idx.append(j)
            labels.append(float(caption.agrees_with(specs[j])))
    return text_idx, image_idx, labels


def evaluate_reranking(clip, head, *, n_products: int, top_n: int = 20, seed: int = EVAL_SEED,
                       weights: tuple[float, ...] = FUSION_WEIGHTS) -> dict:
    """Text query sets of a held-out catalog: CLIP order vs the top_n reranked (best image per product).

    "reranked" fuses as the service does (logit + w * cosine, w = Settings().rerank_weight);
    "recall@1_by_weight" shows the same for other weights.
    """
    import shutil

    import torch

    from catalens.config import Settings
    from catalens.itm import clip_text_states, itm_image_features
    from catalens.ranking import fused_score
    from retrieval.evaluation import score_rankings
    from training.train_clip import jpeg_roundtrip

    default_w = Settings().rerank_weight
    weights = tuple(sorted({*weights, default_w}))
    products = catalog.generate_products(n_products, seed)
    tensors, owners = [], []
    for i, p in enumerate(products):
        for view in range(p.n_views):
            tensors.append(clip.preprocess(jpeg_roundtrip(world.render_product(p.spec, catalog.image_seed(seed, i, view)))))
            owners.append(i)
    tmp = Path("/tmp") / f"catalens-itm-eval-{seed}"
    queries = [q for q in catalog.build_queries(products, seed=seed, n=300, out=tmp) if "text" in q]
    shutil.rmtree(tmp, ignore_errors=True)
    pixels = torch.stack(tensors)
    owner_t = torch.tensor(owners)
    images_of: list[list[int]] = [[] for _ in products]
    for i, o in enumerate(owners):
        images_of[o].append(i)
    results: dict[str, dict] = {}
    with torch.inference_mode():
        img_emb = encode_images(clip.model, pixels)
        img_tok = torch.cat([itm_image_features(clip.model, head, pixels[i:i + 256]).to(torch.float16)
                             for i in range(0, len(pixels), 256)])
        for qset in ("plain", "color_swap"):
            qs = [q for q in queries if q["set"] == qset]
            if not qs:
                continue
            tokens = clip.tokenizer([q["text"] for q in qs])
            sims = clip.model.encode_text(tokens, normalize=True) @ img_emb.T
            states, pad = clip_text_states(clip.model, tokens)
            ranked_clip: list[list[str]] = []
            ranked: dict[float, list[list[str]]] = {w: [] for w in weights}
            for qi in range(len(qs)):
                best = torch.full((len(products),), -2.0).scatter_reduce(0, owner_t, sims[qi], reduce="amax")
                top = best.topk(top_n)
                rows = [max(images_of[p], key=lambda i: float(sims[qi, i])) for p in top.indices.tolist()]
                probs = torch.sigmoid(head(states[qi:qi + 1].expand(len(rows), -1, -1),
                                           pad[qi:qi + 1].expand(len(rows), -1), img_tok[rows].float())).tolist()
                ranked_clip.append([products[p].product_id for p in top.indices[:10].tolist()])
                for w in weights:  # fused exactly as the service fuses
                    fused = [fused_score(pr, cos, w) for pr, cos in zip(probs, top.values.tolist())]
                    order = sorted(range(len(rows)), key=lambda o: -fused[o])[:10]
                    ranked[w].append([products[int(top.indices[o])].product_id for o in order])
            rel = [set(q["relevant"]) for q in qs]
            results[qset] = {
                "clip": score_rankings(ranked_clip, rel), "reranked": score_rankings(ranked[default_w], rel),
                "weight": default_w,
                "recall@1_by_weight": {str(w): score_rankings(ranked[w], rel)["recall@1"] for w in weights},
            }
    return results
