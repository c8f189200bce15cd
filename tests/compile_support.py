"""The skip marker of tests that need ``torch.compile`` on the CPU."""

from __future__ import annotations

import pytest

from benchbnn.optim.base import compile_unavailable_reason

#: Skips a test where torch.compile cannot run here, saying why.
needs_compile = pytest.mark.skipif(
    compile_unavailable_reason("cpu") is not None,
    reason=f"torch.compile unavailable: {compile_unavailable_reason('cpu')}",
)
