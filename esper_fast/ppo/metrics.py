"""Per-update metrics to disk: CSV, JSONL, TensorBoard (when installed) and a PNG learning curve.

Scalars are namespaced like CleanRL's (``charts/...``, ``losses/...``); the CSV and JSONL hold the
same rows, one per update. TensorBoard needs the ``tensorboard`` package; without it the writer
says so once and carries on. The plot uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from esper_fast.plotting import new_figure, save_figure

__all__ = ["MetricsWriter", "read_metrics_csv", "plot_learning_curve"]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends one row per update to ``metrics.csv`` / ``metrics.jsonl`` (and TensorBoard events)."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path, self.jsonl_path = self.run_dir / "metrics.csv", self.run_dir / "metrics.jsonl"
        self._columns: list[str] | None = None
        if self.csv_path.is_file() and self.csv_path.stat().st_size > 0:  # resuming: keep the header
            with open(self.csv_path, newline="") as f:
                self._columns = next(csv.reader(f), None)
        self._tb = None
        self.tensorboard_note = ""
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self.tensorboard_note = "tensorboard not installed: no event files (pip install tensorboard)"
            else:
                self._tb = SummaryWriter(log_dir=str(self.run_dir))

    def write(self, row: dict[str, Any]) -> None:
        """One update's scalars (``global_step`` and ``update`` included)."""
        row = {k: _clean(v) for k, v in row.items()}
        if self._columns is None:
            self._columns = list(row)
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(self._columns)
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else row.get(c) for c in self._columns])
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            step = int(row.get("global_step", 0))
            for key, value in row.items():
                if key not in ("global_step", "update") and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, step)

    def write_evaluation(self, results: dict[str, dict[str, Any]], step: int, text: str = "") -> None:
        """The final evaluation: ``eval/<policy>/<stat>`` scalars at ``step`` and the table as text."""
        if self._tb is None:
            return
        for name, r in results.items():
            tag = name.replace(" (", "_").replace(")", "").replace(" ", "_")  # "ppo (greedy)" -> "ppo_greedy"
            for key in (
                "mean_return",
                "se_return",
                "std_return",
                "vs_heuristic",
                "vs_heuristic_se",
                "mean_length",
                "terminated_frac",
            ):
                if isinstance(r.get(key), (int, float)):
                    self._tb.add_scalar(f"eval/{tag}/{key}", r[key], step)
        if text:
            self._tb.add_text("evaluation", text, step)

    def drop_rows_after(self, update: int) -> int:
        """Keeps only rows with ``update <= update`` (and whole lines) in the CSV and JSONL; returns how
        many rows were dropped. On resume, the rows a killed run wrote after its last checkpoint go,
        so the files stay exactly one row per update."""
        dropped = 0
        if self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = list(csv.reader(f))
            if rows:
                header, body = rows[0], rows[1:]
                col = header.index("update") if "update" in header else None
                keep = [
                    r
                    for r in body
                    if col is not None
                    and len(r) == len(header)
                    and _as_int(r[col]) is not None
                    and _as_int(r[col]) <= update
                ]
                dropped = len(body) - len(keep)
                if dropped:
                    _rewrite(self.csv_path, lambda f: csv.writer(f).writerows([header, *keep]), newline="")
        if self.jsonl_path.is_file():
            lines = self.jsonl_path.read_text().splitlines()
            keep_lines = []
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if (
                    isinstance(row, dict)
                    and _as_int(row.get("update")) is not None
                    and _as_int(row["update"]) <= update
                ):
                    keep_lines.append(line)
            if len(keep_lines) != len(lines):
                _rewrite(self.jsonl_path, lambda f: f.write("".join(ln + "\n" for ln in keep_lines)))
        return dropped

    def add_text(self, tag: str, text: str) -> None:
        if self._tb is not None:
            self._tb.add_text(tag, text)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _as_int(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _rewrite(path: Path, write, newline: str | None = None) -> None:
    """Replace ``path`` atomically with what ``write(file)`` writes."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline=newline) as f:
        write(f)
    os.replace(tmp, path)


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, float | None]]:
    """Rows of a ``metrics.csv`` as floats (None for empty cells)."""
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_learning_curve(
    rows: Sequence[dict[str, Any]],
    png_path: str | os.PathLike,
    baselines: dict[str, float] | None = None,
    title: str = "",
    smooth: int = 10,
    finals: dict[str, float] | None = None,
    eval_note: str = "",
) -> Path:
    """Mean episode return per update against env steps, its moving average, baseline lines.

    ``baselines`` (name -> mean return) are drawn as horizontal lines, ``finals`` (name -> the trained
    policy's evaluation return) as markers at the last step; ``eval_note`` annotates both.
    """
    pts = [
        (r["global_step"], r["charts/episode_return"])
        for r in rows
        if r.get("charts/episode_return") is not None and r.get("global_step") is not None
    ]
    fig, ax = new_figure(figsize=(7.5, 4.5), squeeze=True)
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=1, label="PPO (per update)")
        k = max(1, min(smooth, len(ys)))
        avg = [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]
        ax.plot(xs, avg, color="tab:blue", linewidth=2, label=f"PPO ({k}-update mean)")
    colors = {"heuristic": "tab:green", "random": "tab:red"}
    note = f", {eval_note}" if eval_note else ""
    for name, value in (baselines or {}).items():
        ax.axhline(value, linestyle="--", color=colors.get(name, "gray"), label=f"{name} ({value:.1f}{note})")
    markers, last_x = ("o", "s", "^", "D"), (pts[-1][0] if pts else 0)
    for i, (name, value) in enumerate((finals or {}).items()):  # side by side at the last step
        ax.plot(
            [last_x * (1 + 0.015 * i)],
            [value],
            marker=markers[i % len(markers)],
            linestyle="none",
            color="black",
            label=f"{name} ({value:.1f}{note})",
        )
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(title or "esper-fast PPO on SeedLifecycleEnv")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, png_path)
