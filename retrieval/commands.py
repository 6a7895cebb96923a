"""`catalens search text|image` and `catalens eval`: queries from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from catalens.commandline import Subcommands, add_common_flags, emit
from catalens.config import Settings
from catalens.errors import InvalidInputError
from catalens.filters import Filters
from catalens.records import AVAILABILITY
from retrieval.searcher import MixPart, Searcher, SearchOutcome


def _loaded_searcher(settings: Settings, *, rerank: bool = True) -> Searcher:
    from retrieval.app import create_searcher

    searcher = create_searcher(settings, rerank=rerank)
    searcher.reload()
    return searcher


def _print_results(args: argparse.Namespace, outcome: SearchOutcome) -> None:
    from retrieval.schemas import result_from_hit

    results = [result_from_hit(h).model_dump() for h in outcome.hits]
    lines = [f"{i + 1:>3}. {r['score']:.4f}{_probability(r['match_probability'])}  {r['product_id']}  {r['title']}"
             f"  [{r['category'] or '-'} | {r['brand'] or '-'} | {r['price'] if r['price'] is not None else '-'}]"
             for i, r in enumerate(results)]
    text = "\n".join(lines) or "no results"
    if outcome.no_good_match:
        text = "no good match: these are only the closest products\n" + text
    emit(args, {"results": results, "index_version": outcome.index_version, "reranked": outcome.reranked,
                "mode": outcome.mode, "no_good_match": outcome.no_good_match}, text)


def _probability(p: float | None) -> str:
    return "" if p is None else f"  p={p:.2f}"


def _filters(args: argparse.Namespace) -> Filters:
    return Filters(tuple(args.category or ()), tuple(args.brand or ()), args.price_min, args.price_max,
                   tuple(args.availability or ()))


def cmd_search_text(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from retrieval.schemas import TextSearchIn

    try:
        query = TextSearchIn(query=args.query, k=args.k, min_score=args.min_score).query
    except ValidationError as exc:
        raise InvalidInputError(f"invalid query: {exc.errors()[0]['msg']}") from exc
    searcher = _loaded_searcher(settings, rerank=args.rerank)
    _print_results(args, searcher.search_text(query, args.k, _filters(args), rerank=args.rerank,
                                              rerank_top_n=args.rerank_top_n, mode=args.mode,
                                              min_score=args.min_score))
    return 0


def mix_parts(items: list[str], *, negative_weight: float, max_bytes: int, max_pixels: int,
              max_aspect: float) -> list[MixPart]:
    """`+TEXT` (weight 1), `-TEXT` (weight -negative_weight), `@PRODUCT_ID`, else an image file."""
    from catalens.images import decode_image, read_local_file

    parts = []
    for item in items:
        if item.startswith("+") and item[1:].strip():
            parts.append(MixPart(text=item[1:].strip()))
        elif item.startswith("-") and item[1:].strip():
            parts.append(MixPart(text=item[1:].strip(), weight=-negative_weight))
        elif item.startswith("@") and item[1:].strip():
            parts.append(MixPart(product_id=item[1:].strip()))
        else:
            data = read_local_file(Path(item), max_bytes=max_bytes)
            parts.append(MixPart(image=decode_image(data, max_pixels=max_pixels, max_aspect=max_aspect)))
    return parts


def cmd_search_mix(args: argparse.Namespace, settings: Settings) -> int:
    parts = mix_parts(args.parts, negative_weight=args.negative_weight, max_bytes=settings.max_upload_bytes,
                      max_pixels=settings.max_image_pixels, max_aspect=settings.max_aspect_ratio)
    # The captioner (loaded with the reranker) writes the photo's caption the words edit, with or without --rerank.
    _print_results(args, _loaded_searcher(settings).search_mix(parts, args.k, _filters(args), rerank=args.rerank))
    return 0


def cmd_search_image(args: argparse.Namespace, settings: Settings) -> int:
    from catalens.images import decode_image, read_local_file

    data = read_local_file(args.path, max_bytes=settings.max_upload_bytes)
    image = decode_image(data, max_pixels=settings.max_image_pixels, max_aspect=settings.max_aspect_ratio)
    _print_results(args, _loaded_searcher(settings, rerank=args.rerank).search_image(image, args.k, _filters(args),
                                                                                     rerank=args.rerank,
                                                                 rerank_top_n=args.rerank_top_n))
    return 0


def cmd_describe(args: argparse.Namespace, settings: Settings) -> int:
    from catalens.images import decode_image, read_local_file
    from retrieval.schemas import result_from_hit

    data = read_local_file(args.path, max_bytes=settings.max_upload_bytes)
    image = decode_image(data, max_pixels=settings.max_image_pixels, max_aspect=settings.max_aspect_ratio)
    described = _loaded_searcher(settings).describe(image, args.k)
    guesses = {name: {"value": g.value, "p": g.p} for name, g in described.attributes.items()}
    similar = [result_from_hit(h).model_dump() for h in described.similar.hits]
    lines = [f"{name:<18} {g['value'] or '(none)':<16} p={g['p']:.2f}" for name, g in guesses.items()]
    lines += [f"caption            {described.caption or '(none)'}", f"title              {described.title}",
              "similar            " + ", ".join(f"{r['product_id']} {r['title']}" for r in similar)]
    emit(args, {**guesses, "caption": described.caption, "title": described.title, "similar": similar,
                "index_version": described.similar.index_version}, "\n".join(lines))
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from retrieval.evaluation import evaluate_queries

    searcher = _loaded_searcher(settings)
    report: dict = evaluate_queries(searcher, args.queries, k=10, rerank=args.rerank, progress=not args.json,
                                    mode=args.mode)
    lines = [f"{name:<16} n={m['n']:<4} R@1 {m['recall@1']:.3f}  R@5 {m['recall@5']:.3f}  "
             f"R@10 {m['recall@10']:.3f}  MRR {m['mrr']:.3f}  nDCG@10 {m['ndcg@10']:.3f}  flagged {m['flagged']:.3f}"
             for name, m in report.items()]
    if args.describe:
        from retrieval.evaluation import evaluate_describe

        described = evaluate_describe(searcher, args.queries, progress=not args.json)
        report = {**report, **described}
        lines.append("describe         " + "  ".join(f"{k} {v}" for k, v in described["describe"].items()))
    emit(args, report, "\n".join(lines))
    return 0


def _top_n(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..100")
    return value


def _filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", type=int, default=10, help="results to return (1..100)")
    p.add_argument("--category", action="append", help="keep only this category (repeatable)")
    p.add_argument("--brand", action="append", help="keep only this brand (repeatable)")
    p.add_argument("--price-min", type=float, default=None)
    p.add_argument("--price-max", type=float, default=None)
    p.add_argument("--availability", action="append", choices=AVAILABILITY,
                   help="keep only products with this availability, e.g. in_stock (repeatable)")


def _rerank_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", action="store_true", help="reorder the top candidates with the reranker")
    p.add_argument("--rerank-top-n", type=_top_n, default=None, metavar="N",
                   help="candidates the reranker reads (1..100, default 20)")


def _mode_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("hybrid", "vector", "keyword"), default=None,
                   help="text ranking: keyword + vector fused (hybrid), or one of them (default: CATALENS_SEARCH_MODE)")


def register(sub: Subcommands) -> None:
    """Add `catalens search KIND`, `catalens describe` and `catalens eval`."""
    search = sub.add_parser("search", help="query the active index").add_subparsers(
        dest="search_command", required=True, metavar="KIND")
    p = search.add_parser("text", help="text-to-image product search")
    p.add_argument("query")
    _filter_flags(p)
    _rerank_flags(p)
    _mode_flag(p)
    p.add_argument("--min-score", type=float, default=None, metavar="P",
                   help="drop results whose match probability is below P (0..1)")
    add_common_flags(p, model=True)
    p.set_defaults(handler=cmd_search_text)
    p = search.add_parser("image", help="find products that look like an image file")
    p.add_argument("path", type=Path)
    _filter_flags(p)
    _rerank_flags(p)
    add_common_flags(p, model=True)
    p.set_defaults(handler=cmd_search_image)
    p = search.add_parser("mix", help="one query from parts: an image file, +TEXT, -TEXT, @PRODUCT_ID",
                          description="e.g. catalens search mix photo.jpg +blue -dots: like the photo, in blue, "
                                      "without dots")
    p.add_argument("parts", nargs="+", metavar="PART")
    p.add_argument("--negative-weight", type=float, default=0.5, help="weight of each -TEXT part (default 0.5)")
    p.add_argument("--rerank", action="store_true",
                   help="the reranker reads the photo's caption, edited by the words, against the top candidates")
    _filter_flags(p)
    add_common_flags(p, model=True)
    p.set_defaults(handler=cmd_search_mix)

    p = sub.add_parser("describe", help="what a product photo shows, in the catalog's terms: its facets, a caption, "
                                        "a title, the most similar products")
    p.add_argument("path", type=Path)
    p.add_argument("-k", type=int, default=5, help="similar products to list (1..100)")
    add_common_flags(p, model=True)
    p.set_defaults(handler=cmd_describe)

    p = sub.add_parser("eval", help="retrieval quality on labelled queries (queries.jsonl)")
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--rerank", action="store_true",
                   help="also report every query set reranked (as '<set>+rerank'), with the configured reranker")
    p.add_argument("--describe", action="store_true",
                   help="also report how often describe guesses each facet of the image queries' products right")
    _mode_flag(p)
    add_common_flags(p, model=True)
    p.set_defaults(handler=cmd_eval)
