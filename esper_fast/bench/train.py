"""bench_train: where the trainer's time goes, fully fused vs every fused path switched off.

Two trainers per env count, same config and seed, built side by side:

* ``fused``   - FactoredPolicy: fused ``select_actions`` in the rollout, the fused update path
  (stacked-GEMM heads, Q only at the stored op, the fused scoring op; ``esper_fast.fused_evaluate``);
* ``unfused`` - ReferencePolicy (esper's torch-op action selection) with ``fused_evaluate = False``
  (esper's per-head ``evaluate_actions``). Same parameters (the fused trainer's initial weights).

Each runs one warm-up update, then ``--repeats`` timed updates, alternating fused / unfused so that
machine load hits both alike. Every update is rollout + GAE + PPO update; ``target_kl`` is off so both
take the same number of optimiser steps. Reported per variant (medians over the repeats):
env-steps/s, seconds per update, and the split: ``env`` (SeedLifecycleEnv.step), ``act``
(get_action, rollout and bootstrap), ``rollout_other`` (normalisation, buffer writes, episode
bookkeeping), ``update`` (ppo_update), ``other`` (GAE, normaliser update, metrics).

On CPU every figure is also taken in process CPU time (``time.process_time``): on a shared machine
other processes stretch the wall clock but not the CPU time a one-thread run consumes, so the CPU-time
ratios (``speedup``, ``update_speedup``) are the ones to read there; wall-clock env-steps/s are kept
beside them. On CUDA the split timers synchronise the device and the totals come from separate
untimed updates (wall clock).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from esper_fast.bench.common import CaseProgress, default_out_dir, machine_info, write_results

VARIANTS = ("unfused", "fused")
SPLIT = ("env", "act", "rollout_other", "update", "other")


def _trainer(preset: str, device: str, num_envs: int, variant: str, threads: int, **overrides):
    """A trainer of ``variant`` (:data:`VARIANTS`) and its config (``overrides``: more config fields)."""
    from esper_fast.ppo.agent import build_policy
    from esper_fast.ppo.config import make_config
    from esper_fast.ppo.trainer import Trainer
    from esper_fast.reference_policy import ReferencePolicy

    cfg = make_config(
        preset,
        **{
            "device": device,
            "eval_episodes": 0,
            "num_envs": num_envs,
            "target_kl": None,
            "torch_threads": threads,
            **overrides,
        },
    )
    cfg = cfg.replace(total_timesteps=cfg.batch_size * 10_000)  # never the end of the schedule
    policy = None
    if variant == "unfused":  # same weights, esper's torch-op selection and per-head evaluate_actions
        torch.manual_seed(cfg.seed)  # the fused trainer's initial weights (Trainer seeds the same way)
        fused = build_policy(cfg)
        legacy = cfg.value_mode == "legacy"
        policy = ReferencePolicy(
            fused.state_dim,
            fused.num_slots,
            feature_dim=cfg.feature_dim,
            lstm_hidden_dim=cfg.lstm_hidden_dim,
            lstm_layers=cfg.lstm_layers,
            value_mode="q_op" if legacy else cfg.value_mode,
            legacy=legacy,
        ).to(device)
        policy.load_state_dict(fused.state_dict())
        policy.fused_evaluate = False
    trainer = Trainer(cfg, None, policy=policy, log=lambda _m: None, tensorboard=False)
    return trainer, cfg


class SplitTimer:
    """Accumulates the time of the wrapped calls (env.step, act, ppo_update, rollout) on ``clock``."""

    def __init__(self, device: torch.device, sync: bool, clock=time.perf_counter) -> None:
        self.device, self.sync, self.clock = device, sync, clock
        self.t = dict.fromkeys(("env", "act", "update", "rollout"), 0.0)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            if self.sync:
                torch.cuda.synchronize(self.device)
            t0 = self.clock()
            out = fn(*args, **kwargs)
            if self.sync:
                torch.cuda.synchronize(self.device)
            self.t[name] += self.clock() - t0
            return out

        return timed


@contextmanager
def _instrumented(trainer, timer: SplitTimer | None) -> Iterator[None]:
    import esper_fast.ppo.trainer as trainer_module

    if timer is None:
        yield
        return
    saved = (trainer_module.act, trainer_module.ppo_update, trainer.env.step, trainer.rollout)
    trainer_module.act = timer.wrap("act", saved[0])
    trainer_module.ppo_update = timer.wrap("update", saved[1])
    trainer.env.step = timer.wrap("env", saved[2])
    trainer.rollout = timer.wrap("rollout", saved[3])
    try:
        yield
    finally:
        trainer_module.act, trainer_module.ppo_update = saved[0], saved[1]
        del trainer.env.step, trainer.rollout  # back to the class methods


def one_update(trainer, timer: SplitTimer | None) -> tuple[float, float]:
    """Runs exactly one update of ``trainer.train()``; returns its (wall, process CPU) time in s."""
    trainer._stop_requested = False
    stamps: list[tuple[float, float]] = []
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with _instrumented(trainer, timer):
        trainer.train(
            on_update=lambda _row: (stamps.append((time.perf_counter(), time.process_time())), trainer.request_stop()),
            handle_signals=False,
        )
    return stamps[0][0] - t0, stamps[0][1] - c0


def measure(preset: str, device: str, num_envs: int, repeats: int, threads: int) -> list[dict]:
    dev = torch.device(device)
    trainers = {v: _trainer(preset, device, num_envs, v, threads) for v in VARIANTS}
    for trainer, _ in trainers.values():  # warm-up (allocations, caches, Triton compiles)
        one_update(trainer, None)
    samples: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v in VARIANTS:
            trainer, cfg = trainers[v]
            cpu = dev.type == "cpu"
            timer = SplitTimer(dev, sync=not cpu, clock=time.process_time if cpu else time.perf_counter)
            wall, cpu_s = one_update(trainer, timer)
            split_total = cpu_s if cpu else wall
            if not cpu:
                wall, _ = one_update(trainer, None)
            t = timer.t
            samples[v].append(
                {
                    "total": split_total if cpu else wall,
                    "wall": wall,
                    "env": t["env"],
                    "act": t["act"],
                    "update": t["update"],
                    "rollout_other": t["rollout"] - t["env"] - t["act"],
                    "other": split_total - t["rollout"] - t["update"],
                    "steps": cfg.batch_size,
                }
            )
    rows = []
    for v in VARIANTS:
        s = samples[v]
        med = {k: statistics.median(x[k] for x in s) for k in ("total", "wall", *SPLIT)}
        row = {
            "variant": v,
            "preset": preset,
            "num_envs": num_envs,
            "hidden": trainers[v][1].lstm_hidden_dim,
            "threads": threads,
            "repeats": repeats,
            "clock": "cpu" if dev.type == "cpu" else "wall",
            "env_steps_per_s": s[0]["steps"] / med["total"],
            "s_per_update": med["total"],
            "wall_env_steps_per_s": s[0]["steps"] / med["wall"],
            **{f"{k}_s": med[k] for k in SPLIT},
        }
        rows.append(row)
    fused, unfused = rows[1], rows[0]
    ratios = [u["total"] / f["total"] for u, f in zip(samples["unfused"], samples["fused"])]
    upd = [u["update"] / f["update"] for u, f in zip(samples["unfused"], samples["fused"])]
    fused["speedup"] = statistics.median(ratios)
    fused["update_speedup"] = statistics.median(upd)
    fused["wall_speedup"] = statistics.median(
        u["wall"] / f["wall"] for u, f in zip(samples["unfused"], samples["fused"])
    )
    fused["rollout_speedup"] = (unfused["env_s"] + unfused["act_s"] + unfused["rollout_other_s"]) / max(
        fused["env_s"] + fused["act_s"] + fused["rollout_other_s"], 1e-12
    )
    return rows


_GROUPS = (
    ("LSTM (oneDNN/cuDNN kernel)", ("rnn", "lstm")),
    ("GEMM (mm / addmm)", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("fused scoring op", ("esper_fast::score", "esper_fast_score")),
)


def profile_update(preset: str, device: str, num_envs: int, threads: int) -> str:
    """Markdown: torch.profiler of one trainer update (``Trainer.update``: GAE, obs statistics and one
    PPO epoch) per variant after one rollout (same buffer), self time grouped into LSTM / GEMM / scoring
    op / everything else, plus the top ops."""
    from esper_fast.ppo.agent import cpu_threads, validation_off

    title = f"# bench_train profile: one update of one PPO epoch, {preset} preset, {num_envs} envs, {threads} thread(s)"
    lines = [title, ""]
    for v in VARIANTS:
        trainer, _ = _trainer(preset, device, num_envs, v, threads, update_epochs=1)
        with cpu_threads(threads, device), validation_off(trainer.policy):
            trainer.rollout()
            trainer.update()  # warm-up
            with torch.profiler.profile() as prof:
                trainer.update()
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        groups = dict.fromkeys([g for g, _ in _GROUPS] + ["everything else"], 0.0)
        for e in events:
            name = next((g for g, keys in _GROUPS if any(k in e.key for k in keys)), "everything else")
            groups[name] += e.self_cpu_time_total
        calls = sum(e.count for e in events)
        lines += [
            f"## {v}: {total / 1e6:.2f} s self CPU, {calls} op calls",
            "",
            "| group | s | share |",
            "|---|---|---|",
        ]
        lines += [f"| {g} | {t / 1e6:.3f} | {t / total:.0%} |" for g, t in groups.items()]
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]
        lines += ["", "| op | calls | self s |", "|---|---|---|"]
        lines += [f"| `{e.key[:60]}` | {e.count} | {e.self_cpu_time_total / 1e6:.3f} |" for e in top]
        lines.append("")
    return "\n".join(lines)


def threads_compare(preset: str, device: str, num_envs: int, counts: list[int], repeats: int) -> list[dict]:
    """Wall clock of the fused trainer with each torch thread count, one trainer, counts alternating."""
    from esper_fast.ppo.agent import cpu_threads

    # torch_threads=0: the trainer leaves the thread count alone, so each update runs with the count set here
    trainer, cfg = _trainer(preset, device, num_envs, "fused", 0)
    with cpu_threads(counts[0], device):
        one_update(trainer, None)
    walls: dict[int, list[float]] = {k: [] for k in counts}
    for _ in range(repeats):
        for k in counts:
            with cpu_threads(k, device):
                walls[k].append(one_update(trainer, None)[0])
    base = statistics.median(walls[counts[0]])
    return [
        {
            "variant": "fused",
            "num_envs": num_envs,
            "threads": k,
            "repeats": repeats,
            "clock": "wall",
            "wall_env_steps_per_s": cfg.batch_size / statistics.median(w),
            "s_per_update": statistics.median(w),
            "speedup_vs_first": base / statistics.median(w),
        }
        for k, w in walls.items()
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="bench_train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="default")
    p.add_argument(
        "--num-envs", default=None, help="comma-separated env counts (default: CPU 16,256; GPU 16,1024,4096)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed updates per variant (medians reported)")
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts (CPU)")
    p.add_argument(
        "--budget-s", type=float, default=None, help="skip the remaining sizes once this many seconds have passed"
    )
    p.add_argument("--out", default=None, help="output folder (default: $OUT when set, else ./bench-results)")
    p.add_argument("--name", default=None, help="result file name (default bench_train_<cpu|gpu>)")
    p.add_argument(
        "--threads-compare",
        action="store_true",
        help="only the fused trainer at the largest size with each "
        "--threads count, alternating (wall clock): <name>_threads.*",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="only write <name>_profile.md: the update's op profile "
        "at the largest size (torch.profiler, one epoch per variant)",
    )
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    sizes = [int(x) for x in (args.num_envs or ("16,1024,4096" if gpu else "16,256")).split(",")]
    repeats = args.repeats
    out = Path(args.out) if args.out else default_out_dir()
    name = args.name or f"bench_train_{'gpu' if gpu else 'cpu'}"
    if args.threads_compare:
        counts = [int(x) for x in args.threads.split(",")]
        rows = threads_compare(args.preset, args.device, max(sizes), counts, repeats)
        for row in rows:
            print(row, flush=True)
        write_results(
            f"{name}_threads",
            machine_info(torch.device(args.device)),
            rows,
            [
                "variant",
                "num_envs",
                "threads",
                "repeats",
                "clock",
                "wall_env_steps_per_s",
                "s_per_update",
                "speedup_vs_first",
            ],
            out,
            notes="Fused trainer, one trainer, thread counts alternating update by update; wall clock "
            "(more threads only pay in wall time).",
        )
        return
    if args.profile:
        text = profile_update(args.preset, args.device, max(sizes), int(args.threads.split(",")[0]))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}_profile.md").write_text(text + "\n")
        print(text)
        return
    start, rows, skipped = time.perf_counter(), [], []
    thread_counts = [int(x) for x in args.threads.split(",")]
    progress = CaseProgress("bench_train", len(thread_counts) * len(sizes))
    for threads in thread_counts:
        for n in sizes:
            if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
                skipped.append(f"{n} envs x {threads} threads")
                continue
            case = measure(args.preset, args.device, n, repeats, threads)
            rows.extend(case)
            progress(
                {
                    "num_envs": n,
                    "threads": threads,
                    **{f"{r['variant']}_env_steps_per_s": r["env_steps_per_s"] for r in case},
                }
            )
    notes = (
        "One update = rollout + GAE + PPO update (default preset: 150 steps per env, 4 epochs x 4 minibatches, "
        "target_kl off). Medians over the repeats, fused/unfused alternating. `clock`: cpu = process CPU time "
        "(robust to other processes on a shared machine), wall = wall clock. env_steps_per_s, s_per_update, "
        "the split columns (seconds per update) and speedup / update_speedup (median over repeats of "
        "unfused/fused, whole update and ppo_update alone) use that clock; wall_* are wall clock."
    ) + (f" Skipped (budget): {', '.join(skipped)}." if skipped else "")
    columns = [
        "variant",
        "num_envs",
        "hidden",
        "threads",
        "clock",
        "env_steps_per_s",
        "wall_env_steps_per_s",
        "s_per_update",
        *[f"{k}_s" for k in SPLIT],
        "speedup",
        "update_speedup",
        "rollout_speedup",
        "wall_speedup",
    ]
    write_results(name, machine_info(torch.device(args.device)), rows, columns, out, notes=notes)
    print(f"wrote {out / name}.json / .md / .png")


if __name__ == "__main__":
    main()
