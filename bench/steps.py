"""Steps to quality: digit adherence against the number of sampling steps, per sampler, on a trained digits model.

    .venv/bin/python -m bench.steps [--checkpoint PATH] [--quick] [--n 500] [--guidance 3] [--no-core]

Without --checkpoint it uses the model bench.quality last trained (.cache/bench/digits/digits.safetensors),
and trains one (3 minutes, the defaults) if there is none. For each sampler t2i_core offers (DDIM with eta 0,
DDPM ancestral), DDIM with guidance only from 40% of the run on, and ComfyUI's own samplers driving the same
model as a core MODEL (euler, dpmpp_2m with karras, uni_pc, dpmpp_2m_sde with karras; in-process, through
comfy.sample.sample as KSampler calls it), and each step count, it generates the same n prompts (digit i mod
10; t2i_core's seed i, KSampler's noise one seed per batch) and reports adherence (DigitsJudge), FD, ms per
image when generated in batches of 250 and ms for one image alone (batch 1, the latency a user waiting on one
image sees). Then the figure users care about: the fewest seconds to an image of a given adherence, i.e. the
cheapest (sampler, steps) whose adherence reaches it.
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
    GENERATION_BATCH,
    LATE,
    PCA_COMPONENTS,
    RESOLUTION,
    Sampling,
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
from t2i_core.data.digits import digits_caption, load_digits_arrays, make_digits_dataset
from t2i_core.samplers import SAMPLERS

STEP_COUNTS = (1, 2, 3, 5, 10, 25)
CORE_STEP_COUNTS = (4, 6, 8, 10, 15, 25)
# name -> (sampler, guidance interval): every sampler of t2i_core's table, and DDIM guided only from 40% of the run on
VARIANTS = {**{name.upper() + (" (eta 0)" if rule.uses_eta else ""): (name, FULL) for name, rule in SAMPLERS.items()},
            "DDIM, guided from 0.4": ("ddim", LATE)}
# name -> (ComfyUI sampler, scheduler): core samplers driving the model as a core MODEL
CORE_VARIANTS = {"core euler": ("euler", "simple"), "core dpmpp_2m karras": ("dpmpp_2m", "karras"),
                 "core uni_pc": ("uni_pc", "simple"), "core dpmpp_2m_sde karras": ("dpmpp_2m_sde", "karras")}
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


class CoreSampling:
    """The model as a core MODEL, sampled by ComfyUI's own code in this process (what KSampler runs)."""

    def __init__(self, model):
        from scripts.comfy_inprocess import pack_module
        self.fmt = pack_module("nodes.comfy_format")
        self.patcher = pack_module("nodes.comfy_model").core_model(model)
        self.model = model

    def __call__(self, prompts: list[str], seed: int, guidance: float, steps: int, sampler: str,
                 scheduler: str) -> torch.Tensor:
        import comfy.sample
        positive = self.fmt.to_comfy_conditioning(self.model.encode_prompts(prompts), "cpu")
        negative = self.fmt.to_comfy_conditioning(self.model.text_encoder.empty(), "cpu")
        latent = torch.zeros(len(prompts), *self.model.latent_shape(RESOLUTION, RESOLUTION))
        noise = comfy.sample.prepare_noise(latent, seed)
        z = comfy.sample.sample(self.patcher, noise, steps, guidance, sampler, scheduler, positive, negative, latent,
                                denoise=1.0, disable_pbar=True, seed=seed)
        with torch.inference_mode():
            return self.model.codec.decode_raw(z)

    def generate(self, prompts, guidance, steps, sampler, scheduler, batch: int = GENERATION_BATCH):
        out, t0 = [], time.perf_counter()
        for i in range(0, len(prompts), batch):
            out.append(self(prompts[i: i + batch], i, guidance, steps, sampler, scheduler))
        return torch.cat(out), time.perf_counter() - t0

    def single_image_ms(self, guidance, steps, sampler, scheduler, repeats: int = 3) -> float:
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            self([digits_caption(r % 10)], 10_000 + r, guidance, steps, sampler, scheduler)
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
        step_counts: tuple[int, ...] = STEP_COUNTS, core_step_counts: tuple[int, ...] = CORE_STEP_COUNTS,
        core: bool = True, log=None) -> str:
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
    results = {}  # (variant, steps) -> (adherence, batched s/image, single-image s, FD / real-vs-real)
    rows = []

    def record(variant: str, steps: int, images: torch.Tensor, seconds: float, alone_ms: float):
        adherence = judge.adherence(images, prompts)
        fd = frechet_distance(pca(images), held_features)
        div = within_prompt_diversity(images, labels)
        results[(variant, steps)] = (adherence, seconds / n, alone_ms / 1000, fd / real_fd)
        rows.append(f"| {variant} | {steps} | **{adherence:.1%}** | {fd:.2f} ({fd / real_fd:.2f}x) | {div:.3f} "
                    f"| {seconds / n * 1000:.1f} | {alone_ms:.0f} | {seconds / n / max(adherence, 1e-9) * 1000:.1f} |")
        if log:
            log(f"  {variant} {steps} steps: adherence {adherence:.3f}, {seconds / n * 1000:.1f} ms/image")

    repeats = 1 if quick else 3
    for variant, (sampler, interval) in VARIANTS.items():
        for steps in step_counts:
            images, seconds = generate(model, prompts, seeds, guidance, sampling=Sampling(sampler, steps), interval=interval)
            record(variant, steps, images, seconds, single_image_ms(model, steps, sampler, guidance, interval, repeats))
    variants = list(VARIANTS)
    if core:
        sampling = CoreSampling(model)
        for variant, (sampler, scheduler) in CORE_VARIANTS.items():
            variants.append(variant)
            for steps in core_step_counts:
                images, seconds = sampling.generate(prompts, guidance, steps, sampler, scheduler)
                record(variant, steps, images, seconds, sampling.single_image_ms(guidance, steps, sampler, scheduler,
                                                                                 repeats))
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
        cells = [cell(fastest(target, v)) for v in variants] + [cell(fastest(target, None, 2))]
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
        "| target | " + " | ".join(f"{v}, batched" for v in variants) + " | any, one image alone |",
        "|---" * (len(variants) + 2) + "|",
        *target_rows,
    ]) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a digits model (default: bench.quality's, trained if missing)")
    p.add_argument("--quick", action="store_true", help="100 images per row")
    p.add_argument("--n", type=int, help="images per row (default 500)")
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", default=",".join(map(str, STEP_COUNTS)), help="comma-separated step counts")
    p.add_argument("--core-steps", default=",".join(map(str, CORE_STEP_COUNTS)),
                   help="comma-separated step counts for ComfyUI's samplers")
    p.add_argument("--no-core", action="store_true", help="leave out ComfyUI's samplers (no ComfyUI needed)")
    p.add_argument("--out", type=Path, help="also write the markdown here")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    log = None if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    text = run(a.quick, checkpoint=a.checkpoint, n=a.n, guidance=a.guidance,
               step_counts=tuple(int(s) for s in a.steps.split(",")),
               core_step_counts=tuple(int(s) for s in a.core_steps.split(",")), core=not a.no_core, log=log)
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
