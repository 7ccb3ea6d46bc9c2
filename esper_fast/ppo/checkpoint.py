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

Integrity: every checkpoint carries ``integrity = {"sha256": ...}``, a digest of every other key's
content (tensor bytes, dtypes and shapes, plain values), checked on load: a flipped bit anywhere in
the weights, the optimiser state or the resume state is refused. So are non-finite network weights or
optimiser state (a diverged run), naming the checkpoint and the tensor. For a run directory, the
newest complete checkpoint is used: ``latest.pt``, or a higher-numbered ``update_*.pt`` if a kill
came between writing the two.
"""

from __future__ import annotations

import hashlib
import os
import re
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
    "payload_digest",
]

CHECKPOINT_VERSION = 1
REQUIRED_KEYS = (
    "checkpoint_version",
    "network_state_dict",
    "optimizer_state_dict",
    "train_steps",
    "config",
    "architecture",
)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the requested configuration."""


def _digest_update(h: hashlib._Hash, value: Any) -> None:
    """Feeds a canonical encoding of ``value`` (nested dicts/lists of tensors and plain values)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}:".encode())
        for k in sorted(value, key=repr):
            h.update(f"{k!r}=".encode())
            _digest_update(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"L{len(value)}:".encode())
        for v in value:
            _digest_update(h, v)
    else:
        h.update(f"V{type(value).__name__}{value!r};".encode())


def payload_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of every key of ``payload`` except ``integrity`` and ``path``."""
    h = hashlib.sha256()
    _digest_update(h, {k: v for k, v in payload.items() if k not in ("integrity", "path")})
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus its ``integrity`` digest) to ``path`` atomically (``.tmp``, fsync,
    ``os.replace``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = {**payload, "integrity": {"sha256": payload_digest(payload)}}
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _readable_load_error(exc: Exception) -> str:
    """torch.load's message without its advice to load with weights_only=False (that runs pickled code)."""
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    keep = [
        ln
        for ln in lines
        if "weights_only" not in ln and "re-running" not in ln.lower() and "trust the source" not in ln.lower()
    ]
    text = " ".join(keep).strip() or type(exc).__name__
    if len(keep) < len(lines):  # the weights_only refusal: say what it means instead
        text = (
            "it holds Python objects other than tensors and plain containers, which esper_fast will not "
            f"unpickle (that could run arbitrary code): {text[:300]}"
        )
    return text


def _non_finite(tree: Any, prefix: str) -> str | None:
    """The name of the first floating tensor in ``tree`` with a NaN or inf, or None."""
    if isinstance(tree, torch.Tensor):
        return prefix if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else None
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{prefix}[{k!r}]")
        if found:
            return found
    return None


def _newest_in_run_dir(path: Path) -> Path:
    """``checkpoints/latest.pt``, unless a higher-numbered complete ``update_*.pt`` exists."""
    ckpt_dir = path / "checkpoints"
    latest = ckpt_dir / "latest.pt"
    numbered = sorted(
        (
            (int(m.group(1)), p)
            for p in ckpt_dir.glob("update_*.pt")
            if (m := re.fullmatch(r"update_(\d+)\.pt", p.name))
        ),
        reverse=True,
    )
    if not latest.is_file() and not numbered:
        raise CheckpointError(f"checkpoint not found: {path} is a directory without checkpoints/latest.pt")
    if not numbered:
        return latest
    if not latest.is_file():
        return numbered[0][1]
    try:
        latest_steps = int(_read(latest, "cpu")["train_steps"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        latest_steps = -1  # unreadable latest.pt: the numbered ones decide
    for steps, candidate in numbered:
        if steps <= latest_steps:
            break
        try:
            _verify(_read(candidate, "cpu"), candidate)
            return candidate
        except CheckpointError:
            continue  # e.g. a kill while it was written: try the next one
    return latest


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise CheckpointError(f"cannot read checkpoint {path}: {_readable_load_error(exc)}") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def _verify(ckpt: dict[str, Any], path: Path) -> None:
    """Required keys, version, digest, config types, finite weights and optimiser state."""
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing keys {missing}")
    if ckpt["checkpoint_version"] != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path}: expected checkpoint_version {CHECKPOINT_VERSION}, got {ckpt['checkpoint_version']}"
        )
    integrity = ckpt.get("integrity")
    if integrity is not None:  # checkpoints written before integrity digests carry none
        if not isinstance(integrity, dict) or integrity.get("sha256") != payload_digest(ckpt):
            raise CheckpointError(
                f"checkpoint {path} is corrupt: its content does not match the sha256 digest "
                "stored with it (a damaged or partly overwritten file)"
            )
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"checkpoint {path}: config must be a dict, got {type(ckpt['config']).__name__}")
    try:
        PPOConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: bad config: {exc}") from exc
    for key in ("network_state_dict", "optimizer_state_dict"):
        bad = _non_finite(ckpt[key], key)
        if bad:
            raise CheckpointError(
                f"checkpoint {path}: {bad} has NaN/inf values (the run diverged before this "
                "checkpoint); refusing to evaluate or resume it"
            )


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint (a file, or a run directory: its newest complete checkpoint).

    An esper ``PPOAgent.save()`` file is converted to this layout
    (:func:`esper_fast.integrations.esper_checkpoint.from_esper_checkpoint`: weights as they are, esper's
    config fields mapped or listed as ignored in a logged warning and in ``ckpt["esper_import"]``), then
    verified like any other.

    Raises :class:`CheckpointError` naming the file for: unreadable or non-plain content, missing keys,
    another version, a digest mismatch, a config field of the wrong type or range, NaN/inf weights or
    optimiser state.
    """
    path = Path(path)
    if path.is_dir():
        path = _newest_in_run_dir(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    ckpt = _read(path, map_location)
    from esper_fast.integrations.esper_checkpoint import from_esper_checkpoint, is_esper_checkpoint

    if is_esper_checkpoint(ckpt):  # esper's PPOAgent.save() file: mapped field by field, the rest logged
        ckpt["path"] = str(path)
        ckpt = from_esper_checkpoint(ckpt)  # carries no digest: the rest of _verify applies to the result
        _verify(ckpt, path)
        return ckpt
    _verify(ckpt, path)
    ckpt["path"] = str(path)
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
    shapes = [
        f"{k}: {source} {tuple(state_dict[k].shape)}, network {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
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


def load_policy(
    path: str | os.PathLike, device: str = "cpu", value_mode: str | None = None
) -> tuple[FactoredNetwork, ObsNormalizer, PPOConfig, dict[str, Any]]:
    """``(policy in eval mode, its obs normaliser, its config, the raw checkpoint)`` from a checkpoint."""
    ckpt = load_checkpoint(path, map_location=device)
    try:
        config = PPOConfig.from_dict(
            {**ckpt["config"], "device": device, **({"value_mode": value_mode} if value_mode else {})}
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt['path']}: bad config: {exc}") from exc
    check_architecture(ckpt, config)
    policy = build_policy(config)
    load_network_state(policy, ckpt["network_state_dict"], source=f"checkpoint {ckpt['path']}")
    policy.eval()
    obs_norm = ObsNormalizer(
        architecture(config)["state_dim"],
        config.obs_norm_momentum,
        clip=config.obs_clip,
        device=device,
        enabled=config.normalize_obs,
    )
    if "obs_normalizer" in ckpt:
        obs_norm.load_state_dict(ckpt["obs_normalizer"])
    return policy, obs_norm, config, ckpt
