"""Steps to quality: digit adherence against the number of sampling steps, per sampler, on a trained digits model.

    .venv/bin/python -m bench.steps [--checkpoint PATH] [--quick] [--n 500] [--guidance 3]

Without --checkpoint it uses the model bench.quality last trained (.cache/bench/digits/digits.safetensors),
and trains one (3 minutes, the defaults) if there is none. For each sampler t2i_core offers (DDIM with eta 0,
DDPM ancestral), DDIM with guidance only from 40% of the run on, and each step count it generates the same n
prompts and seeds (digit i mod 10, seed i), and reports adherence (DigitsJudge), ms per image when generated in batches of 250 and ms for one image alone
(batch 1, the latency a user waiting on one image sees). Then the figure users care about: the fewest
seconds to an image of a given adherence, i.e. the cheapest (sampler, steps) whose adherence reaches it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.quality import (
    BENCH_DIR,
    FULL,
    LATE,
    PCA_COMPONENTS,
    RESOLUTION,
    digits_checkpoint_path,
    generate,
    real_reference_fd,
    train_fresh,
    training_line,
    within_prompt_diversity,
)
from evals.digits import DigitsJudge
from evals.distances import frechet_distance, pca_features
from t2i_core import load_checkpoint
from t2i_core.data.builtin import digits_caption, load_digits_arrays, make_digits_dataset

STEP_COUNTS = (1, 2, 3, 5, 10, 25)
# name -> (sampler, guidance interval): every sampler t2i_core offers, and DDIM guided only from 40% of the run on
VARIANTS = {"DDIM (eta 0)": ("ddim", FULL), "DDPM": ("ddpm", FULL), "DDIM, guided from 0.4": ("ddim", LATE)}
# (adherence, FD at most this many times real-vs-real or None): adherence alone is reached by 1-step images that
# are blurred class means, so the targets that matter also bound the distance to real images
TARGETS = ((0.95, None), (0.98, None), (0.98, 3.0), (0.98, 2.5), (0.99, 2.5))


def single_image_ms(model, steps: int, sampler: str, guidance: float, interval, repeats: int = 3) -> float:
    """Median wall ms to generate one image alone (batch 1, CFG batched as 2)."""
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        model.generate(digits_caption(r % 10), seeds=[10_000 + r], height=RESOLUTION, width=RESOLUTION, steps=steps,
                       guidance_scale=guidance, sampler=sampler, guidance_interval=interval)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def ensure_model(checkpoint: Path | None, quick: bool, log=None):
    """(model, description): the given checkpoint, or bench.quality's digits model, trained now if missing."""
    path = Path(checkpoint) if checkpoint else digits_checkpoint_path()
    if path.exists():
        model = load_checkpoint(path)
        info = model.training or {}
        return model, (f"checkpoint `{path.name}`: {info.get('step', '?')} training steps, "
                       f"{info.get('train_seconds', 0) / 60:.2f} min of training")
    if checkpoint:
        raise SystemExit(f"no checkpoint at {path}")
    if log:
        log(f"no digits model at {path}: training one ({'0.5' if quick else '3'} min)")
    data = make_digits_dataset(BENCH_DIR / "data" / f"digits{RESOLUTION}", RESOLUTION, "train")
    trained = train_fresh(data, path, minutes=0.5 if quick else 3.0, steps=None, log=log)
    return trained.model, training_line("trained now", trained)


def run(quick: bool = False, *, checkpoint: Path | None = None, n: int | None = None, guidance: float = 3.0,
        step_counts: tuple[int, ...] = STEP_COUNTS, log=None) -> str:
    n = n or (100 if quick else 500)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    model, described = ensure_model(checkpoint, quick, log)
    model.unet.eval()
    judge = DigitsJudge(RESOLUTION)
    real_train, _ = load_digits_arrays(RESOLUTION, "train")
    heldout, heldout_labels = load_digits_arrays(RESOLUTION, "heldout")
    pca = pca_features(real_train, PCA_COMPONENTS)
    held_features = pca(heldout)
    real_fd = real_reference_fd(pca, real_train, heldout, n)
    real_div = within_prompt_diversity(heldout, heldout_labels.tolist())
    labels = [i % 10 for i in range(n)]
    prompts = [digits_caption(i % 10) for i in range(n)]
    seeds = list(range(n))
    load_before = os.getloadavg()[0]
    results = {}  # (variant, steps) -> (adherence, batched s/image, single-image s)
    rows = []
    for variant, (sampler, interval) in VARIANTS.items():
        for steps in step_counts:
            images, seconds = generate(model, prompts, seeds, guidance, steps=steps, sampler=sampler, interval=interval)
            adherence = judge.adherence(images, prompts)
            fd = frechet_distance(pca(images), held_features)
            div = within_prompt_diversity(images, labels)
            alone = single_image_ms(model, steps, sampler, guidance, interval, repeats=1 if quick else 3) / 1000
            results[(variant, steps)] = (adherence, seconds / n, alone, fd / real_fd)
            label = variant
            rows.append(f"| {label} | {steps} | **{adherence:.1%}** | {fd:.2f} ({fd / real_fd:.2f}x) | {div:.3f} "
                        f"| {seconds / n * 1000:.1f} | {alone * 1000:.0f} | {seconds / n / max(adherence, 1e-9) * 1000:.1f} |")
            if log:
                log(f"  {sampler} {steps} steps: adherence {adherence:.3f}, {seconds / n * 1000:.1f} ms/image")
    load_after = os.getloadavg()[0]

    def fastest(target, variant=None, column=1):
        adherence, fd_ratio = target
        ok = [(v[column], k) for k, v in results.items() if v[0] >= adherence and (variant is None or k[0] == variant)
              and (fd_ratio is None or v[3] <= fd_ratio)]
        return min(ok) if ok else None

    def cell(found):
        if found is None:
            return "not reached"
        value, (variant, steps) = found
        return f"{value * 1000:.0f} ms ({variant}, {steps})" if value < 1 else f"{value:.2f} s ({variant}, {steps})"
    target_rows = []
    for target in TARGETS:
        cells = [cell(fastest(target, v)) for v in VARIANTS] + [cell(fastest(target, None, 2))]
        fd_bound = "" if target[1] is None else f", FD ≤ {target[1]:g}x real"
        target_rows.append(f"| ≥ {target[0]:.0%}{fd_bound} | " + " | ".join(cells) + " |")
    return "\n".join([
        f"## Steps to quality ({'quick, ' if quick else ''}torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Digits model: {described}. Guidance {guidance:g}; {n} images per row (digit i mod 10, seed i); "
        f"DigitsJudge reads {judge.heldout_accuracy():.1%} of real held-out digits. Load average {load_before:.1f} "
        f"before, {load_after:.1f} after, on {os.cpu_count()} CPUs.",
        "",
        f"| sampler | steps | adherence | FD (real-vs-real {real_fd:.2f}) | diversity (real {real_div:.3f}) "
        "| ms/image (batch 250) | ms for one image alone | ms per judged-correct image |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Seconds to an image of a given adherence (and, in the later rows, a bounded FD): the cheapest setting "
        "that reaches it.",
        "",
        "| target | " + " | ".join(f"{v}, batched" for v in VARIANTS) + " | any, one image alone |",
        "|---" * (len(VARIANTS) + 2) + "|",
        *target_rows,
    ]) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a digits model (default: bench.quality's, trained if missing)")
    p.add_argument("--quick", action="store_true", help="100 images per row")
    p.add_argument("--n", type=int, help="images per row (default 500)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", default=",".join(map(str, STEP_COUNTS)), help="comma-separated step counts")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    log = None if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    text = run(a.quick, checkpoint=a.checkpoint, n=a.n, guidance=a.guidance,
               step_counts=tuple(int(s) for s in a.steps.split(",")), log=log)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
