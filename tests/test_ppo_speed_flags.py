"""The update's speed flags (issue 9 item 4), on CPU: --compile, --amp, --fused-adam."""

from __future__ import annotations

import copy

import pytest
import torch

import esper_fast.fused_evaluate as fused_evaluate
from esper_fast.cli import _config_overrides, build_parser
from esper_fast.ppo import Trainer, make_config
from esper_fast.ppo.agent import cpu_threads, validation_off
from esper_fast.ppo.gae import compute_gae
from esper_fast.ppo.update import ppo_update

TINY = dict(
    num_envs=4,
    rollout_steps=10,
    episode_length=6,
    feature_dim=16,
    lstm_hidden_dim=16,
    total_timesteps=80,
    eval_episodes=0,
    update_epochs=2,
    num_minibatches=2,
    target_kl=None,
)


@pytest.fixture(scope="module")
def rolled_out():
    with cpu_threads(1, "cpu"):
        tr = Trainer(make_config("smoke", **TINY), run_dir=None, log=lambda _m: None)
        with validation_off(tr.policy):
            tr.rollout()
    b = tr.buffer
    adv, ret = compute_gae(b.rewards, b.values, b.dones, b.truncated, b.bootstrap_values, 0.99, 0.95)
    return tr, adv, ret


def run_update(rolled_out, **flags):
    tr, adv, ret = rolled_out
    policy = copy.deepcopy(tr.policy)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    cfg = tr.config.replace(**flags)
    with cpu_threads(1, "cpu"), validation_off(policy):
        metrics = ppo_update(policy, opt, tr.buffer, adv, ret, cfg, 0.01, generator=torch.Generator().manual_seed(0))
    return policy, metrics


def test_compile_matches_eager_update(rolled_out):
    torch._dynamo.reset()
    eager, m_eager = run_update(rolled_out)
    compiled, m_comp = run_update(rolled_out, compile=True, compile_backend="aot_eager")
    assert "aot_eager" in compiled.__dict__["_compiled_score"]  # the compiled function was used
    for k in ("policy_loss", "value_loss", "entropy_loss", "approx_kl"):
        torch.testing.assert_close(m_comp[k], m_eager[k], atol=1e-5, rtol=1e-4)
    for (n, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=lambda m: f"{n}: {m}")


def test_compile_needs_the_fused_path(rolled_out):
    tr, adv, ret = rolled_out
    policy = copy.deepcopy(tr.policy)
    policy.fused_evaluate = False
    with pytest.raises(ValueError, match="fused update path"):
        ppo_update(
            policy,
            torch.optim.Adam(policy.parameters()),
            tr.buffer,
            adv,
            ret,
            tr.config.replace(compile=True, compile_backend="aot_eager"),
            0.01,
        )


def test_amp_runs_the_heads_in_bf16_and_keeps_fp32_state(rolled_out, monkeypatch):
    seen = []
    real = fused_evaluate.score_actions_packed

    def spy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(fused_evaluate, "score_actions_packed", spy)
    policy, metrics = run_update(rolled_out, amp=True)
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    assert all(torch.isfinite(v).all() for v in metrics.values())
    _, fp32 = run_update(rolled_out)
    torch.testing.assert_close(metrics["value_loss"], fp32["value_loss"], atol=0.05, rtol=0.05)


@pytest.mark.parametrize("flag,fused", [(None, False), (True, True), (False, False)])
def test_fused_adam_flag(flag, fused):
    with cpu_threads(1, "cpu"):
        tr = Trainer(make_config("smoke", **{**TINY, "fused_adam": flag}), run_dir=None, log=lambda _m: None)
    assert bool(tr.optimizer.defaults.get("fused")) is fused
    if fused:
        tr.train(handle_signals=False)  # the fused CPU Adam steps
        assert tr.train_steps == tr.num_updates


def test_cli_flags():
    args = build_parser().parse_args(
        ["train", "--compile", "--amp", "--fused-adam", "true", "--compile-backend", "aot_eager"]
    )
    over = _config_overrides(args)
    assert over["compile"] is True and over["amp"] is True and over["fused_adam"] is True
    assert over["compile_backend"] == "aot_eager"


def test_fused_off_runs_the_reference_paths_from_the_same_weights(monkeypatch):
    """``fused=False``: ReferencePolicy in the rollout, the per-head evaluate_actions in the update, same init."""
    from esper_fast import FactoredPolicy
    from esper_fast.reference_policy import ReferencePolicy

    calls = []
    real = fused_evaluate.score_actions_packed
    monkeypatch.setattr(fused_evaluate, "score_actions_packed", lambda *a, **k: calls.append(1) or real(*a, **k))
    with cpu_threads(1, "cpu"):
        on = Trainer(make_config("smoke", **TINY), run_dir=None, log=lambda _m: None)
        off = Trainer(make_config("smoke", **TINY, fused=False), run_dir=None, log=lambda _m: None)
        assert type(on.policy) is FactoredPolicy and type(off.policy) is ReferencePolicy
        assert off.policy.fused_evaluate is False and off.policy.value_mode == on.policy.value_mode
        for (name, a), b in zip(on.policy.state_dict().items(), off.policy.state_dict().values()):
            torch.testing.assert_close(b, a, rtol=0, atol=0, msg=lambda m: f"{name}: {m}")
        off.train(handle_signals=False)
        assert off.train_steps == off.num_updates and not calls  # the fused scoring op never ran
        on.train(handle_signals=False)
        assert calls  # ... and the spy sees it when it does


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(compile=True), "compile"),
        (dict(value_mode="legacy"), "fused"),
        (dict(ppo_variant="head", clip_value=False), "fused"),
    ],
)
def test_fused_off_rejects_what_has_no_unfused_path(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_config("smoke", fused=False, **overrides)


def test_cpu_fast_preset():
    """Hundreds of envs, the fused paths, the entropy schedule spanning the run, 1024 evaluation episodes."""
    cfg = make_config("cpu-fast")
    assert cfg.num_envs >= 256 and cfg.fused and cfg.ppo_variant == "0872525b"
    assert cfg.entropy_anneal_updates == cfg.num_updates
    assert cfg.eval_episodes == 1024
    assert build_parser().parse_args(["train", "--preset", "cpu-fast", "--no-fused"]).fused is False
