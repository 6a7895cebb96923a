"""Train the bundled captioner: a GRU decoder on the frozen retrieval CLIP's image vectors (CPU).

Renders the generated world, embeds every render once with the frozen CLIP, and teaches the
decoder each spec's canonical caption (sampledata.texts.canonical_caption). Evaluated on
held-out renders: the share of captions naming category, both colours and pattern correctly.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from sampledata import texts, world
from training.train_clip import (
    EVAL_SEED,
    TRAIN_SEED_OFFSET,
    encode_images,
    lr_at,
    param_groups,
    render_training_set,
    write_summary,
)
from training.train_itm import normalised, start_head_run

LOG = logging.getLogger("catalens.train")
CAPTIONER_SEED_OFFSET = 20_000


def every_caption() -> list[str]:
    """The canonical caption of every spec of the world: what the vocabulary must cover."""
    out = []
    for cat in world.CATEGORIES:
        for main in world.COLOURS:
            out.append(texts.canonical_caption(world.ProductSpec(cat, main, None, "solid")))
            for second in world.COLOURS:
                for pattern in world.PATTERNS[1:]:
                    if second != main:
                        out.append(texts.canonical_caption(world.ProductSpec(cat, main, second, pattern)))
    return out


def caption_accuracy(captions: list[str], specs: list[world.ProductSpec]) -> dict[str, float]:
    """Share of captions that name everything right, and per attribute."""
    parsed = [texts.parse_caption(c) for c in captions]
    n = max(1, len(specs))

    def share(ok: list[bool]) -> float:
        return round(sum(ok) / n, 4)

    return {"all": share([p == s for p, s in zip(parsed, specs)]),
            "category": share([p is not None and p.category == s.category for p, s in zip(parsed, specs)]),
            "main": share([p is not None and p.main == s.main for p, s in zip(parsed, specs)]),
            "secondary": share([p is not None and p.secondary == s.secondary for p, s in zip(parsed, specs)]),
            "pattern": share([p is not None and p.pattern == s.pattern for p, s in zip(parsed, specs)]),
            "parsed": share([p is not None for p in parsed])}


def train_captioner(args: argparse.Namespace) -> dict:
    """Train and write captioner.json, captioner.safetensors, train.log and metrics.json into args.out."""
    import torch
    from safetensors.torch import save_file

    from catalens.captioner import CaptionerConfig, CaptionHead, vocabulary
    from catalens.clip_tokenizer import ClipTokenizer

    handler, rng, clip = start_head_run(args)
    tokenizer = ClipTokenizer()
    vocab = vocabulary(every_caption(), tokenizer)
    index = {token: i for i, token in enumerate(vocab)}
    t0 = time.time()
    specs, images, _ = render_training_set(args.n_images, args.seed + TRAIN_SEED_OFFSET + CAPTIONER_SEED_OFFSET,
                                           clip.image_size, args.threads, views=1)
    with torch.inference_mode():
        vectors = encode_images(clip.model, normalised(images[:, 0]))
    tokens = [[0, *(index[t] for t in tokenizer.encode(texts.canonical_caption(s))), 1] for s in specs]
    length = max(map(len, tokens))
    seqs = torch.tensor([t + [1] * (length - len(t)) for t in tokens])
    mask = torch.tensor([[1.0] * (len(t) - 1) + [0.0] * (length - len(t)) for t in tokens])
    LOG.info("rendered and embedded %d specs in %.0fs; vocabulary %d tokens", len(specs), time.time() - t0, len(vocab))
    config = CaptionerConfig(base_model=args.base_model, embed_dim=int(vectors.shape[1]), vocab=vocab)
    head = CaptionHead(config)
    opt = torch.optim.AdamW(param_groups(head, 0.01), lr=args.lr)
    history: list[dict] = []
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base=args.lr, warmup=args.warmup, total=args.steps)
        batch = torch.tensor(rng.sample(range(len(specs)), args.batch_size))
        logits = head(vectors[batch], seqs[batch, :-1])
        loss = (torch.nn.functional.cross_entropy(logits.transpose(1, 2), seqs[batch, 1:], reduction="none")
                * mask[batch]).sum() / mask[batch].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            LOG.info("step %d/%d loss %.4f lr %.2e %.3fs/step", step, args.steps, loss.item(),
                     opt.param_groups[0]["lr"], (time.time() - t0) / (step + 1))
    train_s = time.time() - t0
    head.eval()
    metrics = evaluate_captioner(clip, head, vocab, tokenizer, n=args.eval_products, threads=args.threads)
    LOG.info("final metrics: %s", json.dumps(metrics))
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in head.state_dict().items()}
    from catalens.captioner import CAPTIONER_WEIGHTS

    save_file(state, str(args.out / CAPTIONER_WEIGHTS), metadata={"format": "pt", "base_model": args.base_model})
    config.save(args.out)
    LOG.removeHandler(handler)
    return write_summary(args, model="captioner", train_s=train_s, metrics=metrics, history=history,
                         base_model=args.base_model)


def evaluate_captioner(clip, head, vocab: tuple[int, ...], tokenizer, *, n: int, threads: int) -> dict:
    """Caption accuracy on held-out renders (one render per spec, a seed never trained on)."""
    import torch

    from catalens.captioner import Captioner

    specs, images, _ = render_training_set(n, EVAL_SEED, clip.image_size, threads, views=1)
    with torch.inference_mode():
        vectors = encode_images(clip.model, normalised(images[:, 0])).numpy()
    captions = Captioner(head, tokenizer, "eval").captions(vectors)
    return {"held_out": caption_accuracy(captions, specs), "examples": captions[:5], "n": len(specs)}


