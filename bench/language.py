"""What language buys: the same training with the random tiny tower and with the pretrained MiniLM encoder, judged
on the training captions' wording and on held-out wordings of the same meaning (evals.wordings).

    .venv/bin/python -m bench.language [--steps 600] [--n 200] [--w 3] [--datasets digits,shapes]
    .venv/bin/python -m bench.language --neighbours     # only the encoders' synonym table: seconds, no training

For each dataset and encoder it trains a fresh model with the default TrainConfig for the same number of steps
(same seed, so the same batches and noise), samples n images at guidance w (DDIM 25, eta 0, fp32) once prompted
with the training captions and once with held-out wordings, the same seeds for both, and judges each image against
the canonical caption. "kept" is held-out adherence over training-wording adherence: 1 means the new words work as
well as the trained ones.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from evals.judges import evaluation
from evals.wordings import (
    DIGIT_TEMPLATES,
    SHAPE_SYNONYMS,
    SHAPE_TEMPLATES,
    SPRITE_TEMPLATES,
    digits_wordings,
    shapes_wordings,
    sprites_wordings,
)
from t2i_core.data.builtin import builtin_dataset
from t2i_core.data.shapes import shapes_caption
from t2i_core.text_encoder import TEXT_ENCODER_NAMES, text_encoder_by_name

from .common import machine_line
from .quality import (
    BENCH_DIR,
    RESOLUTION,
    Sampling,
    generate,
    train_fresh,
    training_line,
)

DATASETS = ("digits", "shapes")


def digits_task(root: Path, n: int):
    """(train folder, [(held-out prompt, canonical caption)], the judge, wording templates, images per template
    block)."""
    ev = evaluation("digits", RESOLUTION)
    return (builtin_dataset("digits").write(root / "data" / f"digits{RESOLUTION}", resolution=RESOLUTION),
            digits_wordings(n), ev.judge, len(DIGIT_TEMPLATES), 10)


def shapes_task(root: Path, n: int):
    ev = evaluation("shapes", RESOLUTION)
    return (builtin_dataset("shapes").write(root / "data" / f"shapes{RESOLUTION}", resolution=RESOLUTION),
            shapes_wordings(ev.prompts(n)), ev.judge, len(SHAPE_TEMPLATES), 1)


def sprites_task(root: Path, n: int):
    dataset = builtin_dataset("sprites")
    ev = evaluation("sprites", dataset.resolution)
    return (dataset.write(root / "data" / f"sprites{dataset.resolution}"), sprites_wordings(ev.prompts(n)),
            ev.judge, len(SPRITE_TEMPLATES), 1)


TASKS = {"digits": digits_task, "shapes": shapes_task, "sprites": sprites_task}


BASE_ATTRIBUTES = {"color": "red", "shape": "circle", "position": "left", "size": "large"}


def synonym_neighbours(encoders=TEXT_ENCODER_NAMES) -> str:
    """Which training word each held-out synonym lies nearest to, for each encoder: the caption "a large red
    circle on the left" with one attribute said by a synonym (evals.wordings.SHAPE_SYNONYMS), against the same
    caption with each of that attribute's training words, by the cosine of the pooled (mean) states. A synonym
    nearer another word's caption than its own asks the U-Net for the other word: a ceiling on held-out
    adherence that no training of the U-Net lifts."""
    lines = ["| text encoder | attribute | synonym (of) | nearest training word | cosine |", "|---|---|---|---|---|"]
    totals = []
    for encoder_name in encoders:
        encoder = text_encoder_by_name(encoder_name)
        right = count = 0
        for attribute, synonyms in SHAPE_SYNONYMS.items():
            words = list(synonyms)
            canonical = [shapes_caption(**{**BASE_ATTRIBUTES, attribute: w}) for w in words]
            phrase = {"position": lambda w: "in the center" if w == "center" else f"on the {w}"}.get(
                attribute, lambda w: w)
            said = [(word, syn, canonical[words.index(word)].replace(phrase(word), syn))
                    for word in words for syn in synonyms[word]]
            pooled = encoder.encode(canonical + [text for *_, text in said]).conditioning.pooled
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            sims = pooled[len(words):] @ pooled[:len(words)].T
            for (word, syn, _), row in zip(said, sims):
                nearest = words[int(row.argmax())]
                right, count = right + (nearest == word), count + 1
                lines.append(f"| {encoder_name} | {attribute} | {syn} ({word}) | "
                             f"{nearest if nearest == word else f'**{nearest}**'} | {row.max():.2f} |")
        totals.append(f"- {encoder_name}: {right} of {count} synonyms lie nearest their own word")
    return "\n".join(["Held-out synonyms against the training words (pooled states, one attribute changed at a time):",
                      "", *lines, "", *totals])


def run(*, steps: int = 600, n: int = 200, w: float = 3.0, datasets=DATASETS, encoders=TEXT_ENCODER_NAMES,
        root: Path | None = None, log=None) -> str:
    root = Path(root or BENCH_DIR) / "language"
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    sampling = Sampling()
    rows, per_template, training, per_attribute = [], [], [], []
    width = max(len(DIGIT_TEMPLATES), len(SHAPE_TEMPLATES), len(SPRITE_TEMPLATES))
    for name in datasets:
        train_dir, wordings, judge, templates, block = TASKS[name](root, n)
        attribute_rows = []
        heldout = [p for p, _ in wordings]
        canonical = [c for _, c in wordings]
        seeds = list(range(n))
        for encoder_name in encoders:
            if log:
                log(f"{name} with {encoder_name}: training {steps} steps")
            # the dataset's own size and preset (for digits and shapes the defaults; the sprites train at 32 px in
            # 2x2-pixel cells: docs/QUALITY.md, "sprites")
            dataset = builtin_dataset(name)
            resolution = dataset.resolution
            trained = train_fresh(train_dir, root / name / f"{name}-{encoder_name}.safetensors", minutes=None,
                                  steps=steps, log=log, text_encoder=text_encoder_by_name(encoder_name),
                                  resolution=resolution, preset=dataset.preset)
            training.append(training_line(f"{name}, {encoder_name}", trained))
            seen, _ = generate(trained.model, canonical, seeds, w, sampling=sampling, resolution=resolution)
            new, _ = generate(trained.model, heldout, seeds, w, sampling=sampling, resolution=resolution)
            a, b = judge.matches(seen, canonical), judge.matches(new, canonical)
            scores_seen, scores_new = judge.judge(seen, canonical).scores, judge.judge(new, canonical).scores
            attribute_rows.append(f"| {encoder_name} | " + " | ".join(
                f"{scores_seen[k]:.0%} / {scores_new[k]:.0%}" for k in judge.attributes) + " |")
            kept = b.mean() / max(a.mean(), 1e-9)
            rows.append(f"| {name} | {encoder_name} | {a.mean():.1%} | {b.mean():.1%} | **{kept:.2f}** |")
            # image i used template (i // block) mod templates (evals.wordings)
            which = (np.arange(n) // block) % templates
            per_template.append(f"| {name} | {encoder_name} | "
                                + " | ".join(f"{b[which == t].mean():.0%}" if (which == t).any() else "-"
                                             for t in range(width)) + " |")
            if log:
                log(f"  {name} {encoder_name}: training wording {a.mean():.3f}, held-out {b.mean():.3f}")
        per_attribute += ["", f"{name}, by attribute (training wording / held-out wording):", "",
                          "| text encoder | " + " | ".join(judge.attributes) + " |",
                          "|---|" + "---|" * len(judge.attributes), *attribute_rows]
    return "\n".join([
        f"## What language buys ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        machine_line(),
        "",
        *[f"- {line}" for line in training],
        "",
        f"{n} images per wording, seeds 0..{n - 1}, w={w:g}, {sampling}, fp32; judged against the canonical caption.",
        "",
        "| dataset | text encoder | training wording | held-out wording | kept (held-out / training) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Held-out adherence by template (evals.wordings: DIGIT_TEMPLATES, SHAPE_TEMPLATES, SPRITE_TEMPLATES, in order):",
        "",
        "| dataset | text encoder | " + " | ".join(f"t{i}" for i in range(width)) + " |",
        "|---|---|" + "---|" * width,
        *per_template,
        *per_attribute,
        "",
        synonym_neighbours(encoders) if "shapes" in datasets else "",
    ]) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=600, help="training steps per model (the same for every encoder)")
    p.add_argument("--n", type=int, default=200, help="images per wording")
    p.add_argument("--w", type=float, default=3.0, help="guidance scale")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--encoders", default=",".join(TEXT_ENCODER_NAMES))
    p.add_argument("--root", type=Path, default=None, help=f"work folder (default {BENCH_DIR})")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    p.add_argument("--neighbours", action="store_true", help="only the synonym table (no training)")
    a = p.parse_args(argv)
    encoders = tuple(a.encoders.split(","))
    if a.neighbours:
        text = synonym_neighbours(encoders) + "\n"
    else:
        text = run(steps=a.steps, n=a.n, w=a.w, datasets=tuple(a.datasets.split(",")), encoders=encoders,
                   root=a.root, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
