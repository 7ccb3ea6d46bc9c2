"""Timing, machine description and result files shared by every benchmark."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "median_us",
    "machine_info",
    "write_results",
    "markdown_table",
    "default_out_dir",
    "committed_results_dir",
    "CaseProgress",
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_us(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int = 5,
    repeats: int = 15,
    min_time_s: float = 0.02,
    max_calls: int = 2000,
) -> float:
    """Median over ``repeats`` of the mean wall time per call (µs) of back-to-back calls.

    Each repeat runs enough calls to last ``min_time_s`` (capped at ``max_calls``) between two
    device synchronisations, so launch overhead is included and kernels are fully counted.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-7)
    calls = int(min(max_calls, max(1, min_time_s / one)))
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(samples)


def _git_sha() -> str:
    if os.environ.get("ESPER_FAST_GIT_SHA"):  # set by device_check.sh callers (no .git there)
        return os.environ["ESPER_FAST_GIT_SHA"]
    try:
        root = Path(__file__).resolve().parents[2]
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info(device: torch.device) -> dict:
    """Device name, versions and git SHA recorded with every result file."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "git_sha": _git_sha(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return info


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def default_out_dir() -> Path:
    """``$OUT`` when set (the device machine), else ``./bench-results`` (never the committed results)."""
    out = os.environ.get("OUT")
    if out:
        return Path(out)
    return Path("bench-results")


def committed_results_dir() -> Path:
    """The checkout's ``benchmarks/results/`` (``esper-fast bench --update-results``).

    Raises ``FileNotFoundError`` when esper_fast does not run from a checkout (a wheel install has none).
    """
    root = Path(__file__).resolve().parents[2]
    results = root / "benchmarks" / "results"
    if not (root / "pyproject.toml").is_file() or not results.is_dir():
        raise FileNotFoundError(
            f"--update-results: {results} is not a checkout's benchmarks/results/ "
            "(esper_fast is not running from a source checkout); use --out DIR"
        )
    return results


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


class CaseProgress:
    """One line per finished benchmark case: ``[done/total] elapsed, ETA | the case's numbers``.

    The ETA assumes the remaining cases cost the mean of those done so far (cases grow with N, so
    early estimates are low); a time budget may stop a benchmark before ``total``.
    """

    def __init__(self, name: str, total: int, stream=None) -> None:
        import sys

        self.name, self.total, self.done = name, max(int(total), 1), 0
        self.stream = stream if stream is not None else sys.stdout
        self.t0 = time.perf_counter()

    def __call__(self, row: dict) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * max(self.total - self.done, 0)
        fields = "  ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if v is not None
        )
        self.stream.write(
            f"{self.name} [{self.done:>3}/{self.total}] {_clock(elapsed)} elapsed, eta {_clock(eta)} | {fields}\n"
        )
        self.stream.flush()


def write_results(name: str, info: dict, rows: list[dict], columns: list[str], out_dir: Path, notes: str = "") -> Path:
    """Writes ``<name>.json``, ``<name>.md`` and (with matplotlib) ``<name>.png``; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": info, "notes": notes, "rows": rows}, indent=1))
    header = (
        f"# {name}\n\nMachine: {info['device_name']} ({info['device']}), torch {info['torch']}, "
        f"triton {info['triton']}, git {info['git_sha']}, {info['date']}\n\n{notes}\n\n"
    )
    (out_dir / f"{name}.md").write_text(header + markdown_table(rows, columns) + "\n")
    try:  # PNG next to the JSON when matplotlib is installed
        from esper_fast.bench.plots import plot_file

        plot_file(path)
    except ImportError:
        pass
    return path
