"""Small objectives shared by the optimizer tests."""

from __future__ import annotations

import torch


def make_params(shapes, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, dtype=torch.float64, generator=gen).to(dtype)) for s in shapes]


def stochastic_loss(params, step, dtype=None):
    """A non-quadratic loss whose data change every step, so Gram matrices are full rank."""
    gen = torch.Generator().manual_seed(1000 + step)
    loss = 0.0
    for p in params:
        x = torch.randn(*p.shape, dtype=torch.float64, generator=gen).to(p.dtype)
        loss = loss + ((p - x) ** 2).sum() + (p * x).sum() ** 2 / p.numel()
    return loss


def run(optimizer, params, steps, start=0):
    for t in range(start, start + steps):
        optimizer.zero_grad()
        stochastic_loss(params, t).backward()
        optimizer.step()


def max_rel(a_list, b_list):
    return max(float((a.detach() - b.detach()).norm() / b.detach().norm()) for a, b in zip(a_list, b_list))
