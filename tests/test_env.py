"""SeedLifecycleEnv: layout, lifecycle, auto-reset, determinism, terminals and baselines."""

from __future__ import annotations

import pytest
import torch

from esper_fast.constants import (
    HEAD_NAMES,
    NUM_OPS,
    AlphaMode,
    AlphaSpeedAction,
    AlphaTargetAction,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    SeedStage,
    TempoAction,
    get_action_head_sizes,
)
from esper_fast.envs import (
    EnvConfig,
    EnvObs,
    HeuristicPolicy,
    RandomMaskedPolicy,
    SeedLifecycleEnv,
    StepResult,
    evaluate_policy,
)
from esper_fast.envs.seed_lifecycle import BASE_FEATURES, SLOT_FEATURES

Op, St = LifecycleOp, SeedStage
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def act(
    env: SeedLifecycleEnv,
    op: LifecycleOp = Op.WAIT,
    slot: int = 0,
    *,
    blueprint=BlueprintAction.DEPTHWISE,
    style=GerminationStyle.SIGMOID_ADD,
    tempo=TempoAction.FAST,
    alpha_target=AlphaTargetAction.FULL,
    alpha_speed=AlphaSpeedAction.INSTANT,
    alpha_curve=0,
) -> dict[str, torch.Tensor]:
    """The same action in every env."""
    values = dict(
        slot=slot,
        blueprint=blueprint,
        style=style,
        tempo=tempo,
        alpha_target=alpha_target,
        alpha_speed=alpha_speed,
        alpha_curve=alpha_curve,
        op=op,
    )
    return {h: torch.full((env.num_envs,), int(values[h]), dtype=torch.long, device=env.device) for h in HEAD_NAMES}


def feature(obs: torch.Tensor, name: str, slot: int | None = None) -> torch.Tensor:
    if slot is None:
        return obs[:, BASE_FEATURES.index(name)]
    return obs[:, len(BASE_FEATURES) + slot * len(SLOT_FEATURES) + SLOT_FEATURES.index(name)]


# ------------------------------------------------------------------ layout
@pytest.mark.parametrize("num_slots", [1, 3, 5])
def test_obs_shapes_dtypes_and_masks(num_slots):
    env = SeedLifecycleEnv(7, EnvConfig(num_slots=num_slots))
    obs = env.reset(0)
    assert isinstance(obs, EnvObs) and env.obs_dim == 24 + 30 * num_slots
    assert len(BASE_FEATURES) == 24 and len(SLOT_FEATURES) == 30
    assert obs.obs.shape == (7, env.obs_dim) and obs.obs.dtype == torch.float32
    assert obs.blueprint_indices.shape == (7, num_slots) and obs.blueprint_indices.dtype == torch.int64
    assert (obs.blueprint_indices == -1).all()
    assert list(obs.masks) == list(HEAD_NAMES)
    for head, n in get_action_head_sizes(num_slots).items():
        assert obs.masks[head].shape == (7, n) and obs.masks[head].dtype == torch.bool
    assert obs.slot_by_op.shape == (7, NUM_OPS, num_slots)
    assert torch.isfinite(obs.obs).all()


def test_default_obs_dim_is_114():
    assert SeedLifecycleEnv(2).obs_dim == 114


def test_blueprint_indices_and_stage_features_follow_the_seed():
    env = SeedLifecycleEnv(3)
    res = env.step(act(env, Op.GERMINATE, slot=1, blueprint=BlueprintAction.CONV_HEAVY))
    obs = res.next.obs
    assert res.next.blueprint_indices.tolist() == [[-1, int(BlueprintAction.CONV_HEAVY), -1]] * 3
    assert (feature(obs, "stage_germinated", 1) == 1).all() and (feature(obs, "stage_dormant", 0) == 1).all()
    assert (feature(obs, "occupied", 1) == 1).all() and (feature(obs, "occupied", 0) == 0).all()
    assert (feature(obs, "last_op_germinate") == 1).all()
    assert torch.allclose(feature(obs, "epoch_frac"), torch.full((3,), 1 / 150))


# ------------------------------------------------------------------ lifecycle
def test_invalid_op_for_slot_acts_as_wait():
    env = SeedLifecycleEnv(4)
    before = {name: getattr(env, name).clone() for name in ("stage", "alpha", "age", "blueprint", "total_seeds")}
    res = env.step(act(env, Op.FOSSILIZE, slot=0))  # no seed to fossilise
    assert (res.effective_op == int(Op.WAIT)).all()
    for name, value in before.items():
        assert torch.equal(getattr(env, name), value), name
    assert (env.epoch == 1).all()
    assert (feature(res.next.obs, "last_action_invalid") == 1).all()
    assert (feature(res.next.obs, "last_op_wait") == 1).all()


def test_disabled_slot_acts_as_wait():
    env = SeedLifecycleEnv(2, EnvConfig(enabled_slots=(1, 2)))
    obs = env.reset(0)
    assert obs.masks["slot"].tolist() == [[False, True, True]] * 2
    res = env.step(act(env, Op.GERMINATE, slot=0))
    assert (res.effective_op == int(Op.WAIT)).all() and (env.stage == int(St.DORMANT)).all()
    assert (feature(res.next.obs, "enabled", 0) == 0).all() and (feature(res.next.obs, "enabled", 1) == 1).all()


def test_lifecycle_germinate_advance_hold_fossilize():
    env = SeedLifecycleEnv(2)
    assert env.step(act(env, Op.GERMINATE, tempo=TempoAction.FAST)).effective_op.eq(int(Op.GERMINATE)).all()
    assert (env.stage[:, 0] == int(St.GERMINATED)).all() and (env.total_seeds == 1).all()
    env.step(act(env, Op.FOSSILIZE))  # only from HOLDING
    assert (env.stage[:, 0] == int(St.GERMINATED)).all()
    env.step(act(env, Op.ADVANCE))
    assert (env.stage[:, 0] == int(St.TRAINING)).all() and (env.alpha[:, 0] == 0).all()
    env.step(act(env, Op.ADVANCE))
    assert (env.stage[:, 0] == int(St.BLENDING)).all() and (env.alpha_mode[:, 0] == int(AlphaMode.UP)).all()
    res = env.step(act(env, Op.ADVANCE))  # ramp (3 epochs) not done: the gate rejects
    assert (res.effective_op == int(Op.ADVANCE)).all() and (env.stage[:, 0] == int(St.BLENDING)).all()
    env.step(act(env, Op.FOSSILIZE))
    assert (env.stage[:, 0] == int(St.BLENDING)).all()
    assert torch.allclose(env.alpha[:, 0], torch.ones(2)) and (env.alpha_mode[:, 0] == int(AlphaMode.HOLD)).all()
    env.step(act(env, Op.ADVANCE))
    assert (env.stage[:, 0] == int(St.HOLDING)).all()
    res = env.step(act(env, Op.FOSSILIZE))
    assert (res.effective_op == int(Op.FOSSILIZE)).all() and (env.stage[:, 0] == int(St.FOSSILIZED)).all()
    assert res.next.masks["op"][:, 1:].sum() == 2 * 1  # only GERMINATE (other slots) besides WAIT
    assert (res.next.blueprint_indices[:, 0] == int(BlueprintAction.DEPTHWISE)).all()


def test_prune_then_embargo_then_resetting_then_dormant():
    cfg = EnvConfig(embargo_epochs=3)
    env = SeedLifecycleEnv(2, cfg)
    env.step(act(env, Op.GERMINATE))
    res = env.step(act(env, Op.PRUNE))
    assert (res.effective_op == int(Op.PRUNE)).all()
    seen = [int(env.stage[0, 0])]
    for _ in range(1 + cfg.embargo_epochs + 1):
        res = env.step(act(env, Op.WAIT))
        seen.append(int(env.stage[0, 0]))
        if seen[-1] != int(St.DORMANT):  # cooling slots accept no op, not even GERMINATE
            assert not res.next.slot_by_op[0, 1:, 0].any()
            assert res.next.blueprint_indices[0, 0] == -1
    assert seen == [St.PRUNED, St.EMBARGOED, St.EMBARGOED, St.EMBARGOED, St.RESETTING, St.DORMANT]
    assert res.next.slot_by_op[0, int(Op.GERMINATE), 0]


def test_slow_prune_ramps_alpha_down_first():
    env = SeedLifecycleEnv(1)
    for op in (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.WAIT, Op.WAIT, Op.WAIT):
        env.step(act(env, op))
    assert env.alpha[0, 0] == 1.0
    env.step(act(env, Op.PRUNE, alpha_speed=AlphaSpeedAction.FAST))
    assert env.stage[0, 0] == int(St.BLENDING) and env.alpha_mode[0, 0] == int(AlphaMode.DOWN)
    assert 0 < env.alpha[0, 0] < 1 and env.pruning[0, 0]
    env.step(act(env, Op.WAIT))
    env.step(act(env, Op.WAIT))
    assert env.stage[0, 0] == int(St.PRUNED) and env.alpha[0, 0] == 0


def test_set_alpha_target_retargets_holding_seed_back_to_blending():
    env = SeedLifecycleEnv(1)
    for op in (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.WAIT, Op.WAIT, Op.ADVANCE):
        env.step(act(env, op))
    assert env.stage[0, 0] == int(St.HOLDING)
    env.step(act(env, Op.SET_ALPHA_TARGET, alpha_target=AlphaTargetAction.HALF, style=GerminationStyle.GATED_GATE))
    assert env.stage[0, 0] == int(St.BLENDING) and env.alpha[0, 0] == 0.5 and env.style[0, 0] == 3
    assert env.alpha_mode[0, 0] == int(AlphaMode.HOLD)  # INSTANT speed: done within the epoch


# ------------------------------------------------------------------ episodes
def test_truncation_auto_reset_and_episode_return():
    cfg = EnvConfig(episode_length=20)
    env = SeedLifecycleEnv(5, cfg, seed=3)
    total = torch.zeros(5)
    for t in range(20):
        res = env.step(act(env, Op.WAIT))
        total += res.reward
        if t < 19:
            assert not (res.terminated | res.truncated).any() and (res.episode_return == 0).all()
            assert torch.equal(res.final.obs, res.next.obs)
    assert res.truncated.all() and not res.terminated.any()
    assert torch.allclose(res.episode_return, total) and (res.episode_length == 20).all()
    assert (feature(res.final.obs, "epoch_frac") == 1).all() and (feature(res.next.obs, "epoch_frac") == 0).all()
    assert not torch.equal(res.final.obs, res.next.obs)
    assert (env.epoch == 0).all()
    res = env.step(act(env, Op.WAIT))
    assert (res.episode_return == 0).all() and (env.epoch == 1).all()


def test_unfossilized_seeds_are_discarded_at_the_end():
    def final_acc(fossilize: bool) -> torch.Tensor:
        env = SeedLifecycleEnv(8, EnvConfig(episode_length=12, acc_noise=0.0), seed=1)
        for op in (Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.WAIT, Op.WAIT, Op.ADVANCE):
            env.step(act(env, op))
        env.contribution[:, 0] = 5.0
        ops = [Op.FOSSILIZE if fossilize else Op.WAIT] + [Op.WAIT] * 5
        for op in ops:
            res = env.step(act(env, op))
        assert res.truncated.all()
        return feature(res.final.obs, "accuracy") * 100

    assert (final_acc(True) > final_acc(False) + 2).all()


def test_governor_rollback_is_a_true_terminal():
    cfg = EnvConfig()
    env = SeedLifecycleEnv(3, cfg, seed=0)
    env.step(act(env, Op.GERMINATE, blueprint=BlueprintAction.ATTENTION))
    env.contribution[0, 0] = -40.0  # a catastrophic seed in env 0 only
    env.contribution[1:, 0] = 3.0
    env.step(act(env, Op.ADVANCE))
    env.step(act(env, Op.ADVANCE))  # blend over 3 epochs
    results = [env.step(act(env, Op.WAIT)) for _ in range(3)]
    term = torch.stack([r.terminated for r in results])
    assert term[:, 0].any() and not term[:, 1:].any()
    hit = results[int(term[:, 0].long().argmax())]
    assert not hit.truncated[0] and hit.reward[0] == -cfg.death_penalty
    assert 0 < hit.episode_length[0] < cfg.episode_length
    assert feature(hit.next.obs, "epoch_frac")[0] == 0 and hit.next.blueprint_indices[0, 0] == -1
    assert hit.final.blueprint_indices[0, 0] == int(BlueprintAction.ATTENTION)


def test_terminals_happen_under_random_play():
    env = SeedLifecycleEnv(64, seed=0)
    stats = evaluate_policy(env, RandomMaskedPolicy(seed=0), seed=0)
    assert 0 < stats["terminated_frac"] < 0.5


# ------------------------------------------------------------------ determinism
def _rollout(seed: int, steps: int = 40, num_envs: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    env = SeedLifecycleEnv(num_envs, seed=seed)
    policy = RandomMaskedPolicy(seed=1)
    obs, observations, rewards = env.reset(seed), [], []
    for _ in range(steps):
        res = env.step(policy(obs))
        observations.append(res.next.obs)
        rewards.append(res.reward)
        obs = res.next
    return torch.stack(observations), torch.stack(rewards)


def test_same_seed_same_trajectory_different_seed_differs():
    obs_a, rew_a = _rollout(7)
    obs_b, rew_b = _rollout(7)
    assert torch.equal(obs_a, obs_b) and torch.equal(rew_a, rew_b)
    obs_c, _ = _rollout(8)
    assert not torch.equal(obs_a, obs_c)


def test_env_streams_do_not_depend_on_batch_size():
    runs = []
    for num_envs in (2, 6):
        env = SeedLifecycleEnv(num_envs, seed=5)
        out = [env.step(act(env, op)).next.obs[:2] for op in (Op.GERMINATE, Op.ADVANCE, Op.WAIT, Op.GERMINATE)]
        runs.append((torch.stack(out), env.contribution[:2].clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][1][0, 0] != runs[0][1][1, 0]  # envs draw different seeds and hosts


def test_reset_without_seed_continues_the_stream():
    env = SeedLifecycleEnv(3, seed=2)
    first = env.acc0.clone()
    env.reset()
    assert not torch.equal(first, env.acc0)
    env.reset(2)
    assert torch.equal(first, env.acc0)


# ------------------------------------------------------------------ input checks
def test_bad_actions_raise():
    env = SeedLifecycleEnv(3)
    good = act(env, Op.WAIT)
    with pytest.raises(KeyError, match="missing"):
        env.step({h: v for h, v in good.items() if h != "tempo"})
    with pytest.raises(KeyError, match="unknown"):
        env.step({**good, "colour": good["op"]})
    with pytest.raises(ValueError, match="shape"):
        env.step({**good, "op": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(ValueError, match="integer"):
        env.step({**good, "op": torch.zeros(3)})
    with pytest.raises(ValueError, match="'blueprint'.*13"):
        env.step({**good, "blueprint": torch.full((3,), 13)})
    with pytest.raises(ValueError, match="'slot'"):
        env.step({**good, "slot": torch.full((3,), -1)})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_slots=0), "num_slots"),
        (dict(episode_length=0), "episode_length"),
        (dict(topology="mlp"), "topology"),
        (dict(enabled_slots=(3,)), "enabled_slots"),
        (dict(host_acc_start=(50.0, 40.0)), "host_acc_start"),
        (dict(rent_coef=-1.0), "rent_coef"),
        (dict(estimate_ema=1.5), "estimate_ema"),
        (dict(governor_drop=0.0), "governor_drop"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EnvConfig(**kwargs)


# ------------------------------------------------------------------ baselines
def test_random_policy_never_picks_masked_actions():
    env = SeedLifecycleEnv(32, seed=4)
    policy = RandomMaskedPolicy(seed=4)
    obs = env.reset(4)
    for _ in range(60):
        actions = policy(obs)
        for head in HEAD_NAMES:
            assert obs.masks[head].gather(1, actions[head].unsqueeze(1)).all(), head
        ok = obs.slot_by_op[torch.arange(32), actions["op"], actions["slot"]]
        assert ok.all()
        res = env.step(actions)
        assert torch.equal(res.effective_op, actions["op"])
        obs = res.next


def test_heuristic_respects_masks():
    env = SeedLifecycleEnv(32, seed=5)
    policy = HeuristicPolicy(env.config)
    obs = env.reset(5)
    for _ in range(150):
        actions = policy(obs)
        for head in HEAD_NAMES:
            assert obs.masks[head].gather(1, actions[head].unsqueeze(1)).all(), head
        obs = env.step(actions).next


@pytest.mark.slow
def test_heuristic_clearly_beats_random():
    env = SeedLifecycleEnv(64, seed=0)
    random_score = evaluate_policy(env, RandomMaskedPolicy(seed=0), seed=11)
    heuristic_score = evaluate_policy(env, HeuristicPolicy(env.config), seed=11)
    assert heuristic_score["num_episodes"] == 64 and heuristic_score["terminated_frac"] < 0.05
    assert heuristic_score["mean_return"] > random_score["mean_return"] + 8.0


# ------------------------------------------------------------------ counterfactual contributions
def _accuracy_f64(env: SeedLifecycleEnv, keep: torch.Tensor) -> torch.Tensor:
    """``(E,)`` true accuracy with the seeds in ``keep``, from the module doc's rules in float64: realised =
    c x style gain (c > 0) or loss x (1 - exp(-train_epochs / maturity_tau)); gain g = sum alpha x realised,
    saturating g cap / (cap + g) when positive; host + gain clamped to [0, 100]."""
    c = env.contribution.double()
    scale = torch.where(c > 0, env._style_gain[env.style].double(), env._style_loss[env.style].double())
    realised = c * scale * (1 - torch.exp(-env.train_epochs.double() / env.config.maturity_tau))
    g = (env.alpha.double() * realised * keep).sum(1)
    cap = env.config.seed_gain_cap
    g = torch.where(g > 0, g * cap / (cap + g.clamp(min=0)), g)
    return (env._host_accuracy().double() + g).clamp(0.0, 100.0)


def test_counterfactual_contributions_are_accuracy_without_each_seed():
    env = SeedLifecycleEnv(16, seed=2)
    policy = HeuristicPolicy(env.config)
    obs, actives = env.reset(3), 0
    for _ in range(60):
        step = env.step(policy(obs))
        obs = step.next
        rows = ~(step.terminated | step.truncated)  # ended rows were reset after acc_true was computed
        seed_stages = torch.tensor(
            [int(x) for x in (St.GERMINATED, St.TRAINING, St.BLENDING, St.HOLDING, St.FOSSILIZED)]
        )
        live = torch.isin(env.stage, seed_stages)
        assert torch.allclose(_accuracy_f64(env, live)[rows], env.acc_true.double()[rows], atol=1e-4)
        targets, active = env.counterfactual_contributions()
        want_active = live & (env.alpha > 0) & (env.stage != int(St.FOSSILIZED))
        assert torch.equal(active, want_active)
        full = _accuracy_f64(env, live)
        for s in range(env.num_slots):
            without = live.clone()
            without[:, s] = False
            want = torch.where(active[:, s], full - _accuracy_f64(env, without), torch.zeros_like(full))
            assert torch.allclose(targets[:, s].double(), want, atol=1e-4), s
        actives += int(active.sum())
    assert actives > 20  # the heuristic blends seeds in: the targets were exercised


# ------------------------------------------------------------------ devices
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    script = [Op.GERMINATE, Op.ADVANCE, Op.ADVANCE, Op.WAIT, Op.WAIT, Op.ADVANCE, Op.WAIT, Op.FOSSILIZE]
    runs = {}
    for device in ("cpu", "cuda"):
        env = SeedLifecycleEnv(16, device=device, seed=9)
        out = []
        for op in script:
            res = env.step(act(env, op))
            assert isinstance(res, StepResult) and res.next.obs.device.type == device
            out.append(res.next.obs.cpu())
        runs[device] = torch.stack(out)
    torch.testing.assert_close(runs["cuda"], runs["cpu"], atol=1e-4, rtol=1e-4)
    env = SeedLifecycleEnv(64, device="cuda", seed=0)
    stats = evaluate_policy(env, RandomMaskedPolicy(seed=0, device="cuda"), seed=0)
    assert stats["num_episodes"] == 64
