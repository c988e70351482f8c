"""One short, prepared GPU measurement: the `sd` preset on 64x64x4 latents in bf16.

    python -m bench.gpu                       # on a CUDA machine (about 2-3 minutes on an H100)
    python -m bench.gpu --device cpu --preset tiny --res 16 --quick    # CPU smoke of the same logic

Measures, in one process:
  - the GPU's bf16 matmul peak (torch.mm, square, n=8192 on CUDA),
  - sampler images/s: t2i_core.sample, DDIM with classifier-free guidance, bf16, batch --sample-batch,
  - training images/s: forward + backward + fused AdamW, bf16 autocast, batch --train-batch,
  - peak memory of each (torch.cuda.max_memory_allocated; on the CPU the process's peak RSS),
  - achieved GFLOP/s of both (torch.utils.flop_counter) as a fraction of the measured bf16 peak.
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


def measure(args, save=lambda r: None) -> dict:
    """Fills and returns the result dict; `save(result)` runs after each part, so a run cut short keeps what it got."""
    from t2i_core.sampler import Conditioning, make_noise, sample
    from t2i_core.schedule import NoiseSchedule
    from t2i_core.unet import TextConditionedUNet, preset_config

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.common import count_flops, matmul_peak

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "preset": args.preset, "latent": [args.channels, args.res, args.res]}

    parts = set(args.parts.split(","))
    if "sdpa" in parts and device.type == "cuda":
        result["sdpa_extra_mb"] = sdpa_kernel_memory(device)
        save(result)

    n = args.mm or (8192 if device.type == "cuda" else 1024)
    peak = matmul_peak(torch.bfloat16, n=n, repeats=max(3, args.repeats), device=device)
    result["bf16_mm_peak_gflops"] = peak
    save(result)

    torch.manual_seed(0)
    cfg = preset_config(args.preset, in_channels=args.channels, out_channels=args.channels, context_dim=args.context_dim)
    unet = TextConditionedUNet(cfg).to(device)
    result["params_m"] = sum(p.numel() for p in unet.parameters()) / 1e6
    gen = torch.Generator().manual_seed(0)
    cond = Conditioning(torch.randn(1, 77, args.context_dim, generator=gen).to(device))
    uncond = Conditioning(torch.randn(1, 77, args.context_dim, generator=gen).to(device))
    schedule = NoiseSchedule()
    shape = (args.channels, args.res, args.res)

    # sampling: bf16 (the default on GPUs) against fp32 (TF32 matmuls) on the same noise
    unet.eval()
    bs = args.sample_batch
    noise = make_noise(range(bs), shape, device=device)

    def sampler_run(net, precision):
        return lambda: sample(net, schedule, noise, cond, uncond, steps=args.steps, guidance_scale=7.5,
                              precision=precision)
    x = torch.randn(2 * bs, *shape, device=device)
    ctx = torch.cat([uncond.context, cond.context]).repeat_interleave(bs, 0)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        step_flops = count_flops(lambda: unet(x, torch.tensor([500], device=device), ctx))
    result["sample"] = {"batch": bs, "steps": args.steps}
    for precision in ("bf16", "fp32") if "sample" in parts else ():
        t = timed(sampler_run(unet, precision), device, args.repeats)
        result["sample"][precision] = {"seconds": t, "images_per_s": bs / t, "gflops": step_flops * args.steps / t / 1e9,
                                       "peak_mb": peak_mb(device)}
        save(result)
    if "sample" in parts:
        result["sample"].update(result["sample"]["bf16"])
        result["sample"]["fraction_of_bf16_peak"] = result["sample"]["gflops"] / peak

    # training
    unet.train()
    bt = args.train_batch
    xt = torch.randn(bt, *shape, device=device)
    tt = torch.randint(0, 1000, (bt,), device=device)
    ctx_t = torch.randn(bt, 77, args.context_dim, device=device)
    target = torch.randn(bt, *shape, device=device)

    def trainer(net, x_in):
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device.type == "cuda")

        def fwd_bwd():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                pred = net(x_in, tt, ctx_t)
            loss = F.mse_loss(pred.float(), target)
            loss.backward()
            return loss

        def step():
            opt.zero_grad(set_to_none=True)
            fwd_bwd()
            opt.step()
        return fwd_bwd, step
    fwd_bwd, train_step = trainer(unet, xt)
    train_flops = count_flops(fwd_bwd)
    t = timed(train_step, device, args.repeats, warmup=2)
    result["train"] = {"batch": bt, "seconds_per_step": t, "images_per_s": bt / t,
                       "gflops": train_flops / t / 1e9, "peak_mb": peak_mb(device)}
    result["train"]["fraction_of_bf16_peak"] = result["train"]["gflops"] / peak
    save(result)

    # levers the CPU could not use: channels_last and torch.compile (a CPU probe found compile gave nothing)
    variants = result["train_variants"] = {}
    if "channels_last" in parts:
        unet.to(memory_format=torch.channels_last)
        t = timed(trainer(unet, xt.contiguous(memory_format=torch.channels_last))[1], device, args.repeats, warmup=2)
        variants["channels_last"] = {"images_per_s": bt / t, "vs_eager": result["train"]["seconds_per_step"] / t}
        unet.to(memory_format=torch.contiguous_format)
        save(result)
    if "compile_train" in parts:
        t0 = time.perf_counter()
        _, compiled_step = trainer(torch.compile(unet), xt)
        compiled_step()
        sync(device)
        compile_s = time.perf_counter() - t0
        t = timed(compiled_step, device, args.repeats, warmup=1)
        variants["compile"] = {"images_per_s": bt / t, "vs_eager": result["train"]["seconds_per_step"] / t,
                               "compile_seconds": compile_s}
        save(result)
    if "compile_sample" in parts and "sample" in parts:
        unet.eval()
        t0 = time.perf_counter()
        run = sampler_run(torch.compile(unet), "bf16")
        run()
        sync(device)
        compile_s = time.perf_counter() - t0
        t = timed(run, device, args.repeats, warmup=2)  # the second call recompiles once for inference mode
        result["sample"]["compile"] = {"images_per_s": bs / t, "vs_eager": result["sample"]["seconds"] / t,
                                       "compile_seconds": compile_s}
        save(result)
    return result


def table(r: dict) -> str:
    s, t = r["sample"], r["train"]
    lines = [f"{r['device']}, torch {r['torch']}, preset {r['preset']} ({r['params_m']:.0f}M params), "
             f"latents {'x'.join(map(str, r['latent']))}; bf16 matmul peak {r['bf16_mm_peak_gflops']:.0f} GFLOP/s",
             "", "| work | batch | images / s | GFLOP/s | % of bf16 mm peak | peak memory MB |", "|---|---|---|---|---|---|",
             f"| sampling, DDIM {s['steps']} steps, CFG, bf16 | {s['batch']} | {s['images_per_s']:.3g} | {s['gflops']:.0f} | "
             f"{100 * s['fraction_of_bf16_peak']:.1f} | {s['peak_mb']:.0f} |",
             f"| sampling, same, fp32 (TF32) | {s['batch']} | {s['fp32']['images_per_s']:.3g} | {s['fp32']['gflops']:.0f} | "
             f"{100 * s['fp32']['gflops'] / r['bf16_mm_peak_gflops']:.1f} | {s['fp32']['peak_mb']:.0f} |",
             f"| training step, bf16 autocast, fused AdamW | {t['batch']} | {t['images_per_s']:.3g} | {t['gflops']:.0f} | "
             f"{100 * t['fraction_of_bf16_peak']:.1f} | {t['peak_mb']:.0f} |",
             "", "| variant | images / s | vs eager | compile s |", "|---|---|---|---|",
             f"| sampling bf16 vs fp32 | {s['images_per_s']:.3g} | {s['fp32']['seconds'] / s['seconds']:.2f}x | |"]
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
    tb = Table(f"{r['device']}, matmul peak {r['bf16_mm_peak_gflops']:.0f} GFLOP/s",
               ["work", "batch", "images / s", "GFLOP/s", "% of bf16 peak", "peak MB"])
    for name, key in [("sampling", "sample"), ("training", "train")]:
        d = r[key]
        tb.add(name, d["batch"], d["images_per_s"], d["gflops"], 100 * d["fraction_of_bf16_peak"], d["peak_mb"])
    section.tables.append(tb)
    return section


if __name__ == "__main__":
    sys.exit(main())
