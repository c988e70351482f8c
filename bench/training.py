"""Training throughput: t2i_core's U-Net against diffusers' UNet2DConditionModel built to the same shape.

    python -m bench.training [--quick]

One training step = forward, MSE loss, backward, AdamW step, on a batch of 32 images of 32x32x3 with a
77-token text context of width 256, in fp32 and in bf16 autocast. The diffusers model has the same widths,
levels, res blocks, transformer placement, heads, GEGLU feed-forward and linear projections; its FLOPs
are counted with torch.utils.flop_counter next to ours to show the two do the same work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from t2i_core.devices import (
    GLIBC_DEFAULT_THRESHOLD,
    TRAINING_MMAP_THRESHOLD,
    TRAINING_TRIM_THRESHOLD,
    autocast,
    bf16_supported,
    release_freed_memory,
    set_heap_thresholds,
)
from t2i_core.training.optim import MuonAdamW
from t2i_core.unet import TextConditionedUNet

from .common import (
    TEXT_WIDTH,
    Section,
    Table,
    build_unet,
    count_flops,
    interleaved,
    n_params,
    run_options_suffix,
    run_part,
    text_encoder,
)

PRESET, RES, BATCH = "tiny", 32, 32


def diffusers_twin(unet: TextConditionedUNet):
    """A diffusers UNet2DConditionModel with our U-Net's architecture (random weights of its own)."""
    from diffusers import UNet2DConditionModel
    cfg = unet.cfg
    if cfg.transformer_depth != 1:
        raise ValueError("the twin is built for transformer_depth 1")
    levels = range(len(cfg.channel_mult))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        twin = UNet2DConditionModel(
            sample_size=RES, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
            block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mult),
            layers_per_block=cfg.num_res_blocks,
            down_block_types=tuple("CrossAttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D"
                                 for i in reversed(levels)),
            mid_block_type="UNetMidBlock2DCrossAttn",
            cross_attention_dim=cfg.context_dim,
            attention_head_dim=cfg.num_heads,  # diffusers' historical name for the number of heads
            use_linear_projection=True, norm_num_groups=32, norm_eps=1e-6, act_fn="silu",
            flip_sin_to_cos=True, freq_shift=0,
        )
    return twin


class DiffusersAdapter(torch.nn.Module):
    """forward(x, t, context, key_mask) for a diffusers U-Net, so one training step serves both models."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, context, key_mask=None):
        return self.model(x, t, encoder_hidden_states=context, encoder_attention_mask=key_mask).sample


def training_batch(batch: int = BATCH, res: int = RES, channels: int = 3, masked: bool = False, seed: int = 0):
    """(x_t, t, context, key_mask, target). masked=True: real captions padded to 77 tokens, with their mask;
    masked=False: the same states with no mask (every token attended, as Stable Diffusion trains)."""
    gen = torch.Generator().manual_seed(seed)
    captions = [f"a {s} {c} {k} {p}" for s, c, k, p in zip(
        ["small", "large"] * (batch // 2 + 1), ["red", "green", "blue", "yellow"] * (batch // 4 + 1),
        ["circle", "square", "triangle"] * (batch // 3 + 1), ["on the left", "on the right", "at the top",
                                                               "in the middle of the picture"] * (batch // 4 + 1))][:batch]
    cond = text_encoder().encode(captions).conditioning
    x = torch.randn(batch, channels, res, res, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    target = torch.randn(batch, channels, res, res, generator=gen)
    context = cond.context.clone()
    return x, t, context, (cond.key_mask.clone() if masked else None), target


def make_train_step(model: torch.nn.Module, data, precision: str = "fp32", device="cpu", fused_adamw: bool = False,
                    optimizer: str | None = None):
    """fn() running one optimizer step of `model` on `data` (forward, MSE, backward, optimizer step): torch's AdamW,
    or with `optimizer` the trainer's (t2i_core.training.optim: "muon" or "adamw")."""
    x, t, context, key_mask, target = (None if d is None else d.to(device) for d in data)
    model.train()
    if optimizer is None:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, **({"fused": True} if fused_adamw else {}))
    else:
        opt = MuonAdamW(model.named_parameters(), 1e-5, optimizer)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            pred = model(x, t, context, key_mask)
        loss = F.mse_loss(pred.float(), target)
        loss.backward()
        opt.step()
        return loss
    return step


def train_flops(model, data, precision="fp32") -> int:
    """FLOPs of one forward + backward (the optimizer's elementwise work is not counted)."""
    x, t, context, key_mask, target = data

    def fwd_bwd():
        with autocast("cpu", precision):
            pred = model(x, t, context, key_mask)
        F.mse_loss(pred.float(), target).backward()
    model.zero_grad(set_to_none=True)
    flops = count_flops(fwd_bwd)
    model.zero_grad(set_to_none=True)
    return flops


def forward_flops(model, data) -> int:
    x, t, context, key_mask, _ = data
    with torch.no_grad():
        return count_flops(lambda: model(x[:1], t[:1], context[:1], None if key_mask is None else key_mask[:1]))


def run(quick: bool = False) -> Section:
    """Training throughput against diffusers' UNet2DConditionModel."""
    batch = 8 if quick else BATCH
    repeats = 2 if quick else 5
    section = Section("training", "Training: t2i_core's U-Net against diffusers' UNet2DConditionModel",
                      "python -m bench.training" + (" --quick" if quick else "") + run_options_suffix())
    ours = build_unet(PRESET)
    twin = DiffusersAdapter(diffusers_twin(ours))
    full = training_batch(batch)  # 77 tokens, no mask: identical work for both
    masked = training_batch(batch, masked=True)

    ft = Table("The two models do the same work (forward FLOPs for one 32x32 image, 77-token context)",
               ["model", "params", "forward GFLOP", "forward + backward GFLOP (batch)"])
    fl_ours, fl_twin = forward_flops(ours, full), forward_flops(twin, full)
    tfl_ours, tfl_twin = train_flops(ours, full), train_flops(twin, full)
    ft.add(f"t2i_core `{PRESET}`", f"{n_params(ours) / 1e6:.2f}M", fl_ours / 1e9, tfl_ours / 1e9)
    ft.add("diffusers UNet2DConditionModel", f"{n_params(twin) / 1e6:.2f}M", fl_twin / 1e9, tfl_twin / 1e9)
    section.tables.append(ft)

    precisions = ["fp32"] + (["bf16"] if bf16_supported("cpu") else [])
    tt = Table(f"Training step, batch {batch}, {RES}x{RES}x3, AdamW, median of {repeats} steps",
               ["precision", "context", "model", "images / s", "vs diffusers", "GFLOP/s"])
    for precision in precisions:
        for label, data in [("77 tokens, no mask", full), ("captions + key mask", masked)]:
            if label != "77 tokens, no mask" and (quick or precision != precisions[-1]):
                continue
            variants = {
                "diffusers": make_train_step(twin, data, precision),
                "t2i_core": make_train_step(ours, data, precision),
            }
            times = interleaved(variants, repeats=repeats, warmup=2)
            base = times["diffusers"].median
            for name, tm in times.items():
                flops = tfl_ours if name == "t2i_core" else tfl_twin
                rate = "-" if data is masked else flops / tm.median / 1e9
                tt.add(precision, label, name, batch / tm.median, base / tm.median, rate)
                if name == "t2i_core" and data is full:
                    section.summary[f"training_vs_diffusers_{precision}"] = base / tm.median
    section.tables.append(tt)

    if not quick:
        # levers of the training step that are not the U-Net's: same model, same data
        data = full
        variants = {"AdamW (default, for-loop)": make_train_step(ours, data, precisions[-1]),
                    "AdamW(fused=True)": make_train_step(ours, data, precisions[-1], fused_adamw=True)}
        times = interleaved(variants, repeats=repeats, warmup=2)
        lt = Table(f"Optimizer choice, t2i_core, {precisions[-1]}, batch {batch}",
                   ["optimizer", "images / s", "vs default"])
        base = times["AdamW (default, for-loop)"].median
        for name, tm in times.items():
            lt.add(name, batch / tm.median, base / tm.median)
        section.tables.append(lt)

    if not quick:
        section.tables.append(steps_then_and_now(repeats))
        section.tables.append(small_image_levers(repeats))
        section.tables.append(unet_shapes_at_16_px(repeats))

    section.notes += [
        f"Both models see the same inputs; the text context is {TEXT_WIDTH} wide (the tiny text encoder's states).",
        "With a key mask t2i_core cuts the context to the longest real caption before attending, which is "
        "less work than the 77 tokens diffusers attends to (masked), so that row is not a same-FLOPs comparison.",
        "GFLOP/s counts forward + backward FLOPs only; AdamW's time is in the denominator.",
    ]
    return section


def small_image_levers(repeats: int) -> Table:
    """The demo's training step (`micro`, batch 32, 16 px, fp32, captions + key mask) against the levers that keep
    its math: the optimizer's kernels, the memory format, and a larger batch (images/s, not steps/s)."""
    def step(batch=32, **kw):
        unet = build_unet("micro")
        data = training_batch(batch, res=16, masked=True)
        if kw.pop("channels_last", False):
            unet = unet.to(memory_format=torch.channels_last)
            data = (data[0].contiguous(memory_format=torch.channels_last), *data[1:])
        return make_train_step(unet, data, "fp32", **kw)
    variants = {"micro, batch 32 (the demo's step)": (32, step()),
                "AdamW(fused=True)": (32, step(fused_adamw=True)),
                "channels_last model and input": (32, step(channels_last=True)),
                "batch 64": (64, step(64))}
    times = interleaved({name: fn for name, (_, fn) in variants.items()}, repeats=repeats, warmup=2)
    table = Table(f"The demo's training step at 16 px, fp32, median of {repeats} steps (interleaved)",
                  ["variant", "ms / step", "images / s", "images / s vs the demo's step"])
    base = 32 / times["micro, batch 32 (the demo's step)"].median
    for name, (batch, _) in variants.items():
        tm = times[name].median
        table.add(name, tm * 1e3, batch / tm, batch / tm / base)
    return table


def in_heap(step, kept: bool, steps: int = 3):
    """fn() running `steps` steps with glibc's heap as the trainer keeps it (freed memory stays for the next step)
    or as glibc's defaults do (a freed block of 128 KB or more goes back to the system); the first step after a
    switch pays for it, which counts against the kept heap. Elsewhere than glibc both are the same."""
    def run():
        if kept:
            set_heap_thresholds(TRAINING_MMAP_THRESHOLD, TRAINING_TRIM_THRESHOLD)
        else:
            set_heap_thresholds(GLIBC_DEFAULT_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
            release_freed_memory()
        for _ in range(steps):
            step()
    return run


def steady_page_faults(step, kept: bool, steps: int = 5) -> float:
    """Minor page faults per step of `step` in that heap mode, after one step to settle in."""
    import resource
    in_heap(step, kept, steps=1)()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def steps_then_and_now(repeats: int) -> Table:
    """Training steps of `micro` (batch 32) and `tiny` (batch 64) at 16 px, fp32, captions + key mask: as the
    trainer ran them before (torch's AdamW, glibc's heap defaults) against now (Muon and AdamW in one optimizer,
    the heap kept), and each change alone."""
    rows = {"before: torch's AdamW, glibc's heap defaults": (None, False),
            "the heap kept (devices.reusing_freed_memory)": (None, True),
            "AdamW as the trainer runs it (optimizer=adamw), heap kept": ("adamw", True),
            "now: Muon + AdamW (optimizer=muon), heap kept": ("muon", True)}
    table = Table(f"The training step before and now, 16 px, fp32, median of {repeats} calls of 3 steps (interleaved)",
                  ["preset", "batch", "variant", "ms / step", "images / s", "vs before", "page faults / step"])
    for preset, batch in (("micro", 32), ("tiny", 64)):
        data = training_batch(batch, res=16, masked=True)
        steps = {name: make_train_step(build_unet(preset), data, "fp32", optimizer=optimizer)
                 for name, (optimizer, _) in rows.items()}
        variants = {name: in_heap(step, rows[name][1]) for name, step in steps.items()}
        times = interleaved(variants, repeats=repeats, warmup=1)
        base = times[next(iter(rows))].median
        for name, tm in times.items():
            table.add(preset, batch, name, tm.median / 3 * 1e3, 3 * batch / tm.median, base / tm.median,
                      steady_page_faults(steps[name], rows[name][1]))
    set_heap_thresholds(GLIBC_DEFAULT_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
    release_freed_memory()
    return table


# `micro` and cheaper shapes of it: faster steps, which learned less per step on the shapes (docs/QUALITY.md,
# "The whole budget"), so the demo keeps `micro`
MICRO_SHAPES = {"micro (levels 16, 8, 4; attention at 8 and 4)": {},
                "attention at 4x4 only": {"attention_levels": (2,)},
                "two levels (16, 8), attention at 8": {"channel_mult": (1, 2), "attention_levels": (1,)}}


def unet_shapes_at_16_px(repeats: int) -> Table:
    """The demo's training step (`micro`, batch 32, 16 px, fp32, captions + key mask) against U-Nets of other
    shapes: fewer attention levels, fewer levels."""
    data = training_batch(32, res=16, masked=True)
    times = interleaved({name: make_train_step(build_unet("micro", **shape), data, "fp32")
                         for name, shape in MICRO_SHAPES.items()}, repeats=repeats, warmup=2)
    table = Table(f"U-Net shapes at 16 px, batch 32, fp32, median of {repeats} steps (interleaved)",
                  ["U-Net", "ms / step", "vs micro"])
    base = times[next(iter(MICRO_SHAPES))].median
    for name, tm in times.items():
        table.add(name, tm.median * 1e3, base / tm.median)
    return table


if __name__ == "__main__":
    run_part("bench.training", run)
