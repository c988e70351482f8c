"""One short, prepared GPU measurement: the `sd` preset on 64x64x4 latents in bf16.

    python -m bench.gpu                       # on a CUDA machine (about 2-3 minutes on an H100)
    python -m bench.gpu --device cpu --preset tiny --res 16 --quick    # CPU smoke of the same logic

Measures, in one process:
  - the device's matmul peak (torch.mm, square, n=8192 on CUDA) in the low precision: bf16 where the device
    runs it natively, fp32 elsewhere (a CPU without AVX512-BF16, or with T2I_NO_CPU_BF16=1),
  - sampler images/s: t2i_core.sample, DDIM with classifier-free guidance, batch --sample-batch,
  - training images/s: forward + backward + fused AdamW, autocast, batch --train-batch,
  - peak memory of each (torch.cuda.max_memory_allocated; on the CPU the process's peak RSS),
  - achieved GFLOP/s of both (torch.utils.flop_counter) as a fraction of the measured peak.
The text context is random (77 tokens, width 768, as Stable Diffusion's CLIP ViT-L/14 gives), so no
text encoder or download is needed. Prints a table and writes JSON to --json (default: $OUT/gpu.json
when $OUT is set). Without CUDA and without --device cpu it says so and exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    p.add_argument("--preset", default="sd")
    p.add_argument("--res", type=int, default=64, help="latent height and width")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--context-dim", type=int, default=768)
    p.add_argument("--sample-batch", type=int, default=8)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--mm", type=int, default=None, help="matmul size for the peak (default 8192 on CUDA, 1024 on CPU)")
    p.add_argument("--quick", action="store_true", help="2 steps, 2 repeats, small matmul: a smoke test")
    p.add_argument("--parts", default="sdpa,sample,train,channels_last",
                   help="comma-separated: sdpa (CUDA only), sample, train, channels_last, compile_train, compile_sample")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() over `repeats`, after `warmup` calls. The peak-memory counter restarts after the
    warm-up: cuDNN's autotuning (cudnn.benchmark) tries algorithms with large workspaces during the first calls,
    which is not memory the steady state needs."""
    for _ in range(warmup):
        fn()
    sync(device)
    reset_peak(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sdpa_kernel_memory(device, shape=(16, 8, 4096, 40)) -> dict:
    """Extra memory (MB) of one self-attention over `shape` (batch, heads, tokens, head dim: the `sd` preset's
    level 0 at 64x64 latents, CFG batch 16) per SDPA kernel and dtype; None where the kernel refuses."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        q = torch.randn(*shape, device=device, dtype=dtype)
        for backend in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
            sync(device)
            reset_peak(device)
            base = torch.cuda.memory_allocated()
            try:
                with sdpa_kernel([backend]) if backend else contextlib.nullcontext():
                    F.scaled_dot_product_attention(q, q, q)
                sync(device)
                extra = (torch.cuda.max_memory_allocated() - base) / 2**20
            except RuntimeError:
                extra = None
            out[f"{str(dtype).split('.')[-1]} {backend.name if backend else 'default'}"] = extra
    return out


class Workload:
    """The `sd`-sized U-Net, random text and noise that every part of the measurement shares."""

    def __init__(self, args, device: torch.device):
        from t2i_core.conditioning import Conditioning
        from t2i_core.schedule import NoiseSchedule
        from t2i_core.unet import TextConditionedUNet, preset_config
        torch.manual_seed(0)
        cfg = preset_config(args.preset, in_channels=args.channels, out_channels=args.channels,
                            context_dim=args.context_dim)
        self.args, self.device = args, device
        self.unet = TextConditionedUNet(cfg).to(device)
        gen = torch.Generator().manual_seed(0)
        self.cond = Conditioning(torch.randn(1, 77, args.context_dim, generator=gen).to(device))
        self.uncond = Conditioning(torch.randn(1, 77, args.context_dim, generator=gen).to(device))
        self.schedule = NoiseSchedule()
        self.shape = (args.channels, args.res, args.res)

    def sampler_run(self, net, precision: str):
        from t2i_core.sampler import make_noise, sample
        noise = make_noise(range(self.args.sample_batch), self.shape, device=self.device)
        return lambda: sample(net, self.schedule, noise, self.cond, self.uncond, steps=self.args.steps,
                              guidance_scale=7.5, precision=precision)

    def trainer(self, net, precision: str, channels_last: bool = False):
        """(forward+backward, optimizer step) closures for one training batch."""
        from t2i_core.devices import autocast
        device, bt = self.device, self.args.train_batch
        x = torch.randn(bt, *self.shape, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, 1000, (bt,), device=device)
        ctx = torch.randn(bt, 77, self.args.context_dim, device=device)
        target = torch.randn(bt, *self.shape, device=device)
        opt = torch.optim.AdamW(self.unet.parameters(), lr=1e-5, fused=device.type == "cuda")

        def fwd_bwd():
            with autocast(device, precision):
                pred = net(x, t, ctx)
            loss = F.mse_loss(pred.float(), target)
            loss.backward()
            return loss

        def step():
            opt.zero_grad(set_to_none=True)
            fwd_bwd()
            opt.step()
        return fwd_bwd, step


def setup_device(device: torch.device):
    if device.type == "cpu":
        torch.set_num_threads(2)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def measure_sampling(w: Workload, low: str, peak: float) -> dict:
    """Sampling in the low precision (bf16 where the device has it) against fp32 (TF32 on CUDA), same noise."""
    from bench.common import count_flops
    from t2i_core.devices import autocast
    args, device, bs = w.args, w.device, w.args.sample_batch
    w.unet.eval()
    x = torch.randn(2 * bs, *w.shape, device=device)
    ctx = torch.cat([w.uncond.context, w.cond.context]).repeat_interleave(bs, 0)
    with torch.inference_mode(), autocast(device, low):
        step_flops = count_flops(lambda: w.unet(x, torch.tensor([500], device=device), ctx))
    out = {"batch": bs, "steps": args.steps}
    for precision in dict.fromkeys((low, "fp32")):
        t = timed(w.sampler_run(w.unet, precision), device, args.repeats)
        out[precision] = {"seconds": t, "images_per_s": bs / t, "gflops": step_flops * args.steps / t / 1e9,
                          "peak_mb": peak_mb(device)}
    out.update(out[low])
    out["fraction_of_peak"] = out["gflops"] / peak
    return out


def measure_training(w: Workload, low: str, peak: float) -> dict:
    from bench.common import count_flops
    w.unet.train()
    bt = w.args.train_batch
    fwd_bwd, train_step = w.trainer(w.unet, low)
    flops = count_flops(fwd_bwd)
    t = timed(train_step, w.device, w.args.repeats, warmup=2)
    return {"batch": bt, "seconds_per_step": t, "images_per_s": bt / t, "gflops": flops / t / 1e9,
            "peak_mb": peak_mb(w.device), "fraction_of_peak": flops / t / 1e9 / peak}


def measure_train_variants(w: Workload, low: str, eager_s: float, parts: set) -> dict:
    """The levers the CPU could not use: channels_last and torch.compile, against the eager step."""
    variants, bt, device = {}, w.args.train_batch, w.device
    if "channels_last" in parts:
        w.unet.to(memory_format=torch.channels_last)
        t = timed(w.trainer(w.unet, low, channels_last=True)[1], device, w.args.repeats, warmup=2)
        variants["channels_last"] = {"images_per_s": bt / t, "vs_eager": eager_s / t}
        w.unet.to(memory_format=torch.contiguous_format)
    if "compile_train" in parts:
        t0 = time.perf_counter()
        _, compiled_step = w.trainer(torch.compile(w.unet), low)
        compiled_step()
        sync(device)
        compile_s = time.perf_counter() - t0
        t = timed(compiled_step, device, w.args.repeats, warmup=1)
        variants["compile"] = {"images_per_s": bt / t, "vs_eager": eager_s / t, "compile_seconds": compile_s}
    return variants


def measure_compiled_sampling(w: Workload, low: str, eager_s: float) -> dict:
    w.unet.eval()
    t0 = time.perf_counter()
    run = w.sampler_run(torch.compile(w.unet), low)
    run()
    sync(w.device)
    compile_s = time.perf_counter() - t0
    t = timed(run, w.device, w.args.repeats, warmup=2)  # the second call recompiles once for inference mode
    return {"images_per_s": w.args.sample_batch / t, "vs_eager": eager_s / t, "compile_seconds": compile_s}


def measure(args, save=lambda r: None) -> dict:
    """Fills and returns the result dict; `save(result)` runs after each part, so a run cut short keeps what it got.

    The low precision is bf16 where the device runs it natively and fp32 elsewhere (a CPU without AVX512-BF16)."""
    from bench.common import matmul_peak
    from t2i_core.devices import resolve_precision

    device = torch.device(args.device)
    setup_device(device)
    low = resolve_precision("auto", device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "preset": args.preset, "latent": [args.channels, args.res, args.res],
              "precision": low}
    parts = set(args.parts.split(","))
    if "sdpa" in parts and device.type == "cuda":
        result["sdpa_extra_mb"] = sdpa_kernel_memory(device)
        save(result)
    n = args.mm or (8192 if device.type == "cuda" else 1024)
    peak = matmul_peak(torch.bfloat16 if low == "bf16" else torch.float32, n=n, repeats=max(3, args.repeats),
                       device=device)
    result["mm_peak_gflops"] = peak
    save(result)

    w = Workload(args, device)
    result["params_m"] = sum(p.numel() for p in w.unet.parameters()) / 1e6
    if "sample" in parts:
        result["sample"] = measure_sampling(w, low, peak)
        save(result)
    result["train"] = measure_training(w, low, peak)
    save(result)
    result["train_variants"] = measure_train_variants(w, low, result["train"]["seconds_per_step"], parts)
    save(result)
    if "compile_sample" in parts and "sample" in parts:
        result["sample"]["compile"] = measure_compiled_sampling(w, low, result["sample"]["seconds"])
        save(result)
    return result


def table(r: dict) -> str:
    s, t, low, peak = r["sample"], r["train"], r["precision"], r["mm_peak_gflops"]
    lines = [f"{r['device']}, torch {r['torch']}, preset {r['preset']} ({r['params_m']:.0f}M params), "
             f"latents {'x'.join(map(str, r['latent']))}; {low} matmul peak {peak:.0f} GFLOP/s",
             "", f"| work | batch | images / s | GFLOP/s | % of {low} mm peak | peak memory MB |", "|---|---|---|---|---|---|",
             f"| sampling, DDIM {s['steps']} steps, CFG, {low} | {s['batch']} | {s['images_per_s']:.3g} | {s['gflops']:.0f} | "
             f"{100 * s['fraction_of_peak']:.1f} | {s['peak_mb']:.0f} |",
             f"| sampling, same, fp32 (TF32 on CUDA) | {s['batch']} | {s['fp32']['images_per_s']:.3g} | "
             f"{s['fp32']['gflops']:.0f} | {100 * s['fp32']['gflops'] / peak:.1f} | {s['fp32']['peak_mb']:.0f} |",
             f"| training step, {low} autocast, AdamW | {t['batch']} | {t['images_per_s']:.3g} | {t['gflops']:.0f} | "
             f"{100 * t['fraction_of_peak']:.1f} | {t['peak_mb']:.0f} |",
             "", "| variant | images / s | vs eager | compile s |", "|---|---|---|---|",
             f"| sampling {low} vs fp32 | {s['images_per_s']:.3g} | {s['fp32']['seconds'] / s['seconds']:.2f}x | |"]
    for name, v in r.get("train_variants", {}).items():
        lines.append(f"| training, {name} | {v['images_per_s']:.3g} | {v['vs_eager']:.2f}x | "
                     f"{v.get('compile_seconds', 0):.0f} |")
    if "compile" in s:
        c = s["compile"]
        lines.append(f"| sampling, compile | {c['images_per_s']:.3g} | {c['vs_eager']:.2f}x | {c['compile_seconds']:.0f} |")
    if r.get("sdpa_extra_mb"):
        lines += ["", "| SDPA kernel, self-attention (16, 8, 4096, 40) | extra memory MB |", "|---|---|"]
        lines += [f"| {k} | {'refused' if v is None else f'{v:.0f}'} |" for k, v in r["sdpa_extra_mb"].items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    if args.quick:
        args.steps, args.repeats = 2, 2
        args.mm = args.mm or 512
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device here, nothing measured. Run it on a GPU machine, or smoke-test the logic "
              "on the CPU with: python -m bench.gpu --device cpu --preset tiny --res 16 --quick")
        return 0
    path = args.json or (os.path.join(os.environ["OUT"], "gpu.json") if os.environ.get("OUT") else None)

    def save(r):
        if path:
            with open(path, "w") as f:
                json.dump(r, f, indent=2)
    r = measure(args, save)
    print(table(r))
    if path:
        print(f"wrote {path}")
    return 0


def run(quick: bool = False):
    """Hook for `python -m bench`: runs on CUDA, says why not elsewhere."""
    from .common import Section, Table
    section = Section("gpu", "GPU: `sd` preset, 64x64x4 latents, bf16", "python -m bench.gpu")
    if not torch.cuda.is_available():
        section.skipped = ("no CUDA device in this run. `python -m bench.gpu` is the prepared script for a GPU "
                           "machine; `python -m bench.gpu --device cpu --preset tiny --res 16 --quick` smoke-tests it here.")
        return section
    args = parse(["--quick"] if quick else [])
    if quick:
        args.steps, args.repeats, args.mm = 2, 2, 2048
    r = measure(args)
    tb = Table(f"{r['device']}, {r['precision']} matmul peak {r['mm_peak_gflops']:.0f} GFLOP/s",
               ["work", "batch", "images / s", "GFLOP/s", f"% of {r['precision']} peak", "peak MB"])
    for name, key in [("sampling", "sample"), ("training", "train")]:
        d = r[key]
        tb.add(name, d["batch"], d["images_per_s"], d["gflops"], 100 * d["fraction_of_peak"], d["peak_mb"])
    section.tables.append(tb)
    return section


if __name__ == "__main__":
    sys.exit(main())
