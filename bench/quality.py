"""Quality benchmark: train on the built-in datasets under a time budget, then measure what came out.

    .venv/bin/python -m bench.quality [--quick] [--minutes 3] [--n 500] [--datasets digits,shapes,sprites]
    .venv/bin/python -m bench.quality --datasets sprites --minutes 15 --reuse --sampler ddpm --sampling-steps 50

For each built-in dataset named (t2i_core.data.builtin.BUILTIN_DATASETS) it trains a fresh model with the default
TrainConfig and the registry's preset and resolution (only dataset, output, resolution, preset and a time budget
are set), then samples a fixed set of seeds at guidance scales 1, 1.5, 3 and 7.5 (DDIM, 25 steps, eta 0;
--sampler, --sampling-steps and --eta change that), and at 3 and 7.5 with guidance only from 40% of the run on
("from 0.4": the sampler's guidance_interval); above 16 px only at 1, 3 and 7.5. The dataset's Evaluation
(evals.judges.JUDGES) gives the prompts, the judge and the real images, and the table reports:

* adherence and the judge's per-attribute scores (evals.judgement.Judgement): digits - per digit, how often an
  SVC trained on the real train split reads the prompted digit; shapes - colour, shape, position and size read
  analytically; sprites - retrieval (top-1, top-5) and dominant-colour adherence;
* diversity: mean pairwise distance between samples of the same prompt, averaged over prompts (among all samples
  when no prompt repeats, as for sprites), beside the same figure for real held-out images;
* FD: Fréchet distance between generated and held-out real images in the PCA space of the real reference images
  (32 components), beside the distance between an equally large random subset of the reference images and the
  held-out ones (real-vs-real: the floor that finite samples allow). sprites has one image per caption and trains
  on all 649: prompts come from one half of the sprites (evals.sprites.real_halves) and FD is measured against
  the other half.

With --reuse it trains nothing: it judges the model the same command (same --root, --set, --minutes, --steps) left
there, so one trained model can be judged with several samplers.

Image i is seeded with i, at every scale. Training time is
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

from evals.distances import frechet_distance, mean_pairwise_distance, pca_features
from evals.judges import evaluation
from t2i_core.checkpoint import load_checkpoint
from t2i_core.data.builtin import BUILTIN_DATASETS, builtin_dataset
from t2i_core.pipeline import T2IModel
from t2i_core.samplers import SAMPLERS
from t2i_core.text_encoder import (
    TEXT_ENCODER_NAMES,
    FrozenTextEncoder,
    text_encoder_by_name,
    tiny_text_encoder,
)
from t2i_core.training.config import TrainCallbacks, TrainConfig
from t2i_core.training.state import training_files
from t2i_core.training.trainer import train

REPO = Path(__file__).resolve().parent.parent

BENCH_DIR = Path(os.environ.get("T2I_BENCH_DIR", REPO / ".cache" / "bench"))
FULL, LATE = (0.0, 1.0), (0.4, 1.0)
# (guidance scale, guidance interval): 1, 3 and 7.5 over the whole run as asked for, 1.5, and 3 and 7.5 guided
# only from 40% of the run on (t <= 600 of 1000), which keeps the samples' variety (t2i_core/sampler.py)
SETTINGS = ((1.0, FULL), (1.5, FULL), (3.0, FULL), (7.5, FULL), (3.0, LATE), (7.5, LATE))
# images above 16 px keep the three scales that matter: none, the default, strong
BIG_IMAGE_SETTINGS = ((1.0, FULL), (3.0, FULL), (7.5, FULL))


@dataclass(frozen=True)
class Sampling:
    """How the benchmark samples: t2i_core's sampler name, its steps and (DDIM) eta."""
    sampler: str = "ddim"
    steps: int = 25
    eta: float = 0.0

    def __str__(self):
        return f"{self.sampler.upper()} {self.steps} steps" + (f", eta {self.eta:g}" if self.sampler == "ddim" else "")


DEFAULT_SAMPLING = Sampling()

RESOLUTION = 16  # the 16 px datasets' side (digits are 8x8 at source)
PCA_COMPONENTS = 32
# images per guidance setting: 50 per digit, 5 per shapes caption, one per sprite of the prompt half
IMAGES = {"digits": 500, "shapes": 360, "sprites": 324}
DEFAULT_IMAGES, QUICK_IMAGES = 360, 72
GENERATION_BATCH = 250


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
# one dataset of the registry, judged by its Evaluation

def model_path(root: Path, name: str, resolution: int) -> Path:
    """Where the model this benchmark trains on a dataset is kept (bench.steps reuses the digits one)."""
    return root / name / (f"{name}.safetensors" if resolution == RESOLUTION else f"{name}{resolution}.safetensors")


def digits_checkpoint_path(root: Path | None = None) -> Path:
    return model_path(root or BENCH_DIR, "digits", RESOLUTION)


def settings_for(resolution: int) -> tuple[tuple[float, tuple[float, float]], ...]:
    # an image above 16 px costs 4x or more to sample, so its table keeps the three scales that matter
    return SETTINGS if resolution <= RESOLUTION else BIG_IMAGE_SETTINGS


def score_text(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.0%}"


def bench_dataset(name: str, *, minutes: float | None, steps: int | None, n: int | None, root: Path, log=None,
                  overrides: dict | None = None, sampling: Sampling = DEFAULT_SAMPLING, reuse: bool = False,
                  guidance_starts: tuple[float, ...] = (), quick: bool = False,
                  text_encoder: FrozenTextEncoder | None = None) -> tuple[str, dict]:
    """Train (or with reuse, load) a model on the built-in dataset `name` and judge it at each guidance setting:
    the markdown section and its figures. text_encoder: as train_fresh's."""
    dataset = builtin_dataset(name)
    overrides = {"preset": dataset.preset, **(overrides or {})}
    resolution = overrides.pop("resolution", dataset.resolution)
    n = n or (QUICK_IMAGES if quick else IMAGES.get(name, DEFAULT_IMAGES))
    train_dir = dataset.write(root / "data" / f"{name}{resolution}", resolution=resolution)
    trained = train_fresh(train_dir, model_path(root, name, resolution), minutes=minutes, steps=steps, log=log,
                          resolution=resolution, reuse=reuse, text_encoder=text_encoder, **overrides)
    ev = evaluation(dataset.judge, resolution)
    pca = pca_features(ev.reference_images, PCA_COMPONENTS)
    held_features = pca(ev.heldout_images)
    prompts, seeds = ev.prompts(n), list(range(n))
    repeats = len(set(prompts)) < len(prompts)  # diversity among images of one prompt, else among all images

    def diversity(images, keys) -> float:
        return within_prompt_diversity(images, keys) if repeats else mean_pairwise_distance(images)
    real_div = diversity(ev.heldout_images, ev.heldout_captions)
    real_fd = real_reference_fd(pca, ev.reference_images, ev.heldout_images, n)
    real_judged = ev.judge.judge(ev.heldout_images, ev.heldout_captions).adherence
    figures = {"steps": trained.steps, "train_s": trained.train_s, "real_diversity": real_div, "real_fd": real_fd,
               "real_adherence": real_judged}
    rows = []
    for w, interval in settings_for(resolution):
        label = setting_label(w, interval)
        images, seconds = generate(trained.model, prompts, seeds, w, sampling=sampling, interval=interval,
                                   resolution=resolution)
        judged = ev.judge.judge(images, prompts)
        div = diversity(images, prompts)
        fd = frechet_distance(pca(images), held_features)
        figures[label] = {"adherence": judged.adherence, **judged.scores, "diversity": div, "fd": fd,
                          "s_per_image": seconds / n}
        rows.append(f"| {label} | **{judged.adherence:.1%}** | "
                    + " | ".join(score_text(judged.scores[a]) for a in ev.judge.attributes)
                    + f" | {div:.3f} | {fd:.2f} ({fd / real_fd:.2f}x) | {seconds / n * 1000:.0f} |")
        if log:
            log(f"  {name} w={label}: adherence {judged.adherence:.3f}, diversity {div:.3f}, FD {fd:.2f}")
    attributes = list(ev.judge.attributes)
    text = [
        f"### {name} ({resolution} px; {dataset.description.split(': ', 1)[-1]})",
        "",
        training_line("Training", trained),
        "",
        f"The judge: {ev.about}; it passes {real_judged:.1%} of the real held-out images. {n} images per scale, "
        f"seeds 0..{n - 1}, {sampling}, fp32. Diversity is among images of the same prompt"
        + ("" if repeats else " (no prompt repeats here, so among all images)")
        + f"; FD is against {len(ev.heldout_images)} held-out real images, beside the real-vs-real FD of as many "
          "real training images (mean of 5 draws).",
        "",
        f"| w | adherence | {' | '.join(attributes)} | diversity (real {real_div:.3f}) "
        f"| FD (real-vs-real {real_fd:.2f}) | ms/image |",
        "|" + "---|" * (5 + len(attributes)),
        *rows,
    ]
    if guidance_starts:
        sweep = []
        for w in (3.0, 7.5):
            for start in guidance_starts:
                images, seconds = generate(trained.model, prompts, seeds, w, sampling=sampling, interval=(start, 1.0),
                                           resolution=resolution)
                fd = frechet_distance(pca(images), held_features)
                sweep.append(f"| {w:g} | {start:g} | {ev.judge.judge(images, prompts).adherence:.1%} | {fd:.2f} "
                             f"({fd / real_fd:.2f}x) | {diversity(images, prompts):.3f} | {seconds / n * 1000:.0f} |")
        text += ["", "Where guidance starts (`guidance_interval=(start, 1)`), same model, prompts and seeds:", "",
                 "| w | guidance from | adherence | FD (x real-vs-real) | diversity | ms/image |",
                 "|---|---|---|---|---|---|", *sweep]
    return "\n".join(text), figures


# ---------------------------------------------------------------------------------------------------------------

def run(quick: bool = False, *, minutes: float | None = None, steps: int | None = None, n: int | None = None,
        datasets: tuple[str, ...] = ("digits", "shapes"), root: Path | None = None, log=None,
        overrides: dict | None = None, guidance_starts: tuple[float, ...] = (), sampling: Sampling = DEFAULT_SAMPLING,
        reuse: bool = False, text_encoder: str = "tiny") -> str:
    """The benchmark's markdown for `datasets` (names of t2i_core.data.builtin.BUILTIN_DATASETS). quick: half a
    minute of training and QUICK_IMAGES images per scale (a smoke run).
    overrides: TrainConfig fields to change from the defaults (the models then go to a folder of their own, so
    the default digits model that bench.steps reads stays). guidance_starts: also sweep where guidance starts."""
    root = Path(root or BENCH_DIR)
    if text_encoder != "tiny":  # its models apart, so the default digits model that bench.steps reads stays
        root = root / f"text_encoder={text_encoder}"
    if overrides:
        root = root / "variants" / ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    encoder = text_encoder_by_name(text_encoder)
    if minutes is None and steps is None:
        minutes = 0.5 if quick else 3.0
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    parts = [f"## Quality ({'quick, ' if quick else ''}torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')})"
             + (f"; text encoder: {text_encoder}" if text_encoder != "tiny" else "")
             + (f"; changed from the defaults: {overrides}" if overrides else "")
             + (f"; sampling: {sampling}" if sampling != DEFAULT_SAMPLING else "")]
    for name in datasets:
        parts.append(bench_dataset(name, minutes=minutes, steps=steps, n=n, root=root, log=log, overrides=overrides,
                                   sampling=sampling, reuse=reuse, guidance_starts=guidance_starts, quick=quick,
                                   text_encoder=encoder)[0])
    return "\n\n".join(parts) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"half a minute of training, {QUICK_IMAGES} images per scale")
    p.add_argument("--minutes", type=float, help="training-time budget per dataset (default 3, quick 0.5)")
    p.add_argument("--steps", type=int, help="train this many steps (with --minutes: at most this many)")
    p.add_argument("--n", type=int, help="images per guidance scale (default: "
                   + ", ".join(f"{k} {v}" for k, v in IMAGES.items()) + f", others {DEFAULT_IMAGES})")
    p.add_argument("--datasets", default="digits,shapes",
                   help=f"comma-separated built-in datasets, of: {', '.join(BUILTIN_DATASETS)}")
    p.add_argument("--root", type=Path, default=None, help=f"work folder (default {BENCH_DIR})")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="train with a TrainConfig field changed, e.g. --set ema_decay=0.995 (repeatable)")
    p.add_argument("--guidance-starts", default="", metavar="LIST",
                   help="also sweep where guidance starts at w=3 and 7.5, e.g. 0,0.2,0.3,0.4,0.5,0.6")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLING.sampler, help="t2i_core's sampler")
    p.add_argument("--sampling-steps", type=int, default=DEFAULT_SAMPLING.steps)
    p.add_argument("--eta", type=float, default=DEFAULT_SAMPLING.eta, help="DDIM's eta (0: deterministic)")
    p.add_argument("--text-encoder", choices=TEXT_ENCODER_NAMES, default="tiny",
                   help="the frozen text encoder to train with (the demo trains with minilm)")
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
    datasets = tuple(a.datasets.split(","))
    for name in datasets:
        if name not in BUILTIN_DATASETS:
            p.error(f"--datasets: unknown dataset {name!r}; choose from {', '.join(BUILTIN_DATASETS)}")
    text = run(a.quick, minutes=a.minutes, steps=a.steps, n=a.n, datasets=datasets, root=a.root,
               log=log, overrides=overrides, guidance_starts=starts,
               sampling=Sampling(a.sampler, a.sampling_steps, a.eta), reuse=a.reuse, text_encoder=a.text_encoder)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
