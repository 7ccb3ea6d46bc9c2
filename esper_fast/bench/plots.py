"""PNG plots of benchmark JSON files (matplotlib, Agg). ``python -m esper_fast.bench.plots FILE.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from esper_fast.plotting import new_figure, save_figure

__all__ = ["plot_file"]


def _plot_select(data: dict, ax_speed, ax_bw) -> None:
    rows = data["rows"]
    backends = data.get("backends") or sorted(
        {k[: -len("_speedup")] for r in rows for k in r if k.endswith("_speedup")}
    )
    metric = "vs_eager" if any("cpu_vs_eager" in r or "cuda_vs_eager" in r for r in rows) else "speedup"
    for a in sorted({r["A"] for r in rows}):
        sel = [r for r in rows if r["A"] == a and r["mode"] == "argmax" and r["dtype"] == rows[0]["dtype"]]
        ns = [r["N"] for r in sel]
        for b in backends:
            ax_speed.plot(ns, [r.get(f"{b}_{metric}", float("nan")) for r in sel], marker="o", label=f"{b} A={a}")
            if ax_bw is not None and sel and sel[0].get(f"{b}_GBps") is not None:
                ax_bw.plot(ns, [r[f"{b}_GBps"] for r in sel], marker="o", label=f"{b} A={a}")
        if ax_bw is not None and sel and sel[0].get("copy_GBps"):
            ax_bw.plot(ns, [r["copy_GBps"] for r in sel], "k--", alpha=0.3)
    base = "eager torch" if metric == "vs_eager" else "eager reference"
    ax_speed.set(
        xscale="log",
        yscale="log",
        xlabel="rows N",
        ylabel=f"speed-up over {base}",
        title=f"select_op argmax, {rows[0]['dtype']}",
    )
    ax_speed.legend(fontsize=6)
    if ax_bw is not None:
        ax_bw.set(xscale="log", xlabel="rows N", ylabel="GB/s (dashed: copy)", title="achieved bandwidth")
        ax_bw.legend(fontsize=6)


def _plot_get_action(data: dict, ax) -> None:
    rows = data["rows"]
    for key in (
        "reference",
        "legacy",
        "fused",
        "fused_graph",
        "fused_compiled",
        "head_reference",
        "head_fused",
        "head_fused_graph",
    ):
        pts = [(r["batch"], r[f"{key}_us"]) for r in rows if r.get(f"{key}_us") is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key)
    ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="µs per get_action", title="get_action latency")
    ax.legend(fontsize=7)


def _plot_train(data: dict, ax) -> None:
    """Stacked seconds per update (env / act / rollout_other / update / other) per variant and size."""
    rows = data["rows"]
    if "speedup_vs_first" in rows[0]:  # thread comparison
        ax.bar([f"{r['threads']} thread(s)" for r in rows], [r["wall_env_steps_per_s"] for r in rows])
        ax.set(ylabel="env-steps/s (wall)", title=f"fused trainer, {rows[0]['num_envs']} envs")
        return
    if "variant" not in rows[0]:  # older files: one bar per policy
        ax.bar([r["policy"] for r in rows], [r["env_steps_per_s"] for r in rows], color=["tab:gray", "tab:blue"])
        ax.set(
            ylabel="env-steps/s", title=f"trainer throughput ({rows[0]['preset']} preset, {rows[0]['num_envs']} envs)"
        )
        return
    parts = ("env_s", "act_s", "rollout_other_s", "update_s", "other_s")
    labels = [
        f"{r['variant']}\n{r['num_envs']} envs" + (f" {r['threads']}t" if r.get("threads", 1) != 1 else "")
        for r in rows
    ]
    bottom = [0.0] * len(rows)
    for part in parts:
        vals = [r[part] for r in rows]
        ax.bar(labels, vals, bottom=bottom, label=part[:-2])
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(rows):
        ax.text(
            i,
            bottom[i],
            f"{r['env_steps_per_s']:.0f}/s" + (f"\n{r['speedup']:.2f}x" if r.get("speedup") else ""),
            ha="center",
            va="bottom",
            fontsize=6,
        )
    ax.set(ylabel="seconds per update", title=f"trainer time split ({rows[0]['preset']} preset)")
    ax.tick_params(axis="x", labelsize=6)
    ax.legend(fontsize=6)


def plot_file(path: str | Path) -> Path:
    """Writes ``<path>.png`` next to a bench_select / bench_get_action / bench_train JSON file."""
    path = Path(path)
    data = json.loads(path.read_text())
    if "select" in path.name:
        fig, axes = new_figure(1, 2, figsize=(11, 4), squeeze=True)
        _plot_select(data, axes[0], axes[1])
    else:
        fig, ax = new_figure(figsize=(6, 4), squeeze=True)
        (_plot_train if "train" in path.name else _plot_get_action)(data, ax)
    fig.suptitle(f"{data['machine']['device_name']} - git {data['machine']['git_sha']}", fontsize=8)
    return save_figure(fig, path.with_suffix(".png"))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(plot_file(arg))
