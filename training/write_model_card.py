"""Write MODEL_CARD.md for a trained model folder from its metrics.json (run after training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEMPLATE = """# {name}

A small CLIP trained from scratch by Catalens, on CPU, on the procedurally generated product
world of `catalens sample` (`catalens/world.py`). It ships inside the package so that the
demo, the tests and the benchmarks run with no model hub.

## What it is
- open_clip `CLIP`, config `{name}.json`: vision ViT 64 px, patch 8 (64 patch tokens), width 128,
  4 layers; text transformer context 24, width 128, 3 layers, open_clip's BPE tokenizer
  (vocabulary 49,408); 128-d embeddings; {params:.1f} M parameters; fp16 safetensors ({size_mb:.1f} MB).
- Trained with open_clip's `ClipLoss` for {steps} steps of batch {batch} ({train_min:.0f} min on
  {threads} CPU threads), AdamW lr 1e-3, betas (0.9, 0.98), weight decay 0.1 off biases, norms and
  embeddings, 50 warm-up steps then cosine, grad clip 1.0, logit scale capped at 100; seed {seed}.
- Data: 30,000 rendered products (12 categories, 13 colours, 4 patterns, a secondary colour,
  jitter, noise, JPEG round trip), about a third of them as colour-swapped twin pairs so that
  batches hold hard negatives; captions drawn each step from query-like, colour-role and
  title-like templates with synonyms. `train.log` and `metrics.json` are beside the weights.

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
weak, as for any CLIP: the colour-swap set shows it. Use a real open_clip model for real
catalogs (see the README).
"""


def write_model_card(folder: Path) -> Path:
    summary = json.loads((folder / "metrics.json").read_text())
    name = summary["model"]
    rows = "\n".join(
        f"| {k} | {m['n']} | {m['recall@1']:.3f} | {m['recall@5']:.3f} | {m['recall@10']:.3f} | "
        f"{m['mrr']:.3f} | {m['ndcg@10']:.3f} |" for k, m in summary["metrics"].items())
    weights = folder / "model.safetensors"
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as fh:
        params = sum(_prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    text = TEMPLATE.format(name=name, params=params / 1e6, size_mb=weights.stat().st_size / 1e6,
                           steps=summary["steps"], batch=summary["batch_size"],
                           train_min=summary["train_seconds"] / 60, threads=summary["threads"],
                           seed=summary["seed"], eval_n=summary["eval_products"],
                           eval_seed=summary["eval_seed"], rows=rows)
    out = folder / "MODEL_CARD.md"
    out.write_text(text)
    return out


def _prod(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


if __name__ == "__main__":
    print(write_model_card(Path(sys.argv[1])))
