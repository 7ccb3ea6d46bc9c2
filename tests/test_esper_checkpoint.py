"""esper PPOAgent.save() checkpoints into esper_fast (load_policy, evaluate, --resume) and back (export-esper)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import esper_fast
from esper_fast import FactoredPolicy
from esper_fast.cli import main
from esper_fast.integrations.esper_checkpoint import (
    ESPER_CONFIG_FIELDS,
    from_esper_checkpoint,
    is_esper_checkpoint,
    to_esper_checkpoint,
    warm_start_from_esper,
)
from esper_fast.ppo import (
    CheckpointError,
    PPOConfig,
    Trainer,
    load_checkpoint,
    load_policy,
    make_config,
)

# esper 0872525b's save() config keys, written out here from esper's ``simic/agent/ppo.py::save``,
# independently of the module's constant.
ESPER_SAVE_KEYS = [
    "gamma",
    "gae_lambda",
    "clip_ratio",
    "entropy_coef",
    "entropy_coef_start",
    "entropy_coef_end",
    "entropy_coef_min",
    "adaptive_entropy_floor",
    "entropy_anneal_steps",
    "entropy_coef_per_head",
    "value_coef",
    "clip_value",
    "value_clip",
    "target_kl",
    "recurrent_n_epochs",
    "lstm_hidden_dim",
    "chunk_length",
    "num_envs",
    "max_steps_per_env",
    "n_epochs",
    "batch_size",
    "max_grad_norm",
    "weight_decay",
    "compile_mode",
]
H, FEAT = 16, 16


def esper_file(
    tmp_path: Path, *, feature_dim: int = FEAT, hidden: int = H, seed: int = 3, **config_changes
) -> tuple[Path, FactoredPolicy]:
    """An esper-layout checkpoint (as PPOAgent.save writes it) of a random network."""
    torch.manual_seed(seed)
    net = FactoredPolicy(114, feature_dim=feature_dim, lstm_hidden_dim=hidden)
    opt = torch.optim.Adam(net.parameters(), lr=7e-4, eps=2e-5, foreach=True)
    net.value_head[2].bias.grad = torch.ones(1)
    opt.step()
    config = dict(
        gamma=0.99,
        gae_lambda=0.95,
        clip_ratio=0.1,
        entropy_coef=0.02,
        entropy_coef_start=0.02,
        entropy_coef_end=0.02,
        entropy_coef_min=0.005,
        adaptive_entropy_floor=False,
        entropy_anneal_steps=0,
        entropy_coef_per_head={
            "op": 1.0,
            "slot": 1.0,
            "blueprint": 1.3,
            "style": 1.2,
            "tempo": 1.3,
            "alpha_target": 1.2,
            "alpha_speed": 1.2,
            "alpha_curve": 1.2,
        },
        value_coef=0.25,
        clip_value=True,
        value_clip=5.0,
        target_kl=0.02,
        recurrent_n_epochs=2,
        lstm_hidden_dim=hidden,
        chunk_length=20,
        num_envs=2,
        max_steps_per_env=20,
        n_epochs=5,
        batch_size=32,
        max_grad_norm=0.5,
        weight_decay=0.0,
        compile_mode="off",
    )
    config.update(config_changes)
    assert list(config) == ESPER_SAVE_KEYS
    payload = {
        "checkpoint_version": 1,
        "network_state_dict": net.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "train_steps": 42,
        "config": config,
        "architecture": {"state_dim": 114, "slot_ids": ("r0c0", "r0c1", "r0c2"), "num_slots": 3},
    }
    path = tmp_path / "esper_agent.pt"
    torch.save(payload, path)
    return path, net


def test_module_constant_matches_esper_save_keys():
    assert list(ESPER_CONFIG_FIELDS) == ESPER_SAVE_KEYS


def test_load_policy_accepts_an_esper_checkpoint(tmp_path, caplog):
    path, net = esper_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="esper_fast.integrations.esper_checkpoint"):
        policy, obs_norm, config, ckpt = load_policy(path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, policy.state_dict()[k]), k
    assert (config.gamma, config.gae_lambda, config.clip_ratio, config.value_coef) == (0.99, 0.95, 0.1, 0.25)
    assert (config.value_clip, config.target_kl, config.max_grad_norm, config.entropy_coef_min) == (
        5.0,
        0.02,
        0.5,
        0.005,
    )
    assert (config.update_epochs, config.num_envs, config.episode_length, config.lstm_hidden_dim) == (2, 2, 20, H)
    assert config.feature_dim == FEAT and config.lstm_layers == 1 and config.entropy_coef == 0.02
    assert config.learning_rate == pytest.approx(7e-4) and config.adam_eps == pytest.approx(2e-5)  # from the optimizer
    assert config.value_mode == "q_op" and config.op_conditioned_slot is False  # esper 0872525b's rules
    ignored = ckpt["esper_import"]["ignored"]
    assert {"n_epochs", "batch_size", "chunk_length", "compile_mode"} <= set(ignored)
    text = caplog.text
    for field in ("n_epochs", "batch_size", "chunk_length", "compile_mode"):
        assert f"{field} = " in text
    assert "observation normaliser statistics are not in esper's checkpoint" in text
    assert torch.equal(obs_norm.mean, torch.zeros(114)) and torch.equal(obs_norm.var, torch.ones(114))


def test_every_esper_field_is_mapped_or_listed(tmp_path):
    for changes in (
        {},
        {"entropy_anneal_steps": 10, "entropy_coef_start": 0.1, "entropy_coef_end": 0.01},
        {"weight_decay": 0.01, "adaptive_entropy_floor": True},
    ):
        path, _ = esper_file(tmp_path, **changes)
        info = load_checkpoint(path)["esper_import"]
        accounted = set(info["mapped"]) | set(info["ignored"])
        assert set(ESPER_SAVE_KEYS) <= accounted, set(ESPER_SAVE_KEYS) - accounted


def test_entropy_schedule_mapping(tmp_path):
    path, _ = esper_file(tmp_path, entropy_anneal_steps=10, entropy_coef_start=0.1, entropy_coef_end=0.01)
    cfg = load_policy(path)[2]
    assert (cfg.entropy_coef, cfg.entropy_coef_end, cfg.entropy_anneal_updates) == (0.1, 0.01, 10)
    assert cfg.entropy_coef_at(5) == pytest.approx(0.055)  # esper: start + 0.5 * (end - start)


def test_weight_decay_and_adaptive_floor_are_listed_as_ignored(tmp_path):
    path, _ = esper_file(tmp_path, weight_decay=0.01, adaptive_entropy_floor=True)
    ignored = load_checkpoint(path)["esper_import"]["ignored"]
    assert "AdamW" in ignored["weight_decay"] and "without a mask" in ignored["adaptive_entropy_floor"]


def test_inconsistent_esper_checkpoint_is_refused(tmp_path):
    path, _ = esper_file(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["architecture"]["state_dim"] = 100
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"state_dim 100 \+ 4 x 3 slots != feature_net.0.weight input width 126"):
        load_policy(path)


def test_esper_fast_checkpoints_are_not_taken_for_esper_ones(tmp_path):
    trainer = Trainer(make_config("smoke", eval_episodes=0), tmp_path / "run", tensorboard=False, log=lambda m: None)
    ckpt = load_checkpoint(trainer.save())
    assert "esper_import" not in ckpt and not is_esper_checkpoint(ckpt)


def test_evaluate_cli_on_an_esper_checkpoint(tmp_path, capsys):
    path, _ = esper_file(tmp_path)
    assert main(["evaluate", str(path), "--episodes", "1", "--mode", "greedy", "--json"]) == 0
    captured = capsys.readouterr()
    assert '"train_steps": 42' in captured.out
    assert "esper PPOAgent checkpoint" in captured.err and "n_epochs = 5" in captured.err  # the ignored list


def test_resume_from_an_esper_checkpoint_is_a_warm_start(tmp_path, capsys):
    path, net = esper_file(tmp_path)
    ckpt = load_checkpoint(path)
    config = PPOConfig.from_dict({**ckpt["config"], "total_timesteps": 40, "eval_episodes": 0})
    trainer = Trainer(config, None, tensorboard=False, log=lambda m: None)
    warm_start_from_esper(trainer, ckpt, log=lambda m: None)
    for k, v in net.state_dict().items():
        assert torch.equal(v, trainer.policy.state_dict()[k]), k
    assert trainer.train_steps == 0  # a warm start: counters start afresh
    code = main(
        [
            "train",
            "--resume",
            str(path),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--total-timesteps",
            "40",
            "--eval-episodes",
            "0",
            "--no-progress",
            "--no-tensorboard",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "warm start from esper checkpoint" in err and "esper PPOAgent checkpoint" in err
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("esper-warmstart-")


def test_export_esper_writes_esper_layout(tmp_path, capsys):
    config = make_config("smoke", feature_dim=512, lstm_hidden_dim=16, eval_episodes=0, value_mode="expected")
    trainer = Trainer(config, tmp_path / "run", tensorboard=False, log=lambda m: None)
    trainer.save()
    assert main(["export-esper", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    out = tmp_path / "run" / "checkpoints" / "esper.pt"
    assert str(out) in captured.out and "value_mode" in captured.err
    ckpt = torch.load(out, weights_only=True)
    assert list(ckpt["config"]) == ESPER_SAVE_KEYS  # PPOAgent.load() passes them as keywords: no extras
    assert ckpt["architecture"] == {"state_dim": 114, "slot_ids": ["r0c0", "r0c1", "r0c2"], "num_slots": 3}
    assert ckpt["checkpoint_version"] == 1 and ckpt["train_steps"] == 0
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, ckpt["network_state_dict"][k]), k
    assert "value_mode" in ckpt["metadata"]["not_representable"]
    assert ckpt["config"]["lstm_hidden_dim"] == 16 and ckpt["config"]["max_steps_per_env"] == config.episode_length


def test_export_refuses_what_esper_cannot_rebuild(tmp_path):
    trainer = Trainer(make_config("smoke", eval_episodes=0), tmp_path / "run", tensorboard=False, log=lambda m: None)
    trainer.save()
    assert main(["export-esper", str(tmp_path / "run")]) == 1  # CheckpointError -> exit 1 with the message
    with pytest.raises(
        CheckpointError, match="always has feature_dim 512 and 1 LSTM layer; this run has feature_dim 32"
    ):
        to_esper_checkpoint(load_checkpoint(tmp_path / "run"))


def test_esper_to_esper_fast_to_esper_keeps_the_config(tmp_path):
    path, _ = esper_file(tmp_path, feature_dim=512)
    original = torch.load(path, weights_only=True)
    back = to_esper_checkpoint(
        from_esper_checkpoint({**original, "path": str(path)}, log=lambda m: None), log=lambda m: None
    )
    for key in ESPER_SAVE_KEYS:
        if key in ("compile_mode", "chunk_length"):
            continue  # written as "off" and the episode length; both listed as ignored on the way in
        assert back["config"][key] == original["config"][key], key
    assert back["architecture"]["slot_ids"] == list(original["architecture"]["slot_ids"])


def test_exported_checkpoint_opens_in_esper_standin_agent(esper_standin, tmp_path):
    """PPOAgent.load() of the stand-in (0872525b's logic) opens the export once esper is patched."""
    patch = esper_fast.patch_esper()
    from esper.simic.agent import PPOAgent

    config = make_config("smoke", feature_dim=512, lstm_hidden_dim=16, eval_episodes=0)
    trainer = Trainer(config, tmp_path / "run", tensorboard=False, log=lambda m: None)
    trainer.save()
    assert main(["export-esper", str(tmp_path / "run"), "-o", str(tmp_path / "e.pt")]) == 0
    agent = PPOAgent.load(tmp_path / "e.pt", device="cpu")
    assert type(agent.policy.network) is patch.cls
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, agent.policy.state_dict()[k]), k
