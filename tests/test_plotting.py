"""esper_fast.plotting: the one plot helper, and that every plotting module uses it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from esper_fast.constants import TRAINER_VALUE_MODES
from esper_fast.plotting import MODE_COLORS, matplotlib_available, new_figure, save_figure

PACKAGE = Path(__file__).resolve().parents[1] / "esper_fast"


def test_nothing_but_the_helper_imports_pyplot_or_calls_subplots():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "plotting.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.startswith("matplotlib.pyplot") for n in names), f"{path}:{node.lineno}"
            if isinstance(node, ast.Attribute) and node.attr in ("subplots", "savefig"):
                raise AssertionError(f"{path}:{node.lineno}: .{node.attr} outside esper_fast/plotting.py")


def test_every_value_mode_has_a_colour():
    assert set(TRAINER_VALUE_MODES) <= set(MODE_COLORS)


@pytest.mark.skipif(not matplotlib_available(), reason="matplotlib not installed")
def test_new_and_save_figure_write_a_png_and_close_it(tmp_path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    fig, axes = new_figure(2, 3, figsize=(3, 2))
    assert axes.shape == (2, 3)
    axes[1][2].plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "x.png")
    assert path == tmp_path / "x.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plt.get_fignums()) == before
    fig, ax = new_figure(figsize=(3, 2), squeeze=True)
    assert hasattr(ax, "plot")
    with pytest.raises(OSError):  # no such folder
        save_figure(fig, tmp_path / "missing_dir" / "y.png")
    assert len(plt.get_fignums()) == before  # closed although saving failed
