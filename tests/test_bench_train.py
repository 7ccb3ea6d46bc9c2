"""bench_train's harness: the two variants it compares, its split timers, and that it restores what it patches."""

from __future__ import annotations

import torch

import esper_fast.ppo.trainer as trainer_module
from esper_fast import FactoredPolicy
from esper_fast.bench.train import SPLIT, _trainer, measure
from esper_fast.reference_policy import ReferencePolicy


def test_variants_share_weights_and_differ_only_in_the_fused_paths():
    fused, _ = _trainer("smoke", "cpu", 2, "fused", 1)
    unfused, _ = _trainer("smoke", "cpu", 2, "unfused", 1)
    assert type(fused.policy) is FactoredPolicy and fused.policy.fused_evaluate
    assert type(unfused.policy) is ReferencePolicy and not unfused.policy.fused_evaluate
    a, b = fused.policy.state_dict(), unfused.policy.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert unfused.optimizer.param_groups[0]["params"][0] is next(unfused.policy.parameters())


def test_measure_splits_the_time_and_restores_the_trainer():
    act, update = trainer_module.act, trainer_module.ppo_update
    rows = measure("smoke", "cpu", 2, 1, 1)
    assert trainer_module.act is act and trainer_module.ppo_update is update
    assert [r["variant"] for r in rows] == ["unfused", "fused"]
    for r in rows:
        assert all(r[f"{k}_s"] >= 0 for k in SPLIT) and r["env_s"] > 0 and r["act_s"] > 0 and r["update_s"] > 0
        assert abs(sum(r[f"{k}_s"] for k in SPLIT) - r["s_per_update"]) < 0.05 * r["s_per_update"]
    assert rows[1]["speedup"] > 0 and rows[1]["update_speedup"] > 0
