"""Write MODEL_CARD.md for a trained model folder from its metrics.json and config (run after training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

CLIP_TEMPLATE = """# {name}

A small CLIP trained by Catalens, on CPU, on the procedurally generated product world of
`catalens sample` (`sampledata/world.py`). It ships inside the package so that the demo, the
tests and the benchmarks run with no model hub. {lineage}

## What it is
- open_clip `CLIP`, config `{name}.json`: vision ViT {image_size} px, patch {patch} ({tokens} patch
  tokens), width {vwidth}, {vlayers} layers; text transformer context {context}, width {twidth},
  {tlayers} layers, open_clip's BPE tokenizer (vocabulary {vocab:,}); {embed}-d embeddings;
  {params:.1f} M parameters; fp16 safetensors ({size_mb:.1f} MB).
- Trained with open_clip's `ClipLoss` for {steps} steps of batch {batch} ({train_min:.0f} min on
  {threads} CPU threads), AdamW lr {lr}, betas (0.9, 0.98), weight decay 0.1 off biases, norms
  and embeddings, {warmup} warm-up steps then cosine, grad clip 1.0, logit scale capped at 100;
  seed {seed}.
- Data: {n_images:,} rendered product specs, two renders each (12 categories, 13 colours,
  4 patterns, a secondary colour, jitter, noise, JPEG round trip), drawn in families of hard
  negatives (the colour-swapped twin, another pattern, another main or secondary colour) so
  that batches must tell them apart. Loss: image-text `ClipLoss` for both renders plus
  {image_w} x an image-image `ClipLoss` between the two renders (image queries). Captions are
  drawn each step from query-like, colour-role and title-like templates with synonyms; 30% are
  Chinese (the same attributes in Chinese words and phrasing, so `plain_zh` queries work), and
  12% of a patterned product's plain captions are bare "<colour> <category>" (so a bare query
  is pattern-neutral). `train.log` and `metrics.json` are beside the weights.

## Metrics
On a held-out generated catalog of {eval_n} products (seed {eval_seed}, never used in training),
products scored by their best image; Recall@K = share of queries with a relevant product in
the top K.

| query set | n | R@1 | R@5 | R@10 | MRR | nDCG@10 |
|---|---|---|---|---|---|---|
{rows}

## What it cannot do
It knows only the generated world: twelve flat, outlined product shapes (t-shirt, mug, shoe,
bag, lamp, chair, bottle, hat, watch, sofa, vase, table), thirteen colours and four patterns.
It has never seen a photograph and its text tower has only seen template captions; on real
products its embeddings are meaningless. Attribute binding (which colour is the main one) is
weak, as for any CLIP: the colour-swap set measures it. Its Chinese is the generator's phrasing
only. Use a real open_clip model for real catalogs (see the README).
"""

ITM_TEMPLATE = """# {name}

The bundled second-stage reranker: a small image-text matching (ITM) model that reads a query
against a candidate image with cross-attention, trained by Catalens on CPU on the generated
product world. The query side is the frozen `{base}` CLIP's text tower (per-token states);
the image side is {image_side}, stored per image at index time ({feature_bytes:,} bytes,
fp16). {layers} blocks of [text self-attention, text-to-image cross-attention, MLP]
(width {width}) end in a binary match head.

## Training
- {lineage}
- {steps} steps of {batch} captions, {n_images:,} rendered specs in families of hard negatives
  (the colour-swapped twin, another pattern, another main or secondary colour). Every caption
  is scored against every image of its family, one random image, {mined} images drawn from
  the frozen CLIP's own top 20 for it (the candidates it will rerank when serving), and
  {one_off} image(s) that differ from its product only in category and {one_off} only in
  secondary colour; a pair is a match when every attribute the caption names agrees with
  the image. Binary cross-entropy with positives re-weighted. {train_min:.1f} min on {threads} CPU threads; seed {seed}.
  {params:.2f} M parameters, fp16 safetensors ({size_kb:.0f} KB).

## Metrics
Reranking the CLIP's top 20 on a held-out catalog ({eval_n} products, seed {eval_seed}), fused
as the service does: `score = logit(p) + w x cosine`, w = {weight:g} (the service default when it was
trained; `CATALENS_RERANK_WEIGHT` sets it, default now {current:g}).

| query set | CLIP R@1 | reranked R@1 | CLIP R@10 | reranked R@10 |
|---|---|---|---|---|
{rows}

Recall@1 by fusion weight w (0 = the reranker alone):

| query set | {weight_cols} |
|---|{weight_sep}
{weight_rows}

## What it cannot do
It knows only the generated world and only the `{base}` CLIP's features; with another
retrieval model it still needs `{base}` to compute its own features (the indexer does so).
It does not write captions (use a CoCa reranker for `index build --caption`). On near colours
(grey / purple, blue / teal, navy / black) and on stripes versus dots or checks at 64 px it
can still override a right first-stage order, so it does not reliably raise colour-swap
Recall@1 (see the README's Reranking section).
"""


def write_model_card(folder: Path) -> Path:
    """Render the card for a CLIP or ITM training output folder."""
    summary = json.loads((folder / "metrics.json").read_text())
    cards = {"itm": _itm_card, "captioner": _captioner_card}
    text = cards.get(summary["model"], _clip_card)(folder, summary)
    out = folder / "MODEL_CARD.md"
    out.write_text(text)
    return out


def _clip_card(folder: Path, summary: dict) -> str:
    name = summary["model"]
    config = json.loads((folder / f"{name}.json").read_text())
    vision, text = config["vision_cfg"], config["text_cfg"]
    rows = "\n".join(
        f"| {k} | {m['n']} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | "
        f"{m['mrr']:.3f} | {m['ndcg@10']:.3f} |" for k, m in summary["metrics"].items())
    weights = folder / "model.safetensors"
    args = summary.get("args", {})
    init = args.get("init_from")
    lineage = (f"This version was fine-tuned from the previous weights (`{Path(init).name}`, trained from scratch\n"
               "for 6,000 steps; see its card in git history), with its text context extended to\n"
               f"{text['context_length']} tokens." if init else "Trained from scratch.")
    return CLIP_TEMPLATE.format(
        name=name, lineage=lineage, image_size=vision["image_size"], patch=vision["patch_size"],
        tokens=(vision["image_size"] // vision["patch_size"]) ** 2, vwidth=vision["width"], vlayers=vision["layers"],
        context=text["context_length"], twidth=text["width"], tlayers=text["layers"], vocab=text["vocab_size"],
        embed=config["embed_dim"], params=_params(weights) / 1e6, size_mb=weights.stat().st_size / 1e6,
        steps=summary["steps"], batch=summary["batch_size"], train_min=summary["train_seconds"] / 60,
        threads=summary["threads"], lr=args.get("lr", 1e-3), warmup=args.get("warmup", 50),
        seed=summary["seed"], n_images=args.get("n_images", 0), image_w=args.get("image_loss_weight", 0.5),
        eval_n=summary["eval_products"], eval_seed=summary["eval_seed"], rows=rows)


def _itm_card(folder: Path, summary: dict) -> str:
    from catalens.config import Settings
    from catalens.itm import ITM_WEIGHTS, ItmConfig

    config = ItmConfig.load(folder)
    metrics = summary["metrics"]
    rows = "\n".join(
        f"| {k} | {m['clip']['recall@1']:.3f} | {m['reranked']['recall@1']:.3f} | {m['clip']['recall@10']:.3f} | "
        f"{m['reranked']['recall@10']:.3f} |" for k, m in metrics.items())
    weights = sorted({w for m in metrics.values() for w in m.get("recall@1_by_weight", {})}, key=float)
    weight_rows = "\n".join(f"| {k} | " + " | ".join(f"{m['recall@1_by_weight'][w]:.3f}" for w in weights) + " |"
                             for k, m in metrics.items())
    image_side = {
        "conv": "its own small convolutional encoder's grid of tokens (finer than the CLIP's patches),\n"
                "trained with the head",
        "conv+clip": "its own small convolutional encoder's grid of tokens (finer than the CLIP's\n"
                     "patches), trained with the head, followed by the frozen CLIP's ViT tokens projected to\n"
                     "the grid's width",
    }.get(config.image_encoder, "the frozen CLIP vision tower's patch tokens")
    args = summary.get("args", {})
    weights_file = folder / ITM_WEIGHTS
    init = args.get("init_from")
    lineage = (f"Fine-tuned from the previous head (`{Path(init).name}`, 2,400 steps from scratch on the first CLIP;\n"
               "  its card is in git history) on the current CLIP, whose captions include Chinese and bare ones."
               if init else "Trained from scratch.")
    return ITM_TEMPLATE.format(
        name=folder.name, lineage=lineage, base=config.base_model, layers=config.layers, width=config.width, steps=summary["steps"],
        batch=summary["batch_size"], n_images=args.get("n_images", 0), mined=args.get("mined", 0),
        train_min=summary["train_seconds"] / 60, threads=summary["threads"], seed=summary["seed"],
        params=_params(weights_file) / 1e6, size_kb=weights_file.stat().st_size / 1e3,
        eval_n=summary["eval_products"], eval_seed=summary["eval_seed"], rows=rows,
        weight=next((m.get("weight", 0) for m in metrics.values()), 0), current=Settings().rerank_weight,
        image_side=image_side, feature_bytes=_feature_bytes(folder), one_off=args.get("one_off_negatives", 0),
        weight_cols=" | ".join(f"w = {float(w):g}" for w in weights),
        weight_sep="---|" * len(weights), weight_rows=weight_rows)


CAPTIONER_TEMPLATE = """# {name}: the bundled captioner

A GRU decoder ({layers} layers, width {hidden}) that writes a caption from the frozen `{base}`
CLIP's pooled image vector, with a vocabulary of the {vocab} BPE tokens its captions use.
{params:.2f} M parameters, {size_kb:.0f} KB fp16 safetensors. It only knows the generated world:
its captions name category, main colour, pattern and secondary colour in one fixed form
("red mug with blue stripes", "solid teal lamp").

Trained by `catalens train-model --kind captioner` ({steps} steps, batch {batch}, {n_images}
rendered specs, {train_min:.1f} min on {threads} CPU threads, seed {seed}).

Held-out renders (seed {eval_seed}, {eval_n} specs): captions naming everything right
{all:.3f}; category {category:.3f}, main colour {main:.3f}, secondary colour {secondary:.3f},
pattern {pattern:.3f}.
"""


def _captioner_card(folder: Path, summary: dict) -> str:
    from catalens.captioner import CAPTIONER_WEIGHTS, CaptionerConfig

    config = CaptionerConfig.load(folder)
    weights = folder / CAPTIONER_WEIGHTS
    held = summary["metrics"]["held_out"]
    return CAPTIONER_TEMPLATE.format(
        name=folder.name, layers=config.layers, hidden=config.hidden, base=config.base_model, vocab=len(config.vocab),
        params=_params(weights) / 1e6, size_kb=weights.stat().st_size / 1e3, steps=summary["steps"],
        batch=summary["batch_size"], n_images=summary.get("args", {}).get("n_images", 0),
        train_min=summary["train_seconds"] / 60, threads=summary["threads"], seed=summary["seed"],
        eval_seed=summary["eval_seed"], eval_n=summary["metrics"]["n"], **held)


def _feature_bytes(folder: Path) -> int:
    """Bytes stored per image: the features of one rendered product, as the indexer computes them."""
    from catalens.reranker import load_itm_reranker
    from sampledata import world

    reranker = load_itm_reranker(folder)
    image = world.render_product(world.ProductSpec("mug", "red", "blue", "dotted"), seed=0)
    return int(reranker.image_features(reranker.preprocess(image).unsqueeze(0)).nbytes)


def _params(weights: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), "pt") as fh:
        for key in fh.keys():
            count = 1
            for dim in fh.get_slice(key).get_shape():
                count *= dim
            total += count
    return total


if __name__ == "__main__":
    print(write_model_card(Path(sys.argv[1])))
