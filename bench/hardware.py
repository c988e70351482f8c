"""How close to the hardware: matmul peaks measured now, and the U-Net's achieved GFLOP/s as a fraction.

    python -m bench.hardware [--quick]

Peaks are large square torch.mm in fp32 and bf16, measured in the same run as the U-Net. The U-Net work
is the default `tiny` preset at 32x32: the forward pass of one CFG sampling step for one image (a batch
of 2) and for 16 images, and a training step at batch 32 (forward + backward + AdamW). Targets from the
performance issue: bf16 training >= 70% of the bf16 peak, batch-1 sampling >= 50% of the fp32 peak.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from t2i_core.devices import autocast, bf16_supported
from t2i_core.sampler import guidance_context

from .common import (
    Section,
    Table,
    build_unet,
    conditionings,
    count_flops,
    interleaved,
    run_options_suffix,
    run_part,
)
from .training import make_train_step, train_flops, training_batch

PRESET, RES = "tiny", 32


THREAD_CASES = [("1 thread", 1, {}), ("2 threads, OMP_WAIT_POLICY=PASSIVE", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
                ("2 threads, OpenMP's default wait policy", 2, {"BENCH_OMP_DEFAULT": "1"})]


def thread_child(threads: int, steps: int, repeats: int) -> dict:
    """In a fresh process: median seconds of a batch-1 fp32 sampling run with `threads` threads."""
    from t2i_core.sampler import make_noise, sample
    from t2i_core.schedule import NoiseSchedule

    from .common import interleaved, setup
    setup(threads)
    unet, schedule = build_unet(PRESET), NoiseSchedule()
    cond, uncond = conditionings()
    noise = make_noise([0], (3, RES, RES))
    tm = interleaved({"s": lambda: sample(unet, schedule, noise, cond, uncond, steps=steps)}, repeats=repeats,
                     clock="wall")["s"]
    return {"median": tm.median, "spread": tm.spread, "policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def threads_table(quick: bool) -> Table:
    steps, repeats = (5, 3) if quick else (10, 5)
    t = Table(f"Threads and OpenMP's wait policy: batch-1 fp32 sampling, {steps} steps, one fresh process per row "
              f"(median of {repeats}; processes differ, so this compares orders of magnitude, not percents)",
              ["threads", "s per run", "vs 1 thread", "spread of repeats"])
    base = None
    for label, threads, extra in THREAD_CASES:
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "BENCH_OMP_DEFAULT")}
        env.update(extra)
        env["PYTHONPATH"] = os.pathsep.join(p for p in [os.getcwd(), env.get("PYTHONPATH")] if p)
        try:
            out = subprocess.run([sys.executable, "-m", "bench.hardware", "--child-threads", str(threads), str(steps),
                                  str(repeats)], capture_output=True, text=True, env=env, timeout=300)
            r = json.loads(out.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            t.add(label, f"failed or > 300 s ({type(e).__name__})", "-", "-")
            continue
        base = base or r["median"]
        t.add(label, r["median"], r["median"] / base, f"{100 * r['spread']:.0f}%")
    return t


def mm_fn(dtype, n):
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return lambda: torch.mm(a, b, out=out), 2 * n**3


def run(quick: bool = False) -> Section:
    """Matmul peaks and the U-Net's achieved fraction of them."""
    section = Section("hardware", "Hardware limit: achieved GFLOP/s against measured matmul peaks",
                      "python -m bench.hardware" + (" --quick" if quick else "") + run_options_suffix())
    has_bf16 = bf16_supported("cpu")
    repeats = 3 if quick else 7
    precisions = ["fp32"] + (["bf16"] if has_bf16 else [])
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    sizes = {"fp32": 2048 if quick else 4096, "bf16": 2048 if quick else 4096}
    # the matmul peaks are timed interleaved with the U-Net work, so both see the same machine load
    mms = {p: mm_fn(dtypes[p], sizes[p]) for p in precisions}

    unet = build_unet(PRESET)
    cond, uncond = conditionings()
    work, flops = {}, {}
    for images in ((1,) if quick else (1, 16)):
        x = torch.randn(images, 3, RES, RES)  # shared by [uncond; cond], as the sampler passes it
        for precision in precisions:
            prepared = guidance_context(unet, cond, uncond, images, precision)

            def fwd(x=x, p=prepared, precision=precision):
                with torch.inference_mode(), autocast("cpu", precision):
                    return unet(x, torch.tensor([500]), p)
            key = (f"sampling forward, {images} image(s) (CFG batch {2 * images})", precision, f"sampling_b{images}")
            work[key], flops[key] = fwd, count_flops(fwd)
    batch = 8 if quick else 32
    data = training_batch(batch)
    train_fl = train_flops(unet, data)
    train_work = {}
    for precision in precisions:
        key = (f"training step, batch {batch} (fwd+bwd FLOPs; AdamW timed)", precision, "training")
        train_work[key], flops[key] = make_train_step(unet, data, precision), train_fl

    ut = Table(f"`{PRESET}` preset at {RES}x{RES}: achieved GFLOP/s (median of {repeats}; each group timed "
               "interleaved with the matmuls that give its peaks)",
               ["work", "precision", "GFLOP", "ms", "GFLOP/s", "% of same-dtype peak", "% of fp32 peak"])
    pt = Table("Matmul peaks (torch.mm, square), measured with each group of work", ["with", "dtype", "n", "GFLOP/s"])
    for group_name, group in (("sampling", work), ("training", train_work)):
        variants = {("mm", p, ""): mms[p][0] for p in precisions}
        variants.update(group)
        times = interleaved(variants, repeats=repeats if group_name == "training" else 2 * repeats, warmup=1)
        peaks = {p: mms[p][1] / times[("mm", p, "")].median / 1e9 for p in precisions}
        for p in precisions:
            pt.add(group_name, p, sizes[p], peaks[p])
        for key in group:
            label, precision, summary = key
            tm = times[key].median
            rate = flops[key] / tm / 1e9
            ut.add(label, precision, flops[key] / 1e9, tm * 1e3, rate, 100 * rate / peaks[precision],
                   100 * rate / peaks["fp32"])
            section.summary[f"{summary}_{precision}_fraction"] = rate / peaks[precision]
            section.summary[f"{summary}_{precision}_fraction_of_fp32"] = rate / peaks["fp32"]
    unet.eval()
    section.tables += [pt, ut, threads_table(quick)]
    section.notes += [
        "Targets: bf16 training >= 70% of the bf16 peak; batch-1 sampling >= 50% of the fp32 peak "
        "(the fp32 row for 1 image, or bf16 work measured against the fp32 peak).",
        "FLOPs: torch.utils.flop_counter over matmuls, convolutions and attention (the CPU attention kernel is "
        "counted with flop_counter's own SDPA formulas). Norms, activations and AdamW are not counted but are timed.",
        "oneDNN runs 3x3 convolutions with Winograd-style algorithms where it pays, which do fewer multiplications "
        "than the FLOPs counted here, so a convolution-heavy network can show more than 100% of the matmul peak.",
    ]
    return section


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child-threads":
        print(json.dumps(thread_child(*map(int, sys.argv[2:]))))
    else:
        run_part("bench.hardware", run)
