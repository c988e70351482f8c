"""What the reliability checks cost: the U-Net's between_blocks hook (ComfyUI's Cancel inside a forward pass)
and the size estimate before sampling, against a plain forward pass measured in the same process.

    python -m bench.reliability [--quick]

The `tiny` preset at 16x16 and 32x32 pixels, a CFG batch ([uncond; cond]) of 2 images, inference mode. The
hook stand-in does what ComfyUI's `throw_exception_if_processing_interrupted` does (take a lock, read a flag),
so the ratio is the hook's real cost; where the hook is None, forward makes one comparison per block.
"""
from __future__ import annotations

import threading
import time

import torch

from t2i_core.geometry import check_sample_size

from .common import Section, Table, build_unet, conditionings, interleaved, run_options_suffix, run_part

PRESET = "tiny"

_mutex = threading.RLock()
_interrupted = False


def comfy_like_interrupt_check() -> None:
    """comfy.model_management.throw_exception_if_processing_interrupted, minus ComfyUI."""
    global _interrupted
    with _mutex:
        if _interrupted:
            _interrupted = False
            raise InterruptedError()


def run(quick: bool = False) -> Section:
    """Cost of the between_blocks hook and of the size check, as ratios to a plain forward pass."""
    repeats = 5 if quick else 21
    section = Section("reliability", "Reliability checks: cost of the Cancel hook and the size estimate",
                      "python -m bench.reliability" + (" --quick" if quick else "") + run_options_suffix())
    unet = build_unet(PRESET).eval()
    cond, uncond = conditionings()
    from t2i_core.conditioning import concat_conditionings, match_batch
    table = Table(f"`{PRESET}` forward pass, CFG batch of 2 images, fp32, median of {repeats} (interleaved)",
                  ["size", "variant", "ms / forward", "vs no hook", "spread of repeats"])
    t = torch.tensor([500])
    for res in (16, 32):
        both = concat_conditionings(match_batch(uncond, 2), match_batch(cond, 2))
        prepared = unet.prepare_context(both.context, both.key_mask)
        x = torch.randn(2, 3, res, res)

        def plain(x=x, p=prepared):
            return unet(x, t, p)

        def hooked(x=x, p=prepared):
            with unet.calling_between_blocks(comfy_like_interrupt_check):
                return unet(x, t, p)

        def checked(x=x, p=prepared, res=res):
            check_sample_size(res, res, codec_factor=1, unet_cfg=unet.cfg, trained_resolution=16, batch=2)
            return unet(x, t, p)

        with torch.inference_mode():
            times = interleaved({"no hook (between_blocks None)": plain,
                                 "ComfyUI-like interrupt check between blocks": hooked,
                                 "size check + forward": checked}, repeats=repeats, warmup=3)
        base = times["no hook (between_blocks None)"].median
        for name, tm in times.items():
            table.add(f"{res}x{res}", name, tm.median * 1e3, tm.median / base, f"{100 * tm.spread:.0f}%")
            section.summary[f"reliability_{res}_{name}"] = tm.median / base
    section.tables.append(table)

    latency = Table("How long Cancel can wait: the longest time between two interrupt checks, against one "
                    "forward pass (the wait when Cancel is checked between steps only); `tiny` trained at 16 px, "
                    "CFG batch of 2 images, fp32",
                    ["size", "x the trained positions", "forward s (between steps)", "longest gap s (between "
                     "blocks)", "gap / forward"])
    sizes = (64,) if quick else (64, 128, 192)
    for res in sizes:
        both = concat_conditionings(match_batch(uncond, 2), match_batch(cond, 2))
        prepared = unet.prepare_context(both.context, both.key_mask)
        x = torch.randn(2, 3, res, res)
        marks = []
        with torch.inference_mode(), unet.calling_between_blocks(lambda m=marks: m.append(time.perf_counter())):
            unet(x, t, prepared)  # warm-up
            marks.clear()
            start = time.perf_counter()
            unet(x, t, prepared)
        gaps = [b - a for a, b in zip([start, *marks], marks)]
        forward = marks[-1] - start
        latency.add(f"{res}x{res}", (res // 16) ** 2, forward, max(gaps), max(gaps) / forward)
        section.summary[f"reliability_cancel_gap_{res}"] = max(gaps)
    section.tables.append(latency)

    n = 10_000
    t0 = time.perf_counter()
    for _ in range(n):
        check_sample_size(1024, 1024, codec_factor=1, unet_cfg=unet.cfg, trained_resolution=16, allow_large=True)
    per_check = (time.perf_counter() - t0) / n
    hooks = len(unet.down) + len(unet.mid) + len(unet.up)
    t0 = time.perf_counter()
    for _ in range(n):
        comfy_like_interrupt_check()
    per_hook = (time.perf_counter() - t0) / n
    section.notes += [
        f"One size check costs {per_check * 1e6:.1f} µs; one interrupt check {per_hook * 1e6:.2f} µs, "
        f"{hooks} per forward pass of `{PRESET}` ({hooks * per_hook * 1e6:.1f} µs a forward).",
        "Ratios within the spread of repeats are noise: the hook and the check cost nothing measurable.",
    ]
    return section


if __name__ == "__main__":
    run_part("bench.reliability", run)
