"""Every word the generated world uses: titles, descriptions, captions and queries.

The one place their templates live. The sample catalog's titles and labelled queries, the
bundled models' training captions and the benchmarks' query streams all come from here.
Each function draws from the rng in a fixed order, so a seed gives the same texts forever
(retraining on the same seed sees the same data).

Templates are str.format strings over these fields, all drawn for one spec:
  {cat} category synonym  {main} main colour synonym  {second} secondary colour synonym
  {adj} pattern adjective  {noun} pattern noun  {brand} "Brand " or ""  {material} "wool " or ""
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sampledata.world import BRANDS, MATERIALS, ProductSpec

COLOUR_SYNONYMS: dict[str, list[str]] = {
    "red": ["red", "scarlet", "crimson"],
    "orange": ["orange", "tangerine"],
    "yellow": ["yellow", "lemon"],
    "green": ["green", "emerald"],
    "teal": ["teal", "turquoise"],
    "blue": ["blue", "cobalt"],
    "navy": ["navy", "navy blue", "dark blue"],
    "purple": ["purple", "violet"],
    "pink": ["pink", "rose"],
    "brown": ["brown", "chocolate"],
    "black": ["black", "jet black"],
    "white": ["white", "snow white"],
    "grey": ["grey", "gray"],
}
PATTERN_ADJECTIVES: dict[str, list[str]] = {
    "solid": ["solid", "plain"],
    "striped": ["striped", "stripy"],
    "dotted": ["dotted", "polka dot", "spotted"],
    "checkered": ["checkered", "checked", "chequered"],
}
PATTERN_NOUNS: dict[str, list[str]] = {
    "striped": ["stripes"],
    "dotted": ["dots", "polka dots", "spots"],
    "checkered": ["checks", "check squares"],
}
CATEGORY_SYNONYMS: dict[str, list[str]] = {
    "t-shirt": ["t-shirt", "tee", "tshirt"],
    "mug": ["mug", "coffee mug", "cup"],
    "shoe": ["shoe", "sneaker", "trainer"],
    "bag": ["bag", "handbag", "tote bag"],
    "lamp": ["lamp", "desk lamp", "table lamp"],
    "chair": ["chair", "dining chair", "seat"],
    "bottle": ["bottle", "water bottle", "flask"],
    "hat": ["hat", "bucket hat"],
    "watch": ["watch", "wristwatch"],
    "sofa": ["sofa", "couch", "settee"],
    "vase": ["vase", "flower vase"],
    "table": ["table", "side table"],
}

# --- templates ---------------------------------------------------------------------------

BARE = "{main} {cat}"  # category + main colour only
# A shopper's attribute query: category + main colour + pattern.
PLAIN_SOLID = ("{adj} {main} {cat}", BARE, "a {main} {cat} with no pattern")
PLAIN_PATTERNED = ("{main} {adj} {cat}", "{adj} {main} {cat}", "{main} {cat} with {noun}", "{adj} {cat} in {main}")
# Both colours in their roles, so only one of two colour-swapped twins matches.
SWAP = "{main} {cat} with {second} {noun}"
FULL = ("{main} {adj} {cat} with {second} {noun}", "{adj} {cat} in {main} with {second} {noun}", SWAP,
        "{main} and {second} {adj} {cat}")
# Product titles (and title-like captions): brand and material are optional.
TITLE_SOLID = ("{brand}{main} {material}{cat}", "{brand}{adj} {main} {material}{cat}", BARE, "{adj} {main} {cat}",
               "{material}{cat} in {main}")
TITLE_PATTERNED = ("{brand}{main} {material}{cat} with {second} {noun}", "{brand}{main} and {second} {adj} {cat}",
                   "{main} {adj} {cat}", "{adj} {main} {cat}", SWAP, "{material}{cat} in {main} with {second} {noun}")
DESCRIPTION = "A {material} {cat} {look}. {extra}"
DESCRIPTION_EXTRAS = ("Built to last.", "A customer favourite.", "Easy to clean.", "Ships in two days.",
                      "Designed in house.", "Limited edition.")

# Labelled captions (the reranker's training): each template with the attributes it names.
_BASE = ("category", "main")
_PATTERN = ("category", "main", "pattern")
_ALL = ("category", "main", "pattern", "secondary")
LABELLED_SOLID = ((BARE, _BASE), (PLAIN_SOLID[2], _PATTERN), (PLAIN_SOLID[0], _PATTERN))
LABELLED_PATTERNED = (*((t, _PATTERN) for t in PLAIN_PATTERNED), (SWAP, _ALL), (SWAP, _ALL), (FULL[1], _ALL),
                      (FULL[0], _ALL), (BARE, _BASE))


def _words(spec: ProductSpec, rng: random.Random) -> dict[str, str]:
    """Category, main colour and pattern adjective, drawn in this order."""
    return {"cat": rng.choice(CATEGORY_SYNONYMS[spec.category]), "main": rng.choice(COLOUR_SYNONYMS[spec.main]),
            "adj": rng.choice(PATTERN_ADJECTIVES[spec.pattern])}


def _second_words(spec: ProductSpec, rng: random.Random) -> dict[str, str]:
    """Secondary colour and pattern noun, drawn in this order (patterned specs only)."""
    return {"second": rng.choice(COLOUR_SYNONYMS[spec.secondary or spec.main]),
            "noun": rng.choice(PATTERN_NOUNS[spec.pattern])}


# --- catalog texts -------------------------------------------------------------------------


def describe(spec: ProductSpec, rng: random.Random, *, brand: str = "", material: str = "") -> str:
    """One caption of a product, from a template chosen at random (used for titles and training)."""
    words = {**_words(spec, rng), "brand": f"{brand} " if brand else "", "material": f"{material} " if material else ""}
    templates: tuple[str, ...]
    if spec.pattern == "solid" or spec.secondary is None:
        templates = TITLE_SOLID
    else:
        words |= _second_words(spec, rng)
        templates = TITLE_PATTERNED
    return " ".join(rng.choice(templates).format(**words).split())


def title(spec: ProductSpec, rng: random.Random, *, brand: str, material: str) -> str:
    """A catalog title: a caption naming brand and material, capitalised."""
    text = describe(spec, rng, brand=brand, material=material)
    return text[0].upper() + text[1:]


def description(spec: ProductSpec, material: str, rng: random.Random) -> str:
    """A catalog description: material, category, colours in their roles and one selling line."""
    if spec.pattern == "solid" or spec.secondary is None:
        look = f"in solid {spec.main}"
    else:
        look = f"in {spec.main} with {spec.secondary} {PATTERN_NOUNS[spec.pattern][0]}"
    return DESCRIPTION.format(material=material, cat=spec.category, look=look, extra=rng.choice(DESCRIPTION_EXTRAS))


# --- queries -------------------------------------------------------------------------------


def plain_query(spec: ProductSpec, rng: random.Random) -> str:
    """A shopper's attribute query: category + main colour + pattern, paraphrased."""
    words = _words(spec, rng)
    if spec.pattern == "solid":
        return rng.choice(PLAIN_SOLID).format(**words)
    words["noun"] = rng.choice(PATTERN_NOUNS[spec.pattern])
    return rng.choice(PLAIN_PATTERNED).format(**words)


def swap_query(spec: ProductSpec, rng: random.Random) -> str:
    """Names both colours with their roles, so only one of two swapped twins matches."""
    cat = rng.choice(CATEGORY_SYNONYMS[spec.category])
    return SWAP.format(main=COLOUR_SYNONYMS[spec.main][0], cat=cat,
                       second=COLOUR_SYNONYMS[spec.secondary or spec.main][0],
                       noun=rng.choice(PATTERN_NOUNS[spec.pattern]))


def describe_full(spec: ProductSpec, rng: random.Random) -> str:
    """A caption naming category, both colours in their roles and the pattern (training)."""
    words = _words(spec, rng)
    if spec.secondary is None:
        return PLAIN_SOLID[0].format(**words)
    words |= _second_words(spec, rng)
    return rng.choice(FULL).format(**words)


def labelled_caption(spec: ProductSpec, rng: random.Random) -> tuple[str, dict[str, str | None]]:
    """A shopper-style caption and the attributes it names, with their values (the others it leaves open)."""
    words = _words(spec, rng)
    labelled: tuple[tuple[str, tuple[str, ...]], ...] = LABELLED_SOLID
    if spec.secondary is not None:
        words |= _second_words(spec, rng)
        labelled = LABELLED_PATTERNED
    template, names = rng.choice(labelled)
    return template.format(**words), {attr: getattr(spec, attr) for attr in names}


# --- mixtures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextMix:
    """How often a shopper text is each kind, as cut points on one uniform draw `form`.

    form < plain_below: an attribute query; else form < swap_below (two-colour specs): a
    colour-role query; else a title-like caption naming a brand with probability `brand`
    and a material with probability `material`.
    """

    plain_below: float
    swap_below: float
    brand: float
    material: float


CAPTION_MIX = TextMix(plain_below=0.4, swap_below=0.6, brand=0.3, material=0.3)  # the CLIP's training captions
QUERY_MIX = TextMix(plain_below=0.45, swap_below=0.6, brand=0.3, material=0.4)  # the query benchmark's traffic


def shopper_text(spec: ProductSpec, rng: random.Random, mix: TextMix) -> str:
    """A query-like, colour-role or title-like text of a spec, in the proportions of `mix`."""
    form = rng.random()
    if form < mix.plain_below:
        return plain_query(spec, rng)
    if form < mix.swap_below and spec.secondary:
        return swap_query(spec, rng)
    brand = rng.choice(BRANDS) if rng.random() < mix.brand else ""
    material = rng.choice(MATERIALS[spec.category]) if rng.random() < mix.material else ""
    return describe(spec, rng, brand=brand, material=material)


def training_caption(spec: ProductSpec, rng: random.Random, *, full: bool = False) -> str:
    """A CLIP training caption; `full` (for specs with hard negatives) names every attribute."""
    if full and spec.secondary:
        return swap_query(spec, rng) if rng.random() < 0.5 else describe_full(spec, rng)
    return shopper_text(spec, rng, CAPTION_MIX)
