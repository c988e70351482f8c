"""Before/after: the working tree's t2i_core against another version of it, same weights, same process.

    python -m bench.ab --base df30413            # a git revision (t2i_core/ as committed there)
    python -m bench.ab --base /path/to/t2i_core  # or a copy of the package directory
    python -m bench.ab --base df30413 --only forward,sampler --threads 1 --clock cpu

The base version is imported as a separate package (t2i_core_base), its U-Net gets the working tree's
weights (state dicts are compatible), and each pair of variants is timed interleaved. This is how each
change to t2i_core/unet.py and t2i_core/sampler.py was measured (docs/PERFORMANCE.md, "Change log").
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .common import Table, build_unet, conditionings, interleaved, machine_line, setup

REPO = Path(__file__).resolve().parent.parent


def load_base(base: str, name: str = "t2i_core_base"):
    tmp = Path(tempfile.mkdtemp(prefix="t2i_base_"))
    target = tmp / name
    if Path(base).is_dir():
        shutil.copytree(base, target)
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", base, "t2i_core"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        (tmp / "t2i_core").rename(target)
    # imported from its folder under its own name, so it never shadows the working tree's t2i_core
    spec = importlib.util.spec_from_file_location(name, target / "__init__.py", submodule_search_locations=[str(target)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision or directory of the base t2i_core")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=["wall", "cpu"], default=None, help="cpu: process CPU time (steady at 1 thread)")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--only", default="forward,sampler,training")
    args = p.parse_args(argv)
    setup(args.threads)
    if args.clock:
        import bench.common
        bench.common.CLOCK = args.clock
    only = set(args.only.split(","))
    base = load_base(args.base)
    importlib.import_module(base.__name__ + ".unet")
    from t2i_core.conditioning import concat_conditionings
    from t2i_core.devices import bf16_supported
    from t2i_core.sampler import make_noise, sample
    from t2i_core.schedule import NoiseSchedule

    new = build_unet(args.preset)
    old = base.unet.TextConditionedUNet(base.unet.preset_config(args.preset, context_dim=new.cfg.context_dim))
    old.load_state_dict(new.state_dict())
    old.eval()
    precisions = ["fp32"] + (["bf16"] if bf16_supported("cpu") else [])
    cond, uncond = conditionings()
    res = args.res
    table = Table(f"{args.preset} at {res}px: working tree (new) against {args.base} (base), "
                  f"median of {args.repeats}, {args.threads} thread(s)",
                  ["work", "precision", "base ms", "new ms", "speed-up", "max |Δ| / max |x|"])

    def row(work, precision, fns, outputs):
        tm = interleaved(fns, repeats=args.repeats, warmup=1)
        b, n = tm["base"].median, tm["new"].median
        ref = outputs["base"].float()
        dev = float((outputs["new"].float() - ref).abs().max() / ref.abs().max())
        table.add(work, precision, b * 1e3, n * 1e3, b / n, f"{dev:.1e}")
        print(table.rows[-1], flush=True)

    if "forward" in only:
        both = concat_conditionings(uncond, cond)
        ctx, mask = both.context, both.key_mask
        x = torch.randn(2, new.cfg.in_channels, res, res)
        for precision in precisions:
            fns, outs = {}, {}
            for key, unet, mod in (("base", old, base), ("new", new, sys.modules["t2i_core"])):
                ac = mod.devices.autocast
                with torch.inference_mode(), ac("cpu", precision):
                    prepared = unet.prepare_context(ctx, mask)

                def f(unet=unet, prepared=prepared, ac=ac, precision=precision):
                    with torch.inference_mode(), ac("cpu", precision):
                        return unet(x, torch.tensor([500]), prepared)
                fns[key], outs[key] = f, f()
            row("forward, batch 2 (1 image with CFG)", precision, fns, outs)

    if "sampler" in only:
        schedule = NoiseSchedule()
        noise = make_noise([0], (new.cfg.in_channels, res, res))
        for precision in precisions:
            fns = {
                "base": lambda precision=precision: base.sampler.sample(
                    old, schedule, noise, cond, uncond, steps=args.steps, precision=precision),
                "new": lambda precision=precision: sample(
                    new, schedule, noise, cond, uncond, steps=args.steps, precision=precision),
            }
            row(f"sample(), batch 1, {args.steps} steps", precision, fns, {k: f() for k, f in fns.items()})

    if "training" in only:
        from .training import make_train_step, training_batch
        data = training_batch(args.train_batch, res, masked=True)
        for precision in precisions:
            # a fresh optimizer per model; the two models start from the same weights
            new_t, old_t = build_unet(args.preset), base.unet.TextConditionedUNet(old.cfg)
            old_t.load_state_dict(new_t.state_dict())
            fns = {"base": make_train_step(old_t, data, precision), "new": make_train_step(new_t, data, precision)}
            outs = {"base": fns["base"]().detach(), "new": fns["new"]().detach()}  # first-step losses
            row(f"training step, batch {args.train_batch}, captions + mask", precision, fns, outs)

    print()
    print(machine_line())
    print()
    print(table.markdown())


if __name__ == "__main__":
    main()
