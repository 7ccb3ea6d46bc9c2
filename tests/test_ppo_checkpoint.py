"""Checkpoints: exact resume, esper-compatible network state, clear errors."""

from __future__ import annotations

import pytest
import torch

from esper_fast import FactoredPolicy
from esper_fast.ppo import CheckpointError, Trainer, load_checkpoint, load_policy, make_config
from esper_fast.ppo.checkpoint import CHECKPOINT_VERSION, save_checkpoint
from esper_fast.reference_policy import ReferencePolicy
from tests.test_policy import esper_state_dict_shapes

SMALL = dict(
    num_envs=4,
    rollout_steps=12,
    episode_length=8,
    feature_dim=16,
    lstm_hidden_dim=16,
    eval_episodes=0,
    update_epochs=2,
    num_minibatches=2,
)


def config(**overrides):
    return make_config("smoke", **{**SMALL, **overrides})


def quiet(cfg, run_dir, **kw):
    return Trainer(cfg, run_dir=run_dir, log=lambda _m: None, tensorboard=False, **kw)


def test_resume_gives_bitwise_identical_updates(tmp_path):
    cfg = config(total_timesteps=4 * 12 * 3, checkpoint_every=1)
    straight = quiet(cfg, tmp_path / "a")
    rows_a = []
    straight.train(on_update=rows_a.append, handle_signals=False)

    ckpt = load_checkpoint(tmp_path / "a" / "checkpoints" / "update_000001.pt")
    resumed = quiet(cfg, tmp_path / "b", resume=ckpt)
    assert resumed.train_steps == 1
    rows_b = []
    resumed.train(on_update=rows_b.append, handle_signals=False)

    for (name, p_a), p_b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        assert torch.equal(p_a, p_b), name
    drop = lambda r: {k: v for k, v in r.items() if k != "time/sps"}  # noqa: E731
    assert [drop(r) for r in rows_a[1:]] == [drop(r) for r in rows_b]
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in opt_a:
        assert torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"])


def test_checkpoint_layout_and_esper_compatible_network(tmp_path):
    cfg = config(total_timesteps=48)
    tr = quiet(cfg, tmp_path)
    tr.train(handle_signals=False)
    ckpt = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    for key in (
        "checkpoint_version",
        "network_state_dict",
        "optimizer_state_dict",
        "train_steps",
        "config",
        "architecture",
        "obs_normalizer",
        "rank_states",
        "global_step",
    ):
        assert key in ckpt, key
    assert ckpt["checkpoint_version"] == CHECKPOINT_VERSION
    arch = ckpt["architecture"]
    assert arch["state_dim"] == 114 and arch["num_slots"] == 3 and arch["slot_ids"] == ["r0c0", "r0c1", "r0c2"]
    sd = ckpt["network_state_dict"]
    expected = esper_state_dict_shapes(H=16, F=16)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    # esper's network class at this architecture loads it strictly (FactoredPolicy is the drop-in).
    net = FactoredPolicy(arch["state_dim"], arch["num_slots"], feature_dim=16, lstm_hidden_dim=16)
    net.load_state_dict(sd, strict=True)
    ReferencePolicy(arch["state_dim"], arch["num_slots"], feature_dim=16, lstm_hidden_dim=16).load_state_dict(
        sd, strict=True
    )
    assert not (tmp_path / "checkpoints" / "latest.pt.tmp").exists()  # atomic write left no temp file


def test_load_policy_round_trip(tmp_path):
    tr = quiet(config(total_timesteps=48), tmp_path)
    tr.train(handle_signals=False)
    policy, obs_norm, cfg, _ = load_policy(tmp_path)  # a run directory works too
    for a, b in zip(policy.state_dict().values(), tr.policy.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(obs_norm.mean, tr.obs_normalizer.mean)
    assert cfg.lstm_hidden_dim == 16


def test_missing_and_corrupt_checkpoints_raise_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="without checkpoints/latest.pt"):
        load_checkpoint(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    partial = save_checkpoint(tmp_path / "partial.pt", {"checkpoint_version": CHECKPOINT_VERSION})
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(partial)


def test_mismatched_architecture_is_reported(tmp_path):
    tr = quiet(config(total_timesteps=48), tmp_path)
    tr.train(handle_signals=False)
    ckpt = load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"lstm_hidden_dim: checkpoint 16, config 32"):
        quiet(config(lstm_hidden_dim=32, feature_dim=16), None, resume=ckpt)
    ckpt["architecture"]["lstm_hidden_dim"] = 32  # lie about it: the shape check names the tensors
    ckpt["config"]["lstm_hidden_dim"] = 32
    with pytest.raises(CheckpointError, match=r"mismatched shapes .*lstm.weight_hh_l0"):
        quiet(config(lstm_hidden_dim=32, feature_dim=16), None, resume=ckpt)
