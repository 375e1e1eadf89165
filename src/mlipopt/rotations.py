"""Uniform random rotations, shared by training-time augmentation and inference-time symmetry checks."""

from __future__ import annotations

import torch


def haar_rotations(
    count: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``count`` rotation matrices (count, 3, 3) uniform on SO(3) (Haar): the QR factor of Gaussian
    matrices with the signs of R's diagonal fixed, and one column flipped where the determinant is −1.
    Torch's global RNG unless a ``generator`` is given (a checkpointed run then redraws the same ones)."""
    gaussian = torch.randn(count, 3, 3, dtype=dtype, device=device, generator=generator)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    flip = torch.det(q) < 0
    q[flip, :, 0] = -q[flip, :, 0]
    return q
