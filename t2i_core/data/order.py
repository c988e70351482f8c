"""The order a training run visits its images in: a pure function of (seed, step), so a run resumed at step k
continues exactly as the uninterrupted run would, with no RNG state to save, and every rank of a data-parallel
run draws the same global batch."""
from __future__ import annotations

import torch


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): the root of exact resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + stream)


def batch_positions(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Positions of step `step`'s batch in an endless sequence of per-epoch shuffles of range(n)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=step_generator(seed, epoch, 7))
        out.extend(perm[offset: offset + batch - len(out)].tolist())
    return torch.tensor(out)


def bucket_batch_positions(position_buckets: list[int], batch: int, seed: int, step: int) -> torch.Tensor:
    """Positions of step `step`'s batch when each batch comes from one aspect-ratio bucket (position_buckets[p]:
    the bucket of position p). Each epoch shuffles every bucket's positions, splits them into ceil(size / batch)
    batches as equal as possible (so a bucket of 70 gives two of 35, not 64 and 6), and shuffles the order of all
    those batches; step k takes batch k mod (batches per epoch) of epoch k div it. A function of (seed, step)."""
    groups = [torch.tensor([p for p, b in enumerate(position_buckets) if b == bucket])
              for bucket in sorted(set(position_buckets))]
    per_epoch = sum(-(-len(g) // batch) for g in groups)
    epoch, slot = divmod(step, per_epoch)
    gen = step_generator(seed, epoch, 8)
    batches = []
    for g in groups:
        batches.extend(torch.tensor_split(g[torch.randperm(len(g), generator=gen)], -(-len(g) // batch)))
    return batches[int(torch.randperm(per_epoch, generator=gen)[slot])]
