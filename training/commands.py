"""`catalens train-model`: train the bundled CLIP or the reranker head on the generated world."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from catalens.commandline import Subcommands, emit
from catalens.config import Settings

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "catalens-demo.json"


def run(args: argparse.Namespace) -> dict:
    """Train what --kind asks for, then write its model card beside the weights."""
    from training.write_model_card import write_model_card

    if args.kind == "itm":
        from training.train_itm import train_itm

        summary = train_itm(args)
    elif args.kind == "captioner":
        from training.train_captioner import train_captioner

        summary = train_captioner(args)
    else:
        from training.train_clip import train

        summary = train(args)
    write_model_card(args.out)
    return summary


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    summary = run(args)
    emit(args, summary, f"weights, log and metrics written to {args.out}: {json.dumps(summary['metrics'])}")
    return 0


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of both recipes (the ITM ones say so in their help)."""
    parser.add_argument("--kind", choices=["clip", "itm", "captioner"], default="clip",
                        help="clip: the retrieval model; itm: the reranker head on a frozen CLIP (--base-model); "
                             "captioner: the caption head on a frozen CLIP's image vectors")
    parser.add_argument("--out", type=Path, required=True, help="output folder for weights + log")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="open_clip model JSON")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-images", type=int, default=24000, help="pre-rendered training images")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and render workers)")
    parser.add_argument("--eval-products", type=int, default=2000)
    parser.add_argument("--image-loss-weight", type=float, default=0.75,
                        help="weight of the image-image ClipLoss between two renders of a spec")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="fine-tune from these weights (a model or reranker folder, or its .safetensors) instead"
                             " of from scratch")
    parser.add_argument("--eval-every", type=int, default=0, help="steps between evals (0: end only)")
    _itm_flags(parser)


def _itm_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", default="catalens-demo",
                        help="(itm, captioner) the frozen CLIP whose features the head reads")
    parser.add_argument("--itm-width", type=int, default=128, help="(itm) width of the cross-attention blocks")
    parser.add_argument("--itm-layers", type=int, default=2, help="(itm) cross-attention blocks")
    parser.add_argument("--token-layer", type=int, default=-1,
                        help="(itm) image tokens after this many ViT blocks (0: patch embeddings; -1: final)")
    parser.add_argument("--image-encoder", choices=["clip", "conv", "conv+clip"], default="conv+clip",
                        help="(itm) image tokens: the CLIP's ViT tokens, the head's own conv grid, or the grid"
                             " with the CLIP's ViT tokens")
    parser.add_argument("--grid-width", type=int, default=64, help="(itm) channels per conv grid token (stored)")
    parser.add_argument("--mined", type=int, default=2,
                        help="(itm) negatives per caption drawn from the frozen CLIP's top 20 for it")
    parser.add_argument("--one-off-negatives", type=int, default=1,
                        help="(itm) images per caption that differ from its product only in category, and as many"
                             " only in secondary colour")


def register(sub: Subcommands) -> None:
    """Add `catalens train-model`."""
    p = sub.add_parser("train-model",
                       help="train the bundled CLIP (or, --kind itm, the reranker) on the generated world (CPU)")
    add_train_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_train)
