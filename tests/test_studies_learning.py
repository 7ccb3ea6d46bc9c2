"""esper_fast.studies.learning: confidence intervals, summaries, the tabular PPO learner, critic diagnostics
and the per-run CSV (moved here from test_advantage_bias.py, which tests studies.advantage_bias)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from esper_fast.ppo.agent import cpu_threads
from esper_fast.studies.learning import MODES


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: intra-op threads only cost time (10x+ on a busy 2-core machine)."""
    with cpu_threads(1, "cpu"):
        yield


def test_t_interval_and_summary():
    from esper_fast.studies.learning import format_summary, summarize, t_interval

    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(half, 4.302652729911275 * 1.0 / math.sqrt(3), rel_tol=1e-6)
    assert math.isnan(t_interval([5.0])[1])
    runs = [
        {
            "suite": "tabular",
            "mode": m,
            "seed": s,
            "final_objective": float(s),
            "final_episode_return": 1.0,
            "explained_variance": 0.5,
        }
        for m in MODES
        for s in range(3)
    ]
    summary = summarize(runs)
    assert [r["mode"] for r in summary] == list(MODES) and summary[0]["seeds"] == 3
    assert "1.00 ± 2.48" in format_summary(summary)


def test_tabular_ppo_learns_with_the_expected_baseline():
    from esper_fast.studies.learning import TabularPPOConfig, train_tabular

    res = train_tabular("expected", seed=0, cfg=TabularPPOConfig(updates=12))
    assert len(res["objective_curve"]) == 13 and len(res["ev_curve"]) == 12
    assert res["objective_curve"][0] < 0 < 6.0 < res["final_objective"], res["objective_curve"]  # uniform: -1.6


def test_critic_diagnostics_on_an_untrained_network():
    from esper_fast.ppo import make_config
    from esper_fast.ppo.agent import architecture, build_policy
    from esper_fast.ppo.normalize import ObsNormalizer
    from esper_fast.studies.learning import critic_diagnostics

    torch.manual_seed(0)
    cfg = make_config("smoke")
    policy = build_policy(cfg)
    diag = critic_diagnostics(policy, ObsNormalizer(architecture(cfg)["state_dim"]))
    assert set(diag) == {"true_op_spread", "critic_op_spread", "critic_op_corr", "tabular_objective"}
    assert all(math.isfinite(v) for v in diag.values())
    assert diag["true_op_spread"] > 0.1  # a near-uniform policy still has op advantages to learn


def test_final_objective_falls_back_to_the_last_diagnostic_and_smoothing_skips_gaps():
    from esper_fast.studies.learning import _final, _smooth

    run = {"final_objective": None, "diag_curve": [{"tabular_objective": 1.5}, {"tabular_objective": 2.5}]}
    assert _final(run, "final_objective") == 2.5 and _final({"final_objective": 3.0}, "final_objective") == 3.0
    assert _final({}, "explained_variance") is None
    assert _smooth([1.0, None, 3.0, 5.0], 2) == [1.0, 1.0, 2.0, 4.0]
    assert _smooth([None, 2.0], 3) == [None, 2.0] and _smooth([1.0, 4.0], 1) == [1.0, 4.0]


def test_runs_csv_has_one_row_per_run_and_blanks_for_missing_metrics(tmp_path):
    from esper_fast.studies.learning import write_runs_csv

    runs = [
        {"suite": "tabular", "mode": "expected", "seed": 0, "final_objective": 6.5},
        {"suite": "exact", "mode": "q_op", "seed": 1, "explained_variance": 0.25, "seconds": 3.0},
    ]
    with open(write_runs_csv(runs, tmp_path / "runs.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["suite"], r["mode"], r["seed"]) for r in rows] == [("tabular", "expected", "0"), ("exact", "q_op", "1")]
    assert rows[0]["final_objective"] == "6.5" and rows[0]["explained_variance"] == ""
    assert rows[1]["explained_variance"] == "0.25" and rows[1]["final_objective"] == ""
