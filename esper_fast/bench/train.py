"""bench_train: PPO trainer throughput (env-steps/s) with FactoredPolicy vs ReferencePolicy.

Same config, same seed, same env; the only difference is the network class acting in the rollout
(and being updated). Each variant runs one warm-up update, then ``--updates`` timed updates
(rollout + GAE + PPO update); env-steps/s = steps / wall time of the timed updates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from esper_fast.bench.common import CaseProgress, default_out_dir, machine_info, write_results
from esper_fast.reference import ReferencePolicy


def _trainer(preset: str, device: str, updates: int, num_envs: int | None, policy_impl: str):
    from esper_fast.ppo.config import make_config
    from esper_fast.ppo.trainer import Trainer

    overrides = {"device": device, "eval_episodes": 0}
    if num_envs is not None:
        overrides["num_envs"] = num_envs
    cfg = make_config(preset, **overrides)
    cfg = cfg.replace(total_timesteps=cfg.batch_size * (updates + 1))
    trainer = Trainer(cfg, None, log=lambda _m: None, tensorboard=False)
    if policy_impl == "reference":  # same weights, esper's torch-op selection
        fused = trainer.policy
        ref = ReferencePolicy(fused.state_dim, fused.num_slots, feature_dim=cfg.feature_dim,
                              lstm_hidden_dim=cfg.lstm_hidden_dim, lstm_layers=cfg.lstm_layers).to(device)  # fmt: skip
        ref.load_state_dict(fused.state_dict())
        trainer.policy = ref
        trainer.optimizer = torch.optim.Adam(ref.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    return trainer, cfg


def run(preset: str, device: str, updates: int, num_envs: int | None) -> list[dict]:
    rows = []
    progress = CaseProgress("bench_train", 2)
    for impl in ("reference", "fused"):
        trainer, cfg = _trainer(preset, device, updates, num_envs, impl)
        stamps = []
        trainer.train(on_update=lambda row: stamps.append(time.perf_counter()), handle_signals=False)
        elapsed = stamps[-1] - stamps[0]
        sps = cfg.batch_size * (len(stamps) - 1) / elapsed
        rows.append({"policy": impl, "preset": preset, "num_envs": cfg.num_envs, "hidden": cfg.lstm_hidden_dim,
                     "timed_updates": len(stamps) - 1, "env_steps_per_s": sps,
                     "s_per_update": elapsed / (len(stamps) - 1)})  # fmt: skip
        progress(rows[-1])
    rows[1]["speedup"] = rows[1]["env_steps_per_s"] / rows[0]["env_steps_per_s"]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_train", description=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="default")
    p.add_argument("--updates", type=int, default=3)
    p.add_argument("--num-envs", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="accepted for symmetry; sizes are fixed")
    p.add_argument("--out", default=None, help="output folder (default: $OUT when set, else ./bench-results)")
    args = p.parse_args(argv)
    rows = run(args.preset, args.device, args.updates, args.num_envs)
    out = Path(args.out) if args.out else default_out_dir()
    name = f"bench_train_{'gpu' if args.device.startswith('cuda') else 'cpu'}"
    write_results(name, machine_info(torch.device(args.device)), rows,
                  ["policy", "preset", "num_envs", "hidden", "timed_updates", "env_steps_per_s", "s_per_update", "speedup"],
                  out, notes="rollout + GAE + update per timed update; speedup = fused / reference env-steps/s")  # fmt: skip
    print(f"wrote {out / name}.json / .md / .png")


if __name__ == "__main__":
    main()
