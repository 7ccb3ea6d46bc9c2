"""esper HEAD (2016337e) PPOAgent.save() checkpoints: import (load_policy, --resume warm start), export-esper,
round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import esper_fast
from esper_fast import FactoredPolicyV2
from esper_fast.cli import main
from esper_fast.integrations.esper_checkpoint import (
    ESPER_HEAD_CONFIG_FIELDS,
    from_esper_checkpoint,
    is_esper_checkpoint,
    load_esper_head_network,
    to_esper_checkpoint,
    warm_start_from_esper,
)
from esper_fast.ppo import CheckpointError, PPOConfig, Trainer, load_checkpoint, load_policy, make_config

# esper HEAD's save() config keys (ppo_agent.py:1626-1663 at 2016337e), written out here independently of
# the module's constant.
HEAD_SAVE_KEYS = [
    "gamma",
    "gae_lambda",
    "clip_ratio",
    "entropy_coef",
    "entropy_coef_start",
    "entropy_coef_end",
    "entropy_coef_min",
    "entropy_anneal_steps",
    "entropy_coef_per_head",
    "entropy_floor",
    "entropy_floor_penalty_coef",
    "total_train_steps",
    "value_coef",
    "value_coef_start",
    "value_warmup_steps",
    "clip_value",
    "value_clip",
    "target_kl",
    "recurrent_n_epochs",
    "lstm_hidden_dim",
    "chunk_length",
    "num_envs",
    "max_steps_per_env",
    "batch_size",
    "max_grad_norm",
    "weight_decay",
    "compile_mode",
    "aux_contribution_coef",
    "aux_warmup_steps",
    "aux_stop_gradient",
    "contribution_loss_clip",
    "enable_contribution_aux",
]
H = 16


def head_file(
    tmp_path: Path, state_dim: int = 114, feature_dim: int = 512, **config_changes
) -> tuple[Path, FactoredPolicyV2]:
    """A HEAD-layout checkpoint (as HEAD's PPOAgent.save writes it) of a random FactoredPolicyV2."""
    torch.manual_seed(5)
    net = FactoredPolicyV2(state_dim, feature_dim, H, 1, 3)
    opt = torch.optim.Adam(net.parameters(), lr=6e-4, eps=1e-5)
    config = dict(
        gamma=0.99,
        gae_lambda=0.97,
        clip_ratio=0.15,
        entropy_coef=0.03,
        entropy_coef_start=0.03,
        entropy_coef_end=0.03,
        entropy_coef_min=0.01,
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
        entropy_floor={
            "op": 0.30,
            "slot": 0.15,
            "blueprint": 0.20,
            "style": 0.15,
            "tempo": 0.20,
            "alpha_target": 0.10,
            "alpha_speed": 0.10,
            "alpha_curve": 0.10,
        },
        entropy_floor_penalty_coef={
            "op": 0.3,
            "slot": 0.1,
            "blueprint": 0.3,
            "style": 0.1,
            "tempo": 0.3,
            "alpha_target": 0.1,
            "alpha_speed": 0.1,
            "alpha_curve": 0.1,
        },
        total_train_steps=500,
        value_coef=1.0,
        value_coef_start=None,
        value_warmup_steps=7,
        clip_value=False,
        value_clip=10.0,
        target_kl=0.02,
        recurrent_n_epochs=2,
        lstm_hidden_dim=H,
        chunk_length=20,
        num_envs=2,
        max_steps_per_env=20,
        batch_size=64,
        max_grad_norm=5.0,
        weight_decay=0.0,
        compile_mode="off",
        aux_contribution_coef=0.05,
        aux_warmup_steps=900,
        aux_stop_gradient=True,
        contribution_loss_clip=10.0,
        enable_contribution_aux=True,
    )
    config.update(config_changes)
    assert list(config) == HEAD_SAVE_KEYS
    payload = {
        "checkpoint_version": 2,
        "value_head_schema_version": 2,
        "network_state_dict": net.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "value_normalizer_state_dict": {
            "mean": torch.tensor(0.0),
            "var": torch.tensor(4.0),
            "count": torch.tensor(96.0),
        },
        "train_steps": 11,
        "aux_training_step": 11,
        "config": config,
        "architecture": {"state_dim": state_dim, "slot_ids": ("r0c0", "r0c1", "r0c2"), "num_slots": 3},
    }
    path = tmp_path / "head_agent.pt"
    torch.save(payload, path)
    return path, net


def test_module_constant_matches_heads_save_keys():
    assert list(ESPER_HEAD_CONFIG_FIELDS) == HEAD_SAVE_KEYS


def test_load_policy_accepts_a_head_checkpoint(tmp_path):
    path, net = head_file(tmp_path)
    assert is_esper_checkpoint(torch.load(path, weights_only=True))
    ckpt = load_checkpoint(path)
    cfg = PPOConfig.from_dict(ckpt["config"])
    assert (cfg.ppo_variant, cfg.update_epochs, cfg.value_warmup_steps, cfg.aux_warmup_steps) == ("head", 2, 7, 900)
    assert (cfg.gamma, cfg.gae_lambda, cfg.clip_ratio, cfg.learning_rate, cfg.episode_length) == (
        0.99,
        0.97,
        0.15,
        6e-4,
        20,
    )
    imported = ckpt["esper_import"]
    assert set(imported["mapped"]) | set(imported["ignored"]) >= set(HEAD_SAVE_KEYS) - {"lstm_hidden_dim"}
    assert "total_train_steps" in imported["ignored"] and "entropy_floor" in imported["mapped"]
    policy, _norm, _cfg, _ = load_policy(path)
    assert type(policy) is FactoredPolicyV2 and policy.state_dim == 114
    for k, v in net.state_dict().items():
        assert torch.equal(v, policy.state_dict()[k]), k


def test_head_run_with_heads_own_observation_is_refused_but_its_network_loads(tmp_path):
    """HEAD's own runs (state_dim 116) cannot run on SeedLifecycleEnv: a clear error; the network itself
    is rebuilt with the file's real state_dim and loads strictly."""
    path, net = head_file(tmp_path, state_dim=116)
    with pytest.raises(CheckpointError, match="state_dim 116.*load_esper_head_network"):
        load_checkpoint(path)
    got = load_esper_head_network(path)
    assert got.state_dim == 116 and got.feature_net[0].in_features == 128
    for k, v in net.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(value_head_schema_version=1), "value_head_schema_version"),
        (dict(checkpoint_version=1), "checkpoint_version"),
    ],
)
def test_other_schema_or_version_is_refused(tmp_path, change, match):
    path, _ = head_file(tmp_path)
    torch.save({**torch.load(path, weights_only=True), **change}, path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_resume_from_a_head_checkpoint_is_a_warm_start(tmp_path, capsys):
    path, net = head_file(tmp_path, feature_dim=16)
    ckpt = load_checkpoint(path)
    trainer = Trainer(
        PPOConfig.from_dict({**ckpt["config"], "total_timesteps": 40, "eval_episodes": 0}),
        None,
        tensorboard=False,
        log=lambda m: None,
    )
    warm_start_from_esper(trainer, ckpt, log=lambda m: None)
    assert type(trainer.policy) is FactoredPolicyV2
    for k, v in net.state_dict().items():
        assert torch.equal(v, trainer.policy.state_dict()[k]), k
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
    assert code == 0 and "esper HEAD PPOAgent checkpoint" in capsys.readouterr().err


def _head_run(tmp_path: Path, **overrides) -> Trainer:
    config = make_config(
        "esper-head",
        num_envs=2,
        episode_length=8,
        total_timesteps=16,
        feature_dim=512,
        lstm_hidden_dim=H,
        eval_episodes=0,
        **overrides,
    )
    trainer = Trainer(config, tmp_path / "run", tensorboard=False, log=lambda m: None)
    trainer.train(handle_signals=False)
    return trainer


def test_export_of_a_head_run_writes_heads_layout(tmp_path, capsys):
    trainer = _head_run(tmp_path)
    assert main(["export-esper", str(tmp_path / "run")]) == 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "esper.pt", weights_only=True)
    assert (ckpt["checkpoint_version"], ckpt["value_head_schema_version"]) == (2, 2)
    assert list(ckpt["config"]) == HEAD_SAVE_KEYS  # HEAD's load() passes them as keywords: no extras
    assert ckpt["architecture"] == {"state_dim": 114, "slot_ids": ["r0c0", "r0c1", "r0c2"], "num_slots": 3}
    assert ckpt["train_steps"] == ckpt["aux_training_step"] == trainer.head_train_steps == 1
    vn = ckpt["value_normalizer_state_dict"]
    assert torch.equal(vn["var"], trainer.value_normalizer.var.cpu()) and vn["count"].item() == 16
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, ckpt["network_state_dict"][k]), k
    assert "observation" in ckpt["metadata"]["not_representable"] and "observation" in capsys.readouterr().err


def test_export_refuses_what_heads_load_cannot_rebuild(tmp_path):
    config = make_config(
        "esper-head",
        num_envs=2,
        episode_length=8,
        total_timesteps=16,
        feature_dim=32,
        lstm_hidden_dim=H,
        eval_episodes=0,
    )
    Trainer(config, tmp_path / "run", tensorboard=False, log=lambda m: None).save()
    with pytest.raises(CheckpointError, match="feature_dim 512 and 1 LSTM layer; this run has feature_dim 32"):
        to_esper_checkpoint(load_checkpoint(tmp_path / "run"))


def test_head_to_esper_fast_to_head_keeps_the_config(tmp_path):
    path, _ = head_file(tmp_path)
    original = torch.load(path, weights_only=True)
    ours = from_esper_checkpoint({**original, "path": str(path)}, log=lambda m: None)
    ours["esper_head"] = {"value_normalizer": original["value_normalizer_state_dict"], "head_train_steps": 11}
    back = to_esper_checkpoint(ours, log=lambda m: None)
    for key in HEAD_SAVE_KEYS:
        if key in ("compile_mode", "chunk_length", "batch_size"):
            continue  # written as "off", the episode length and the source's; listed as ignored on the way in
        assert back["config"][key] == original["config"][key], key
    assert back["architecture"]["slot_ids"] == list(original["architecture"]["slot_ids"])


def test_exported_head_checkpoint_opens_in_the_head_standin_agent(esper_standin_head_v2, tmp_path):
    """PPOAgent.load() of the HEAD stand-in (HEAD's required keys, create_policy with architecture's
    state_dim) opens the export; with esper patched the network is the fused class."""
    patch = esper_fast.patch_esper()
    from esper.simic.agent import PPOAgent

    trainer = _head_run(tmp_path)
    assert main(["export-esper", str(tmp_path / "run"), "-o", str(tmp_path / "e.pt")]) == 0
    agent = PPOAgent.load(tmp_path / "e.pt", device="cpu")
    assert type(agent.policy.network) is patch.cls and agent.train_steps == 1
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, agent.policy.state_dict()[k]), k
    agent.save(tmp_path / "again.pt")  # and HEAD's own save of it comes back into esper_fast
    policy, *_ = load_policy(tmp_path / "again.pt")
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, policy.state_dict()[k]), k
