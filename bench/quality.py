"""Quality benchmark: train on the built-in datasets under a time budget, then measure what came out.

    .venv/bin/python -m bench.quality [--quick] [--minutes 3] [--n 500] [--datasets digits,shapes,sprites]
    .venv/bin/python -m bench.quality --datasets sprites --minutes 15 --reuse --sampler ddpm --sampling-steps 50

For each dataset it trains a fresh model with the default TrainConfig (only dataset, output, resolution and a
time budget are set; sprites also trains the SPRITES_PRESET U-Net), then samples a fixed set of seeds at
guidance scales 1, 1.5, 3 and 7.5 (DDIM, 25 steps, eta 0; --sampler, --sampling-steps and --eta change that), and at
3 and 7.5 with guidance only from 40% of the run on ("from 0.4": the sampler's guidance_interval), and reports:

* adherence: digits - how often DigitsJudge (an SVC trained on the real train split) reads the prompted
  digit; shapes - judge_shapes' analytic check of color, shape, position, size and all four;
* diversity: mean pairwise distance between samples of the same prompt, averaged over prompts, beside the
  same figure for real held-out images (a model that draws one image per prompt scores near 0);
* FD: Fréchet distance between generated and held-out real images in the PCA space of the real train images
  (32 components), beside the distance between an equally large random subset of the real train images and
  the held-out ones (real-vs-real: the floor that finite samples allow). sprites has one image per caption and
  trains on all 649: prompts come from one half of the sprites (evals.sprites.real_halves), FD is measured
  against the other half, and real-vs-real is the first half's real images against the second. Its table
  keeps w = 1, 3 and 7.5 (SPRITES_SETTINGS) and adds retrieval (top-1, top-5) and dominant-colour adherence.

With --reuse it trains nothing: it judges the model the same command (same --root, --set, --minutes, --steps) left
there, so one trained model can be judged with several samplers.

Image i is prompted with class i mod (number of classes) and seeded with i, at every scale. Training time is
wall-clock on whatever machine runs it: the load average is printed with it, since other processes slow it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from evals.digits import DigitsJudge
from evals.distances import frechet_distance, mean_pairwise_distance, pca_features
from evals.shapes import judge_shapes, summarize_judgements
from evals.sprites import CLEAR_MARGIN, SpritesJudge, real_halves, sprites_tensor
from t2i_core.checkpoint import load_checkpoint
from t2i_core.data.digits import DIGIT_WORDS, digits_caption, load_digits_arrays, make_digits_dataset
from t2i_core.data.shapes import generate_shapes, make_shapes_dataset
from t2i_core.data.sprites import load_sprites, make_sprites_dataset
from t2i_core.pipeline import T2IModel
from t2i_core.samplers import SAMPLERS
from t2i_core.text_encoder import FrozenTextEncoder, tiny_text_encoder
from t2i_core.train import TrainCallbacks, TrainConfig, train
from t2i_core.train_state import training_files

REPO = Path(__file__).resolve().parent.parent

BENCH_DIR = Path(os.environ.get("T2I_BENCH_DIR", REPO / ".cache" / "bench"))
FULL, LATE = (0.0, 1.0), (0.4, 1.0)
# (guidance scale, guidance interval): 1, 3 and 7.5 over the whole run as asked for, 1.5, and 3 and 7.5 guided
# only from 40% of the run on (t <= 600 of 1000), which keeps the samples' variety (t2i_core/sampler.py)
SETTINGS = ((1.0, FULL), (1.5, FULL), (3.0, FULL), (7.5, FULL), (3.0, LATE), (7.5, LATE))
# a 32 px sprite costs 4x a 16 px image to sample (370 ms at w=1, 800-1000 guided, fp32 on a 2-core Zen 4), so
# the sprites table keeps the three scales that matter: none, the default, strong
SPRITES_SETTINGS = ((1.0, FULL), (3.0, FULL), (7.5, FULL))


@dataclass(frozen=True)
class Sampling:
    """How the benchmark samples: t2i_core's sampler name, its steps and (DDIM) eta."""
    sampler: str = "ddim"
    steps: int = 25
    eta: float = 0.0

    def __str__(self):
        return f"{self.sampler.upper()} {self.steps} steps" + (f", eta {self.eta:g}" if self.sampler == "ddim" else "")


DEFAULT_SAMPLING = Sampling()

RESOLUTION = 16  # digits are 8x8 at source; shapes are judged reliably at 16 px (100% on real images)
PCA_COMPONENTS = 32
SHAPES_TRAIN_COUNT = 1000
SHAPES_HELDOUT_SEED = 1
SPRITES_RESOLUTION = 32  # the sprites are 19-153 px drawings; the colour judge reads 100% of them right at 32 px
# tiny on 2x2-pixel cells: at 32 px it trains 2.5x the images per second of tiny, and after 15 minutes on a 2-core
# Zen 4 its samples at w=3 were nearest to the captioned sprite in 96% of cases (top-5 99.4%); tiny's top-5 was
# 9% (docs/QUALITY.md, "sprites")
SPRITES_PRESET = "tiny-patch2"
GENERATION_BATCH = 250


def digits_checkpoint_path(root: Path | None = None) -> Path:
    """Where the digits model trained by this benchmark is kept (bench.steps reuses it)."""
    return (root or BENCH_DIR) / "digits" / "digits.safetensors"


@dataclass
class Trained:
    model: T2IModel
    checkpoint: Path
    steps: int
    train_s: float
    cpu_s: float
    out_of_time: bool
    load: tuple[float, float]  # 1-minute load average before and after training
    config: TrainConfig
    losses: list[float] = field(default_factory=list)
    reused: bool = False  # loaded from an earlier run (--reuse), not trained here


def train_fresh(dataset: Path, output: Path, *, minutes: float | None, steps: int | None, log=None,
                resolution: int = RESOLUTION, reuse: bool = False, text_encoder: FrozenTextEncoder | None = None,
                **overrides) -> Trained:
    """Train a new model on `dataset` (earlier bench output there is removed), defaults apart from the arguments.
    reuse: load the model an earlier call with the same arguments left at `output` instead.
    text_encoder: the frozen encoder to train with (default: the tiny tower, seed 0)."""
    kw = dict(dataset=str(dataset), output=str(output), resolution=resolution, **overrides)
    if minutes:
        kw["max_minutes"] = minutes
        kw["steps"] = steps or 1_000_000  # the budget decides
    elif steps:
        kw["steps"] = steps
    cfg = TrainConfig(**kw)
    if reuse:
        return reused_model(output, cfg)
    for path in training_files(output):
        path.unlink()
    encoder = text_encoder if text_encoder is not None else tiny_text_encoder(0)

    def progress(p):
        if log and (p.step % 100 == 0):
            log(f"  step {p.step}  loss {p.loss:.4f}  {p.images_per_s:.0f} img/s")
    load_before = os.getloadavg()[0]
    cpu0 = time.process_time()
    result = train(cfg, encoder, device="cpu", callbacks=TrainCallbacks(on_progress=progress, log=log))
    cpu_s = time.process_time() - cpu0
    model = result.model
    model.unet.eval()
    return Trained(model, result.checkpoint, result.step, float(model.training.get("train_seconds", 0.0)), cpu_s,
                   result.out_of_time, (load_before, os.getloadavg()[0]), cfg, [h["loss"] for h in result.history])


def reused_model(output: Path, cfg: TrainConfig) -> Trained:
    """The model an earlier run with the TrainConfig `cfg` wrote to `output`; refused, naming what differs, when it
    was trained otherwise."""
    if not output.exists():
        raise SystemExit(f"--reuse: there is no model at {output}; run the same command without --reuse first")
    model = load_checkpoint(output)
    model.unet.eval()
    trained_with = model.training.get("config", {})
    differ = sorted(k for k, v in asdict(cfg).items() if trained_with.get(k) != v)
    if differ:
        raise SystemExit(f"--reuse: the model at {output} was trained with other settings ("
                         + ", ".join(f"{k}: {trained_with.get(k)!r}, asked {getattr(cfg, k)!r}" for k in differ)
                         + "); run without --reuse to train one, or give the command that trained it")
    return Trained(model, output, model.training["step"], float(model.training.get("train_seconds", 0.0)),
                   float("nan"), False, (float("nan"), float("nan")), cfg, reused=True)


def setting_label(w: float, interval: tuple[float, float]) -> str:
    return f"{w:g}" if interval == FULL else f"{w:g}, from {interval[0]:g}"


def generate(model: T2IModel, prompts: list[str], seeds: list[int], guidance: float, *,
             sampling: Sampling = DEFAULT_SAMPLING, resolution: int = RESOLUTION,
             interval: tuple[float, float] = FULL) -> tuple[torch.Tensor, float]:
    """Images for (prompt, seed) pairs, in batches; returns (images, wall seconds)."""
    out, t0 = [], time.perf_counter()
    for i in range(0, len(prompts), GENERATION_BATCH):
        out.append(model.generate(prompts[i: i + GENERATION_BATCH], seeds=seeds[i: i + GENERATION_BATCH],
                                  height=resolution, width=resolution, steps=sampling.steps, guidance_scale=guidance,
                                  sampler=sampling.sampler, eta=sampling.eta, guidance_interval=interval))
    return torch.cat(out), time.perf_counter() - t0


def within_prompt_diversity(images: torch.Tensor, keys: list) -> float:
    """Mean pairwise distance among images of the same prompt, averaged over prompts."""
    keys = np.asarray(keys)
    values = [mean_pairwise_distance(images[torch.from_numpy(np.flatnonzero(keys == k))])
              for k in dict.fromkeys(keys.tolist()) if (keys == k).sum() >= 2]
    return float(np.mean(values)) if values else float("nan")  # nan: no prompt has two images


def real_reference_fd(pca, train_images: torch.Tensor, heldout: torch.Tensor, n: int, repeats: int = 5) -> float:
    """FD between n random real train images and the held-out ones, averaged over `repeats` draws: what a perfect
    generator would score with n samples (FD falls as n grows, so the reference must use the same n)."""
    values = []
    for seed in range(repeats):
        pick = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[: min(n, len(train_images))]
        values.append(frechet_distance(pca(train_images[pick]), pca(heldout)))
    return float(np.mean(values))


def load_line(trained: Trained) -> str:
    return f"load average {trained.load[0]:.1f} before, {trained.load[1]:.1f} after, on {os.cpu_count()} CPUs"


def training_line(name: str, trained: Trained) -> str:
    c = trained.config
    budget = f"budget {c.max_minutes:g} min, " if c.max_minutes else ""
    line = (f"{name}: {c.preset}, {trained.steps} steps (batch {c.batch_size}) in {trained.train_s / 60:.2f} min "
            f"wall-clock ({budget}{trained.steps * c.batch_size / max(trained.train_s, 1e-9):.0f} img/s")
    if trained.reused:
        return f"{line}), trained by an earlier run: this one reused {trained.checkpoint}"
    return f"{line}, {trained.cpu_s / 60:.2f} CPU-min); {load_line(trained)}"


# ---------------------------------------------------------------------------------------------------------------
# digits

def bench_digits(*, minutes: float | None, steps: int | None, n: int, root: Path, log=None,
                 trained: Trained | None = None, overrides: dict | None = None,
                 guidance_starts: tuple[float, ...] = (), sampling: Sampling = DEFAULT_SAMPLING,
                 reuse: bool = False) -> tuple[str, dict]:
    train_dir = make_digits_dataset(root / "data" / f"digits{RESOLUTION}", RESOLUTION, "train")
    if trained is None:
        trained = train_fresh(train_dir, digits_checkpoint_path(root), minutes=minutes, steps=steps, log=log,
                              reuse=reuse, **(overrides or {}))
    judge = DigitsJudge(RESOLUTION)
    real_train, _ = load_digits_arrays(RESOLUTION, "train")
    heldout, heldout_labels = load_digits_arrays(RESOLUTION, "heldout")
    pca = pca_features(real_train, PCA_COMPONENTS)
    held_features = pca(heldout)
    labels = [i % 10 for i in range(n)]
    prompts = [digits_caption(k) for k in labels]
    seeds = list(range(n))
    real_div = within_prompt_diversity(heldout, heldout_labels.tolist())
    real_fd = real_reference_fd(pca, real_train, heldout, n)
    rows, figures = [], {"steps": trained.steps, "train_s": trained.train_s, "judge_heldout": judge.heldout_accuracy(),
                         "real_diversity": real_div, "real_fd": real_fd}
    for w, interval in SETTINGS:
        label = setting_label(w, interval)
        images, seconds = generate(trained.model, prompts, seeds, w, sampling=sampling, interval=interval)
        adherence = judge.adherence(images, prompts)
        per_digit = judge.predict(images) == np.asarray(labels)
        worst = int(np.argmin([per_digit[np.asarray(labels) == d].mean() for d in range(10)]))
        div = within_prompt_diversity(images, labels)
        fd = frechet_distance(pca(images), held_features)
        figures[label] = {"adherence": adherence, "diversity": div, "fd": fd, "s_per_image": seconds / n}
        rows.append(f"| {label} | **{adherence:.1%}** | {DIGIT_WORDS[worst]} {per_digit[np.asarray(labels) == worst].mean():.0%} "
                    f"| {div:.3f} | {fd:.2f} ({fd / real_fd:.2f}x) | {seconds / n * 1000:.0f} |")
        if log:
            log(f"  digits w={label}: adherence {adherence:.3f}, diversity {div:.3f}, FD {fd:.2f}")
    text = "\n".join([
        f"### digits ({RESOLUTION} px, sklearn's real digits, {len(real_train)} train / {len(heldout)} held out)",
        "",
        training_line("Training", trained),
        "",
        f"DigitsJudge reads {figures['judge_heldout']:.1%} of the real held-out digits correctly. "
        f"{n} images per scale ({n // 10} per digit), seeds 0..{n - 1}, {sampling}, fp32. "
        f"Real held-out digits: diversity {real_div:.3f}; real-vs-real FD {real_fd:.2f} (mean over 5 draws of "
        f"{min(n, len(real_train))} real train images vs the {len(heldout)} held out; FD shrinks as n grows, so the "
        f"reference uses the same n as the generated set).",
        "",
        f"| w | adherence | worst digit | diversity (real {real_div:.3f}) | FD vs held-out (real-vs-real {real_fd:.2f}) "
        "| ms/image |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    if guidance_starts:
        sweep = []
        for w in (3.0, 7.5):
            for start in guidance_starts:
                images, seconds = generate(trained.model, prompts, seeds, w, sampling=sampling, interval=(start, 1.0))
                fd = frechet_distance(pca(images), held_features)
                sweep.append(f"| {w:g} | {start:g} | {judge.adherence(images, prompts):.1%} | {fd:.2f} "
                             f"({fd / real_fd:.2f}x) | {within_prompt_diversity(images, labels):.3f} "
                             f"| {seconds / n * 1000:.0f} |")
        text += "\n".join(["", "", "Where guidance starts (`guidance_interval=(start, 1)`), same model, prompts and seeds:",
                           "", "| w | guidance from | adherence | FD (x real-vs-real) | diversity | ms/image |",
                           "|---|---|---|---|---|---|", *sweep])
    return text, figures


# ---------------------------------------------------------------------------------------------------------------
# shapes

def bench_shapes(*, minutes: float | None, steps: int | None, n: int, root: Path, log=None,
                 overrides: dict | None = None, sampling: Sampling = DEFAULT_SAMPLING,
                 reuse: bool = False) -> tuple[str, dict]:
    train_dir = make_shapes_dataset(root / "data" / f"shapes{RESOLUTION}", SHAPES_TRAIN_COUNT, RESOLUTION, seed=0)
    trained = train_fresh(train_dir, root / "shapes" / "shapes.safetensors", minutes=minutes, steps=steps, log=log,
                          reuse=reuse, **(overrides or {}))
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    real_train = to_tensor(generate_shapes(SHAPES_TRAIN_COUNT, RESOLUTION, seed=0)[0])
    held_images, held_captions, _ = generate_shapes(720, RESOLUTION, seed=SHAPES_HELDOUT_SEED)
    heldout = to_tensor(held_images)
    pca = pca_features(real_train, PCA_COMPONENTS)
    held_features = pca(heldout)
    _, captions, _ = generate_shapes(max(n, 72), RESOLUTION, seed=SHAPES_HELDOUT_SEED)  # balanced: 72 combinations a cycle
    prompts, seeds = captions[:n], list(range(n))
    real_div = within_prompt_diversity(heldout, held_captions)
    real_fd = real_reference_fd(pca, real_train, heldout, n)
    real_judged = summarize_judgements(judge_shapes(heldout, held_captions))["all"]
    rows, figures = [], {"steps": trained.steps, "train_s": trained.train_s, "real_diversity": real_div, "real_fd": real_fd}
    for w, interval in SETTINGS:
        label = setting_label(w, interval)
        images, seconds = generate(trained.model, prompts, seeds, w, sampling=sampling, interval=interval)
        s = summarize_judgements(judge_shapes(images, prompts))
        div = within_prompt_diversity(images, prompts)
        fd = frechet_distance(pca(images), held_features)
        figures[label] = {**s, "diversity": div, "fd": fd, "s_per_image": seconds / n}
        rows.append(f"| {label} | **{s['all']:.1%}** | {s['color']:.0%} | {s['shape']:.0%} | {s['position']:.0%} "
                    f"| {s['size']:.0%} | {div:.3f} | {fd:.2f} ({fd / real_fd:.2f}x) | {seconds / n * 1000:.0f} |")
        if log:
            log(f"  shapes w={label}: all {s['all']:.3f}, diversity {div:.3f}, FD {fd:.2f}")
    text = "\n".join([
        f"### shapes ({RESOLUTION} px, {SHAPES_TRAIN_COUNT} generated training images, 72 captions)",
        "",
        training_line("Training", trained),
        "",
        f"judge_shapes passes {real_judged:.0%} of real held-out shapes. {n} images per scale, seeds 0..{n - 1}, "
        f"{sampling}, fp32. Diversity is among images of the same caption.",
        "",
        f"| w | all | color | shape | position | size | diversity (real {real_div:.3f}) "
        f"| FD vs held-out (real-vs-real {real_fd:.2f}) | ms/image |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    return text, figures


# ---------------------------------------------------------------------------------------------------------------
# sprites

def bench_sprites(*, minutes: float | None, steps: int | None, n: int, root: Path, log=None,
                  overrides: dict | None = None, resolution: int = SPRITES_RESOLUTION,
                  sampling: Sampling = DEFAULT_SAMPLING, reuse: bool = False) -> tuple[str, dict]:
    overrides = {"preset": SPRITES_PRESET, **(overrides or {})}
    resolution = overrides.pop("resolution", resolution)
    train_dir = make_sprites_dataset(root / "data" / f"sprites{resolution}", resolution)
    trained = train_fresh(train_dir, root / "sprites" / f"sprites{resolution}.safetensors", minutes=minutes,
                          steps=steps, log=log, resolution=resolution, reuse=reuse, **overrides)
    arrays, captions, _ = load_sprites(resolution)
    real = sprites_tensor(arrays)
    judge = SpritesJudge(real, captions)
    first, second = real_halves(len(real))
    pca = pca_features(real[first], PCA_COMPONENTS)
    second_features = pca(real[second])
    # image i: the caption of first-half sprite i mod |first|, seed i (several seeds per prompt once n > |first|)
    prompts, seeds = [captions[first[i % len(first)]] for i in range(n)], list(range(n))
    real_judged = judge.judge(real, captions)
    real_fd = real_reference_fd(pca, real[first], real[second], n)
    real_div = mean_pairwise_distance(real[first])
    rows, figures = [], {"steps": trained.steps, "train_s": trained.train_s, "real_fd": real_fd,
                         "real_diversity": real_div, "real_color": real_judged["color"]}
    for w, interval in SPRITES_SETTINGS:
        label = setting_label(w, interval)
        images, seconds = generate(trained.model, prompts, seeds, w, sampling=sampling, interval=interval,
                                   resolution=resolution)
        s = judge.judge(images, prompts)
        div = mean_pairwise_distance(images)
        within = within_prompt_diversity(images, prompts)
        fd = frechet_distance(pca(images), second_features)
        figures[label] = {**s, "diversity": div, "within_prompt_diversity": within, "fd": fd, "s_per_image": seconds / n}
        within_text = "-" if np.isnan(within) else f"{within:.3f}"  # "-": no prompt has two images
        rows.append(f"| {label} | **{s['top1']:.1%}** | {s['top5']:.1%} | **{s['color']:.1%}** | {s['color_clear']:.1%} "
                    f"| {div:.3f} | {within_text} "
                    f"| {fd:.2f} ({fd / real_fd:.2f}x) | {seconds / n * 1000:.0f} |")
        if log:
            log(f"  sprites w={label}: top-1 {s['top1']:.3f}, top-5 {s['top5']:.3f}, colour {s['color']:.3f} "
                f"({s['color_clear']:.3f} on clear calls), FD {fd:.2f}")
    chance = judge.retrieval(real[:1], captions[:1])
    text = "\n".join([
        f"### sprites ({resolution} px, {len(real)} Pokémon sprites, one caption each: colour, type(s), name)",
        "",
        training_line("Training", trained),
        "",
        f"{n} images per scale, prompts: the captions of {len(first)} of the sprites (image i: sprite i mod "
        f"{len(first)}, seed i), {sampling}, fp32. Retrieval: the captioned sprite is the "
        f"nearest of all {len(real)} training sprites in a {judge.features.shape[1]}-component PCA space (top-1; "
        f"chance {chance['chance_top1']:.2%}) or among the 5 nearest (top-5; chance {chance['chance_top5']:.1%}). "
        f"Colour: the dominant colour read from the pixels is the caption's (chance {judge.color_chance:.1%}; the "
        f"real sprites score {real_judged['color']:.1%}); on clear calls only: the "
        f"{sum(judge.clear[p] for p in prompts)} of {n} prompts whose sprite's own colour wins its vote by "
        f"{CLEAR_MARGIN:g} or more of its colourful pixels (evals.sprites). FD against the other {len(second)} sprites; real-vs-real "
        f"{real_fd:.2f}. Diversity among all images (real {real_div:.3f}) and among images of the same prompt.",
        "",
        f"| w | top-1 (chance {chance['chance_top1']:.2%}) | top-5 (chance {chance['chance_top5']:.1%}) "
        f"| colour (chance {judge.color_chance:.1%}) | colour, clear calls | diversity (real {real_div:.3f}) | within prompt "
        f"| FD (real-vs-real {real_fd:.2f}) | ms/image |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    return text, figures


# ---------------------------------------------------------------------------------------------------------------

def run(quick: bool = False, *, minutes: float | None = None, steps: int | None = None, n: int | None = None,
        datasets: tuple[str, ...] = ("digits", "shapes"), root: Path | None = None, log=None,
        overrides: dict | None = None, guidance_starts: tuple[float, ...] = (), sampling: Sampling = DEFAULT_SAMPLING,
        reuse: bool = False) -> str:
    """The benchmark's markdown. quick: half a minute of training and 100 images per scale (a smoke run).
    overrides: TrainConfig fields to change from the defaults (the models then go to a folder of their own, so
    the default digits model that bench.steps reads stays). guidance_starts: also sweep where guidance starts."""
    root = Path(root or BENCH_DIR)
    if overrides:
        root = root / "variants" / ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    if minutes is None and steps is None:
        minutes = 0.5 if quick else 3.0
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    parts = [f"## Quality ({'quick, ' if quick else ''}torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')})"
             + (f"; changed from the defaults: {overrides}" if overrides else "")
             + (f"; sampling: {sampling}" if sampling != DEFAULT_SAMPLING else "")]
    common = dict(minutes=minutes, steps=steps, root=root, log=log, overrides=overrides, sampling=sampling, reuse=reuse)
    if "digits" in datasets:
        parts.append(bench_digits(n=n or (100 if quick else 500), guidance_starts=guidance_starts, **common)[0])
    if "shapes" in datasets:
        parts.append(bench_shapes(n=n or (72 if quick else 360), **common)[0])
    if "sprites" in datasets:
        parts.append(bench_sprites(n=n or (100 if quick else 324), **common)[0])
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="half a minute of training, 100 images per scale")
    p.add_argument("--minutes", type=float, help="training-time budget per dataset (default 3, quick 0.5)")
    p.add_argument("--steps", type=int, help="train this many steps (with --minutes: at most this many)")
    p.add_argument("--n", type=int, help="images per guidance scale (default 500 digits / 360 shapes / 324 sprites: one per caption of the prompt half)")
    p.add_argument("--datasets", default="digits,shapes", help="comma-separated: digits, shapes, sprites")
    p.add_argument("--root", type=Path, default=None, help=f"work folder (default {BENCH_DIR})")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="train with a TrainConfig field changed, e.g. --set ema_decay=0.995 (repeatable)")
    p.add_argument("--guidance-starts", default="", metavar="LIST",
                   help="digits: also sweep where guidance starts at w=3 and 7.5, e.g. 0,0.2,0.3,0.4,0.5,0.6")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLING.sampler, help="t2i_core's sampler")
    p.add_argument("--sampling-steps", type=int, default=DEFAULT_SAMPLING.steps)
    p.add_argument("--eta", type=float, default=DEFAULT_SAMPLING.eta, help="DDIM's eta (0: deterministic)")
    p.add_argument("--reuse", action="store_true",
                   help="train nothing: judge the models the same command left in --root (e.g. with another sampler)")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    log = None if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    overrides = {}
    for item in a.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    starts = tuple(float(x) for x in a.guidance_starts.split(",") if x)
    text = run(a.quick, minutes=a.minutes, steps=a.steps, n=a.n, datasets=tuple(a.datasets.split(",")), root=a.root,
               log=log, overrides=overrides, guidance_starts=starts,
               sampling=Sampling(a.sampler, a.sampling_steps, a.eta), reuse=a.reuse)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
