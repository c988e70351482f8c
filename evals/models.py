"""Untrained models for tests and benchmarks."""
import torch


def randomize_zero_layers(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The U-Net zero-initialises its output layers; a benchmark model needs them non-zero, or the outputs
    compared between fast and reference paths would be trivially equal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return module
