"""Helpers for tests of float32 arithmetic against float64 references."""

from __future__ import annotations

import numpy as np
import torch


def ulps(got: torch.Tensor, exact: np.ndarray) -> np.ndarray:
    """|got - exact| in float32 ulps of the exact value (float64 array of ``got``'s shape)."""
    spacing = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    return np.abs(got.double().numpy() - exact) / spacing
