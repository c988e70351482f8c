"""The optimizer: Muon for the U-Net's hidden weight matrices, AdamW for the rest, in one torch Optimizer.

Muon (Jordan et al., 2024) takes the momentum of a weight matrix's gradient and steps along the nearest
semi-orthogonal matrix instead, U V^T of its SVD U S V^T, found by five Newton-Schulz iterations:

    B = mu B + G;   M = G + mu B  (Nesterov);   O = NS5(M) ~ U V^T;   W -= lr_muon * sqrt(max(1, rows / cols)) * O

Every direction of the update then moves by the same amount, so the few large directions of a small model's
gradient no longer drown the rest. A convolution's (out, in, kh, kw) kernel is the matrix (out, in * kh * kw).
The first and last layers (conv_in, conv_out), the time embedding's MLP, and every bias and norm weight (vectors)
stay with AdamW, as Muon's authors advise for a network's input and output layers and its vectors. On the demo's
shapes Muon reaches AdamW's adherence in half the steps, at about the same cost per step (docs/QUALITY.md,
"Muon"; docs/PERFORMANCE.md, "The training step before and now").

`optimizer="adamw"` puts every parameter in the AdamW group: torch.optim.AdamW's update, to float rounding
(tests/test_optim.py).
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn

OPTIMIZERS = ("muon", "adamw")
# Muon's learning rate over AdamW's: its steps have unit scale per direction, where AdamW's are scaled by the
# gradient's own moments; 10x is Muon's usual 0.02 against the demo's 2e-3 (docs/QUALITY.md, "Muon").
MUON_LR_RATIO = 10.0
MUON_MOMENTUM = 0.95
# modules whose weights stay with AdamW: the input and output layers, and the timestep's embedding
ADAMW_MODULES = ("conv_in", "conv_out", "time_embed")


def newton_schulz(g: torch.Tensor, iterations: int = 5) -> torch.Tensor:
    """About U V^T for each matrix of g (..., m, n), where g = U S V^T: Muon's quintic iteration, whose coefficients
    bring every singular value of g / ||g|| into roughly [0.7, 1.2] within five steps (exactness is not needed)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(iterations):
        s = x @ x.mT
        x = a * x + (b * s + c * (s @ s)) @ x
    return x.mT if tall else x


def uses_muon(name: str, p: nn.Parameter) -> bool:
    return p.ndim >= 2 and not name.startswith(ADAMW_MODULES)


class MuonAdamW(torch.optim.Optimizer):
    """Param groups with "muon": True step by Muon, the others by AdamW (decoupled weight decay). Each group's
    "initial_lr" is its rate before the schedule (the trainer sets "lr" = initial_lr x lr_factor each step)."""

    def __init__(self, named_parameters, lr: float, optimizer: str = "muon", weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        muon, adamw = [], []
        for name, p in named_parameters:
            (muon if optimizer == "muon" and uses_muon(name, p) else adamw).append(p)
        groups = [dict(params=adamw, muon=False, lr=lr, initial_lr=lr, weight_decay=weight_decay)]
        if muon:  # no weight decay there, as it was measured
            groups.append(dict(params=muon, muon=True, lr=lr * MUON_LR_RATIO, initial_lr=lr * MUON_LR_RATIO))
        super().__init__(groups, dict(betas=betas, eps=eps, momentum=MUON_MOMENTUM, steps=0))

    def load_if_same(self, saved: dict, device) -> bool:
        """Load a saved state_dict() when it is this optimizer's (the same groups of the same sizes), its moments
        moved to `device`: the moments and step counts come back, the rates and other settings stay this run's
        (a resumed run may change them). False, and nothing loaded, when it is another optimizer's."""
        ours = [(g["muon"], len(g["params"])) for g in self.param_groups]
        theirs = [(g.get("muon"), len(g.get("params", ()))) for g in saved["param_groups"]]
        if ours != theirs or not all("steps" in g for g in saved["param_groups"]):
            return False
        settings = [{k: v for k, v in g.items() if k not in ("params", "steps")} for g in self.param_groups]
        self.load_state_dict({"state": {pid: {name: value.to(device) for name, value in entries.items()}
                                        for pid, entries in saved["state"].items()},
                              "param_groups": saved["param_groups"]})
        for group, setting in zip(self.param_groups, settings):
            group.update(setting)
        return True

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                group["steps"] += 1
                (self.muon_step if group["muon"] else self.adamw_step)(group, params)

    def adamw_step(self, group: dict, params: list[torch.Tensor]):
        lr, step, (beta1, beta2) = group["lr"], group["steps"], group["betas"]
        grads = [p.grad for p in params]
        exp_avg = [self.moment(p, "exp_avg") for p in params]
        exp_avg_sq = [self.moment(p, "exp_avg_sq") for p in params]
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
        # p -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, (1 - beta2 ** step) ** 0.5)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, exp_avg, denom, -lr / (1 - beta1 ** step))

    def muon_step(self, group: dict, params: list[torch.Tensor]):
        lr, mu = group["lr"], group["momentum"]
        grads = [p.grad for p in params]
        buffers = [self.moment(p, "momentum_buffer") for p in params]
        torch._foreach_mul_(buffers, mu)
        torch._foreach_add_(buffers, grads)
        updates = torch._foreach_add(grads, buffers, alpha=mu)
        # the matrices of one shape go through Newton-Schulz together: one batched matmul per iteration
        by_shape: dict[torch.Size, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[p.shape].append(i)
        for shape, index in by_shape.items():
            ortho = newton_schulz(torch.stack([updates[i].reshape(shape[0], -1) for i in index]))
            scale = max(1.0, ortho.shape[-2] / ortho.shape[-1]) ** 0.5
            for i, o in zip(index, ortho):
                params[i].add_(o.view(shape), alpha=-lr * scale)

    def moment(self, p: torch.Tensor, name: str) -> torch.Tensor:
        state = self.state[p]
        if name not in state:
            state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state[name]
