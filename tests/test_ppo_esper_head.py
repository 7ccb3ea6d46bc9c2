"""``--preset esper-head``: esper HEAD's network (FactoredPolicyV2) trained with HEAD's PPO pieces."""

from __future__ import annotations

import math

import pytest
import torch

from esper_fast import FactoredPolicy, FactoredPolicyV2
from esper_fast.constants import LifecycleOp
from esper_fast.ppo import Trainer, make_config
from esper_fast.ppo.agent import architecture, build_policy, validation_off
from esper_fast.ppo.checkpoint import load_checkpoint
from esper_fast.ppo.head_losses import normalize_advantages_floored
from esper_fast.ppo.head_update import availability_masks, forced_steps, ppo_update_head

TINY = dict(num_envs=2, episode_length=8, total_timesteps=32, feature_dim=16, lstm_hidden_dim=16, eval_episodes=0)


def _trainer(run_dir=None, **overrides) -> Trainer:
    return Trainer(
        make_config("esper-head", **{**TINY, **overrides}), run_dir=run_dir, log=lambda _m: None, tensorboard=False
    )


def test_preset_fields_and_the_other_presets_unchanged():
    cfg = make_config("esper-head")
    assert (cfg.ppo_variant, cfg.value_coef, cfg.max_grad_norm, cfg.clip_value) == ("head", 1.0, 5.0, False)
    for preset in ("smoke", "default", "esper"):
        assert make_config(preset).ppo_variant == "0872525b"
        assert (
            type(build_policy(make_config(preset, **{k: TINY[k] for k in ("feature_dim", "lstm_hidden_dim")})))
            is FactoredPolicy
        )
    assert type(build_policy(make_config("esper-head", **TINY))) is FactoredPolicyV2


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(lstm_hidden_dim=20), "multiple of 8"),
        (dict(compile=True), "compile"),
        (dict(clip_value=True), "clip_value"),
        (dict(ppo_variant="x"), "ppo_variant"),
        (dict(aux_contribution_coef=-1.0), "aux_contribution_coef"),
        (dict(contribution_loss_clip=0.0), "contribution_loss_clip"),
    ],
)
def test_invalid_head_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        make_config("esper-head", **{**TINY, **bad})


def test_smoke_trains_two_updates_and_the_checkpoint_loads_strictly_into_factored_policy_v2(tmp_path):
    trainer = _trainer(tmp_path / "run")
    summary = trainer.train(handle_signals=False)
    assert summary["updates"] == 2 and trainer.head_train_steps == 2
    row = summary["last_metrics"]
    for name in ("policy_loss", "value_loss", "entropy_loss", "approx_kl", "grad_norm", "explained_variance"):
        assert math.isfinite(row[f"losses/{name}"]), name
    for name in ("head/q_aux_loss", "head/entropy_floor_penalty", "head/joint_ratio_mean"):
        assert math.isfinite(row[name]), name
    assert row["losses/optimizer_steps"] == 1 and row["head/nonfinite_epochs"] == 0 and row["head/value_coef"] == 1.0
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    arch = architecture(trainer.config)
    net = FactoredPolicyV2(
        arch["state_dim"], arch["feature_dim"], arch["lstm_hidden_dim"], arch["lstm_layers"], arch["num_slots"]
    )
    net.load_state_dict(ckpt["network_state_dict"], strict=True)
    assert ckpt["esper_head"]["head_train_steps"] == 2 and ckpt["esper_head"]["value_normalizer"]["seen"] == 32
    resumed = _trainer(tmp_path / "run2")
    resumed.load_state(ckpt)
    assert resumed.head_train_steps == 2 and torch.equal(resumed.value_normalizer.var, trainer.value_normalizer.var)


def test_forced_steps_are_the_wait_only_rows():
    m = torch.tensor(
        [
            [True, False, False, False, False, False],
            [True, True, False, False, False, False],
            [False, True, False, False, False, False],
        ]
    )
    assert int(LifecycleOp.WAIT) == 0
    assert forced_steps(m).tolist() == [True, False, False]


def _rolled_out(**overrides):
    trainer = _trainer(**overrides)
    trainer.rollout()
    b = trainer.buffer
    adv = normalize_advantages_floored(torch.randn(b.num_envs, b.steps, generator=torch.Generator().manual_seed(0)))[0]
    return trainer, b, adv, torch.randn(b.num_envs, b.steps, generator=torch.Generator().manual_seed(1))


def _update(trainer, b, effective_op, adv, targets):
    trainer.policy.train()
    return ppo_update_head(
        trainer.policy,
        trainer.optimizer,
        b,
        effective_op,
        adv,
        targets,
        trainer.config,
        0.05,
        train_steps=0,
        progress=0.0,
    )


def test_a_non_finite_epoch_takes_no_optimizer_step():
    trainer, b, adv, targets = _rolled_out()
    b.obs[0, 0, 0] = float("nan")  # (the ratios' old log-probs come from the anchored replay, not b.log_probs)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    with validation_off(trainer.policy):  # as in the trainer (validation would raise on the NaN logits)
        stats = _update(trainer, b, trainer.effective_op, adv, targets)
    assert stats["head/nonfinite_epochs"].item() == 1 and stats["optimizer_steps"].item() == 0
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())


def test_causal_masks_come_from_the_effective_op():
    """With every executed op WAIT, only the op head is causal: the blueprint head gets no gradient even
    where the sampled op was GERMINATE (with the sampled ops it does)."""
    trainer, b, adv, targets = _rolled_out(seed=3, target_kl=None, entropy_floor=False)
    b.actions["op"][:] = int(LifecycleOp.GERMINATE)  # the sampled ops the buffer holds
    wait = torch.full_like(trainer.effective_op, int(LifecycleOp.WAIT))
    before = {k: v.clone() for k, v in trainer.policy.blueprint_head.state_dict().items()}
    _update(trainer, b, wait, adv, targets)
    assert all(torch.equal(before[k], v) for k, v in trainer.policy.blueprint_head.state_dict().items())
    _update(trainer, b, b.actions["op"].clone(), adv, targets)
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.blueprint_head.state_dict().items())


def test_cli_train_preset_esper_head_then_evaluate(tmp_path, capsys):
    from esper_fast.cli import main

    args = [
        "train",
        "--preset",
        "esper-head",
        "--num-envs",
        "2",
        "--episode-length",
        "8",
        "--total-timesteps",
        "32",
        "--feature-dim",
        "16",
        "--lstm-hidden-dim",
        "16",
        "--eval-episodes",
        "0",
        "--runs-dir",
        str(tmp_path),
        "--name",
        "h",
        "--no-progress",
        "--no-tensorboard",
    ]
    assert main(args) == 0
    ckpt = load_checkpoint(tmp_path / "h" / "checkpoints" / "latest.pt")
    assert ckpt["train_steps"] == 2 and ckpt["config"]["ppo_variant"] == "head"
    FactoredPolicyV2(114, 16, 16, 1, 3).load_state_dict(ckpt["network_state_dict"], strict=True)
    assert main(["evaluate", str(tmp_path / "h"), "--episodes", "2"]) == 0  # load_policy builds FactoredPolicyV2
    assert "ppo (greedy)" in capsys.readouterr().out


def test_availability_masks_follow_which_ops_were_valid():
    """HEAD's table (leyline/causal_masks.py): slot if any non-WAIT op is valid, blueprint / tempo if
    GERMINATE, style / alpha_target if GERMINATE or SET_ALPHA_TARGET, alpha_speed / alpha_curve if
    SET_ALPHA_TARGET or PRUNE, op always."""
    W, G, S, P, F, A = range(6)
    rows = [{W}, {W, G}, {W, S}, {W, P}, {W, F}, {W, A}]
    m = torch.tensor([[o in r for o in range(6)] for r in rows])
    got = {h: v.tolist() for h, v in availability_masks(m).items()}
    want = {
        "op": [1, 1, 1, 1, 1, 1],
        "slot": [0, 1, 1, 1, 1, 1],
        "blueprint": [0, 1, 0, 0, 0, 0],
        "tempo": [0, 1, 0, 0, 0, 0],
        "style": [0, 1, 1, 0, 0, 0],
        "alpha_target": [0, 1, 1, 0, 0, 0],
        "alpha_speed": [0, 0, 1, 1, 0, 0],
        "alpha_curve": [0, 0, 1, 1, 0, 0],
    }
    assert got == {h: [bool(x) for x in v] for h, v in want.items()}


@pytest.mark.parametrize("baseline", ["state_value", "expected_q"])
def test_head_baseline_picks_the_value_gae_uses(baseline):
    """Step 0 of a rollout (zero LSTM state, identity value normaliser before the first update): the stored
    value is V(s) (state_value_head) or sum_a pi(a|s) Q(s, a), both from the same get_action pass."""
    from esper_fast.ppo.agent import act

    trainer = _trainer(head_baseline=baseline)
    env_obs0 = trainer.obs
    obs0 = trainer.obs_normalizer.normalize(env_obs0.obs).clone()
    trainer.rollout()
    assert torch.equal(trainer.buffer.obs[:, 0], obs0)
    trainer.policy.eval()
    with torch.no_grad():
        res = act(
            trainer.policy,
            obs0,
            env_obs0,
            trainer.policy.get_initial_hidden(2),
            deterministic=True,
            op_conditioned_slot=True,
        )
    want, other = (res.values, res.expected_value) if baseline == "state_value" else (res.expected_value, res.values)
    torch.testing.assert_close(trainer.buffer.values[:, 0], want)
    assert not torch.allclose(trainer.buffer.values[:, 0], other)


def test_study_modes_map_to_presets():
    from esper_fast.studies.learning import HEAD_MODES, _preset_for

    assert HEAD_MODES == ("head_v", "head_q")
    assert _preset_for("head_v") == ("esper-head", {"head_baseline": "state_value"})
    assert _preset_for("head_q") == ("esper-head", {"head_baseline": "expected_q"})
    assert _preset_for("q_op") == ("esper", {"value_mode": "q_op"})
    with pytest.raises(ValueError, match="head_baseline"):
        make_config("esper-head", head_baseline="q_op")


def _update_with(trainer, b, adv, targets, train_steps=0, contributions=None):
    trainer.policy.train()
    return ppo_update_head(
        trainer.policy,
        trainer.optimizer,
        b,
        trainer.effective_op,
        adv,
        targets,
        trainer.config,
        0.05,
        train_steps=train_steps,
        progress=0.0,
        contributions=contributions,
    )


def test_ratios_are_anchored_at_the_pre_update_weights():
    """HEAD's anchored reference pass: the old log-probs are a replay at theta0, so the rollout's stored
    log-probs do not enter the update (a shifted copy gives the same weights) and epoch 0's KL is 0."""
    runs = []
    for shift in (0.0, 0.3):
        trainer, b, adv, targets = _rolled_out(seed=4, target_kl=None)
        for h in b.log_probs:
            b.log_probs[h] += shift
        stats = _update_with(trainer, b, adv, targets)
        assert stats["approx_kl_first"].item() == 0.0
        runs.append({k: v.clone() for k, v in trainer.policy.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_multi_epoch_update_steps_every_epoch_against_the_anchor():
    trainer, b, adv, targets = _rolled_out(seed=5, target_kl=None, update_epochs=3)
    stats = _update_with(trainer, b, adv, targets)
    assert stats["optimizer_steps"].item() == 3 and stats["approx_kl_first"].item() == 0.0
    assert stats["approx_kl"].item() > 0.0  # epochs 1 and 2 moved away from theta0


def test_contribution_aux_loss_trains_only_the_predictor_from_the_envs_counterfactuals():
    trainer, b, adv, targets = _rolled_out(
        seed=6, target_kl=None, aux_contribution_coef=1.0, num_envs=4, episode_length=30, total_timesteps=240
    )  # long enough to blend seeds in
    target, active = trainer.contrib_target, trainer.contrib_active
    assert active.any() and torch.equal(target != 0, active & (target != 0))  # zero off the active slots
    pred = trainer.policy.contribution_predictor
    before = {k: v.clone() for k, v in pred.state_dict().items()}
    stats = _update_with(trainer, b, adv, targets, train_steps=0, contributions=(target, active))
    assert stats["head/contribution_aux_coef"].item() == 0.0  # HEAD's ramp starts at 0
    assert all(torch.equal(before[k], v) for k, v in pred.state_dict().items())
    losses = []
    for _ in range(6):
        stats = _update_with(trainer, b, adv, targets, train_steps=2000, contributions=(target, active))
        assert stats["head/contribution_aux_coef"].item() == 1.0
        losses.append(stats["head/contribution_aux_loss"].item())
    assert any(not torch.equal(before[k], v) for k, v in pred.state_dict().items())
    assert losses[-1] < losses[0]
    # without targets the predictor is left alone
    before = {k: v.clone() for k, v in pred.state_dict().items()}
    stats = _update_with(trainer, b, adv, targets, train_steps=2000)
    assert "head/contribution_aux_loss" not in stats
    assert all(torch.equal(before[k], v) for k, v in pred.state_dict().items())


def test_trainer_reports_the_contribution_loss_and_its_ramp(tmp_path):
    trainer = _trainer(tmp_path / "run", aux_warmup_steps=4)
    row = trainer.train(handle_signals=False)["last_metrics"]
    assert math.isfinite(row["head/contribution_aux_loss"])
    assert row["head/contribution_aux_coef"] == pytest.approx(0.05 * 1 / 4)  # second update: train_steps 1
    off = _trainer(tmp_path / "off", contribution_aux=False).train(handle_signals=False)["last_metrics"]
    assert "head/contribution_aux_loss" not in off


def test_an_env_without_counterfactuals_runs_without_the_contribution_loss():
    """A study swaps in ExactMDPEsperEnv, which has no counterfactual contributions: the run trains, says
    so once, and reports no contribution loss (HEAD: no fresh measurement, no loss)."""
    from esper_fast.envs.exact_mdp import ExactMDPConfig, ExactMDPEsperEnv

    said = []
    mdp = ExactMDPConfig()
    trainer = Trainer(
        make_config(
            "esper-head",
            **{**TINY, "episode_length": mdp.horizon, "rollout_steps": 8, "total_timesteps": 32, "gamma": mdp.gamma},
        ),
        run_dir=None,
        log=said.append,
        tensorboard=False,
    )
    trainer.env = ExactMDPEsperEnv(2, mdp, seed=0)
    trainer.obs = trainer.env.observe()
    row = trainer.train(handle_signals=False)["last_metrics"]
    assert trainer.train_steps == 2 and "head/contribution_aux_loss" not in row
    assert sum("no counterfactual_contributions" in m for m in said) == 1
