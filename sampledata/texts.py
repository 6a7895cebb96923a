"""Every word the generated world uses: titles, descriptions, captions and queries.

The one place their templates live. The sample catalog's titles and labelled queries, the
bundled models' training captions and the benchmarks' query streams all come from here.
Each function draws from the rng in a fixed order, so a seed gives the same texts forever
(retraining on the same seed sees the same data).

Templates are str.format strings over these fields, all drawn for one spec:
  {cat} category synonym  {main} main colour synonym  {second} secondary colour synonym
  {adj} pattern adjective  {noun} pattern noun  {brand} "Brand " or ""  {material} "wool " or ""

Chinese (ZH_*) has its own words and templates over the same fields, without spaces: the
bundled CLIP is trained on both languages, and the `plain_zh` query set is drawn from them.
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

ZH_COLOURS: dict[str, list[str]] = {
    "red": ["红色", "大红色"], "orange": ["橙色", "橘色"], "yellow": ["黄色", "柠檬黄"],
    "green": ["绿色", "翠绿色"], "teal": ["青色", "蓝绿色"], "blue": ["蓝色", "钴蓝色"],
    "navy": ["藏青色", "深蓝色", "海军蓝"], "purple": ["紫色", "紫罗兰色"], "pink": ["粉色", "粉红色"],
    "brown": ["棕色", "咖啡色"], "black": ["黑色"], "white": ["白色", "雪白色"], "grey": ["灰色"],
}
ZH_PATTERN_ADJECTIVES: dict[str, list[str]] = {
    "solid": ["纯色", "素色"], "striped": ["条纹"], "dotted": ["波点", "圆点"], "checkered": ["格子", "格纹"],
}
ZH_PATTERN_NOUNS: dict[str, list[str]] = {
    "striped": ["条纹"], "dotted": ["圆点", "波点"], "checkered": ["格子", "方格"],
}
ZH_CATEGORIES: dict[str, list[str]] = {
    "t-shirt": ["T恤", "短袖T恤"], "mug": ["马克杯", "咖啡杯", "杯子"], "shoe": ["鞋", "运动鞋", "鞋子"],
    "bag": ["包", "手提包", "托特包"], "lamp": ["台灯", "灯"], "chair": ["椅子", "餐椅"],
    "bottle": ["水瓶", "瓶子", "保温瓶"], "hat": ["帽子", "渔夫帽"], "watch": ["手表", "腕表"],
    "sofa": ["沙发"], "vase": ["花瓶"], "table": ["桌子", "边桌"],
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

ZH_BARE = "{main}{cat}"
ZH_PLAIN_SOLID = ("{adj}{main}{cat}", ZH_BARE, "{main}{cat}，无图案")
ZH_PLAIN_PATTERNED = ("{main}{adj}{cat}", "{adj}{main}{cat}", "带{noun}的{main}{cat}", "{main}{cat}，{adj}款")
ZH_SWAP = "带{second}{noun}的{main}{cat}"
ZH_FULL = ("{main}底{second}{noun}{cat}", "{main}{cat}，带{second}{noun}", ZH_SWAP, "{main}配{second}{adj}{cat}")
ZH_QUERY_PREFIXES = ("", "", "想买", "有没有", "求推荐")

# Labelled captions (the reranker's training): each template with the attributes it names.
_BASE = ("category", "main")
_PATTERN = ("category", "main", "pattern")
_ALL = ("category", "main", "pattern", "secondary")
LABELLED_SOLID = ((BARE, _BASE), (PLAIN_SOLID[2], _PATTERN), (PLAIN_SOLID[0], _PATTERN))
LABELLED_PATTERNED = (*((t, _PATTERN) for t in PLAIN_PATTERNED), (SWAP, _ALL), (SWAP, _ALL), (FULL[1], _ALL),
                      (FULL[0], _ALL), (BARE, _BASE))
ZH_LABELLED_SOLID = ((ZH_BARE, _BASE), (ZH_PLAIN_SOLID[2], _PATTERN), (ZH_PLAIN_SOLID[0], _PATTERN))
ZH_LABELLED_PATTERNED = (*((t, _PATTERN) for t in ZH_PLAIN_PATTERNED), (ZH_SWAP, _ALL), (ZH_FULL[0], _ALL),
                         (ZH_FULL[1], _ALL), (ZH_BARE, _BASE))
# Title-like captions for the reranker: brand and material name nothing a picture must show.
LABELLED_TITLE_SOLID = (("{brand}{main} {material}{cat}", _BASE), ("{brand}{adj} {main} {material}{cat}", _PATTERN),
                        ("{material}{cat} in {main}", _BASE))
LABELLED_TITLE_PATTERNED = (("{brand}{main} {material}{cat} with {second} {noun}", _ALL),
                            ("{material}{cat} in {main} with {second} {noun}", _ALL),
                            ("{brand}{main} and {second} {adj} {cat}", _ALL))
TITLE_SHARE = 0.25  # of the reranker's English captions that read like catalog titles
ZH_SHARE = 0.3  # of the training captions (CLIP and reranker) that are Chinese
BARE_SHARE = 0.12  # of a patterned product's plain training captions that name no pattern


def _words(spec: ProductSpec, rng: random.Random) -> dict[str, str]:
    """Category, main colour and pattern adjective, drawn in this order."""
    return {"cat": rng.choice(CATEGORY_SYNONYMS[spec.category]), "main": rng.choice(COLOUR_SYNONYMS[spec.main]),
            "adj": rng.choice(PATTERN_ADJECTIVES[spec.pattern])}


def _second_words(spec: ProductSpec, rng: random.Random) -> dict[str, str]:
    """Secondary colour and pattern noun, drawn in this order (patterned specs only)."""
    return {"second": rng.choice(COLOUR_SYNONYMS[spec.secondary or spec.main]),
            "noun": rng.choice(PATTERN_NOUNS[spec.pattern])}


def _zh_words(spec: ProductSpec, rng: random.Random) -> dict[str, str]:
    """The Chinese words of a spec: category, colours and pattern (a pattern noun when patterned)."""
    words = {"cat": rng.choice(ZH_CATEGORIES[spec.category]), "main": rng.choice(ZH_COLOURS[spec.main]),
             "adj": rng.choice(ZH_PATTERN_ADJECTIVES[spec.pattern])}
    if spec.pattern != "solid":
        words["noun"] = rng.choice(ZH_PATTERN_NOUNS[spec.pattern])
    if spec.secondary is not None:
        words["second"] = rng.choice(ZH_COLOURS[spec.secondary])
    return words


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


def plain_query(spec: ProductSpec, rng: random.Random, *, bare: bool = True) -> str:
    """A shopper's attribute query: category + main colour + pattern, paraphrased.

    bare=False leaves out the bare "<colour> <category>" form, which names no pattern (the
    labelled `plain` set: a bare query is pattern-neutral and has a set of its own).
    """
    words = _words(spec, rng)
    if spec.pattern == "solid":
        return rng.choice(PLAIN_SOLID if bare else (PLAIN_SOLID[0], PLAIN_SOLID[2])).format(**words)
    words["noun"] = rng.choice(PATTERN_NOUNS[spec.pattern])
    return rng.choice(PLAIN_PATTERNED).format(**words)


def bare_query(category: str, colour: str, rng: random.Random) -> str:
    """A bare "<colour> <category>": every product of that colour and category answers it."""
    return BARE.format(main=rng.choice(COLOUR_SYNONYMS[colour]), cat=rng.choice(CATEGORY_SYNONYMS[category]))


def plain_query_zh(spec: ProductSpec, rng: random.Random) -> str:
    """A plain query in Chinese: category + main colour + pattern, sometimes with a shopper's lead-in."""
    words = _zh_words(spec, rng)
    templates = ZH_PLAIN_SOLID[::2] if spec.pattern == "solid" else ZH_PLAIN_PATTERNED
    return rng.choice(ZH_QUERY_PREFIXES) + rng.choice(templates).format(**words)


def chinese_caption(spec: ProductSpec, rng: random.Random, *, full: bool = False) -> str:
    """A Chinese training caption: a plain query (bare for some patterned ones), or every attribute."""
    words = _zh_words(spec, rng)
    if spec.secondary is None:
        return rng.choice(ZH_QUERY_PREFIXES) + rng.choice(ZH_PLAIN_SOLID).format(**words)
    if full or rng.random() < 0.3:
        return rng.choice(ZH_FULL).format(**words)
    if rng.random() < BARE_SHARE:
        return ZH_BARE.format(**words)
    return rng.choice(ZH_QUERY_PREFIXES) + rng.choice(ZH_PLAIN_PATTERNED).format(**words)


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
    labelled: tuple[tuple[str, tuple[str, ...]], ...]
    if rng.random() < ZH_SHARE:
        words = _zh_words(spec, rng)
        labelled = ZH_LABELLED_SOLID if spec.secondary is None else ZH_LABELLED_PATTERNED
    else:
        words = _words(spec, rng)
        labelled = LABELLED_SOLID
        if spec.secondary is not None:
            words |= _second_words(spec, rng)
            labelled = LABELLED_PATTERNED
        if rng.random() < TITLE_SHARE:
            words |= {"brand": f"{rng.choice(BRANDS)} " if rng.random() < 0.5 else "",
                      "material": f"{rng.choice(MATERIALS[spec.category])} " if rng.random() < 0.6 else ""}
            labelled = LABELLED_TITLE_SOLID if spec.secondary is None else LABELLED_TITLE_PATTERNED
    template, names = rng.choice(labelled)
    return template.format(**words), {attr: getattr(spec, attr) for attr in names}


# --- captions ----------------------------------------------------------------------------

CAPTION_SOLID = "solid {main} {cat}"
CAPTION_PATTERNED = "{main} {cat} with {second} {noun}"


def canonical_caption(spec: ProductSpec) -> str:
    """What the bundled captioner writes: every attribute, in the world's own words, roles fixed."""
    if spec.secondary is None:
        return CAPTION_SOLID.format(main=spec.main, cat=spec.category)
    return CAPTION_PATTERNED.format(main=spec.main, cat=spec.category, second=spec.secondary,
                                    noun=PATTERN_NOUNS[spec.pattern][0])


def parse_caption(text: str) -> ProductSpec | None:
    """The spec a canonical caption names, or None if it is not one (for scoring captions)."""
    import re

    colours, categories = "|".join(COLOUR_SYNONYMS), "|".join(map(re.escape, CATEGORY_SYNONYMS))
    nouns = {PATTERN_NOUNS[p][0]: p for p in PATTERN_NOUNS}
    solid = re.fullmatch(rf"solid ({colours}) ({categories})", text.strip())
    if solid:
        return ProductSpec(solid.group(2), solid.group(1), None, "solid")
    patterned = re.fullmatch(rf"({colours}) ({categories}) with ({colours}) ({'|'.join(nouns)})", text.strip())
    if patterned:
        main, cat, second, noun = patterned.groups()
        return ProductSpec(cat, main, second, nouns[noun])
    return None


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
    """A CLIP training caption; `full` (for specs with hard negatives) names every attribute.

    About ZH_SHARE of them are Chinese, and BARE_SHARE of a patterned product's others name
    only its colour and category, so that a bare query finds patterned products as well as solid ones.
    """
    if rng.random() < ZH_SHARE:
        return chinese_caption(spec, rng, full=full)
    if not full and spec.secondary and rng.random() < BARE_SHARE:
        return BARE.format(**_words(spec, rng))
    if full and spec.secondary:
        return swap_query(spec, rng) if rng.random() < 0.5 else describe_full(spec, rng)
    return shopper_text(spec, rng, CAPTION_MIX)
