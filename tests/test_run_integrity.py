"""Run integrity (issue 15 items 6 and 7): config values, checkpoint digests and finite weights, one
run per directory, exactly one metrics row per update across kill and resume, bounded loss on SIGKILL,
and clean CLI errors for bad values and file-system failures."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from esper_fast.cli import main
from esper_fast.ppo import CheckpointError, PPOConfig, Trainer, load_checkpoint, load_policy, make_config
from esper_fast.ppo.checkpoint import save_checkpoint
from esper_fast.ppo.runlock import RunDirInUseError, RunLock

SMALL = dict(
    num_envs=4,
    rollout_steps=12,
    episode_length=8,
    feature_dim=16,
    lstm_hidden_dim=16,
    eval_episodes=0,
    update_epochs=1,
    num_minibatches=2,
)
REPO = Path(__file__).resolve().parents[1]


def config(**overrides):
    return make_config("smoke", **{**SMALL, **overrides})


def quiet(cfg, run_dir, logs=None, **kw):
    return Trainer(
        cfg, run_dir=run_dir, log=(logs.append if logs is not None else lambda _m: None), tensorboard=False, **kw
    )


def trained(tmp_path, updates=1, **overrides) -> Path:
    tr = quiet(config(total_timesteps=48 * updates, **overrides), tmp_path)
    tr.train(handle_signals=False)
    return tmp_path


# ---- config: finite, in range, of the right type --------------------------------------------------
@pytest.mark.parametrize(
    "field,value,pattern",
    [
        ("learning_rate", float("inf"), "learning_rate: expected a finite number"),
        ("max_grad_norm", float("nan"), "max_grad_norm: expected a finite number"),
        ("target_kl", float("nan"), "target_kl: expected a finite number"),
        ("obs_clip", float("nan"), "obs_clip: expected a finite number"),
        ("gamma", float("nan"), "gamma: expected a finite number"),
        ("entropy_coef_end", float("-inf"), "entropy_coef_end: expected a finite number"),
        ("entropy_coef_per_head", {"op": float("nan")}, r"entropy_coef_per_head\['op'\]: expected a finite"),
        ("seed", 2**70, r"seed: expected an int in \[0, 2\*\*62\)"),
        ("eval_seed", -1, r"eval_seed: expected an int in \[0, 2\*\*62\)"),
        ("device", "tpu", "device: expected 'cpu', 'cuda' or 'cuda:N'"),
        ("checkpoint_interval_s", -1.0, "checkpoint_interval_s: expected >= 0"),
    ],
)
def test_config_values_are_checked(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        PPOConfig(**{field: value})


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_envs", "4"),
        ("learning_rate", "3e-4"),
        ("anneal_lr", 1),
        ("topology", 3),
        ("num_envs", 4.0),
        ("num_envs", True),
    ],
)
def test_config_types_are_checked(field, value):
    with pytest.raises(TypeError, match=f"^{field}: expected"):
        PPOConfig(**{field: value})


def test_default_run_checkpoints_within_minutes():
    cfg = PPOConfig()
    assert 0 < cfg.checkpoint_interval_s <= 300
    assert make_config("default").checkpoint_interval_s == cfg.checkpoint_interval_s


@pytest.mark.parametrize(
    "flags,pattern",
    [
        (["--learning-rate", "inf"], "learning_rate: expected a finite number"),
        (["--max-grad-norm", "nan"], "max_grad_norm: expected a finite number"),
        (["--target-kl", "nan"], "target_kl: expected a finite number"),
        (["--obs-clip", "nan"], "obs_clip: expected a finite number"),
        (["--seed", str(2**70)], "seed: expected an int"),
    ],
)
def test_cli_refuses_bad_values_before_training(tmp_path, capsys, flags, pattern):
    code = main(
        [
            "train",
            "--preset",
            "smoke",
            "--no-progress",
            "--no-tensorboard",
            "--runs-dir",
            str(tmp_path),
            "--name",
            "x",
            *flags,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "error:" in err and pattern.split(":")[0] in err and "Traceback" not in err
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_cli_file_system_and_device_errors_are_clean(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert (
        main(
            ["train", "--preset", "smoke", "--no-progress", "--no-tensorboard", "--runs-dir", str(afile), "--name", "x"]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("esper-fast train: error: ") and "afile" in err and "Traceback" not in err
    assert main(["evaluate", str(tmp_path), "--device", "tpu"]) == 2
    assert "--device: expected 'cpu', 'cuda' or 'cuda:N', got 'tpu'" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only directories")
def test_cli_read_only_runs_dir_is_clean(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert (
        main(["train", "--preset", "smoke", "--no-progress", "--no-tensorboard", "--runs-dir", str(ro), "--name", "x"])
        == 1
    )
    assert "Permission denied" in capsys.readouterr().err


# ---- checkpoints: digest, finite weights, config types, weights_only ------------------------------
def _rewrite(path: Path, edit) -> None:
    """Edits a saved checkpoint in place, keeping its (now stale) digest."""
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


def test_every_checkpoint_carries_a_digest_that_is_verified(tmp_path):
    path = trained(tmp_path) / "checkpoints" / "latest.pt"
    assert len(torch.load(path, weights_only=True)["integrity"]["sha256"]) == 64
    load_checkpoint(path)  # intact: accepted

    def nudge_adam(ckpt):
        state = next(iter(ckpt["optimizer_state_dict"]["state"].values()))
        state["exp_avg"].view(-1)[0] += 1e-3

    _rewrite(path, nudge_adam)
    with pytest.raises(CheckpointError, match=r"latest.pt is corrupt: its content does not match the sha256"):
        load_checkpoint(path)


def test_flipped_bytes_in_the_file_are_refused(tmp_path):
    path = trained(tmp_path) / "checkpoints" / "latest.pt"
    ckpt = torch.load(path, weights_only=True)
    state = next(iter(ckpt["optimizer_state_dict"]["state"].values()))
    raw = path.read_bytes()
    needle = state["exp_avg_sq"].contiguous().view(torch.uint8).numpy().tobytes()[:64]
    at = raw.find(needle)
    assert at > 0
    flipped = raw[:at] + bytes(b ^ 0xFF for b in raw[at : at + 64]) + raw[at + 64 :]
    path.write_bytes(flipped)
    with pytest.raises(CheckpointError, match=r"latest.pt is corrupt"):  # torch.load itself accepts the file
        load_checkpoint(path)


def test_non_finite_weights_are_refused_by_evaluate_and_resume(tmp_path, capsys):
    path = trained(tmp_path) / "checkpoints" / "latest.pt"
    ckpt = load_checkpoint(path)
    ckpt["network_state_dict"]["op_head.2.weight"].fill_(float("nan"))
    del ckpt["path"]
    save_checkpoint(path, ckpt)  # a fresh digest: only the weights are wrong
    pattern = r"network_state_dict\['op_head.2.weight'\] has NaN/inf values"
    with pytest.raises(CheckpointError, match=pattern):
        load_policy(path)
    assert main(["evaluate", str(path), "--episodes", "2"]) == 1
    err = capsys.readouterr().err
    assert "op_head.2.weight" in err and str(path) in err and "Traceback" not in err
    assert main(["train", "--resume", str(tmp_path), "--no-progress", "--no-tensorboard"]) == 1
    assert "has NaN/inf values" in capsys.readouterr().err


def test_config_of_the_wrong_type_in_a_checkpoint_is_named(tmp_path, capsys):
    path = trained(tmp_path) / "checkpoints" / "latest.pt"
    ckpt = load_checkpoint(path)
    ckpt["config"]["num_envs"] = "4"
    del ckpt["path"]
    save_checkpoint(path, ckpt)
    with pytest.raises(CheckpointError, match=r"bad config: num_envs: expected an int, got str '4'"):
        load_checkpoint(path)
    assert main(["train", "--resume", str(path), "--no-progress", "--no-tensorboard"]) == 1
    assert "num_envs: expected an int" in capsys.readouterr().err


class _NotPlain:  # a class torch's weights_only unpickler refuses
    pass


def test_weights_only_refusal_gives_no_unsafe_advice(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"checkpoint_version": 1, "extra": _NotPlain()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "will not unpickle" in msg and "weights_only=False" not in msg and "re-running" not in msg.lower()


# ---- run directories: one run each ------------------------------------------------------------------
def test_second_run_in_a_directory_is_refused_naming_the_first(tmp_path):
    first = quiet(config(total_timesteps=48), tmp_path)
    with pytest.raises(RunDirInUseError, match=rf"in use by process {os.getpid()} "):
        quiet(config(total_timesteps=48), tmp_path)
    first.train(handle_signals=False)  # finish() releases the lock
    quiet(config(total_timesteps=48), tmp_path).release()


def test_lock_held_by_another_process(tmp_path):
    code = (
        "import sys, time; from esper_fast.ppo.runlock import RunLock; "
        f"lock = RunLock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(30)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirInUseError, match=rf"in use by process {proc.pid} "):
            RunLock(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    RunLock(tmp_path).release()  # the OS dropped the dead process's lock


def test_default_names_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    import argparse

    from esper_fast import cli

    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20260101-000000")
    args = argparse.Namespace(name=None, runs_dir=str(tmp_path))
    a, b = cli._resolve_run(args, None, "smoke"), cli._resolve_run(args, None, "smoke")
    assert a != b and a.is_dir() and b.is_dir()


# ---- kill and resume: one metrics row per update; the newest checkpoint ----------------------------
def _updates(run_dir: Path) -> tuple[list[int], list[int]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        csv_updates = [int(float(r["update"])) for r in csv.DictReader(f)]
    jsonl_updates = [json.loads(line)["update"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return csv_updates, jsonl_updates


def test_resume_after_a_kill_keeps_one_row_per_update(tmp_path):
    cfg = config(total_timesteps=48 * 3, checkpoint_every=1)
    straight = tmp_path / "straight"
    rows = []
    quiet(cfg, straight).train(on_update=rows.append, handle_signals=False)
    # the state a SIGKILL after update 3's metrics but before its checkpoint leaves behind
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    ckpts = killed / "checkpoints"
    (ckpts / "update_000003.pt").unlink()
    shutil.copy(ckpts / "update_000002.pt", ckpts / "latest.pt")
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"update": 4, "glob')  # a line cut short
    with open(killed / "metrics.csv", "a") as f:
        f.write("4,")
    logs: list[str] = []
    resumed = quiet(cfg, killed, logs, resume=load_checkpoint(killed))
    assert resumed.train_steps == 2
    assert any("dropped 2 metrics row(s) written after update 2" in m for m in logs)
    new_rows = []
    resumed.train(on_update=new_rows.append, handle_signals=False)
    assert _updates(killed) == ([1, 2, 3], [1, 2, 3])
    drop = lambda r: {k: v for k, v in r.items() if k != "time/sps"}  # noqa: E731
    assert drop(new_rows[0]) == drop(rows[2])  # the repeated update is the same update


def test_run_directory_resumes_from_the_newest_complete_checkpoint(tmp_path):
    run = trained(tmp_path, updates=2, checkpoint_every=1)
    ckpts = run / "checkpoints"
    shutil.copy(ckpts / "update_000001.pt", ckpts / "latest.pt")  # killed between update_2 and latest
    assert load_checkpoint(run)["path"].endswith("update_000002.pt")
    (ckpts / "update_000002.pt").write_bytes(b"cut short")  # a damaged newer file: latest.pt is used
    assert load_checkpoint(run)["path"].endswith("latest.pt")


def test_latest_checkpoint_refreshed_by_time(tmp_path):
    seen = []
    tr = quiet(config(total_timesteps=48 * 3, checkpoint_interval_s=1e-9), tmp_path)
    latest = tmp_path / "checkpoints" / "latest.pt"
    tr.train(
        on_update=lambda r: seen.append((r["update"], latest.is_file() and load_checkpoint(latest)["train_steps"])),
        handle_signals=False,
    )
    assert seen == [(1, False), (2, 1), (3, 2)]


@pytest.mark.slow
def test_sigkill_then_resume_keeps_one_row_per_update(tmp_path):
    """A real SIGKILL of `esper-fast train` mid-run, then --resume: rows 1..N exactly once."""
    flags = [
        "--no-progress",
        "--no-tensorboard",
        "--num-envs",
        "2",
        "--episode-length",
        "6",
        "--feature-dim",
        "8",
        "--lstm-hidden-dim",
        "8",
        "--eval-episodes",
        "0",
        "--checkpoint-interval-s",
        "0.000001",
    ]
    cmd = [
        sys.executable,
        "-m",
        "esper_fast.cli",
        "train",
        "--preset",
        "smoke",
        "--runs-dir",
        str(tmp_path),
        "--name",
        "k",
        "--total-timesteps",
        str(2 * 6 * 12),
        *flags,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "k"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run wrote no metrics")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "latest.pt").is_file()  # the default-style time refresh left one
    code = subprocess.run(
        [sys.executable, "-m", "esper_fast.cli", "train", "--resume", str(run), *flags[:2]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert code.returncode == 0, code.stderr
    csv_updates, jsonl_updates = _updates(run)
    assert csv_updates == list(range(1, 13)) and jsonl_updates == csv_updates


# ---- the trainer never steps on non-finite gradients ------------------------------------------------
def test_non_finite_loss_skips_the_step_and_says_so(tmp_path, monkeypatch):
    import esper_fast.ppo.update as update

    real = update.value_loss
    monkeypatch.setattr(update, "value_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    logs: list[str] = []
    tr = quiet(config(total_timesteps=48), tmp_path, logs)
    before = {k: v.clone() for k, v in tr.policy.state_dict().items()}
    rows = []
    tr.train(on_update=rows.append, handle_signals=False)
    assert rows[0]["losses/nonfinite_steps"] == 2 and rows[0]["losses/optimizer_steps"] == 0
    assert any("skipped 2 optimizer step(s) with non-finite loss or gradients" in m for m in logs)
    for k, v in tr.policy.state_dict().items():
        assert torch.equal(v, before[k]), k
    load_checkpoint(tmp_path)  # the saved network is finite
