"""esper ``PPOAgent.save()`` checkpoints <-> esper_fast checkpoints (no esper import needed).

esper's file (``simic/agent/ppo.py::save`` at 0872525b) is one ``torch.save``
dict: ``checkpoint_version`` (1), ``network_state_dict``, ``optimizer_state_dict``, ``train_steps``,
``config`` (the agent's hyperparameters, :data:`ESPER_CONFIG_FIELDS`), ``architecture``
(``state_dim``, ``slot_ids``, ``num_slots``) and optional ``metadata``. esper_fast's adds resume state
and keeps its :class:`~esper_fast.ppo.config.PPOConfig` in ``config``.

* :func:`from_esper_checkpoint` turns esper's dict into esper_fast's (``load_checkpoint`` calls it for
  every file that :func:`is_esper_checkpoint`): the network weights are loaded strictly as they are;
  every esper config field is either mapped to a PPOConfig field (:data:`DIRECT_FIELDS`, the entropy
  schedule, the optimizer's ``lr`` / ``eps``) or listed as ignored with the reason, and the list is
  logged (``logging`` warning) and kept in ``ckpt["esper_import"]``. Nothing is changed silently.
* :func:`to_esper_checkpoint` / :func:`export_esper_checkpoint` write esper's layout from an esper_fast
  checkpoint, with exactly esper's config keys, so esper's ``PPOAgent.load()`` can rebuild the agent;
  what esper cannot represent is listed in ``metadata["not_representable"]`` and logged.

esper HEAD (2016337e, value-head schema v2; ``simic/agent/ppo_agent.py:1599-1677`` save,
``:1679-1879`` load) writes ``checkpoint_version`` 2, ``value_head_schema_version`` 2,
``network_state_dict``, ``optimizer_state_dict``, ``value_normalizer_state_dict`` (mean, var, count),
``train_steps``, ``aux_training_step``, ``config`` (:data:`ESPER_HEAD_CONFIG_FIELDS`, passed back to
``PPOAgent(**config)`` minus ``lstm_hidden_dim``) and ``architecture`` (``state_dim``, ``slot_ids``,
``num_slots``); its load rebuilds the network with ``architecture['state_dim']`` and the bundle's
defaults (feature_dim 512, one LSTM layer). The format is chosen by the network: an esper-head run
(``ppo_variant="head"``, ``FactoredPolicyV2``) exports HEAD's, every other run 0872525b's; on import
:func:`is_esper_checkpoint` recognises both and :func:`from_esper_checkpoint` maps HEAD's fields onto
the ``esper-head`` preset. HEAD's own runs observe 116 features (23 + 31 per slot), which
SeedLifecycleEnv does not produce: such a file cannot warm-start or be evaluated here (a
:class:`~esper_fast.ppo.checkpoint.CheckpointError` says so), but :func:`load_esper_head_network`
builds ``FactoredPolicyV2`` with the file's real ``state_dim`` and loads it strictly.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from esper_fast.constants import HEAD_NAMES, get_feature_size
from esper_fast.version import __version__

__all__ = [
    "DIRECT_FIELDS",
    "ESPER_CONFIG_FIELDS",
    "ESPER_FEATURE_DIM",
    "ESPER_HEAD_CONFIG_FIELDS",
    "export_esper_checkpoint",
    "from_esper_checkpoint",
    "is_esper_checkpoint",
    "is_esper_head_checkpoint",
    "load_esper_head_network",
    "to_esper_checkpoint",
    "warm_start_from_esper",
]

logger = logging.getLogger(__name__)

# The keys of esper's saved ``config`` (0872525b), i.e. PPOAgent.__init__ keywords PPOAgent.load() passes back.
ESPER_CONFIG_FIELDS = (
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
)
# esper field -> PPOConfig field, same meaning and units.
DIRECT_FIELDS = {
    "gamma": "gamma",
    "gae_lambda": "gae_lambda",
    "clip_ratio": "clip_ratio",
    "entropy_coef_min": "entropy_coef_min",
    "value_coef": "value_coef",
    "clip_value": "clip_value",
    "value_clip": "value_clip",
    "target_kl": "target_kl",
    "max_grad_norm": "max_grad_norm",
    "lstm_hidden_dim": "lstm_hidden_dim",
    "num_envs": "num_envs",
    "max_steps_per_env": "episode_length",  # esper's buffer holds one episode of max_epochs steps per env
}
# Fields esper stores that have no meaning in esper_fast's trainer, with the reason.
IGNORED_FIELDS = {
    "n_epochs": "stored but unused by esper's update() (it runs recurrent_n_epochs passes)",
    "batch_size": "stored but unused by esper's update() (one full batch)",
    "chunk_length": "esper's BPTT chunk (= the episode); here every sequence is a whole rollout",
    "compile_mode": "esper's torch.compile mode of the bundle; esper_fast's trainer does not compile",
}
# The keys of esper HEAD's saved ``config`` (2016337e, ppo_agent.py:1626-1663), in its order.
ESPER_HEAD_CONFIG_FIELDS = (
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
)
ESPER_HEAD_CHECKPOINT_VERSION = 2  # HEAD's CHECKPOINT_VERSION (ppo_agent.py:67); load requires equality
# HEAD field -> PPOConfig field, same meaning (beyond DIRECT_FIELDS).
HEAD_DIRECT_FIELDS = {
    **DIRECT_FIELDS,
    "value_coef_start": "value_coef_start",
    "value_warmup_steps": "value_warmup_steps",
    "aux_contribution_coef": "aux_contribution_coef",
    "aux_warmup_steps": "aux_warmup_steps",
    "contribution_loss_clip": "contribution_loss_clip",
    "enable_contribution_aux": "contribution_aux",
}
ESPER_FEATURE_DIM = 512  # esper's LSTMPolicyBundle always builds feature_net with DEFAULT_FEATURE_DIM
ESPER_DEFAULTS = {"n_epochs": 10, "batch_size": 64}  # esper's PPOAgent defaults (unused by its update)


def is_esper_head_checkpoint(ckpt: dict[str, Any]) -> bool:
    """True for an esper HEAD ``PPOAgent.save()`` dict (it carries ``value_head_schema_version``)."""
    return isinstance(ckpt.get("config"), dict) and "value_head_schema_version" in ckpt and "rank_states" not in ckpt


def is_esper_checkpoint(ckpt: dict[str, Any]) -> bool:
    """True for an esper ``PPOAgent.save()`` dict (0872525b's or HEAD's): its config keys are esper's."""
    config = ckpt.get("config")
    if not isinstance(config, dict) or "rank_states" in ckpt:
        return False
    if is_esper_head_checkpoint(ckpt):
        return True
    keys = set(config)
    return keys <= set(ESPER_CONFIG_FIELDS) and bool(keys & {"recurrent_n_epochs", "max_steps_per_env", "chunk_length"})


def _lstm_layers(state_dict: dict[str, Any]) -> int:
    return sum(1 for k in state_dict if re.fullmatch(r"lstm\.weight_ih_l\d+", k))


def from_esper_checkpoint(ckpt: dict[str, Any], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """esper's ``PPOAgent.save()`` dict -> an esper_fast checkpoint dict (see the module docstring).

    The config starts from the ``esper`` preset (esper 0872525b's rules: ``value_mode="q_op"``, slot
    drawn from the env mask alone), then takes every mappable esper field. Raises
    :class:`~esper_fast.ppo.checkpoint.CheckpointError` when the weights and esper's architecture
    disagree or the network cannot be built here.
    """
    from esper_fast.ppo.agent import architecture
    from esper_fast.ppo.checkpoint import CheckpointError
    from esper_fast.ppo.config import make_config

    if is_esper_head_checkpoint(ckpt):
        return from_esper_head_checkpoint(ckpt, log)
    log = log or logger.warning
    source = ckpt.get("path", "esper checkpoint")
    config, arch, sd = dict(ckpt["config"]), dict(ckpt["architecture"]), ckpt["network_state_dict"]
    for key in ("feature_net.0.weight", "lstm.weight_hh_l0", "slot_head.2.weight"):
        if key not in sd:
            raise CheckpointError(f"{source}: esper checkpoint without {key!r} in network_state_dict")
    if "state_dim" not in arch or "num_slots" not in arch:
        raise CheckpointError(
            f"{source}: esper checkpoint architecture needs state_dim and num_slots, got {sorted(arch)}"
        )
    num_slots, state_dim = int(arch["num_slots"]), int(arch["state_dim"])
    hidden = int(sd["lstm.weight_hh_l0"].shape[1])
    problems = []
    if int(sd["slot_head.2.weight"].shape[0]) != num_slots:
        problems.append(
            f"architecture num_slots {num_slots} but slot_head.2.weight has {sd['slot_head.2.weight'].shape[0]} rows"
        )
    if int(sd["feature_net.0.weight"].shape[1]) != state_dim + 4 * num_slots:
        problems.append(
            f"architecture state_dim {state_dim} + 4 x {num_slots} slots != feature_net.0.weight "
            f"input width {sd['feature_net.0.weight'].shape[1]}"
        )
    if "lstm_hidden_dim" in config and int(config["lstm_hidden_dim"]) != hidden:
        problems.append(f"config lstm_hidden_dim {config['lstm_hidden_dim']} but lstm.weight_hh_l0 says {hidden}")
    if state_dim != get_feature_size(num_slots):
        problems.append(
            f"state_dim {state_dim} is not esper_fast's observation size for {num_slots} slots "
            f"({get_feature_size(num_slots)} = 24 + 30 x slots)"
        )
    if problems:
        raise CheckpointError(f"{source}: esper checkpoint cannot be used here: " + "; ".join(problems))

    mapped: dict[str, str] = {}
    ignored: dict[str, str] = {}
    values: dict[str, Any] = {
        "num_slots": num_slots,
        "lstm_hidden_dim": hidden,
        "feature_dim": int(sd["feature_net.0.weight"].shape[0]),
        "lstm_layers": _lstm_layers(sd),
    }
    for field, ours in DIRECT_FIELDS.items():
        if field in config and config[field] is not None:
            values[ours] = config[field]
            mapped[field] = ours
    if "target_kl" in config and config["target_kl"] is None:
        values["target_kl"], mapped["target_kl"] = None, "target_kl"
    if "recurrent_n_epochs" in config:
        values["update_epochs"] = int(config["recurrent_n_epochs"] or 1)
        mapped["recurrent_n_epochs"] = "update_epochs"
    if "entropy_coef_per_head" in config and config["entropy_coef_per_head"] is not None:
        per_head = dict(config["entropy_coef_per_head"])
        extra = sorted(set(per_head) - set(HEAD_NAMES))
        values["entropy_coef_per_head"] = {h: float(v) for h, v in per_head.items() if h in HEAD_NAMES}
        mapped["entropy_coef_per_head"] = "entropy_coef_per_head"
        if extra:
            ignored["entropy_coef_per_head (heads " + ", ".join(extra) + ")"] = "not heads of this policy"
    steps = int(config.get("entropy_anneal_steps") or 0)
    if steps > 0:  # esper: linear entropy_coef_start -> entropy_coef_end over entropy_anneal_steps updates
        values.update(
            entropy_coef=config.get("entropy_coef_start", config.get("entropy_coef")),
            entropy_coef_end=config.get("entropy_coef_end"),
            entropy_anneal_updates=steps,
        )
        mapped.update(
            entropy_coef_start="entropy_coef",
            entropy_coef_end="entropy_coef_end",
            entropy_anneal_steps="entropy_anneal_updates",
        )
        if "entropy_coef" in config:
            ignored["entropy_coef"] = f"{config['entropy_coef']!r}: esper uses entropy_coef_start while annealing"
    else:  # esper: max(entropy_coef, entropy_coef_min); start/end unused
        if "entropy_coef" in config:
            values["entropy_coef"], mapped["entropy_coef"] = config["entropy_coef"], "entropy_coef"
        values.update(entropy_coef_end=None, entropy_anneal_updates=0)
        for field in ("entropy_coef_start", "entropy_coef_end", "entropy_anneal_steps"):
            if field in config:
                ignored[field] = f"{config[field]!r}: unused by esper without annealing (entropy_anneal_steps = 0)"
    if config.get("adaptive_entropy_floor"):
        ignored["adaptive_entropy_floor"] = (
            "True: no effect in esper's update at 0872525b (get_entropy_coef() is called without a mask)"
        )
    elif "adaptive_entropy_floor" in config:
        mapped["adaptive_entropy_floor"] = "(False: esper_fast has no adaptive floor)"
    wd = config.get("weight_decay", 0.0) or 0.0
    if wd:
        ignored["weight_decay"] = f"{wd!r}: esper's AdamW decay on the critic; esper_fast's Adam has none"
    elif "weight_decay" in config:
        mapped["weight_decay"] = "(0: esper_fast's Adam has no weight decay)"
    for field, why in IGNORED_FIELDS.items():
        if field in config:
            ignored[field] = f"{config[field]!r}: {why}"
    groups = (ckpt.get("optimizer_state_dict") or {}).get("param_groups") or []
    if groups:
        for key, ours in (("lr", "learning_rate"), ("eps", "adam_eps")):
            if key in groups[0]:
                values[ours], mapped[f"optimizer {key}"] = float(groups[0][key]), ours
    unknown = sorted(
        set(config) - set(mapped) - set(ignored) - {"entropy_coef_start", "entropy_coef_end", "entropy_anneal_steps"}
    )
    for field in unknown:
        ignored[field] = f"{config[field]!r}: not an esper 0872525b field esper_fast knows"
    try:
        ppo_config = make_config("esper", **values)
    except ValueError as exc:
        raise CheckpointError(f"{source}: esper config does not map to a valid PPOConfig: {exc}") from exc

    notes = [
        "observation normaliser statistics are not in esper's checkpoint (esper keeps them in its "
        "training loop): they start at mean 0, var 1",
        "value_mode 'q_op' and op_conditioned_slot False (the 'esper' preset: esper 0872525b's rules)",
    ]
    ours_arch = architecture(ppo_config)
    if "slot_ids" in arch and list(arch["slot_ids"]) != ours_arch["slot_ids"]:
        notes.append(f"esper slot_ids {list(arch['slot_ids'])} are used in their order as slots 0..{num_slots - 1}")
    log(
        f"{source}: esper PPOAgent checkpoint (update {ckpt.get('train_steps')}); mapped "
        + ", ".join(f"{k}->{v}" for k, v in mapped.items())
        + "; ignored: "
        + ("; ".join(f"{k} = {v}" for k, v in ignored.items()) or "nothing")
        + "; notes: "
        + "; ".join(notes)
    )
    out = {
        "checkpoint_version": ckpt["checkpoint_version"],
        "network_state_dict": sd,
        "optimizer_state_dict": ckpt["optimizer_state_dict"],
        "train_steps": int(ckpt["train_steps"]),
        "config": ppo_config.to_dict(),
        "architecture": ours_arch,
        "esper_import": {
            "source_config": config,
            "source_architecture": arch,
            "mapped": mapped,
            "ignored": ignored,
            "notes": notes,
        },
    }
    if "metadata" in ckpt:
        out["metadata"] = ckpt["metadata"]
    if "path" in ckpt:
        out["path"] = ckpt["path"]
    return out


def _export_metadata(
    ckpt: dict[str, Any], cfg: Any, lost: dict[str, str], what: str, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What both exporters write besides the weights: the metadata (the source's, plus who exported it,
    the esper_fast config, the fields esper cannot represent, the obs normaliser) and esper's
    ``architecture`` (slot ids of an imported esper file kept). Logs ``what`` and the lost fields."""
    source = ckpt.get("path", "checkpoint")
    arch = ckpt["architecture"]
    metadata = dict(ckpt.get("metadata") or {})
    metadata.update(
        {
            "exported_by": f"esper_fast {__version__}",
            "source_checkpoint": str(source),
            "esper_fast_config": cfg.to_dict(),
            "not_representable": lost,
        }
    )
    if "obs_normalizer" in ckpt:
        metadata["esper_fast_obs_normalizer"] = ckpt["obs_normalizer"]
    imported = ckpt.get("esper_import") or {}
    slot_ids = imported.get("source_architecture", {}).get("slot_ids", arch["slot_ids"])
    log(f"{source}: export for {what}: " + "; ".join(f"{k} = {v}" for k, v in lost.items()))
    architecture = {
        "state_dim": int(arch["state_dim"]),
        "slot_ids": list(slot_ids),
        "num_slots": int(arch["num_slots"]),
    }
    return metadata, architecture


def to_esper_checkpoint(ckpt: dict[str, Any], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """An esper_fast checkpoint dict -> esper's ``PPOAgent.save()`` layout (see the module docstring).

    Raises :class:`~esper_fast.ppo.checkpoint.CheckpointError` if esper's ``PPOAgent.load()`` could not
    rebuild the network (esper's bundle always builds ``feature_dim`` 512 and one LSTM layer).
    """
    from esper_fast.ppo.checkpoint import CheckpointError
    from esper_fast.ppo.config import PPOConfig

    log = log or logger.warning
    source = ckpt.get("path", "checkpoint")
    try:
        cfg = PPOConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad config: {exc}") from exc
    if cfg.ppo_variant == "head":  # FactoredPolicyV2: esper HEAD's format
        return to_esper_head_checkpoint(ckpt, log)
    if cfg.feature_dim != ESPER_FEATURE_DIM or cfg.lstm_layers != 1:
        raise CheckpointError(
            f"{source}: esper's PPOAgent.load() rebuilds the network through LSTMPolicyBundle, which always has "
            f"feature_dim {ESPER_FEATURE_DIM} and 1 LSTM layer; this run has feature_dim {cfg.feature_dim}, "
            f"lstm_layers {cfg.lstm_layers} (train with --feature-dim {ESPER_FEATURE_DIM} --lstm-layers 1)"
        )
    annealed = cfg.entropy_anneal_updates > 0 and cfg.entropy_coef_end is not None
    imported = ckpt.get("esper_import") or {}
    src_config = imported.get("source_config", {})
    config = {
        "gamma": cfg.gamma,
        "gae_lambda": cfg.gae_lambda,
        "clip_ratio": cfg.clip_ratio,
        "entropy_coef": cfg.entropy_coef,
        "entropy_coef_start": cfg.entropy_coef,
        "entropy_coef_end": cfg.entropy_coef_end if annealed else cfg.entropy_coef,
        "entropy_coef_min": cfg.entropy_coef_min,
        "adaptive_entropy_floor": False,
        "entropy_anneal_steps": cfg.entropy_anneal_updates if annealed else 0,
        "entropy_coef_per_head": {h: float(cfg.entropy_coef_per_head.get(h, 1.0)) for h in HEAD_NAMES},
        "value_coef": cfg.value_coef,
        "clip_value": cfg.clip_value,
        "value_clip": cfg.value_clip,
        "target_kl": cfg.target_kl,
        "recurrent_n_epochs": cfg.update_epochs,
        "lstm_hidden_dim": cfg.lstm_hidden_dim,
        "chunk_length": cfg.episode_length,
        "num_envs": cfg.num_envs,
        "max_steps_per_env": cfg.episode_length,
        "n_epochs": src_config.get("n_epochs", ESPER_DEFAULTS["n_epochs"]),
        "batch_size": src_config.get("batch_size", ESPER_DEFAULTS["batch_size"]),
        "max_grad_norm": cfg.max_grad_norm,
        "weight_decay": 0.0,
        "compile_mode": "off",
    }
    assert tuple(config) == ESPER_CONFIG_FIELDS
    lost: dict[str, str] = {}
    if cfg.num_minibatches != 1:
        lost["num_minibatches"] = f"{cfg.num_minibatches}: esper's update uses one full batch"
    if cfg.anneal_lr:
        lost["anneal_lr"] = "True: esper has no learning-rate schedule (the optimizer state keeps the last lr)"
    if cfg.value_mode != "q_op":
        lost["value_mode"] = f"{cfg.value_mode!r}: esper 0872525b's value is Q(s, op) (the weights load all the same)"
    if cfg.op_conditioned_slot:
        lost["op_conditioned_slot"] = "True: esper 0872525b draws the slot from the env mask alone"
    for field, esper_value in (
        ("normalize_advantages", True),
        ("normalize_obs", True),
        ("normalize_rewards", True),
        ("obs_norm_momentum", 0.99),
        ("reward_clip", 10.0),
    ):
        if getattr(cfg, field) != esper_value:
            lost[field] = f"{getattr(cfg, field)!r}: esper always uses {esper_value!r}"
    if cfg.rollout_steps != cfg.episode_length:
        lost["rollout_steps"] = (
            f"{cfg.rollout_steps}: esper collects one whole episode ({cfg.episode_length}) per update"
        )
    lost["obs_normalizer"] = "esper's checkpoint has no place for it: kept in metadata['esper_fast_obs_normalizer']"
    lost["learning_rate / adam_eps"] = "carried by optimizer_state_dict (esper's load() restores them from it)"
    metadata, architecture = _export_metadata(
        ckpt, cfg, lost, "esper's PPOAgent.load(); not representable in esper's checkpoint", log
    )
    return {
        "checkpoint_version": 1,
        "network_state_dict": ckpt["network_state_dict"],
        "optimizer_state_dict": ckpt["optimizer_state_dict"],
        "train_steps": int(ckpt["train_steps"]),
        "config": config,
        "architecture": architecture,
        "metadata": metadata,
    }


def export_esper_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike | None = None, log: Callable[[str], None] | None = None
) -> Path:
    """Write esper's layout of the checkpoint ``src`` (a file or a run directory) to ``dst``.

    ``dst`` defaults to ``esper.pt`` beside the source checkpoint. Returns the path written.
    """
    from esper_fast.ppo.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    payload = to_esper_checkpoint(ckpt, log=log)
    out = Path(dst) if dst is not None else Path(ckpt["path"]).with_name("esper.pt")
    return save_checkpoint(out, payload)


def warm_start_from_esper(trainer: Any, ckpt: dict[str, Any], log: Callable[[str], None] | None = None) -> None:
    """Load an imported esper checkpoint's network weights (strictly) into a fresh ``Trainer``.

    A warm start: the optimizer, step counters, env, normalisers and RNG streams stay the trainer's
    own (esper's Adam moments and ``train_steps`` are not carried over); ``trainer.config`` should come
    from ``ckpt["config"]`` (the mapped esper config) plus any overrides.
    """
    from esper_fast.ppo.checkpoint import check_architecture, load_network_state

    check_architecture(ckpt, trainer.config)
    load_network_state(trainer.policy, ckpt["network_state_dict"], source=f"esper checkpoint {ckpt.get('path', '')}")
    (log or trainer.log)(
        f"warm start: network weights from esper checkpoint {ckpt.get('path', '')} "
        f"(esper update {ckpt.get('train_steps')}); optimizer state and counters start afresh"
    )


# ---- esper HEAD (2016337e, value-head schema v2) ----------------------------------------------------------
def _head_layout(sd: dict[str, Any], arch: dict[str, Any], source: str) -> dict[str, int]:
    """num_slots / state_dim / feature_dim / lstm_hidden_dim / lstm_layers of a HEAD state_dict, checked
    against its ``architecture`` (HEAD load's pre-checks, ppo_agent.py:1796-1824)."""
    from esper_fast.ppo.checkpoint import CheckpointError

    for key in (
        "feature_net.0.weight",
        "lstm.layers.0.weight_hh_l0",
        "slot_head.2.weight",
        "state_value_head.0.weight",
    ):
        if key not in sd:
            raise CheckpointError(f"{source}: esper HEAD checkpoint without {key!r} in network_state_dict")
    if "state_dim" not in arch or "num_slots" not in arch:
        raise CheckpointError(
            f"{source}: esper checkpoint architecture needs state_dim and num_slots, got {sorted(arch)}"
        )
    out = {
        "num_slots": int(arch["num_slots"]),
        "state_dim": int(arch["state_dim"]),
        "feature_dim": int(sd["feature_net.0.weight"].shape[0]),
        "lstm_hidden_dim": int(sd["lstm.layers.0.weight_hh_l0"].shape[1]),
        "lstm_layers": sum(1 for k in sd if re.fullmatch(r"lstm\.layers\.\d+\.weight_ih_l0", k)),
    }
    problems = []
    if int(sd["slot_head.2.weight"].shape[0]) != out["num_slots"]:
        problems.append(
            f"architecture num_slots {out['num_slots']} but slot_head.2.weight has "
            f"{sd['slot_head.2.weight'].shape[0]} rows"
        )
    if int(sd["feature_net.0.weight"].shape[1]) != out["state_dim"] + 4 * out["num_slots"]:
        problems.append(
            f"architecture state_dim {out['state_dim']} + 4 x {out['num_slots']} slots != "
            f"feature_net.0.weight input width {sd['feature_net.0.weight'].shape[1]}"
        )
    if problems:
        raise CheckpointError(f"{source}: esper HEAD checkpoint is inconsistent: " + "; ".join(problems))
    return out


def load_esper_head_network(ckpt: dict[str, Any] | str | os.PathLike, device: str = "cpu") -> Any:
    """``FactoredPolicyV2`` built with an esper HEAD checkpoint's REAL layout (``architecture['state_dim']``,
    116 for HEAD's own 3-slot runs; slots, widths and layers from the weights), weights loaded strictly.

    ``ckpt``: HEAD's ``PPOAgent.save()`` dict or its path (read with ``weights_only=True``). Eval mode.
    """
    import torch

    from esper_fast.policy_v2 import FactoredPolicyV2
    from esper_fast.ppo.checkpoint import CheckpointError, load_network_state

    if not isinstance(ckpt, dict):
        path = str(ckpt)
        ckpt = {**torch.load(path, map_location=device, weights_only=True), "path": path}
    source = ckpt.get("path", "esper HEAD checkpoint")
    if not is_esper_head_checkpoint(ckpt):
        raise CheckpointError(f"{source}: not an esper HEAD checkpoint (no value_head_schema_version)")
    lay = _head_layout(ckpt["network_state_dict"], dict(ckpt["architecture"]), source)
    net = FactoredPolicyV2(
        lay["state_dim"], lay["feature_dim"], lay["lstm_hidden_dim"], lay["lstm_layers"], lay["num_slots"]
    ).to(device)
    load_network_state(net, ckpt["network_state_dict"], source=str(source))
    return net.eval()


def from_esper_head_checkpoint(ckpt: dict[str, Any], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """esper HEAD's ``PPOAgent.save()`` dict -> an esper_fast checkpoint on the ``esper-head`` preset.

    Every HEAD config field is mapped to a PPOConfig field or listed as ignored with the reason (logged,
    kept in ``ckpt["esper_import"]``). Raises :class:`~esper_fast.ppo.checkpoint.CheckpointError` for a
    schema / version HEAD itself would refuse, inconsistent weights, or a ``state_dim`` that is not
    SeedLifecycleEnv's observation (HEAD's own 116: use :func:`load_esper_head_network`).
    """
    from esper_fast.constants_v2 import ENTROPY_FLOOR_PENALTY_COEF, ENTROPY_FLOOR_PER_HEAD, VALUE_HEAD_SCHEMA_VERSION
    from esper_fast.ppo.agent import architecture
    from esper_fast.ppo.checkpoint import CHECKPOINT_VERSION, CheckpointError
    from esper_fast.ppo.config import make_config

    log = log or logger.warning
    source = ckpt.get("path", "esper HEAD checkpoint")
    if ckpt.get("value_head_schema_version") != VALUE_HEAD_SCHEMA_VERSION:
        raise CheckpointError(
            f"{source}: value_head_schema_version {ckpt.get('value_head_schema_version')!r}, "
            f"expected {VALUE_HEAD_SCHEMA_VERSION} (esper HEAD refuses other schemas too)"
        )
    if ckpt.get("checkpoint_version") != ESPER_HEAD_CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{source}: esper HEAD checkpoint_version {ckpt.get('checkpoint_version')!r}, "
            f"expected {ESPER_HEAD_CHECKPOINT_VERSION}"
        )
    config, arch, sd = dict(ckpt["config"]), dict(ckpt["architecture"]), ckpt["network_state_dict"]
    lay = _head_layout(sd, arch, source)
    if lay["state_dim"] != get_feature_size(lay["num_slots"]):
        raise CheckpointError(
            f"{source}: esper HEAD network with state_dim {lay['state_dim']} (HEAD's own observation is 23 + 31 x "
            f"slots = {23 + 31 * lay['num_slots']} features) cannot run on SeedLifecycleEnv, whose observation is "
            f"{get_feature_size(lay['num_slots'])} different features: no warm start or evaluation here. Load the "
            "network itself with esper_fast.integrations.esper_checkpoint.load_esper_head_network(path)."
        )
    mapped: dict[str, str] = {}
    ignored: dict[str, str] = {}
    values: dict[str, Any] = {k: lay[k] for k in ("num_slots", "feature_dim", "lstm_hidden_dim", "lstm_layers")}
    for field, ours in HEAD_DIRECT_FIELDS.items():
        if field in config and (config[field] is not None or field in ("target_kl", "value_coef_start")):
            values[ours], mapped[field] = config[field], ours
    if "recurrent_n_epochs" in config:
        values["update_epochs"], mapped["recurrent_n_epochs"] = int(config["recurrent_n_epochs"] or 1), "update_epochs"
    if config.get("entropy_coef_per_head") is not None:
        per_head = dict(config["entropy_coef_per_head"])
        values["entropy_coef_per_head"] = {h: float(v) for h, v in per_head.items() if h in HEAD_NAMES}
        mapped["entropy_coef_per_head"] = "entropy_coef_per_head"
    steps = int(config.get("entropy_anneal_steps") or 0)  # HEAD's get_entropy_coef (ppo_agent.py:432-451)
    if steps > 0:
        values.update(
            entropy_coef=config.get("entropy_coef_start", config.get("entropy_coef")),
            entropy_coef_end=config.get("entropy_coef_end"),
            entropy_anneal_updates=steps,
        )
        mapped.update(
            entropy_coef_start="entropy_coef",
            entropy_coef_end="entropy_coef_end",
            entropy_anneal_steps="entropy_anneal_updates",
            entropy_coef="(unused while annealing)",
        )
    else:
        values.update(entropy_coef=config.get("entropy_coef", 0.05), entropy_coef_end=None, entropy_anneal_updates=0)
        mapped.update(
            entropy_coef="entropy_coef",
            entropy_coef_start="(unused: no annealing)",
            entropy_coef_end="(unused: no annealing)",
            entropy_anneal_steps="entropy_anneal_updates = 0",
        )
    for field, default in (
        ("entropy_floor", ENTROPY_FLOOR_PER_HEAD),
        ("entropy_floor_penalty_coef", ENTROPY_FLOOR_PENALTY_COEF),
    ):
        if field in config:
            if config[field] == default:
                mapped[field] = "entropy_floor (HEAD's leyline values)"
            else:
                ignored[field] = f"{config[field]!r}: esper_fast's entropy floor uses leyline's values only"
    if config.get("aux_stop_gradient", True) is not True:
        ignored["aux_stop_gradient"] = "False: esper_fast always detaches the trunk for the contribution predictor"
    elif "aux_stop_gradient" in config:
        mapped["aux_stop_gradient"] = "(True: as esper_fast)"
    if config.get("clip_value"):
        ignored["clip_value"] = "True: the esper-head preset has no value clipping (HEAD's default)"
        values.pop("clip_value", None)
    wd = config.get("weight_decay", 0.0) or 0.0
    if wd:
        ignored["weight_decay"] = f"{wd!r}: HEAD's AdamW decay on the critics; esper_fast's Adam has none"
    elif "weight_decay" in config:
        mapped["weight_decay"] = "(0: esper_fast's Adam has no weight decay)"
    if "total_train_steps" in config:
        ignored["total_train_steps"] = (
            f"{config['total_train_steps']!r}: HEAD's entropy-floor schedule denominator; "
            "esper_fast uses the run's number of updates"
        )
    for field, why in (
        ("chunk_length", IGNORED_FIELDS["chunk_length"]),
        ("compile_mode", IGNORED_FIELDS["compile_mode"]),
        ("batch_size", "stored but unused by HEAD's update() (one full batch)"),
    ):
        if field in config:
            ignored[field] = f"{config[field]!r}: {why}"
    for field in sorted(set(config) - set(mapped) - set(ignored)):
        ignored[field] = f"{config[field]!r}: not an esper HEAD field esper_fast knows"
    groups = (ckpt.get("optimizer_state_dict") or {}).get("param_groups") or []
    if groups:
        for key, ours in (("lr", "learning_rate"), ("eps", "adam_eps")):
            if key in groups[0]:
                values[ours], mapped[f"optimizer {key}"] = float(groups[0][key]), ours
    try:
        ppo_config = make_config("esper-head", **values)
    except ValueError as exc:
        raise CheckpointError(f"{source}: esper HEAD config does not map to a valid PPOConfig: {exc}") from exc
    notes = [
        "observation normaliser statistics are not in esper's checkpoint: they start at mean 0, var 1",
        f"value normaliser and HEAD's train_steps {ckpt.get('train_steps')} kept in esper_import "
        "(a warm start loads the weights only)",
    ]
    ours_arch = architecture(ppo_config)
    log(
        f"{source}: esper HEAD PPOAgent checkpoint (update {ckpt.get('train_steps')}); mapped "
        + ", ".join(f"{k}->{v}" for k, v in mapped.items())
        + "; ignored: "
        + ("; ".join(f"{k} = {v}" for k, v in ignored.items()) or "nothing")
        + "; notes: "
        + "; ".join(notes)
    )
    out = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "network_state_dict": sd,
        "optimizer_state_dict": ckpt["optimizer_state_dict"],
        "train_steps": int(ckpt["train_steps"]),
        "config": ppo_config.to_dict(),
        "architecture": ours_arch,
        "esper_import": {
            "format": "2016337e",
            "source_config": config,
            "source_architecture": arch,
            "source_checkpoint_version": ckpt.get("checkpoint_version"),
            "value_normalizer_state_dict": ckpt.get("value_normalizer_state_dict"),
            "aux_training_step": ckpt.get("aux_training_step"),
            "mapped": mapped,
            "ignored": ignored,
            "notes": notes,
        },
    }
    for key in ("metadata", "path"):
        if key in ckpt:
            out[key] = ckpt[key]
    return out


def to_esper_head_checkpoint(ckpt: dict[str, Any], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """An esper-head run's checkpoint -> esper HEAD's ``PPOAgent.save()`` layout (exactly HEAD's keys and
    config keys), so HEAD's ``PPOAgent.load()`` rebuilds the agent (network via ``architecture['state_dim']``)."""
    import torch

    from esper_fast.constants_v2 import ENTROPY_FLOOR_PENALTY_COEF, ENTROPY_FLOOR_PER_HEAD, VALUE_HEAD_SCHEMA_VERSION
    from esper_fast.ppo.checkpoint import CheckpointError
    from esper_fast.ppo.config import PPOConfig

    source = ckpt.get("path", "checkpoint")
    cfg, arch = PPOConfig.from_dict(ckpt["config"]), ckpt["architecture"]
    if cfg.feature_dim != ESPER_FEATURE_DIM or cfg.lstm_layers != 1:
        raise CheckpointError(
            f"{source}: esper HEAD's PPOAgent.load() rebuilds the network through create_policy with the bundle's "
            f"defaults, feature_dim {ESPER_FEATURE_DIM} and 1 LSTM layer; this run has feature_dim {cfg.feature_dim}, "
            f"lstm_layers {cfg.lstm_layers} (train with --feature-dim {ESPER_FEATURE_DIM} --lstm-layers 1)"
        )
    head_state = ckpt.get("esper_head") or {}
    vn = head_state.get("value_normalizer")
    if vn is None:
        raise CheckpointError(
            f"{source}: esper-head checkpoint without its value normaliser (esper_head.value_normalizer)"
        )
    steps = int(head_state.get("head_train_steps", ckpt["train_steps"]))
    annealed = cfg.entropy_anneal_updates > 0 and cfg.entropy_coef_end is not None
    imported = ckpt.get("esper_import") or {}
    src = imported.get("source_config", {}) if imported.get("format") == "2016337e" else {}
    config = {
        "gamma": cfg.gamma,
        "gae_lambda": cfg.gae_lambda,
        "clip_ratio": cfg.clip_ratio,
        "entropy_coef": cfg.entropy_coef,
        "entropy_coef_start": cfg.entropy_coef,
        "entropy_coef_end": cfg.entropy_coef_end if annealed else cfg.entropy_coef,
        "entropy_coef_min": cfg.entropy_coef_min,
        "entropy_anneal_steps": cfg.entropy_anneal_updates if annealed else 0,
        "entropy_coef_per_head": {h: float(cfg.entropy_coef_per_head.get(h, 1.0)) for h in HEAD_NAMES},
        "entropy_floor": dict(ENTROPY_FLOOR_PER_HEAD),
        "entropy_floor_penalty_coef": {
            h: (c if cfg.entropy_floor else 0.0) for h, c in ENTROPY_FLOOR_PENALTY_COEF.items()
        },
        "total_train_steps": src.get("total_train_steps", 1_000_000),
        "value_coef": cfg.value_coef,
        "value_coef_start": cfg.value_coef_start,
        "value_warmup_steps": cfg.value_warmup_steps,
        "clip_value": False,
        "value_clip": cfg.value_clip,
        "target_kl": cfg.target_kl,
        "recurrent_n_epochs": cfg.update_epochs,
        "lstm_hidden_dim": cfg.lstm_hidden_dim,
        "chunk_length": cfg.episode_length,
        "num_envs": cfg.num_envs,
        "max_steps_per_env": cfg.episode_length,
        "batch_size": src.get("batch_size", ESPER_DEFAULTS["batch_size"]),
        "max_grad_norm": cfg.max_grad_norm,
        "weight_decay": 0.0,
        "compile_mode": "off",
        "aux_contribution_coef": cfg.aux_contribution_coef,
        "aux_warmup_steps": cfg.aux_warmup_steps,
        "aux_stop_gradient": True,
        "contribution_loss_clip": cfg.contribution_loss_clip,
        "enable_contribution_aux": cfg.contribution_aux,
    }
    assert tuple(config) == ESPER_HEAD_CONFIG_FIELDS
    lost: dict[str, str] = {
        "observation": f"this network reads SeedLifecycleEnv's {arch['state_dim']}-feature observation, not esper "
        f"HEAD's {23 + 31 * int(arch['num_slots'])} features: HEAD's load() rebuilds it with "
        f"state_dim {arch['state_dim']}, but esper's own environments feed other features",
        "obs_normalizer": "esper's checkpoint has no place for it: kept in metadata['esper_fast_obs_normalizer']",
        "learning_rate / adam_eps": "carried by optimizer_state_dict (esper's load() restores them from it)",
    }
    if cfg.num_minibatches != 1:
        lost["num_minibatches"] = f"{cfg.num_minibatches}: HEAD's update uses one full batch"
    if cfg.anneal_lr:
        lost["anneal_lr"] = "True: HEAD's agent has no learning-rate schedule"
    if not cfg.probability_floors:
        lost["probability_floors"] = "False: HEAD's agent always uses PROBABILITY_FLOOR_PER_HEAD"
    if cfg.head_baseline != "state_value":
        lost["head_baseline"] = f"{cfg.head_baseline!r}: HEAD's baseline is V(s) from state_value_head"
    if cfg.rollout_steps != cfg.episode_length:
        lost["rollout_steps"] = (
            f"{cfg.rollout_steps}: HEAD collects one whole episode ({cfg.episode_length}) per update"
        )
    metadata, architecture = _export_metadata(
        ckpt, cfg, lost, "esper HEAD's PPOAgent.load(); not representable", log or logger.warning
    )
    as_tensor = lambda v: torch.as_tensor(v, dtype=torch.float32).clone()  # noqa: E731
    return {
        "checkpoint_version": ESPER_HEAD_CHECKPOINT_VERSION,
        "value_head_schema_version": VALUE_HEAD_SCHEMA_VERSION,
        "network_state_dict": ckpt["network_state_dict"],
        "optimizer_state_dict": ckpt["optimizer_state_dict"],
        "value_normalizer_state_dict": {
            "mean": as_tensor(vn["mean"]),
            "var": as_tensor(vn["var"]),
            "count": as_tensor(vn["count"]),
        },
        "train_steps": steps,
        "aux_training_step": steps,
        "config": config,
        "architecture": architecture,
        "metadata": metadata,
    }
