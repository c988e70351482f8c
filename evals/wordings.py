"""Held-out wordings: prompts that mean what a training caption means in words the training captions never use.

A text encoder that knows language (the pretrained MiniLM) should carry a model from "a handwritten digit seven" to
"the number 7, written by hand"; a randomly initialised tower knows only the exact tokens it was trained on. Each
wording here is a (prompt, canonical caption) pair: the model is prompted with the first, the judge reads the image
against the second. No wording below appears in the captions the built-in datasets write (a test says so).
"""
from __future__ import annotations

from t2i_core.data.digits import DIGIT_WORDS, digits_caption
from t2i_core.data.shapes import SHAPES_VOCAB, parse_shapes_caption, shapes_caption
from t2i_core.data.sprites import parse_sprites_caption

# digits: numerals, other nouns and other word orders; {n} is the numeral, {w} the word
DIGIT_TEMPLATES = (
    "the number {n}, written by hand",
    "an image showing a {n} drawn by hand",
    "handwriting of the numeral {n}",
    "a {w} written with a pen",
    "the digit {n}",
    "someone wrote {w}",
)

# shapes: a synonym per attribute value, and templates that reorder the attributes
SHAPE_SYNONYMS = {
    "color": {"red": ("crimson", "scarlet"), "green": ("lime", "emerald"), "blue": ("navy", "azure"),
              "yellow": ("golden", "lemon")},
    "shape": {"circle": ("disc", "round dot"), "square": ("box", "block"), "triangle": ("pyramid", "wedge")},
    "size": {"small": ("tiny", "little"), "large": ("big", "huge")},
    "position": {"left": ("at the left", "on the left side"), "center": ("in the middle", "at the centre"),
                 "right": ("at the right", "on the right side")},
}
SHAPE_TEMPLATES = (
    "a {color} {shape}, {size}, {position}",
    "{position}, a {size} {color} {shape}",
    "a {size} {shape} coloured {color}, {position}",
    "a {color} {size} {shape} {position}",
)


def digits_wordings(n: int) -> list[tuple[str, str]]:
    """n (prompt, canonical caption) pairs; image i asks for digit i mod 10, cycling through DIGIT_TEMPLATES."""
    out = []
    for i in range(n):
        digit = i % 10
        template = DIGIT_TEMPLATES[(i // 10) % len(DIGIT_TEMPLATES)]
        out.append((template.format(n=digit, w=DIGIT_WORDS[digit]), digits_caption(digit)))
    return out


def shapes_wording(caption: str, variant: int) -> str:
    """The shapes caption `caption` said another way: synonym `variant` of each value, template `variant`."""
    attributes = parse_shapes_caption(caption)
    words = {k: SHAPE_SYNONYMS[k][v][variant % 2] for k, v in attributes.items()}
    return SHAPE_TEMPLATES[variant % len(SHAPE_TEMPLATES)].format(**words)


def shapes_wordings(captions: list[str]) -> list[tuple[str, str]]:
    """(held-out prompt, canonical caption) for each training-style caption, variant i for caption i."""
    return [(shapes_wording(c, i), c) for i, c in enumerate(captions)]


# sprites: the caption names an identity, which has no synonym, so the held-out wordings keep the name, the
# colour and the types and change everything around them: other nouns, other orders, the type said as "type"
SPRITE_TEMPLATES = (
    "{name}, the {color} {types} pokemon",
    "a pokemon called {name}, {types} type, mostly {color}",
    "a picture of {name}, a creature of the {types} type, {color} in colour",
    "{color} {name}, a {types} type monster",
)


def sprites_wordings(captions: list[str]) -> list[tuple[str, str]]:
    """(held-out prompt, canonical caption) for each sprites caption, template i mod len(SPRITE_TEMPLATES) for
    caption i."""
    out = []
    for i, caption in enumerate(captions):
        a = parse_sprites_caption(caption)
        template = SPRITE_TEMPLATES[i % len(SPRITE_TEMPLATES)]
        out.append((template.format(name=a["name"], color=a["color"], types=" and ".join(a["types"])), caption))
    return out


def all_shapes_captions() -> list[str]:
    """Every caption the shapes dataset can write (72)."""
    v = SHAPES_VOCAB
    return [shapes_caption(c, s, p, z) for c in v["color"] for s in v["shape"] for p in v["position"] for z in v["size"]]
