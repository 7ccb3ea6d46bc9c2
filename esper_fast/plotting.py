"""The one plotting helper (floor 1: imports nothing from esper_fast; matplotlib only when called).

Every PNG esper_fast writes (the trainer's learning curve, the benchmarks', the studies') goes through
:func:`new_figure` (matplotlib's Agg backend, no display; ``plt.subplots``) and :func:`save_figure`
(``tight_layout``, ``savefig``, ``plt.close``). matplotlib is optional: a missing one raises
``ImportError`` from :func:`new_figure`, which callers report with :data:`NO_MATPLOTLIB`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["MODE_COLORS", "NO_MATPLOTLIB", "matplotlib_available", "new_figure", "save_figure"]

NO_MATPLOTLIB = "matplotlib not installed: no PNG (pip install matplotlib)"

# One colour per value mode / study mode, the same in every plot.
MODE_COLORS: dict[str, str] = {
    "legacy": "tab:red",
    "q_op": "tab:orange",
    "expected": "tab:green",
    "head_v": "tab:blue",
    "head_q": "tab:purple",
}


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported (without importing pyplot)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    figsize: tuple[float, float],
    dpi: int = 110,
    squeeze: bool = False,
) -> tuple[Any, Any]:
    """``(fig, axes)`` from ``plt.subplots`` on matplotlib's Agg backend; ``axes`` is a ``[nrows][ncols]``
    array unless ``squeeze=True``. Raises ``ImportError`` when matplotlib is missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figsize, dpi=dpi, squeeze=squeeze)


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Lays ``fig`` out (``tight_layout``), writes it to ``path`` at its own dpi and closes it (also when
    saving fails); returns the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
