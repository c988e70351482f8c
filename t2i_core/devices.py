"""Device and precision choices. Nothing here assumes CUDA.

T2I_NO_CPU_BF16=1 in the environment makes the engine treat the CPU as one without native bf16 (no AVX512-BF16,
no AMX): `precision="auto"` is then fp32 and `"bf16"` is refused, as on such a CPU. CI runs the unit tests
once that way too, so a machine with bf16 catches what one without it would hit.
"""
from __future__ import annotations

import contextlib
import os
import threading

import torch

PRECISIONS = ("auto", "fp32", "bf16")
NO_CPU_BF16_ENV = "T2I_NO_CPU_BF16"


def cpu_bf16_disabled() -> bool:
    return os.environ.get(NO_CPU_BF16_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def bf16_supported(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # oneDNN runs bf16 matmuls natively only with AVX512-BF16 or AMX; elsewhere bf16 is emulated and slow.
        return not cpu_bf16_disabled() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if precision == "bf16" and not bf16_supported(device):
        why = f" ({NO_CPU_BF16_ENV} is set)" if torch.device(device).type == "cpu" and cpu_bf16_disabled() else ""
        raise ValueError(f"bf16 is not supported on {device}{why}; use precision='fp32' or 'auto'")
    return precision


def autocast(device: torch.device | str, precision: str):
    """bf16 autocast for the U-Net's matmuls and convolutions, or nothing for fp32."""
    device = torch.device(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def glibc():
    """The C library when it is glibc (its malloc_trim and mallopt), else None."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand the C heap's freed pages back to the system (glibc's malloc_trim; nothing elsewhere). A cancelled
    large sample frees gigabytes of activations, which glibc's arenas may otherwise keep for the process."""
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)


# glibc's mallopt parameters, and the values of its static defaults: a freed block of 128 KB or more goes back to
# the system at once (mmap threshold), and so does free memory at the heap's top above 128 KB (trim threshold).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
GLIBC_DEFAULT_THRESHOLD = 128 * 1024
# While training: blocks up to glibc's largest mmap threshold (32 MB on 64-bit) come from the heap, and up to 1 GB
# of freed memory stays there, so each step reuses the pages the last one freed.
TRAINING_MMAP_THRESHOLD = 32 * 1024 * 1024
TRAINING_TRIM_THRESHOLD = 1 << 30
_heap_kept = 0  # trainings inside reusing_freed_memory, all threads together
_heap_lock = threading.Lock()


def set_heap_thresholds(mmap_threshold: int, trim_threshold: int) -> bool:
    """Set glibc's mmap and trim thresholds (bytes); False where the C library is not glibc or refused them."""
    libc = glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold))


@contextlib.contextmanager
def reusing_freed_memory():
    """Within the with-block, freed memory stays in the C heap for the next allocation (glibc; elsewhere nothing).

    A CPU training step allocates and frees the same activations every step. With glibc's defaults each block of
    128 KB or more goes back to the system when freed and faults in again, page by page, when the next step takes
    it: thousands of page faults a step (docs/PERFORMANCE.md, "Where a training step's time goes"). When the last
    block in any thread ends, the defaults come back and the freed pages are handed back."""
    global _heap_kept
    with _heap_lock:
        _heap_kept += 1
        if _heap_kept == 1:
            set_heap_thresholds(TRAINING_MMAP_THRESHOLD, TRAINING_TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_kept -= 1
            if _heap_kept == 0:
                set_heap_thresholds(GLIBC_DEFAULT_THRESHOLD, GLIBC_DEFAULT_THRESHOLD)
                release_freed_memory()


# A size whose estimated memory passes this share of what the device has free is refused even where the caller
# lifted the size limit: running it would swap the machine or have the system kill the process (the server).
MEMORY_SHARE = 0.8


def available_memory_bytes(device: torch.device | str) -> int | None:
    """Memory free for new tensors on `device`: the CPU's MemAvailable (Linux), a GPU's free memory plus what
    torch's allocator holds unused; None where it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def check_memory(needed_bytes: int, what: str, device: torch.device | str, fix: str) -> None:
    """ValueError naming `what`, the estimate and the memory free when `needed_bytes` passes MEMORY_SHARE of it."""
    free = available_memory_bytes(device)
    if free is not None and needed_bytes > MEMORY_SHARE * free:
        device = torch.device(device)
        where = "the CPU's memory" if device.type == "cpu" else f"{device}'s memory"
        raise ValueError(f"{what} needs about {needed_bytes / 2**30:,.1f} GiB of memory, and {where} has "
                         f"{free / 2**30:,.1f} GiB free: running it would make the system swap or kill the "
                         f"server, so no setting lifts this limit. {fix}")
