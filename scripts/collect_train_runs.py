"""Collect finished ``esper-fast train`` runs (run dir + the /usr/bin/time -v log of the command) into JSON + markdown.

    python scripts/collect_train_runs.py OUT_STEM NAME[=LABEL] ...   # runs/<NAME>/, runs/<NAME>.err, runs/queue.log
    python scripts/collect_train_runs.py --append OUT_STEM NAME ...   # keep OUT_STEM.json's runs, add / replace these

For each run: preset-relevant config, seed, eval episodes, every policy's mean return +- se, PPO's paired
difference to the heuristic +- se, the margin in se, the gap share +- se, wall / CPU time of the whole command
and the load average at its start and end (from runs/queue.log). Means and 95% intervals over the runs' seeds.
"""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
import sys
from pathlib import Path


def _time_log(path: Path) -> dict[str, float]:
    text = path.read_text()
    out = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        out["wall_s"] = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    for key, name in (("User time (seconds)", "user_s"), ("System time (seconds)", "sys_s")):
        m = re.search(re.escape(key) + r": (\S+)", text)
        if m:
            out[name] = float(m.group(1))
    return out


def _loads(name: str) -> dict[str, str]:
    out = {}
    for line in Path("runs/queue.log").read_text().splitlines():
        m = re.match(r"\[(\S+)\] (start|end) (\S+) .*load=(\S+ \S+ \S+)", line)
        if m and m.group(3) == name:
            out[f"{m.group(2)}_utc"], out[f"load_at_{m.group(2)}"] = m.group(1), m.group(4)
    return out


def collect(name: str, label: str) -> dict:
    run = Path("runs") / name
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    ev = summary["evaluation"]
    reeval = Path("runs") / f"{name}_reeval.json"  # `esper-fast evaluate RUN --json` of the same checkpoint
    if reeval.is_file():  # fills gap_share_se for runs evaluated before it existed, if it reproduced the run
        again = json.loads(reeval.read_text())["results"]
        for k, r in ev.items():
            if k in again and abs(again[k]["mean_return"] - r["mean_return"]) < 1e-6 and "gap_share_se" in again[k]:
                r["gap_share"], r["gap_share_se"] = again[k]["gap_share"], again[k]["gap_share_se"]
    row = {
        "name": name,
        "label": label,
        "seed": config["config"]["seed"],
        "fused": config["config"].get("fused", True),
        "num_envs": config["config"]["num_envs"],
        "total_timesteps": config["config"]["total_timesteps"],
        "updates": summary["updates"],
        "eval_episodes": ev["heuristic"]["num_episodes"],
        "eval_seed": config["config"]["eval_seed"],
        "last_sps": summary["last_metrics"].get("time/sps"),
        **_time_log(Path("runs") / f"{name}.err"),
        **_loads(name),
    }
    for k, r in ev.items():
        row[k] = {
            key: r[key]
            for key in ("mean_return", "se_return", "vs_heuristic", "vs_heuristic_se", "gap_share", "gap_share_se")
            if key in r
        }
        if k.startswith("ppo") and "gap_share" not in r:  # runs evaluated before gap_share_se existed
            h, o = ev["heuristic"]["mean_return"], ev["oracle"]["mean_return"]
            row[k]["gap_share"] = (r["mean_return"] - h) / (o - h)
        if "vs_heuristic_se" in r and r["vs_heuristic_se"]:
            row[k]["margin_se"] = r["vs_heuristic"] / r["vs_heuristic_se"]
    return row


def _ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t interval over seeds."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def main(argv: list[str]) -> None:
    append = bool(argv) and argv[0] == "--append"
    stem, specs = Path(argv[int(append)]), argv[int(append) + 1 :]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    rows = [collect(*(s.split("=", 1) if "=" in s else (s, s.rsplit("_s", 1)[0]))) for s in specs]
    for r in rows:
        r["commit"] = commit
    if append and stem.with_suffix(".json").is_file():  # earlier runs (their run dirs may be gone): kept as they were
        old = json.loads(stem.with_suffix(".json").read_text())
        new_names = {r["name"] for r in rows}
        rows = [{"commit": old["commit"], **r} for r in old["runs"] if r["name"] not in new_names] + rows
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    agg = {}
    for label, rs in groups.items():
        agg[label] = {"seeds": [r["seed"] for r in rs]}
        for pol in ("ppo (sampled)", "ppo (greedy)", "oracle", "heuristic", "random"):
            for key in ("mean_return", "vs_heuristic", "gap_share"):
                vals = [r[pol][key] for r in rs if pol in r and key in r[pol]]
                if vals:
                    agg[label][f"{pol} {key}"] = dict(zip(("mean", "ci95"), _ci(vals)))
    payload = {
        "machine": (
            f"{platform.machine()} {platform.node()}, 2-core VM shared with other jobs, no GPU, one torch thread"
        ),
        "commit": commit,
        "runs": rows,
        "over_seeds": agg,
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    lines = [
        f"# {stem.name}",
        "",
        f"Machine: {payload['machine']}; commit {', '.join(dict.fromkeys(r.get('commit', commit) for r in rows))} "
        "(per run in the JSON). Evaluation: the same episodes "
        "(env seed 12345) for every policy; +- is a standard error; `margin` = paired difference / its se; "
        "wall / CPU: the whole command (start-up, training, evaluation), /usr/bin/time.",
        "",
        "| run | seed | episodes | PPO sampled | PPO greedy | oracle | heuristic | random | sampled - heuristic "
        "(paired) | margin | gap share | wall s | CPU s | load start / end |",
        "|---" * 14 + "|",
    ]
    f = lambda r, k: f"{r[k]['mean_return']:.2f} +- {r[k]['se_return']:.2f}" if k in r else "-"  # noqa: E731
    for r in rows:
        s = r["ppo (sampled)"]
        gap = f"{s['gap_share']:+.1%}" + (f" +- {s['gap_share_se']:.1%}" if "gap_share_se" in s else "")
        cpu = r.get("user_s", 0) + r.get("sys_s", 0)
        lines.append(
            f"| {r['label']} | {r['seed']} | {r['eval_episodes']} | {f(r, 'ppo (sampled)')} | {f(r, 'ppo (greedy)')} | "
            f"{f(r, 'oracle')} | {f(r, 'heuristic')} | {f(r, 'random')} | {s['vs_heuristic']:+.2f} +- "
            f"{s['vs_heuristic_se']:.2f} | {s['margin_se']:.1f} | {gap} | {r.get('wall_s', float('nan')):.0f} | "
            f"{cpu:.0f} | {r.get('load_at_start', '?')} / {r.get('load_at_end', '?')} |"
        )
    lines += ["", "Over seeds (mean +- 95% t-interval half-width):", ""]
    for label, a in agg.items():
        parts = [f"{k} {v['mean']:.3f} +- {v['ci95']:.3f}" for k, v in a.items() if k != "seeds"]
        lines.append(f"* {label} (seeds {a['seeds']}): " + "; ".join(parts))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
