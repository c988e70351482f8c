"""Shared benchmark machinery: thread setup, interleaved timing, FLOP counting, model builders, report tables.

Rules every part follows (docs/PERFORMANCE.md repeats them):
- speed and memory are reported as RATIOS against a baseline measured in the same process;
- variants are timed interleaved (A, B, C, A, B, C, ...) after a warm-up, and the median is kept, so a
  neighbour's load on a shared machine hits every variant alike;
- 2 threads (`torch.set_num_threads(2)`) unless --threads says otherwise, with OMP_WAIT_POLICY=PASSIVE
  (bench/__init__.py); --clock cpu times this process's CPU seconds, which a busy machine disturbs far less
  at 1 thread;
- nothing here asserts on a time.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

THREADS = int(os.environ.get("BENCH_THREADS", "2"))  # --threads sets it, for subprocesses too
TEXT_WIDTH = 256  # t2i_core.tiny_text_encoder()'s width
PROMPT = "a large red circle on the left"


def setup(threads: int | None = None) -> None:
    torch.set_num_threads(threads or THREADS)
    torch.manual_seed(0)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- timing

@dataclass
class Timing:
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats: how noisy this measurement was."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median > 0 else 0.0


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = os.environ.get("BENCH_CLOCK", "wall")  # "cpu": this process's CPU time, steadier on a busy machine at 1 thread


def timeit(fn: Callable[[], object], device="cpu", clock: str | None = None) -> float:
    now = CLOCKS[clock or CLOCK]
    sync(device)
    t0 = now()
    fn()
    sync(device)
    return now() - t0


def interleaved(variants: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                device="cpu", clock: str | None = None) -> dict[str, Timing]:
    """Median seconds per call of each variant, timed round-robin so drift in machine load hits all alike.

    The starting variant rotates each round, so none is always first after the others. clock="cpu" times
    this process's CPU seconds instead of wall seconds (meaningful at 1 thread; with 2, spinning OpenMP
    threads count too)."""
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            samples[name].append(timeit(variants[name], device, clock))
    return {n: Timing(s) for n, s in samples.items()}


# ---------------------------------------------------------------- FLOPs and peaks

def _cpu_attention_flops():
    """flop_counter knows the CUDA attention kernels but not the CPU one; count it with the same formulas."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    def fwd(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return mapping


def count_flops(fn: Callable[[], object], by_op: bool = False):
    """FLOPs of fn() as torch.utils.flop_counter counts them (matmuls, convolutions, attention; 2 per MAC).

    by_op=True returns {op name: FLOPs} instead of the total."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_flops()) as counter:
        fn()
    if by_op:
        return {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops()


def matmul_peak(dtype=torch.float32, n: int | None = None, repeats: int = 5, device="cpu") -> float:
    """Achieved GFLOP/s of a large square torch.mm on this machine now: the practical peak to compare with."""
    n = n or (4096 if dtype == torch.float32 else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    times = interleaved({"mm": lambda: torch.mm(a, b, out=out)}, repeats=repeats, warmup=1, device=device)
    return 2 * n**3 / times["mm"].median / 1e9


# ---------------------------------------------------------------- models

def build_unet(preset: str = "tiny", seed: int = 0, **overrides):
    from evals.models import randomize_zero_layers
    from t2i_core.unet import TextConditionedUNet, preset_config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = TextConditionedUNet(preset_config(preset, **{"context_dim": TEXT_WIDTH, **overrides}))
    return randomize_zero_layers(unet, seed).eval()


_ENCODER = None


def text_encoder():
    global _ENCODER
    if _ENCODER is None:
        from t2i_core.text_encoder import tiny_text_encoder
        _ENCODER = tiny_text_encoder()
    return _ENCODER


def conditionings(prompt: str = PROMPT):
    """(cond, uncond) for one prompt from the tiny text encoder: what a sampler is given."""
    enc = text_encoder()
    return enc.encode([prompt]).conditioning, enc.empty()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- reports

def fmt(x, digits: int = 3) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)

    def add(self, *row):
        self.rows.append([fmt(c) for c in row])

    def markdown(self) -> str:
        out = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join("---" for _ in self.columns) + "|"]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in self.rows]
        return "\n".join(out)


@dataclass
class Section:
    """One benchmark part's result: tables and notes, with the command that reproduces it."""
    key: str
    title: str
    command: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None  # why the part did not run
    summary: dict = field(default_factory=dict)  # headline numbers for the targets table
    raw: str | None = None  # markdown a part rendered itself

    def markdown(self) -> str:
        out = [f"### {self.title}", "", f"`{self.command}` ({self.seconds:.0f} s)", ""]
        if self.skipped:
            return "\n".join(out + [f"Skipped: {self.skipped}", ""])
        if self.raw is not None:
            return "\n".join(out + [("\n" + self.raw.strip()).replace("\n## ", "\n#### ").strip(), ""])
        for t in self.tables:
            out += [t.markdown(), ""]
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    from t2i_core.devices import bf16_supported
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{CLOCK} clock, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, native bf16: {bf16_supported('cpu')}, "
            f"Python {sys.version.split()[0]}, load average {load}")


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a short smoke run (fewer steps and repeats)")
    p.add_argument("--threads", type=int, default=None, help=f"torch threads (default {THREADS})")
    p.add_argument("--clock", choices=sorted(CLOCKS), default=None,
                   help="wall (default) or cpu: this process's CPU time, steady on a busy machine with --threads 1")


def apply_run_options(args: argparse.Namespace) -> None:
    """--threads and --clock, through the environment so subprocesses (bench.memory's cases) follow them."""
    global THREADS, CLOCK
    if args.threads:
        THREADS = args.threads
        os.environ["BENCH_THREADS"] = str(args.threads)
    if args.clock:
        CLOCK = args.clock
        os.environ["BENCH_CLOCK"] = args.clock
    setup(THREADS)


def run_options_suffix() -> str:
    """What to append to a part's command line to reproduce this run's options."""
    out = ""
    if THREADS != 2:
        out += f" --threads {THREADS}"
    if CLOCK != "wall":
        out += f" --clock {CLOCK}"
    return out


def part_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    add_run_options(p)
    return p.parse_args(argv)


def run_part(module_name: str, fn: Callable[[bool], Section], argv=None) -> Section:
    """`python -m bench.<part>`: run one part and print its tables."""
    args = part_args(fn.__doc__ or module_name, argv)
    apply_run_options(args)
    t0 = time.perf_counter()
    section = fn(args.quick)
    section.seconds = time.perf_counter() - t0
    print(machine_line())
    print()
    print(section.markdown())
    return section
