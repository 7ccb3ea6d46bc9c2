"""Data-parallel PPO: 2 ranks with gloo on CPU keep identical parameters; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

WORKER = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    from esper_fast.ppo import Trainer, make_config
    from esper_fast.ppo.distributed import init_distributed, shutdown_distributed

    out = sys.argv[1]
    cfg = make_config("smoke", num_envs=4, rollout_steps=20, episode_length=12, feature_dim=16, lstm_hidden_dim=16,
                      update_epochs=2, num_minibatches=2, total_timesteps=2 * 4 * 20 * 2, eval_episodes=0)
    ctx = init_distributed("cpu")
    # Both ranks get the same run_dir: the trainer itself must keep rank 1 from writing (or locking) it.
    trainer = Trainer(cfg, os.path.join(out, "run"), dist=ctx, log=lambda m: None, tensorboard=False)
    trainer.train(handle_signals=False)
    torch.save({"params": trainer.policy.state_dict(), "rewards": trainer.buffer.raw_rewards.clone(),
                "obs_mean": trainer.obs_normalizer.mean.clone(), "updates": trainer.train_steps,
                "world_size": ctx.world_size}, os.path.join(out, f"rank{ctx.rank}.pt"))
    shutdown_distributed()
""")


@pytest.mark.slow
def test_two_ranks_keep_identical_parameters(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["updates"] == r1["updates"] == 2  # total_timesteps is shared: 2 ranks x 2 updates
    assert not torch.equal(r0["rewards"], r1["rewards"])  # each rank played its own envs ...
    for name, p0 in r0["params"].items():  # ... yet the all-reduced steps kept the weights identical
        assert torch.equal(p0, r1["params"][name]), name
    assert torch.equal(r0["obs_mean"], r1["obs_mean"])  # normaliser moments are shared too

    run = tmp_path / "run"  # rank 0 wrote the outputs, with both ranks' env states in the checkpoint
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in rows] == [160, 320]
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rank_states"]) == 2
    # rank 1 had the same run_dir: had it written, metrics.jsonl would hold 4 rows (checked above: 2) and
    # its run lock would have refused the directory; nothing but rank 0's outputs is there.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.pt", "rank1.pt", "run", "worker.py"]
