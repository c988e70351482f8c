"""The held-out wordings (evals.wordings) mean what their canonical caption means, and the training captions never
use their words: otherwise bench.language's held-out column would measure nothing new."""
import re

from evals.wordings import (
    DIGIT_TEMPLATES,
    SHAPE_SYNONYMS,
    all_shapes_captions,
    digits_wordings,
    shapes_wordings,
)
from t2i_core.data.digits import parse_digits_caption
from t2i_core.data.shapes import parse_shapes_caption


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_digit_wordings_ask_for_the_canonical_digit_in_new_words():
    pairs = digits_wordings(10 * len(DIGIT_TEMPLATES))
    assert len({p for p, _ in pairs}) == len(pairs)  # every template and digit once
    for prompt, canonical in pairs:
        digit = parse_digits_caption(canonical)
        assert str(digit) in prompt or canonical.split()[-1] in prompt
        assert prompt != canonical
        assert "handwritten" not in words(prompt)


def test_shape_wordings_use_no_word_of_the_training_vocabulary():
    captions = all_shapes_captions()
    assert len(set(captions)) == 72
    training_words = set().union(*(words(c) for c in captions))
    for prompt, canonical in shapes_wordings(captions):
        attributes = parse_shapes_caption(canonical)
        for name, value in attributes.items():
            assert any(s in prompt for s in SHAPE_SYNONYMS[name][value]), (prompt, name, value)
        # left and right have no common synonym, so position keeps the word and changes the phrase
        assert not words(prompt) & (training_words - {"a", "on", "the", "in", "left", "right"}), prompt
        assert canonical.split(maxsplit=1)[1] not in prompt


def test_the_synonym_table_has_a_row_per_synonym_and_counts_the_ones_nearest_their_own_word():
    from bench.language import synonym_neighbours
    table = synonym_neighbours(("tiny",))
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    synonyms = sum(len(s) for values in SHAPE_SYNONYMS.values() for s in values.values())
    assert len(rows) == synonyms
    right = sum("**" not in row for row in rows)
    assert f"tiny: {right} of {synonyms} synonyms lie nearest their own word" in table
    # every synonym was put into its caption: the random tower's states always change with a word
    assert all(float(row.split("|")[-2]) < 0.995 for row in rows)


def test_sprite_wordings_keep_name_colour_and_types_in_templates_the_captions_never_use():
    from evals.wordings import SPRITE_TEMPLATES, sprites_wordings
    from t2i_core.data.sprites import parse_sprites_caption, sprites_caption
    captions = [sprites_caption("orange", ("fire",), "charmander"),
                sprites_caption("green", ("grass", "poison"), "bulbasaur")]
    captions = [c for c in captions for _ in SPRITE_TEMPLATES]  # each caption in every template
    pairs = sprites_wordings(captions)
    assert len({prompt for prompt, _ in pairs}) == len(pairs)  # every template used, none twice
    for prompt, caption in pairs:
        a = parse_sprites_caption(caption)
        assert prompt != caption and a["name"] in prompt and a["color"] in prompt
        assert all(t in prompt for t in a["types"])
        try:
            parse_sprites_caption(prompt)
        except ValueError:
            continue
        raise AssertionError(f"{prompt!r} reads as a training caption")
