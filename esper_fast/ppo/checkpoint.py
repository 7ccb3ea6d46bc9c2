"""Checkpoints: esper's layout plus everything needed to resume a run exactly.

A checkpoint is one ``torch.save`` dict, written to ``<path>.tmp`` and renamed into place (atomic):

* esper's keys (``simic/agent/ppo.py::save``): ``checkpoint_version``, ``network_state_dict`` (esper's
  module names and shapes: loads with ``strict=True`` into ``FactoredPolicy`` or esper's
  ``FactoredRecurrentActorCritic`` of the same architecture), ``optimizer_state_dict``,
  ``train_steps``, ``config`` (the ``PPOConfig`` fields), ``architecture`` (``state_dim``,
  ``num_slots``, ``slot_ids``, ``feature_dim``, ``lstm_hidden_dim``, ``lstm_layers``);
* resume state: ``global_step``, ``obs_normalizer``, ``world_size`` and ``rank_states`` (one per
  process: env state, LSTM state, reward normaliser, RNG states), and ``metadata``.

Loads use ``weights_only=True``; mismatches raise :class:`CheckpointError` naming every key and shape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esper_fast.network import FactoredNetwork
from esper_fast.ppo.agent import architecture, build_policy
from esper_fast.ppo.config import PPOConfig
from esper_fast.ppo.normalize import ObsNormalizer

__all__ = [
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "check_architecture",
    "load_network_state",
    "load_policy",
]

CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("checkpoint_version", "network_state_dict", "optimizer_state_dict", "train_steps", "config",
                 "architecture")  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the requested configuration."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (``.tmp`` then ``os.replace``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and sanity-check a checkpoint (a file, or a run directory holding checkpoints/latest.pt).

    An esper ``PPOAgent.save()`` file is converted to this layout
    (:func:`esper_fast.integrations.esper_checkpoint.from_esper_checkpoint`: weights as they are, esper's
    config fields mapped or listed as ignored in a logged warning and in ``ckpt["esper_import"]``).
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "latest.pt"
        if not candidate.is_file():
            raise CheckpointError(f"checkpoint not found: {path} is a directory without checkpoints/latest.pt")
        path = candidate
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing keys {missing}")
    if ckpt["checkpoint_version"] != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path}: expected checkpoint_version {CHECKPOINT_VERSION}, "
                              f"got {ckpt['checkpoint_version']}")  # fmt: skip
    ckpt["path"] = str(path)
    from esper_fast.integrations.esper_checkpoint import from_esper_checkpoint, is_esper_checkpoint

    if is_esper_checkpoint(ckpt):  # esper's PPOAgent.save() file: mapped field by field, the rest logged
        ckpt = from_esper_checkpoint(ckpt)
    return ckpt


def check_architecture(ckpt: dict[str, Any], config: PPOConfig) -> None:
    """Raise :class:`CheckpointError` if ``config`` builds a network of another shape than the checkpoint's."""
    saved, wanted = ckpt["architecture"], architecture(config)
    diff = [f"{k}: checkpoint {saved.get(k)!r}, config {v!r}" for k, v in wanted.items() if saved.get(k) != v]
    if diff:
        raise CheckpointError(f"checkpoint {ckpt.get('path', '')} does not match the configuration: " + "; ".join(diff))


def load_network_state(network: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` after checking key sets and shapes, with every mismatch named."""
    own = network.state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    shapes = [f"{k}: {source} {tuple(state_dict[k].shape)}, network {tuple(own[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]  # fmt: skip
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        if shapes:
            parts.append("mismatched shapes [" + "; ".join(shapes) + "]")
        raise CheckpointError(f"{source} does not fit the network: " + ", ".join(parts))
    network.load_state_dict(state_dict, strict=True)


def load_policy(path: str | os.PathLike, device: str = "cpu",
                value_mode: str | None = None) -> tuple[FactoredNetwork, ObsNormalizer, PPOConfig, dict[str, Any]]:  # fmt: skip
    """``(policy in eval mode, its obs normaliser, its config, the raw checkpoint)`` from a checkpoint."""
    ckpt = load_checkpoint(path, map_location=device)
    try:
        config = PPOConfig.from_dict({**ckpt["config"], "device": device,
                                      **({"value_mode": value_mode} if value_mode else {})})  # fmt: skip
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt['path']}: bad config: {exc}") from exc
    check_architecture(ckpt, config)
    policy = build_policy(config)
    load_network_state(policy, ckpt["network_state_dict"], source=f"checkpoint {ckpt['path']}")
    policy.eval()
    obs_norm = ObsNormalizer(architecture(config)["state_dim"], config.obs_norm_momentum, clip=config.obs_clip,
                             device=device, enabled=config.normalize_obs)  # fmt: skip
    if "obs_normalizer" in ckpt:
        obs_norm.load_state_dict(ckpt["obs_normalizer"])
    return policy, obs_norm, config, ckpt
