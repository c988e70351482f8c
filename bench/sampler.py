"""Sampler speed: t2i_core's CFG sampler against the seed's way (evals/seed_reference.py), same weights.

    python -m bench.sampler [--quick]

The `tiny` preset at 32x32 pixels (3 channels), the tiny text encoder (width 256), DDIM, guidance 3, batch 1
and 16. Reports seconds per image and the speed-up over the seed-style reference measured in the same
process, how far each output is from the reference's, what each lever adds when stacked onto the
reference one at a time, and the achieved GFLOP/s against this machine's fp32 matmul peak.
"""
from __future__ import annotations

import torch

from evals.seed_reference import reference_sample
from t2i_core.devices import bf16_supported
from t2i_core.sampler import make_noise, sample
from t2i_core.schedule import NoiseSchedule

from .common import (
    Section,
    Table,
    build_unet,
    conditionings,
    count_flops,
    interleaved,
    matmul_peak,
    n_params,
    run_options_suffix,
    run_part,
)

PRESET, RES, GUIDANCE = "tiny", 32, 3.0


def sampler_variants(unet, schedule, noise, cond, uncond, steps):
    """name -> fn(steps) for the seed reference and t2i_core's sampler."""
    kw = dict(guidance_scale=GUIDANCE)
    v = {
        "seed reference (fp32)": lambda s=steps: reference_sample(unet, schedule, noise, cond, uncond, steps=s, **kw),
        "t2i_core fp32": lambda s=steps: sample(unet, schedule, noise, cond, uncond, steps=s, **kw),
    }
    if bf16_supported("cpu"):
        v["t2i_core bf16 (precision=auto here)"] = lambda s=steps: sample(
            unet, schedule, noise, cond, uncond, steps=s, precision="bf16", **kw)
    return v


def ladder_variants(unet, schedule, noise, cond, uncond, steps):
    """The seed reference with t2i_core's levers added one at a time (cumulative)."""
    kw = dict(steps=steps, guidance_scale=GUIDANCE)
    v = {
        "seed: 2 passes, manual attention, K/V every block, 77 tokens":
            lambda: reference_sample(unet, schedule, noise, cond, uncond, **kw),
        "+ batched CFG (one pass over [uncond; cond])":
            lambda: reference_sample(unet, schedule, noise, cond, uncond, batched_cfg=True, **kw),
        "+ scaled_dot_product_attention":
            lambda: reference_sample(unet, schedule, noise, cond, uncond, batched_cfg=True, mode="sdpa", **kw),
        "+ text K/V projected once, padding cut":
            lambda: reference_sample(unet, schedule, noise, cond, uncond, batched_cfg=True, mode="sdpa",
                                     cache_kv=True, **kw),
        "= t2i_core.sample fp32 (+ its module-level work)":
            lambda: sample(unet, schedule, noise, cond, uncond, **kw),
    }
    if bf16_supported("cpu"):
        v["+ bf16 autocast"] = lambda: sample(unet, schedule, noise, cond, uncond, precision="bf16", **kw)
    return v


def forward_flops(unet, batch: int, cond, uncond) -> int:
    """FLOPs of one CFG step's forward pass for `batch` images (a batch of 2*batch)."""
    x = torch.randn(2 * batch, 3, RES, RES)
    ctx = torch.cat([uncond.context.expand(batch, -1, -1), cond.context.expand(batch, -1, -1)])
    with torch.inference_mode():
        return count_flops(lambda: unet(x, torch.tensor([500]), ctx))


def run(quick: bool = False) -> Section:
    """Sampler speed: t2i_core against the seed-style reference."""
    steps = 5 if quick else 25
    repeats = 2 if quick else 5
    batches = (1,) if quick else (1, 16)
    section = Section("sampler", "Sampling: t2i_core against the seed's approach",
                      "python -m bench.sampler" + (" --quick" if quick else "") + run_options_suffix())
    unet = build_unet(PRESET)
    schedule = NoiseSchedule()
    cond, uncond = conditionings()
    peak = matmul_peak(torch.float32, n=2048 if quick else 4096, repeats=3)

    main = Table(f"`{PRESET}` preset ({n_params(unet) / 1e6:.1f}M params), {RES}x{RES}x3, DDIM {steps} steps, "
                 f"guidance {GUIDANCE}, median of {repeats}",
                 ["batch", "variant", "s / image", "speed-up vs seed", "max |Δ| vs seed / max |x|",
                  "GFLOP/s", "% of fp32 mm peak"])
    for batch in batches:
        noise = make_noise(range(batch), (3, RES, RES))
        variants = sampler_variants(unet, schedule, noise, cond, uncond, steps)
        outputs = {name: fn() for name, fn in variants.items()}
        ref = outputs["seed reference (fp32)"]
        times = interleaved(variants, repeats=repeats if batch == 1 else max(2, repeats - 2),
                            warmup=0)
        flops = forward_flops(unet, batch, cond, uncond) * steps
        base = times["seed reference (fp32)"].median
        for name, tm in times.items():
            dev = float((outputs[name] - ref).abs().max() / ref.abs().max())
            main.add(batch, name, tm.median / batch, base / tm.median, f"{dev:.1e}", flops / tm.median / 1e9,
                     100 * flops / tm.median / 1e9 / peak)
            section.summary[f"sampler_b{batch}_{name}"] = base / tm.median
    section.tables.append(main)

    noise = make_noise([0], (3, RES, RES))
    ladder = ladder_variants(unet, schedule, noise, cond, uncond, steps)
    times = interleaved(ladder, repeats=repeats, warmup=0)
    lt = Table(f"What each lever adds, stacked onto the seed reference (batch 1, {steps} steps, median of {repeats})",
               ["variant", "s / image", "vs previous row", "vs seed", "spread of repeats"])
    prev = base = None
    for name, tm in times.items():
        base = base or tm.median
        lt.add(name, tm.median, "-" if prev is None else prev / tm.median, base / tm.median, f"{100 * tm.spread:.0f}%")
        prev = tm.median
    section.tables.append(lt)

    ft = Table("One forward pass (a CFG step's batch of 2 x images), fp32, against the fp32 matmul peak",
               ["images", "forward batch", "GFLOP", "ms", "GFLOP/s", "% of peak"])
    from t2i_core.conditioning import concat_conditionings, match_batch
    for b in batches:
        both = concat_conditionings(match_batch(uncond, b), match_batch(cond, b))
        c, m = both.context, both.key_mask
        prepared = unet.prepare_context(c, m)
        x = torch.randn(2 * b, 3, RES, RES)
        with torch.inference_mode():
            fl = count_flops(lambda x=x, p=prepared: unet(x, torch.tensor([500]), p))
            tm = interleaved({"f": lambda x=x, p=prepared: unet(x, torch.tensor([500]), p)},
                             repeats=5 if quick else 15, warmup=2)["f"]
        ft.add(b, 2 * b, fl / 1e9, tm.median * 1e3, fl / tm.median / 1e9, 100 * fl / tm.median / 1e9 / peak)
        section.summary[f"forward_b{b}_peak_fraction"] = fl / tm.median / 1e9 / peak
    section.tables.append(ft)
    section.notes += [
        f"fp32 matmul peak measured in this run: {peak:.0f} GFLOP/s (torch.mm {2048 if quick else 4096}²).",
        "GFLOP/s counts the U-Net's forward FLOPs (torch.utils.flop_counter; the reference's manual attention and "
        "77-token cross-attention cost more FLOPs than that, so its GFLOP/s is an effective rate).",
        "max |Δ| is relative to the largest output value; the random-weight model amplifies rounding, so fp32 "
        "variants sit near 1e-6 and bf16 near 1e-2.",
    ]
    return section


if __name__ == "__main__":
    run_part("bench.sampler", run)
