"""Binary primitives shared by optimizers and architectures."""

from __future__ import annotations

import torch


def sgn0(x: torch.Tensor) -> torch.Tensor:
    """Sign with 0 mapped to +1, so that every weight is exactly -1 or +1."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
