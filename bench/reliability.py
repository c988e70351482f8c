"""What the reliability checks cost: the U-Net's between_blocks hook (ComfyUI's Cancel inside a forward pass)
and the size estimate before sampling, against a plain forward pass measured in the same process.

    python -m bench.reliability [--quick]

The `tiny` preset at 16x16 and 32x32 pixels, a CFG batch ([uncond; cond]) of 2 images, inference mode. The
hook stand-in does what ComfyUI's `throw_exception_if_processing_interrupted` does (take a lock, read a flag),
so the ratio is the hook's real cost; where the hook is None, forward makes one comparison per block.
"""
from __future__ import annotations

import json
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

    cancel_gaps_at_large_sizes(section, quick)
    cancel_gaps_in_vae_decode(section, quick)

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


LARGE_PRESETS = ("micro", "tiny")
# 1536 px: about the largest size the memory guard lets `tiny` sample on a 24 GB machine
LARGE_SIZES = (256, 512, 1024, 1536)
REAL_CHUNKS_PER_CALL = 3  # attention chunks computed for real in each call; the rest repeat the same work


def cancel_gaps_at_large_sizes(section: Section, quick: bool) -> None:
    """The longest time between two Cancel checks (between blocks and between attention chunks) in one forward
    pass at sizes far beyond the 16 px these presets train at, with the guard lifted as an operator can.

    A 1024 px forward pass takes many minutes, nearly all of it in attention chunks that each do the same work,
    so each attention call here computes its first REAL_CHUNKS_PER_CALL chunks and skips the rest (zeros, with
    the check still made after each); every other operation runs at its real size. The pass's full time is
    estimated from the chunks' measured mean."""
    import t2i_core.unet as unet_module
    table = Table("Cancel at large sizes: the longest gap between two checks in a forward pass (CFG batch of 2 "
                  "images, fp32); the 16 px presets sampled with the size guard lifted",
                  ["preset", "size", "attention chunks (computed / all)", "forward s (estimated)",
                   "longest gap s", "the longest gap ends"])
    real_kernel = unet_module.attention_kernel
    chunk_times = []
    state = {"chunk": 0, "skipped": 0, "in_attention": False}
    marks = []  # (time, inside an attention call) at each check

    def sampled_kernel(q, k, v, mask):
        state["chunk"] += 1
        if state["chunk"] > REAL_CHUNKS_PER_CALL:
            state["skipped"] += 1
            return q.new_zeros(*q.shape[:-1], v.shape[-1])
        t0 = time.perf_counter()
        out = real_kernel(q, k, v, mask)
        chunk_times.append(time.perf_counter() - t0)
        return out

    real_attention = unet_module.attention

    def attention_call(q, k, v, mask=None):
        state["chunk"] = 0
        state["in_attention"] = True
        try:
            return real_attention(q, k, v, mask)
        finally:
            state["in_attention"] = False

    cond, uncond = conditionings()
    from t2i_core.conditioning import concat_conditionings, match_batch
    both = concat_conditionings(match_batch(uncond, 2), match_batch(cond, 2))
    for preset in LARGE_PRESETS[:1] if quick else LARGE_PRESETS:
        unet = build_unet(preset).eval()
        prepared = unet.prepare_context(both.context, both.key_mask)
        for res in LARGE_SIZES[:1] if quick else LARGE_SIZES:
            state.update(chunk=0, skipped=0, in_attention=False)
            chunk_times.clear()
            marks.clear()
            unet_module.attention_kernel, unet_module.attention = sampled_kernel, attention_call
            try:
                with torch.inference_mode(), unet.calling_between_blocks(
                        lambda: marks.append((time.perf_counter(), state["in_attention"]))):
                    x = torch.randn(2, 3, res, res)
                    start = time.perf_counter()
                    unet(x, torch.tensor([500]), prepared)
            finally:
                unet_module.attention_kernel, unet_module.attention = real_kernel, real_attention
            times = [start] + [m for m, _ in marks]
            gaps = [(b - a, inside) for a, b, (_, inside) in zip(times, times[1:], marks)]
            longest, inside = max(gaps)
            computed = len(chunk_times)
            mean_chunk = sum(chunk_times) / max(1, computed)
            forward = times[-1] - start + state["skipped"] * mean_chunk
            table.add(preset, f"{res}x{res}", f"{computed} / {computed + state['skipped']}", forward, longest,
                      "between attention chunks" if inside else "between blocks or their parts")
            section.summary[f"reliability_large_gap_{preset}_{res}"] = longest
        del unet
    section.tables.append(table)


VAE_SIZES = (256, 512, 1024)


def cancel_gaps_in_vae_decode(section: Section, quick: bool) -> None:
    """The longest time between two Cancel checks while a Stable Diffusion-sized VAE (the shipped SD 1.x config,
    random weights: the time does not depend on them) decodes one image as the Decode node does
    (`decode_in_pieces`: in tiles when a side is longer than 64 latent positions, large convolutions in bands),
    against the whole decode; at 512 px also with every convolution in one call, for what the bands buy, and at
    the largest size the whole image in one call, for what tiling costs. The pack's VAECodec and a core VAE
    behind the Decode node check before the same blocks and convolutions."""
    from t2i_core import cancel, pieces
    from t2i_core.codecs import VAE_CONFIGS, decode_in_pieces, vae_from_config
    codec = vae_from_config(json.loads((VAE_CONFIGS / "sd15.json").read_text()))
    table = Table("Cancel in a VAE decode: the longest gap between two checks, one image, SD 1.x-sized VAE, fp32",
                  ["size", "latent", "decoded as", "decode s", "checks", "longest gap s"])
    whole_convolutions = 1 << 62  # a band budget no convolution exceeds: each runs in one call
    runs = [(res, "Decode node", decode_in_pieces, None) for res in (VAE_SIZES[:1] if quick else VAE_SIZES)]
    if not quick:
        runs += [(512, "Decode node, each convolution in one call (before the bands)", decode_in_pieces,
                  whole_convolutions),
                 (VAE_SIZES[-1], "one call, untiled", lambda c, z: c.decode_raw(z), None)]
    for res, how, decode, band_macs in runs:
        marks: list[float] = []
        latent = torch.randn(1, 4, res // 8, res // 8)
        saved = pieces.VAE_BAND_MAX_MACS
        pieces.VAE_BAND_MAX_MACS = band_macs or saved
        try:
            with cancel.calling(lambda marks=marks: marks.append(time.perf_counter())):
                start = time.perf_counter()
                decode(codec, latent)
                end = time.perf_counter()
        finally:
            pieces.VAE_BAND_MAX_MACS = saved
        times = [start, *marks, end]
        longest = max(b - a for a, b in zip(times, times[1:]))
        table.add(f"{res}x{res}", f"4x{res // 8}x{res // 8}", how, end - start, len(marks), longest)
        key = "" if decode is decode_in_pieces else "_untiled"
        section.summary[f"reliability_vae_gap_{res}{key}{'_whole_convolutions' if band_macs else ''}"] = longest
    section.tables.append(table)


if __name__ == "__main__":
    run_part("bench.reliability", run)
