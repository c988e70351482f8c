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
