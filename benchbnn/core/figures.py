"""The one plot setup: matplotlib figures without pyplot, saved as reproducible PNGs.

Figures are made on the Agg canvas directly (no global pyplot state, no display, safe in worker
processes) and saved without the software and creation-time metadata that would make equal data
give different bytes. Every plot benchbnn writes (run curves, leaderboards, ablations) goes
through :func:`new_figure` and :func:`save_png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Resolution of every PNG benchbnn writes.
DPI = 110


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def colors(n: int) -> list[Any]:
    """``n`` distinct colours (matplotlib's tab10, cycled)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def save_png(fig: Figure, path: str | Path) -> Path:
    """Lay ``fig`` out and write it to ``path`` as a PNG with no varying metadata."""
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path
