"""Train the bundled retrieval CLIP from scratch on the generated product world (CPU, open_clip code).

Reproducible: every random choice flows from --seed; the log, metrics and fp16 safetensors
weights are written together into --out, in the layout the model loader reads.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import random
import shutil
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from sampledata import catalog, texts, world

LOG = logging.getLogger("catalens.train")
EVAL_SEED = 424242  # held out: never used for training data or the sample catalog
TRAIN_SEED_OFFSET = 1_000


# --- data --------------------------------------------------------------------------------


def _render_item(args: tuple[world.ProductSpec, int, int]) -> np.ndarray:
    """Render, JPEG round-trip (as catalog images are stored) and shrink to the model's input."""
    from PIL import Image

    spec, seed, size = args
    buf = io.BytesIO()
    world.render_product(spec, seed).save(buf, format="JPEG", quality=90)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def hard_negatives(spec: world.ProductSpec, rng: random.Random) -> list[world.ProductSpec]:
    """Specs that differ from `spec` in exactly one attribute: what a batch must tell apart."""
    out: list[world.ProductSpec] = []
    if spec.secondary and rng.random() < 0.5:  # colour swap: the binding negative
        out.append(world.ProductSpec(spec.category, spec.secondary, spec.main, spec.pattern))
    if rng.random() < 0.3:  # another pattern, same colours
        pattern = rng.choice([p for p in world.PATTERNS if p != spec.pattern])
        secondary = None if pattern == "solid" else spec.secondary or rng.choice(
            [c for c in world.COLOURS if c != spec.main])
        out.append(world.ProductSpec(spec.category, spec.main, secondary, pattern))
    if rng.random() < 0.3:  # another main colour
        main = rng.choice([c for c in world.COLOURS if c not in (spec.main, spec.secondary)])
        out.append(world.ProductSpec(spec.category, main, spec.secondary, spec.pattern))
    if spec.secondary and rng.random() < 0.2:  # another secondary colour
        second = rng.choice([c for c in world.COLOURS if c not in (spec.main, spec.secondary)])
        out.append(world.ProductSpec(spec.category, spec.main, second, spec.pattern))
    return out


def render_training_set(n: int, seed: int, size: int, workers: int,
                        views: int = 2) -> tuple[list[world.ProductSpec], np.ndarray, list[list[int]]]:
    """Specs, uint8 images (n, views, size, size, 3) and groups: a spec with its hard negatives."""
    rng = random.Random(seed)
    specs: list[world.ProductSpec] = []
    groups: list[list[int]] = []
    while len(specs) < n:
        spec = world.random_spec(rng)
        family = [spec, *hard_negatives(spec, rng)][: n - len(specs)]
        groups.append(list(range(len(specs), len(specs) + len(family))))
        specs.extend(family)
    jobs = [(s, rng.getrandbits(31), size) for s in specs for _ in range(views)]
    with get_context("fork").Pool(max(1, workers)) as pool:
        images = pool.map(_render_item, jobs, chunksize=256)
    return specs, np.stack(images).reshape(len(specs), views, size, size, 3), groups


def sample_batch(groups: list[list[int]], batch_size: int, rng: random.Random) -> tuple[list[int], list[bool]]:
    """Whole groups until the batch is full; flags mark members of a group with hard negatives."""
    batch: list[int] = []
    full: list[bool] = []
    while len(batch) < batch_size:
        group = rng.choice(groups)
        batch.extend(group)
        full.extend([len(group) > 1] * len(group))
    return batch[:batch_size], full[:batch_size]


# --- model -------------------------------------------------------------------------------


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, embeddings or the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
                or "embedding" in name or "logit_scale" in name or "class_embedding" in name)
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def lr_at(step: int, *, base: float, warmup: int, total: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * progress))


def load_initial_weights(model, path: Path) -> str:
    """Load a previous model's weights to fine-tune from; a longer text context keeps the old positions.

    The positions beyond the old context start as copies of its last one, so a longer caption
    begins where the old model's longest did rather than from noise.
    """
    import torch
    from safetensors.torch import load_file

    file = path / "model.safetensors" if path.is_dir() else path
    state = {k: v.float() for k, v in load_file(str(file)).items()}
    old, new = state["positional_embedding"], model.positional_embedding
    if old.shape[0] < new.shape[0]:
        state["positional_embedding"] = torch.cat([old, old[-1:].expand(new.shape[0] - old.shape[0], -1)])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "attn_mask" not in k]:
        raise ValueError(f"{file} does not fit the config: missing {missing}, unexpected {unexpected}")
    return f"{len(state)} tensors, text context {old.shape[0]} -> {new.shape[0]}"


# --- evaluation --------------------------------------------------------------------------


def evaluate_in_memory(model, preprocess, tokenizer, *, n_products: int, seed: int = EVAL_SEED) -> dict:
    """Metrics on a held-out generated catalog, scoring each product by its best image."""
    import torch

    from retrieval.evaluation import score_rankings

    products = catalog.generate_products(n_products, seed)
    from PIL import Image

    tensors, owners = [], []
    for i, p in enumerate(products):
        for view in range(p.n_views):
            img = world.render_product(p.spec, catalog.image_seed(seed, i, view))
            tensors.append(preprocess(jpeg_roundtrip(img)))
            owners.append(i)
    tmp = Path("/tmp") / f"catalens-eval-{seed}"
    queries = catalog.build_queries(products, seed=seed, n=300, out=tmp)
    with torch.inference_mode():
        img_emb = encode_images(model, torch.stack(tensors))
        owner_t = torch.tensor(owners)
        results: dict[str, dict] = {}
        for qset in ("plain", "color_swap", "image", "plain_zh", "bare"):
            qs = [q for q in queries if q["set"] == qset]
            if not qs:
                continue
            if qset == "image":
                q_emb = encode_images(model, torch.stack(
                    [preprocess(Image.open(tmp / q["image"]).convert("RGB")) for q in qs]))
            else:
                q_emb = model.encode_text(tokenizer([q["text"] for q in qs]), normalize=True)
            sims = q_emb @ img_emb.T
            prod = torch.full((len(qs), len(products)), -2.0)
            prod.scatter_reduce_(1, owner_t.expand(len(qs), -1), sims, reduce="amax")
            top = prod.topk(10, dim=1).indices.tolist()
            ranked = [[products[j].product_id for j in row] for row in top]
            results[qset] = score_rankings(ranked, [set(q["relevant"]) for q in qs])
    shutil.rmtree(tmp, ignore_errors=True)
    return results


def jpeg_roundtrip(img):
    """The image as the catalog stores it: saved as JPEG (quality 90) and decoded again."""
    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def encode_images(model, pixels, batch: int = 256):
    """Normalised CLIP image embeddings of preprocessed pixels, in batches."""
    import torch

    return torch.cat([model.encode_image(pixels[i:i + batch], normalize=True)
                      for i in range(0, len(pixels), batch)])


def write_summary(args: argparse.Namespace, *, model: str, train_s: float, metrics: dict,
                  history: list[dict], **extra: str) -> dict:
    """metrics.json beside the weights: the run's arguments, timing, metrics and loss curve."""
    summary = {"args": plain_args(args), "model": model, **extra, "steps": args.steps,
               "batch_size": args.batch_size, "train_seconds": round(train_s, 1), "threads": args.threads,
               "seed": args.seed, "eval_seed": EVAL_SEED, "eval_products": args.eval_products,
               "metrics": metrics, "loss_history": history}
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def plain_args(args: argparse.Namespace) -> dict:
    """The run's arguments as JSON-safe values, recorded beside the weights."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if isinstance(v, (int, float, str, bool, Path))}


# --- main --------------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict:
    """Run the whole recipe and write weights, config, log and metrics into args.out."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(args.out / "train.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    LOG.addHandler(logging.StreamHandler())
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)

    name = args.config.stem
    open_clip.add_model_config(args.config)
    model = open_clip.create_model(name, output_dict=True)
    if args.init_from:
        LOG.info("starting from %s: %s", args.init_from, load_initial_weights(model, args.init_from))
    tokenizer = open_clip.get_tokenizer(name)
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    LOG.info("model %s: %.2fM parameters; args %s", name,
             sum(p.numel() for p in model.parameters()) / 1e6, vars(args))

    t0 = time.time()
    specs, images, groups = render_training_set(args.n_images, args.seed + TRAIN_SEED_OFFSET, size, args.threads)
    pixels = torch.from_numpy(images).permute(0, 1, 4, 2, 3)  # (n, views, 3, H, W) uint8
    LOG.info("rendered %d specs x %d views in %d groups in %.0fs", len(specs), pixels.shape[1],
             len(groups), time.time() - t0)

    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    history: list[dict] = []
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base=args.lr, warmup=args.warmup, total=args.steps)
        idx, full = sample_batch(groups, args.batch_size, rng)
        # Two renders of each spec: both match the caption, and each other (image queries).
        x = (pixels[idx].flatten(0, 1).float() / 255.0 - mean) / std
        tokens = tokenizer([texts.training_caption(specs[i], rng, full=f) for i, f in zip(idx, full)])
        out = model(x, tokens)
        img = out["image_features"].view(len(idx), -1, out["image_features"].shape[-1])
        scale = out["logit_scale"]
        loss = (loss_fn(img[:, 0], out["text_features"], scale) + loss_fn(img[:, 1], out["text_features"], scale)) / 2
        loss = loss + args.image_loss_weight * loss_fn(img[:, 0], img[:, 1], scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 25 == 0 or step == args.steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            LOG.info("step %d/%d loss %.4f lr %.2e scale %.1f %.2fs/step", step, args.steps,
                     loss.item(), opt.param_groups[0]["lr"], model.logit_scale.exp().item(),
                     (time.time() - t0) / (step + 1))
        if args.eval_every and step and step % args.eval_every == 0:
            model.eval()
            LOG.info("eval at %d: %s", step, evaluate_in_memory(
                model, preprocess, tokenizer, n_products=args.eval_products))
            model.train()
    train_s = time.time() - t0
    model.eval()
    metrics = evaluate_in_memory(model, preprocess, tokenizer, n_products=args.eval_products) \
        if args.eval_products else {}
    LOG.info("final metrics: %s", json.dumps(metrics))

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out / "model.safetensors"), metadata={"format": "pt", "model": name})
    shutil.copy(args.config, args.out / f"{name}.json")
    LOG.removeHandler(handler)
    return write_summary(args, model=name, train_s=train_s, metrics=metrics, history=history)
