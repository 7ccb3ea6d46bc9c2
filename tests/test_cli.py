"""The ``esper-fast`` command: train outputs, evaluate table, resume, Ctrl-C, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from esper_fast.cli import build_parser, main

SMOKE = ["train", "--preset", "smoke", "--no-progress", "--no-tensorboard"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke training run shared by the tests that only read its outputs."""
    runs = tmp_path_factory.mktemp("runs")
    assert main([*SMOKE, "--runs-dir", str(runs), "--name", "s"]) == 0
    return runs / "s"


def test_train_smoke_writes_every_output(smoke_run):
    cfg = json.loads((smoke_run / "config.json").read_text())
    assert cfg["config"]["lstm_hidden_dim"] == 32 and cfg["num_updates"] == 2
    lines = (smoke_run / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    for column in (
        "global_step",
        "charts/episode_return",
        "charts/episode_length",
        "losses/policy_loss",
        "losses/value_loss",
        "losses/entropy_loss",
        "losses/approx_kl",
        "losses/clip_fraction",
        "losses/explained_variance",
        "entropy/op",
        "charts/op_frac/wait",
        "charts/op_agreement",
        "time/sps",
    ):
        assert column in header, column
    assert len(lines) == 1 + 2
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2]
    # sampled_op is the op the kernel read q_op at (policy.value_read_op): a value read at another op lowers this
    assert all(r["charts/op_agreement"] == 1.0 for r in rows)
    assert rows[-1]["charts/episode_return"] is not None  # rollout = one 150-step episode per env
    assert (smoke_run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(smoke_run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["train_steps"] == 2
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert set(summary["evaluation"]) == {"ppo (sampled)", "ppo (greedy)", "oracle", "heuristic", "random"}


def test_evaluate_prints_a_table(smoke_run, capsys):
    assert main(["evaluate", str(smoke_run), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    for name in ("ppo (sampled)", "ppo (greedy)", "oracle", "heuristic", "random", "return", "terminated"):
        assert name in out
    assert (
        main(
            ["evaluate", str(smoke_run / "checkpoints" / "latest.pt"), "--episodes", "2", "--json", "--mode", "greedy"]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert set(data["results"]) == {"ppo (greedy)", "oracle", "heuristic", "random"}


def test_resume_continues_the_run(smoke_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(smoke_run, run)
    assert main([*SMOKE, "--resume", str(run), "--total-timesteps", str(4 * 150 * 3), "--eval-episodes", "0"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [1, 2, 3]
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["train_steps"] == 3


@pytest.mark.parametrize(
    "argv,code,message",
    [
        (["train", "--bogus-flag"], 2, "unrecognized arguments: --bogus-flag"),
        (["train", "--preset", "huge"], 2, "invalid choice: 'huge'"),
        (["train", "--num-envs", "many"], 2, "invalid int value: 'many'"),
        (["train", "--num-envs", "0"], 2, "num_envs: expected >= 1, got 0"),
        (["train", "--num-envs", "4", "--num-minibatches", "3"], 2, "expected a divisor of num_envs (4), got 3"),
        (["train", "--value-mode", "wrong"], 2, "invalid choice: 'wrong'"),
        (["train", "--target-kl", "-1"], 2, "target_kl: expected > 0 or None, got -1.0"),
        (["train", "--resume", "/nonexistent/ckpt.pt"], 1, "checkpoint not found: /nonexistent/ckpt.pt"),
        (["evaluate", "/nonexistent/ckpt.pt"], 1, "checkpoint not found"),
        (["evaluate"], 2, "the following arguments are required: checkpoint"),
    ],
)
def test_bad_input_gives_clear_errors(argv, code, message, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    assert rc == code
    assert message in capsys.readouterr().err


def test_mismatched_shapes_are_reported(smoke_run, capsys):
    assert (
        main(
            [
                *SMOKE,
                "--resume",
                str(smoke_run),
                "--lstm-hidden-dim",
                "64",
                "--name",
                "x",
                "--runs-dir",
                str(smoke_run.parent),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "does not match the configuration" in err and "lstm_hidden_dim: checkpoint 32, config 64" in err


def test_existing_run_directory_is_not_overwritten(smoke_run, capsys):
    assert main([*SMOKE, "--runs-dir", str(smoke_run.parent), "--name", smoke_run.name]) == 2
    assert "already has checkpoints" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert main([*SMOKE, "--device", "cuda", "--runs-dir", str(tmp_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_help_lists_config_fields_with_their_docs(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "--lstm-hidden-dim" in out and "--target-kl" in out and "--anneal-lr, --no-anneal-lr" in out
    assert "Adam learning rate" in out


def test_no_arguments_prints_help(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_bench_delegates_to_esper_fast_bench(monkeypatch):
    seen = []
    fake = types.ModuleType("esper_fast.bench")
    fake.main = lambda argv: seen.append(argv)
    monkeypatch.setitem(sys.modules, "esper_fast.bench", fake)
    import esper_fast

    monkeypatch.setattr(esper_fast, "bench", fake, raising=False)
    assert main(["bench", "select", "--quick"]) == 0
    assert seen == [["select", "--quick"]]


def test_ctrl_c_saves_a_checkpoint(tmp_path):
    run = tmp_path / "c"
    cmd = [
        sys.executable,
        "-m",
        "esper_fast.cli",
        *SMOKE,
        "--runs-dir",
        str(tmp_path),
        "--name",
        "c",
        "--total-timesteps",
        "1000000",
        "--rollout-steps",
        "16",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (run / "metrics.jsonl").is_file():
            time.sleep(0.2)
        assert (run / "metrics.jsonl").is_file(), proc.stderr.read() if proc.poll() is not None else "no metrics"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "saving a checkpoint" in err
    assert f"esper-fast train --resume {run}" in out  # the exact command that continues the run
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert ckpt["train_steps"] == len(rows) >= 1
    assert (run / "learning_curve.png").is_file()


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert (
        main(
            [
                "train",
                "--preset",
                "smoke",
                "--no-progress",
                "--eval-episodes",
                "3",
                "--runs-dir",
                str(tmp_path),
                "--name",
                "tb",
            ]
        )
        == 0
    )
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    summary = json.loads((tmp_path / "tb" / "summary.json").read_text())
    for name, tag in (
        ("ppo (sampled)", "ppo_sampled"),
        ("ppo (greedy)", "ppo_greedy"),
        ("heuristic", "heuristic"),
        ("random", "random"),
    ):
        logged = events.Scalars(f"eval/{tag}/mean_return")
        assert len(logged) == 1 and logged[0].value == pytest.approx(summary["evaluation"][name]["mean_return"])
        assert events.Scalars(f"eval/{tag}/se_return")
    assert "losses/policy_loss" in events.Tags()["scalars"]
    assert any(t.startswith("evaluation") for t in events.Tags()["tensors"])  # the table as text


def test_help_imports_no_torch():
    """``esper-fast --help`` and ``train -h`` build every parser without importing torch (fast help)."""
    code = (
        "import sys, contextlib, io; from esper_fast.cli import main\n"
        "for argv in (['--help'], ['train', '-h']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try: main(argv)\n"
        "        except SystemExit: pass\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_train_help_shows_the_default_presets_values(capsys):
    from esper_fast.ppo.config import make_config

    with pytest.raises(SystemExit):
        main(["train", "-h"])
    out = " ".join(capsys.readouterr().out.split())
    default = make_config("default")
    assert f"[{default.total_timesteps}]" in out and f"[{default.lstm_hidden_dim}]" in out
    assert default.lstm_hidden_dim != make_config("esper").lstm_hidden_dim  # so the check above means something


def test_print_config_prints_the_resolved_configuration(capsys):
    assert main(["train", "--preset", "esper", "--lstm-hidden-dim", "64", "--print-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    from esper_fast.ppo.config import make_config

    assert data["config"] == make_config("esper", lstm_hidden_dim=64).to_dict()
    assert data["derived"]["batch_size"] == data["config"]["num_envs"] * 150


def test_print_config_of_a_checkpoint(smoke_run, capsys):
    assert main(["train", "--resume", str(smoke_run), "--print-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["lstm_hidden_dim"] == 32 and "checkpoint" in data["source"]


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["bench", "-h"], "esper-fast bench"),
        (["bench", "--help"], "--update-results"),
        (["study", "-h"], "advantage-bias"),
    ],
)
def test_help_of_pass_through_commands(argv, expect, capsys):
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    assert rc == 0
    assert expect in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,expect",
    [
        (["bench", "train", "-h"], "bench_train"),
        (["study", "advantage-bias", "-h"], "--critic-updates"),
    ],
)
def test_help_of_a_benchmark_or_study(argv, expect, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert expect in capsys.readouterr().out


def test_unknown_study_is_a_clear_error(capsys):
    assert main(["study", "nope"]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err


def test_written_out_choices_match_the_modules():
    from esper_fast.cli import BACKEND_CHOICES, TOPOLOGY_NAMES
    from esper_fast.envs.masks import TOPOLOGIES
    from esper_fast.ops.backends import BACKEND_NAMES

    assert TOPOLOGY_NAMES == tuple(TOPOLOGIES)
    assert BACKEND_CHOICES == ("auto", *BACKEND_NAMES)


def test_bench_writes_to_bench_results_by_default(tmp_path, monkeypatch):
    from esper_fast.bench.common import committed_results_dir, default_out_dir

    monkeypatch.delenv("OUT", raising=False)
    assert default_out_dir() == Path("bench-results")
    monkeypatch.setenv("OUT", str(tmp_path))
    assert default_out_dir() == tmp_path
    assert committed_results_dir().name == "results" and committed_results_dir().parent.name == "benchmarks"


def test_bench_progress_lines_have_an_eta():
    import io

    from esper_fast.bench.common import CaseProgress

    stream = io.StringIO()
    progress = CaseProgress("bench_x", 3, stream=stream)
    progress({"N": 64, "us": 1.5})
    progress({"N": 128, "us": 2.5})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("bench_x [  1/3]") and "eta" in lines[0] and "N=64" in lines[0]
    assert lines[1].startswith("bench_x [  2/3]") and "us=2.5" in lines[1]
