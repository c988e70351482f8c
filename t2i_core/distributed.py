"""Data-parallel training on torch.distributed: which process this is, and the few collectives the trainer needs.

    torchrun --nproc-per-node N -m t2i_core train ...    (or python -m torch.distributed.run ...)

torchrun starts N processes (ranks) and tells each its place through the environment: RANK, WORLD_SIZE,
LOCAL_RANK (its index on this machine), MASTER_ADDR/MASTER_PORT (the rendezvous). `from_environment` joins the
process group: NCCL when CUDA is there (each rank on GPU LOCAL_RANK), gloo on the CPU.

How a step is split (t2i_core.training.trainer):
- Every rank draws the step's whole global batch from the generators seeded by (seed, step), exactly as one
  process does, and keeps its own rows: rank r of N takes rows r*B/N .. (r+1)*B/N (`rows`). The global batch,
  the learning rate and the CFG dropout therefore mean what they mean on one process, and a run saved by N ranks
  resumes with M ranks exactly.
- The U-Net is wrapped in DistributedDataParallel, which all-reduces (averages) the gradients during backward:
  the mean of the N shard losses' gradients is the gradient of the global batch's mean loss. Every rank then
  applies the same AdamW step to the same weights, so weights and EMA stay identical on all ranks.
- One exception: nn.Dropout inside the U-Net draws from the global RNG, which each rank seeds by (seed, step)
  for its own rows; with UNetConfig.dropout > 0 (no preset uses it) N ranks then train like one process in
  distribution, not to float tolerance.
- Rank 0 alone writes files and makes the decisions (cancel, time budget); `decide` hands them to all ranks so
  they stop at the same step.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from collections.abc import Iterable

import torch
import torch.distributed as dist


class Distributed:
    """This process's place in the run; `Distributed()` is a run of one process, where every collective is a
    no-op."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device: torch.device | None = None):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def __repr__(self) -> str:
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    # ---- splitting the global batch ----
    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            lower = batch_size // self.world_size * self.world_size
            raise ValueError(f"batch_size {batch_size} does not split over {self.world_size} processes: each takes "
                             f"an equal share of the global batch. Choose a multiple of {self.world_size} (e.g. "
                             f"{max(lower, self.world_size)} or {lower + self.world_size})")

    def rows(self, batch: int) -> slice:
        """This rank's rows of a global batch of `batch` rows (a multiple of the world size)."""
        share = batch // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    # ---- the model ----
    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` in DistributedDataParallel (gradients averaged over the ranks in backward); itself alone."""
        if not self.active:
            return module
        device_ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    @staticmethod
    def no_sync(module: torch.nn.Module):
        """Skip the gradient all-reduce for this backward (all micro-batches of an accumulated step but the last)."""
        if isinstance(module, torch.nn.parallel.DistributedDataParallel):
            return module.no_sync()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def writing(self):
        """Rank 0 writing its files: a SIGTERM (torchrun ending the ranks because one died) waits until they are
        whole, so the checkpoint beside a just-written .t2istate is never missing."""
        _termination["writing"] = True
        try:
            yield
        finally:
            _termination["writing"] = False
            if _termination["pending"]:
                os._exit(128 + signal.SIGTERM)

    # ---- collectives ----
    def _tensor(self, values) -> torch.Tensor:
        # NCCL reduces CUDA tensors only; gloo takes CPU tensors
        device = self.device if self.device is not None and self.device.type == "cuda" else "cpu"
        return torch.tensor(values, dtype=torch.float64, device=device)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (filling a shared cache), the other ranks after it (reading the cache)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (the global batch's loss from each rank's share of it)."""
        if not self.active:
            return value
        t = self._tensor([value])
        dist.all_reduce(t)
        return float(t[0]) / self.world_size

    def agree(self, *values: float) -> tuple[float, ...]:
        """Rank 0's `values`, on every rank, in one broadcast: the decisions (stop, the time spent) that all ranks
        follow."""
        if not self.active:
            return tuple(float(v) for v in values)
        t = self._tensor([float(v) for v in values])
        dist.broadcast(t, src=0)
        return tuple(t.tolist())

    def all_gather_objects(self, obj) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def digests(self, tensors: Iterable[torch.Tensor]) -> list[str]:
        """Each rank's sha256 of the bytes of `tensors`: equal digests mean bit-identical tensors."""
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
        return self.all_gather_objects(h.hexdigest())


SINGLE = Distributed()
_termination = {"writing": False, "pending": False}


def _on_sigterm(signum, frame):
    # SIGTERM ends the process at once, as by default, except while files are being written (Distributed.writing)
    if _termination["writing"]:
        _termination["pending"] = True
    else:
        os._exit(128 + signum)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_environment() -> Distributed:
    """Join the process group torchrun describes in the environment; a single process when there is none."""
    if not launched_by_torchrun():
        return SINGLE
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {rank} wants GPU {local_rank}, but this machine shows "
                               f"{torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                               "start at most one process per GPU (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    return Distributed(rank, world_size, local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
