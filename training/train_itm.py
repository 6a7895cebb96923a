"""Train the bundled reranker: an ITM head on a frozen CLIP, taught binding with hard negatives.

Each batch holds whole families of specs that differ in one attribute (swapped colours,
another pattern, main or secondary colour), rendered as images. Every caption is scored
against every image of its family and one random image; a pair is a match when every
attribute the caption names agrees with the image. Features of the frozen CLIP are
computed once, so a run costs minutes, not the CLIP's half hour.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalens import world
from training.train_clip import EVAL_SEED, TRAIN_SEED_OFFSET, lr_at, param_groups, render_training_set, write_summary

LOG = logging.getLogger("catalens.train")
ITM_SEED_OFFSET = 2_000  # another slice of the world than the CLIP's training data


@dataclass(frozen=True)
class Caption:
    """A caption and the attributes it names (the others it leaves open)."""

    text: str
    names: dict[str, str | None]

    def agrees_with(self, spec: world.ProductSpec) -> bool:
        return all(getattr(spec, attr) == value for attr, value in self.names.items())


def itm_caption(spec: world.ProductSpec, rng: random.Random) -> Caption:
    """Shopper-style captions in the forms `catalens sample` queries use, with what they name."""
    cat = rng.choice(world.CATEGORY_SYNONYMS[spec.category])
    main = rng.choice(world.COLOUR_SYNONYMS[spec.main])
    adj = rng.choice(world.PATTERN_ADJECTIVES[spec.pattern])
    base = {"category": spec.category, "main": spec.main}
    if spec.secondary is None:
        form = rng.randrange(3)
        if form == 0:
            return Caption(f"{main} {cat}", base)
        text = f"a {main} {cat} with no pattern" if form == 1 else f"{adj} {main} {cat}"
        return Caption(text, {**base, "pattern": spec.pattern})
    second = rng.choice(world.COLOUR_SYNONYMS[spec.secondary])
    noun = rng.choice(world.PATTERN_NOUNS[spec.pattern])
    with_pattern = {**base, "pattern": spec.pattern}
    full = {**with_pattern, "secondary": spec.secondary}
    forms = [
        (f"{main} {adj} {cat}", with_pattern), (f"{adj} {main} {cat}", with_pattern),
        (f"{main} {cat} with {noun}", with_pattern), (f"{adj} {cat} in {main}", with_pattern),
        (f"{main} {cat} with {second} {noun}", full), (f"{main} {cat} with {second} {noun}", full),
        (f"{adj} {cat} in {main} with {second} {noun}", full), (f"{main} {adj} {cat} with {second} {noun}", full),
        (f"{main} {cat}", base),
    ]
    text, names = rng.choice(forms)
    return Caption(text, names)


def add_itm_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", default="catalens-demo",
                        help="(itm) the frozen CLIP whose features the ITM head reads")
    parser.add_argument("--itm-width", type=int, default=128, help="(itm) width of the cross-attention blocks")
    parser.add_argument("--itm-layers", type=int, default=2, help="(itm) cross-attention blocks")
    parser.add_argument("--token-layer", type=int, default=-1,
                        help="(itm) image tokens after this many ViT blocks (0: patch embeddings; -1: final)")


def train_itm(args: argparse.Namespace) -> dict:
    """Train the ITM head and write itm.json, itm.safetensors, train.log and metrics.json into args.out."""
    import torch
    from safetensors.torch import save_file

    from catalens.encoder import ModelSpec, load_clip
    from catalens.itm import ItmConfig, ItmHead, clip_text_states

    args.out.mkdir(parents=True, exist_ok=True)
    handler = _log_to(args.out / "train.log")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    clip = load_clip(ModelSpec(args.base_model), device="cpu")
    clip.model.requires_grad_(False)
    t0 = time.time()
    specs, images, groups = render_training_set(args.n_images, args.seed + TRAIN_SEED_OFFSET + ITM_SEED_OFFSET,
                                                clip.image_size, args.threads, views=1)
    LOG.info("rendered %d specs in %d families in %.0fs", len(specs), len(groups), time.time() - t0)
    tokens = _image_tokens(clip, images[:, 0], args.token_layer)
    config = ItmConfig(base_model=args.base_model, text_width=int(clip.model.ln_final.weight.shape[0]),
                       image_width=int(tokens.shape[-1]), width=args.itm_width, layers=args.itm_layers,
                       token_layer=args.token_layer)
    head = ItmHead(config)
    LOG.info("itm head: %.2fM parameters, image tokens %s; args %s",
             sum(p.numel() for p in head.parameters()) / 1e6, tuple(tokens.shape[1:]), vars(args))
    opt = torch.optim.AdamW(param_groups(head, 0.05), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    history: list[dict] = []
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base=args.lr, warmup=args.warmup, total=args.steps)
        text_idx, image_idx, labels, captions = _pairs(specs, groups, args.batch_size, rng)
        with torch.no_grad():
            states, pad = clip_text_states(clip.model, clip.tokenizer([c.text for c in captions]))
        logits = head(states[text_idx], pad[text_idx], tokens[image_idx].float())
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
            LOG.info("step %d/%d loss %.4f acc %.3f lr %.2e %.3fs/step", step, args.steps, loss.item(), acc,
                     opt.param_groups[0]["lr"], (time.time() - t0) / (step + 1))
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


def _log_to(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in LOG.handlers):
        LOG.addHandler(logging.StreamHandler())
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    return handler


def _image_tokens(clip, images: np.ndarray, token_layer: int, batch: int = 256):  # type: ignore[no-untyped-def]
    """Frozen CLIP patch tokens of uint8 (n, H, W, 3) images, normalised as the CLIP expects."""
    import open_clip
    import torch

    from catalens.itm import clip_image_tokens

    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = (pixels[i:i + batch].float() / 255.0 - mean) / std
            out.append(clip_image_tokens(clip.model, x, token_layer).to(torch.float16))
    return torch.cat(out)


def _pairs(specs: list[world.ProductSpec], groups: list[list[int]], batch_size: int,
           rng: random.Random) -> tuple[list[int], list[int], list[float], list[Caption]]:
    """Caption-image pairs: each caption against its family's images and one random image."""
    members: list[list[int]] = []
    while sum(len(g) for g in members) < batch_size:
        members.append(rng.choice(groups))
    captions: list[Caption] = []
    text_idx: list[int] = []
    image_idx: list[int] = []
    labels: list[float] = []
    for family in members:
        for i in family:
            caption = itm_caption(specs[i], rng)
            t = len(captions)
            captions.append(caption)
            for j in [*family, rng.randrange(len(specs))]:
                text_idx.append(t)
                image_idx.append(j)
                labels.append(float(caption.agrees_with(specs[j])))
    return text_idx, image_idx, labels, captions


def evaluate_reranking(clip, head, *, n_products: int, top_n: int = 20, seed: int = EVAL_SEED) -> dict:  # type: ignore[no-untyped-def]
    """Text query sets of a held-out catalog, CLIP order vs reranked top_n (best image per product)."""
    import shutil

    import torch

    from catalens.itm import clip_image_tokens, clip_text_states
    from retrieval.evaluation import score_rankings
    from training.train_clip import _encode_images, _jpeg_roundtrip

    products = world.generate_products(n_products, seed)
    tensors, owners = [], []
    for i, p in enumerate(products):
        for view in range(p.n_views):
            tensors.append(clip.preprocess(_jpeg_roundtrip(world.render_product(p.spec, world._image_seed(seed, i, view)))))
            owners.append(i)
    tmp = Path("/tmp") / f"catalens-itm-eval-{seed}"
    queries = [q for q in world.build_queries(products, seed=seed, n=300, out=tmp) if "text" in q]
    shutil.rmtree(tmp, ignore_errors=True)
    pixels = torch.stack(tensors)
    owner_t = torch.tensor(owners)
    results: dict[str, dict] = {}
    with torch.inference_mode():
        img_emb = _encode_images(clip.model, pixels)
        img_tok = torch.cat([clip_image_tokens(clip.model, pixels[i:i + 256], head.config.token_layer)
                             for i in range(0, len(pixels), 256)])
        for qset in ("plain", "color_swap"):
            qs = [q for q in queries if q["set"] == qset]
            if not qs:
                continue
            tokens = clip.tokenizer([q["text"] for q in qs])
            sims = clip.model.encode_text(tokens, normalize=True) @ img_emb.T
            states, pad = clip_text_states(clip.model, tokens)
            ranked_clip, ranked_itm = [], []
            for qi in range(len(qs)):
                best = torch.full((len(products),), -2.0).scatter_reduce(0, owner_t, sims[qi], reduce="amax")
                best_img = {}
                for img_i in torch.argsort(sims[qi], descending=True).tolist():
                    best_img.setdefault(owners[img_i], img_i)
                    if len(best_img) >= top_n:
                        break
                top = best.topk(top_n).indices.tolist()
                rows = [best_img[p] for p in top]
                logits = head(states[qi:qi + 1].expand(len(rows), -1, -1), pad[qi:qi + 1].expand(len(rows), -1),
                              img_tok[rows])
                order = torch.argsort(logits, descending=True).tolist()
                ranked_clip.append([products[p].product_id for p in top[:10]])
                ranked_itm.append([products[top[o]].product_id for o in order[:10]])
            rel = [set(q["relevant"]) for q in qs]
            results[qset] = {"clip": score_rankings(ranked_clip, rel), "reranked": score_rankings(ranked_itm, rel)}
    return results


def describe_metrics(metrics: dict) -> str:
    return "; ".join(f"{k}: R@1 {v['clip']['recall@1']:.3f} -> {v['reranked']['recall@1']:.3f}"
                     for k, v in metrics.items())



