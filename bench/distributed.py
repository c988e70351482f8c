"""Data-parallel scaling: 1 process against N torchrun ranks (gloo on the CPU, NCCL on CUDA GPUs).

    python -m bench.distributed [--quick]

Each variant is the same training run, `python -m torch.distributed.run --nproc-per-node N -m t2i_core train`
(tiny preset, 16 px shapes, the same global batch), and its rate is rank 0's images/s at the last step. On
the CPU the baseline is one process with all the threads; efficiency = rate(N ranks) / (N x rate(1 rank of
the same threads)), the share of a perfect N-fold gain. With CUDA GPUs (one rank each) the same table is
taken with N up to the GPU count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from t2i_core.data import make_shapes_dataset
from t2i_core.training.config import TrainConfig
from t2i_core.training.launch import PACKAGE_ROOT, config_args

from .common import THREADS, Section, Table, run_part


def images_per_s(work: Path, name: str, processes: int, threads: int, steps: int, batch: int, gpus: bool) -> float:
    cfg = TrainConfig(dataset=str(work / "shapes"), output=str(work / name / "m.safetensors"), steps=steps,
                      batch_size=batch, checkpoint_every=0, resume=False, cache_dir=str(work / "cache"))
    events = work / name / "events.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(PACKAGE_ROOT)}
    if not gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "t2i_core", "train", "--text-encoder=tiny", *config_args(cfg), f"--events={events}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{name} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    progress = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "progress"]
    return progress[-1]["images_per_s"]


def run(quick: bool) -> Section:
    steps, batch = (8, 16) if quick else (60, 64)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    section = Section("distributed", "distributed: data-parallel scaling, 1 process against N ranks",
                      "python -m bench.distributed" + (" --quick" if quick else ""))
    with tempfile.TemporaryDirectory(prefix="t2i-bench-ddp-") as tmp:
        work = Path(tmp)
        make_shapes_dataset(work / "shapes", count=256, resolution=16, seed=0)
        if gpus >= 2:
            t = Table(f"CUDA, NCCL: tiny preset, 16 px, global batch {batch}, {steps} steps",
                      ["processes", "GPUs", "images / s", "speed-up", "efficiency"])
            base = None
            for n in sorted({1, 2, gpus}):
                rate = images_per_s(work, f"gpu{n}", n, THREADS, steps, batch, gpus=True)
                base = base or rate
                t.add(n, n, rate, rate / base, rate / (n * base))
            section.tables.append(t)
        cores = os.cpu_count() or 2
        t = Table(f"CPU, gloo: tiny preset, 16 px, global batch {batch}, {steps} steps, {cores} logical CPUs",
                  ["variant", "threads / rank", "images / s", "vs 1 process", "efficiency"])
        whole = images_per_s(work, "one_all", 1, cores, steps, batch, gpus=False)
        one = images_per_s(work, "one_1t", 1, 1, steps, batch, gpus=False)
        two = images_per_s(work, "two_1t", 2, 1, steps, batch, gpus=False)
        t.add(f"1 process, {cores} threads (the default)", cores, whole, 1.0, "-")
        t.add("1 process, 1 thread", 1, one, one / whole, "-")
        t.add("2 ranks, 1 thread each (torchrun's default)", 1, two, two / whole, two / (2 * one))
        section.tables.append(t)
        section.summary["ddp_cpu_2_rank_efficiency"] = two / (2 * one)
    section.notes += [
        "Efficiency: images/s of N ranks over N times one rank with the same threads; 1.0 is a perfect N-fold gain.",
        "On a 2-core CPU two ranks split the same two cores that one process already uses with two threads, so "
        "there is little to gain: each rank still draws the whole global batch's noise, the gloo all-reduce of "
        "the gradients runs on those same cores, and each rank's matmuls are half as large (less efficient).",
        "The speed-up data parallelism is for is on several GPUs (docs/SCALING.md).",
    ]
    if gpus < 2:
        section.notes.append(f"{gpus} CUDA GPU(s) here: the 1-vs-N GPU table needs 2 or more.")
    return section


if __name__ == "__main__":
    run_part("bench.distributed", run)
