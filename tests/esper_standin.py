"""A small stand-in for the esper package, written into a temporary directory by the tests.

CI has no esper. This builds a package laid out like esper-lite at 0872525b where esper_fast's
integration touches it (module paths, class names, ``MaskedCategorical.validate``,
``InvalidStateMachineError``, the ``isinstance`` assertions of ``PPOAgent``, the bundle's call-time
import, the save() layout and load()'s state_dim inference), written from facts about esper-lite at
that commit - not esper's code. ``layout`` picks the network:

* ``"0872525b"`` - esper 0872525b's constructor and state_dict layout;
* ``"head"`` - esper HEAD's constructor (no head-size arguments) and an extra ``state_value_head``;
* ``"extra_module"`` - 0872525b's constructor but an extra ``aux_head`` module;
* ``"head_v2"`` - esper HEAD (2016337e)'s constructor AND its value-head schema v2 state_dict layout
  (residual LSTM, ``state_value_head``, ``q_head``, ``contribution_predictor``; written from the
  layout facts of esper HEAD's ``tamiyo/networks/factored_lstm.py``, not from esper_fast's network), HEAD's agent
  module ``esper.simic.agent.ppo_agent`` and HEAD's bundle call.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

_FILES = {
    "esper/__init__.py": "",
    "esper/leyline/__init__.py": """
        HEAD_NAMES = ("slot", "blueprint", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op")
    """,
    "esper/leyline/slot_config.py": """
        from dataclasses import dataclass

        @dataclass(frozen=True)
        class SlotConfig:
            slot_ids: tuple = ("r0c0", "r0c1", "r0c2")

            @property
            def num_slots(self):
                return len(self.slot_ids)

            @classmethod
            def default(cls):
                return cls()
    """,
    "esper/tamiyo/__init__.py": "",
    "esper/tamiyo/policy/__init__.py": "",
    "esper/tamiyo/policy/action_masks.py": """
        class InvalidStateMachineError(RuntimeError):
            pass

        class MaskedCategorical:
            validate: bool = True
    """,
    "esper/tamiyo/networks/__init__.py": """
        from esper.tamiyo.networks.factored_lstm import FactoredRecurrentActorCritic, GetActionResult

        __all__ = ["FactoredRecurrentActorCritic", "GetActionResult"]
    """,
    "esper/tamiyo/policy/lstm_bundle.py": """
        from esper.leyline.slot_config import SlotConfig

        class LSTMPolicyBundle:
            def __init__(self, feature_dim=None, hidden_dim=512, num_lstm_layers=1, slot_config=None, dropout=0.0):
                self.hidden_dim, self.num_lstm_layers = hidden_dim, num_lstm_layers
                self.slot_config = slot_config or SlotConfig.default()
                self.feature_dim = feature_dim if feature_dim is not None else 24 + 30 * self.slot_config.num_slots
                from esper.tamiyo.networks import FactoredRecurrentActorCritic  # call-time import, as esper
                self._network = FactoredRecurrentActorCritic(
                    state_dim=self.feature_dim, num_slots=self.slot_config.num_slots,
                    lstm_hidden_dim=hidden_dim, lstm_layers=num_lstm_layers)

            @property
            def network(self):
                return self._network

            def get_action(self, features, blueprint_indices, masks, hidden=None, deterministic=False):
                return self._network.get_action(
                    features, blueprint_indices, hidden, slot_mask=masks.get("slot"),
                    blueprint_mask=masks.get("blueprint"), style_mask=masks.get("style"),
                    tempo_mask=masks.get("tempo"), op_mask=masks.get("op"),
                    alpha_target_mask=masks.get("alpha_target"), alpha_speed_mask=masks.get("alpha_speed"),
                    alpha_curve_mask=masks.get("alpha_curve"), deterministic=deterministic,
                    return_op_logits=True)

            def initial_hidden(self, batch_size):
                return self._network.get_initial_hidden(batch_size, next(self._network.parameters()).device)

            def state_dict(self):
                return self._network.state_dict()

            def load_state_dict(self, state_dict, strict=True):
                self._network.load_state_dict(state_dict, strict=strict)

            def to(self, device):
                self._network = self._network.to(device)
                return self
    """,
    "esper/tamiyo/policy/factory.py": """
        def create_policy(policy_type="lstm", state_dim=None, num_slots=4, slot_config=None, device="cpu",
                          compile_mode="off", lstm_hidden_dim=512, **kwargs):
            from esper.leyline.slot_config import SlotConfig
            from esper.tamiyo.policy.lstm_bundle import LSTMPolicyBundle
            if slot_config is None:
                slot_config = SlotConfig(tuple(f"r0c{i}" for i in range(num_slots)))
            config = {"feature_dim": state_dim, "hidden_dim": lstm_hidden_dim, "slot_config": slot_config, **kwargs}
            return LSTMPolicyBundle(**config).to(device)
    """,
    "esper/simic/__init__.py": "",
    "esper/simic/agent/__init__.py": """
        from esper.simic.agent.ppo import PPOAgent

        __all__ = ["PPOAgent"]
    """,
    "esper/simic/agent/ppo.py": """
        from pathlib import Path

        import torch

        class PPOAgent:
            def __init__(self, policy, slot_config=None, lr=3e-4, gamma=0.995, gae_lambda=0.98, clip_ratio=0.2,
                         entropy_coef=0.05, entropy_coef_start=None, entropy_coef_end=None, entropy_coef_min=0.01,
                         adaptive_entropy_floor=False, entropy_anneal_steps=0, entropy_coef_per_head=None,
                         value_coef=0.5, clip_value=True, value_clip=10.0, max_grad_norm=1.0, n_epochs=10,
                         recurrent_n_epochs=None, batch_size=64, target_kl=0.015, weight_decay=0.0,
                         device="cuda:0", chunk_length=150, num_envs=4, max_steps_per_env=150,
                         compile_mode="off"):
                self.policy = policy
                self.slot_config = slot_config or policy.slot_config
                from esper.tamiyo.networks import FactoredRecurrentActorCritic
                assert isinstance(policy.network, FactoredRecurrentActorCritic)
                self.config = dict(
                    gamma=gamma, gae_lambda=gae_lambda, clip_ratio=clip_ratio, entropy_coef=entropy_coef,
                    entropy_coef_start=entropy_coef if entropy_coef_start is None else entropy_coef_start,
                    entropy_coef_end=entropy_coef if entropy_coef_end is None else entropy_coef_end,
                    entropy_coef_min=entropy_coef_min, adaptive_entropy_floor=adaptive_entropy_floor,
                    entropy_anneal_steps=entropy_anneal_steps,
                    entropy_coef_per_head=entropy_coef_per_head or {"op": 1.0, "slot": 1.0, "blueprint": 1.3,
                        "style": 1.2, "tempo": 1.3, "alpha_target": 1.2, "alpha_speed": 1.2, "alpha_curve": 1.2},
                    value_coef=value_coef, clip_value=clip_value, value_clip=value_clip, target_kl=target_kl,
                    recurrent_n_epochs=1 if recurrent_n_epochs is None else recurrent_n_epochs,
                    lstm_hidden_dim=policy.hidden_dim, chunk_length=chunk_length, num_envs=num_envs,
                    max_steps_per_env=max_steps_per_env, n_epochs=n_epochs, batch_size=batch_size,
                    max_grad_norm=max_grad_norm, weight_decay=weight_decay, compile_mode=compile_mode)
                self.optimizer = torch.optim.Adam(policy.network.parameters(), lr=lr, eps=1e-5)
                self.train_steps = 0

            def update(self, batch):
                from esper.tamiyo.networks import FactoredRecurrentActorCritic
                assert isinstance(self.policy.network, FactoredRecurrentActorCritic)
                log_probs, values, entropy, _ = self.policy.network.evaluate_actions(
                    batch["states"], batch["blueprint_indices"], batch["actions"], hidden=None,
                    **{f"{h}_mask": m for h, m in batch["masks"].items()})
                loss = -sum(lp.mean() for lp in log_probs.values()) + 0.5 * (values - batch["returns"]).pow(2).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.train_steps += 1
                return {"loss": float(loss.detach())}

            def save(self, path, metadata=None):
                from esper.tamiyo.networks import FactoredRecurrentActorCritic
                net = self.policy.network
                assert isinstance(net, FactoredRecurrentActorCritic)
                out = {"checkpoint_version": 1, "network_state_dict": self.policy.state_dict(),
                       "optimizer_state_dict": self.optimizer.state_dict(), "train_steps": self.train_steps,
                       "config": dict(self.config),
                       "architecture": {"state_dim": net.state_dim, "slot_ids": self.slot_config.slot_ids,
                                        "num_slots": self.slot_config.num_slots}}
                if metadata:
                    out["metadata"] = metadata
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                torch.save(out, path)

            @classmethod
            def load(cls, path, device="cuda:0"):
                from esper.leyline.slot_config import SlotConfig
                ckpt = torch.load(path, map_location=device, weights_only=True)
                config, state_dict = ckpt["config"], ckpt["network_state_dict"]
                slot_config = SlotConfig(slot_ids=tuple(ckpt["architecture"]["slot_ids"]))
                state_dim = state_dict["feature_net.0.weight"].shape[1]  # 0872525b: includes the embeddings
                from esper.tamiyo.policy.factory import create_policy
                policy = create_policy(policy_type="lstm", feature_dim=state_dim, slot_config=slot_config,
                                       hidden_dim=config["lstm_hidden_dim"], device=device, compile_mode="off")
                agent = cls(policy=policy, slot_config=slot_config, device=device,
                            **{k: v for k, v in config.items() if k != "lstm_hidden_dim"})
                agent.policy.load_state_dict(state_dict)
                agent.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
                agent.train_steps = ckpt["train_steps"]
                return agent
    """,
}

_NETWORK = """
    from dataclasses import dataclass

    import torch
    from torch import nn

    from esper.tamiyo.policy.action_masks import InvalidStateMachineError, MaskedCategorical  # noqa: F401

    @dataclass(frozen=True)
    class GetActionResult:
        actions: dict
        log_probs: dict
        values: torch.Tensor
        hidden: tuple
        sampled_op: torch.Tensor
        op_logits: object = None

    class BlueprintEmbedding(nn.Module):
        def __init__(self, num_blueprints=13, embed_dim=4):
            super().__init__()
            self.embedding = nn.Embedding(num_blueprints + 1, embed_dim)
            self.register_buffer("_null_idx", torch.tensor(num_blueprints, dtype=torch.int64))

    def _head(h, n):
        return nn.Sequential(nn.Linear(h, h // 2), nn.ReLU(), nn.Linear(h // 2, n))

    class FactoredRecurrentActorCritic(nn.Module):
        {signature}
            super().__init__()
            sizes = dict(slot=3 if num_slots is None else num_slots, style=4, tempo=3, alpha_target=3,
                         alpha_speed=4, alpha_curve=5, op=6)
            self.state_dim, self.num_slots, self.lstm_hidden_dim, self.lstm_layers = (
                state_dim, sizes["slot"], lstm_hidden_dim, lstm_layers)
            H = lstm_hidden_dim
            self.feature_net = nn.Sequential(nn.Linear(state_dim + 4 * sizes["slot"], feature_dim),
                                             nn.LayerNorm(feature_dim), nn.ReLU())
            self.lstm = nn.LSTM(feature_dim, H, num_layers=lstm_layers, batch_first=True)
            self.lstm_ln = nn.LayerNorm(H)
            for head in ("slot", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op"):
                setattr(self, head + "_head", _head(H, sizes[head]))
            self.blueprint_embedding = BlueprintEmbedding(13, 4)
            self.blueprint_head = nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Linear(H, H // 2), nn.ReLU(),
                                                nn.Linear(H // 2, 13))
            self.value_head = nn.Sequential(nn.Linear(H + 6, H // 2), nn.ReLU(), nn.Linear(H // 2, 1))
            {extra}
"""
_SIGNATURES = {
    "0872525b": "def __init__(self, state_dim, num_slots=None, num_blueprints=None, num_styles=None, num_tempo=None, "
    "num_alpha_targets=None, num_alpha_speeds=None, num_alpha_curves=None, num_ops=None, "
    "feature_dim=512, lstm_hidden_dim=512, lstm_layers=1, slot_config=None):",
    "head": "def __init__(self, state_dim, feature_dim=512, lstm_hidden_dim=512, lstm_layers=1, slot_config=None):\n"
    "            num_slots = None",
}
_EXTRA = {
    "0872525b": "pass",
    "head": "self.state_value_head = nn.Sequential(nn.Linear(H, 1))",
    "extra_module": "self.aux_head = nn.Linear(H, 3)",
}


_NETWORK_V2 = """
    from dataclasses import dataclass

    import torch
    from torch import nn

    from esper.leyline.slot_config import SlotConfig
    from esper.tamiyo.policy.action_masks import InvalidStateMachineError, MaskedCategorical  # noqa: F401

    @dataclass(frozen=True)
    class GetActionResult:
        actions: dict
        log_probs: dict
        values: torch.Tensor
        hidden: tuple
        sampled_op: torch.Tensor
        op_logits: object = None

    class BlueprintEmbedding(nn.Module):
        def __init__(self, num_blueprints=13, embed_dim=4):
            super().__init__()
            self.num_blueprints = num_blueprints
            self.embedding = nn.Embedding(num_blueprints + 1, embed_dim)
            self.register_buffer("_null_idx", torch.tensor(num_blueprints, dtype=torch.int64))

        def forward(self, blueprint_indices):  # HEAD: -1 is the empty slot (null row)
            return self.embedding(torch.where(blueprint_indices == -1, self._null_idx, blueprint_indices))

    class ResidualLSTM(nn.Module):
        def __init__(self, input_size, hidden_size, num_layers):
            super().__init__()
            self.input_proj = nn.Linear(input_size, hidden_size) if input_size != hidden_size else nn.Identity()
            self.layers = nn.ModuleList(nn.LSTM(hidden_size, hidden_size, batch_first=True)
                                        for _ in range(num_layers))
            self.layer_norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers))

    def _small(h, n):
        return nn.Sequential(nn.Linear(h, h // 2), nn.ReLU(), nn.Linear(h // 2, n))

    def _value(i, h):
        return nn.Sequential(nn.Linear(i, h // 2), nn.LayerNorm(h // 2), nn.ReLU(), nn.Linear(h // 2, h // 4),
                             nn.LayerNorm(h // 4), nn.ReLU(), nn.Linear(h // 4, h // 8), nn.ReLU(),
                             nn.Linear(h // 8, 1))

    class FactoredRecurrentActorCritic(nn.Module):
        def __init__(self, state_dim, feature_dim=512, lstm_hidden_dim=512, lstm_layers=1, slot_config=None):
            super().__init__()
            slot_config = slot_config or SlotConfig.default()
            S, H = slot_config.num_slots, lstm_hidden_dim
            self.state_dim, self.num_slots, self.lstm_hidden_dim, self.lstm_layers = state_dim, S, H, lstm_layers
            (self.num_blueprints, self.num_styles, self.num_tempo, self.num_alpha_targets, self.num_alpha_speeds,
             self.num_alpha_curves, self.num_ops) = 13, 4, 3, 3, 4, 5, 6
            self.feature_net = nn.Sequential(nn.Linear(state_dim + 4 * S, feature_dim),
                                             nn.LayerNorm(feature_dim), nn.ReLU())
            self.lstm = ResidualLSTM(feature_dim, H, lstm_layers)
            self.lstm_ln = nn.Identity()
            sizes = dict(slot=S, style=4, tempo=3, alpha_target=3, alpha_speed=4, alpha_curve=5, op=6)
            for head in ("slot", "style", "tempo", "alpha_target", "alpha_speed", "alpha_curve", "op"):
                setattr(self, head + "_head", _small(H, sizes[head]))
            self.blueprint_embedding = BlueprintEmbedding(13, 4)
            self.blueprint_head = nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Linear(H, H // 2), nn.ReLU(),
                                                nn.Linear(H // 2, 13))
            self.state_value_head = _value(H, H)
            self.q_head = _value(H + 6, H)
            self.contribution_predictor = nn.Sequential(
                nn.Linear(H, H // 2), nn.LayerNorm(H // 2), nn.ReLU(), nn.Dropout(0.1),
                nn.Linear(H // 2, H // 4), nn.ReLU(), nn.Linear(H // 4, S))

        def forward(self, *args, **kwargs):
            raise AssertionError("stand-in: esper's own forward must not run when patched")

        def get_action(self, *args, **kwargs):
            raise AssertionError("stand-in: esper's own get_action must not run when patched")
"""
_HEAD_FILES = {
    "esper/tamiyo/policy/lstm_bundle.py": """
        from esper.leyline.slot_config import SlotConfig

        class LSTMPolicyBundle:
            def __init__(self, feature_dim=None, hidden_dim=512, num_lstm_layers=1, slot_config=None):
                self.slot_config = slot_config or SlotConfig.default()
                self.feature_dim = feature_dim if feature_dim is not None else 23 + 31 * self.slot_config.num_slots
                from esper.tamiyo.networks import FactoredRecurrentActorCritic  # call-time import, as esper
                self._network = FactoredRecurrentActorCritic(
                    state_dim=self.feature_dim, slot_config=self.slot_config,
                    lstm_hidden_dim=hidden_dim, lstm_layers=num_lstm_layers)

            @property
            def network(self):
                return self._network

            @property
            def hidden_dim(self):
                return self._network.lstm_hidden_dim

            def state_dict(self):
                return self._network.state_dict()

            def load_state_dict(self, state_dict, strict=True):
                self._network.load_state_dict(state_dict, strict=strict)

            def to(self, device):
                self._network = self._network.to(device)
                return self
    """,
    "esper/simic/agent/__init__.py": """
        from esper.simic.agent.ppo_agent import PPOAgent

        __all__ = ["PPOAgent"]
    """,
    "esper/simic/agent/ppo_agent.py": """
        import torch

        CHECKPOINT_VERSION = 2
        VALUE_HEAD_SCHEMA_VERSION = 2

        class ValueNormalizer:
            def __init__(self):
                self.mean, self.var, self.count = torch.zeros(()), torch.ones(()), torch.zeros(())

            def state_dict(self):
                return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count.clone()}

            def load_state_dict(self, state):
                self.mean, self.var, self.count = state["mean"], state["var"], state["count"]

        class PPOAgent:  # HEAD's save()/load() layout (2016337e ppo_agent.py:1599-1879, facts only)
            def __init__(self, policy, slot_config=None, lr=3e-4, device="cpu", **config):
                self.policy = policy
                self.slot_config = slot_config or policy.slot_config
                from esper.tamiyo.networks import FactoredRecurrentActorCritic
                assert isinstance(policy.network, FactoredRecurrentActorCritic)
                self.config = {**config, "lstm_hidden_dim": policy.hidden_dim}
                self.optimizer = torch.optim.Adam(policy.network.parameters(), lr=lr, eps=1e-5)
                self.value_normalizer = ValueNormalizer()
                self.train_steps = self._aux_training_step = 0

            def save(self, path, metadata=None):
                net = self.policy.network
                out = {"checkpoint_version": CHECKPOINT_VERSION, "value_head_schema_version": VALUE_HEAD_SCHEMA_VERSION,
                       "network_state_dict": self.policy.state_dict(),
                       "optimizer_state_dict": self.optimizer.state_dict(),
                       "value_normalizer_state_dict": self.value_normalizer.state_dict(),
                       "train_steps": self.train_steps, "aux_training_step": self._aux_training_step,
                       "config": dict(self.config),
                       "architecture": {"state_dim": net.state_dim, "slot_ids": self.slot_config.slot_ids,
                                        "num_slots": self.slot_config.num_slots}}
                if metadata:
                    out["metadata"] = metadata
                torch.save(out, path)

            @classmethod
            def load(cls, path, device="cuda:0"):
                from esper.leyline.slot_config import SlotConfig
                from esper.tamiyo.policy.factory import create_policy
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
                for key in ("checkpoint_version", "value_head_schema_version", "network_state_dict",
                            "optimizer_state_dict", "architecture", "config", "train_steps", "aux_training_step",
                            "value_normalizer_state_dict"):
                    if key not in ckpt:
                        raise RuntimeError(f"Incompatible checkpoint format: missing required field {key!r}")
                if ckpt["value_head_schema_version"] != VALUE_HEAD_SCHEMA_VERSION:
                    raise RuntimeError("Value-head schema mismatch")
                if ckpt["checkpoint_version"] != CHECKPOINT_VERSION:
                    raise RuntimeError("Checkpoint version mismatch")
                config, arch = ckpt["config"], ckpt["architecture"]
                if "compile_mode" not in config or "n_epochs" in config:
                    raise RuntimeError("Incompatible checkpoint config")
                slot_config = SlotConfig(slot_ids=tuple(arch["slot_ids"]))
                policy = create_policy(policy_type="lstm", slot_config=slot_config, state_dim=int(arch["state_dim"]),
                                       lstm_hidden_dim=config["lstm_hidden_dim"], device=device, compile_mode="off")
                agent = cls(policy=policy, slot_config=slot_config, device=device,
                            **{k: v for k, v in config.items() if k != "lstm_hidden_dim"})
                agent.policy.load_state_dict(ckpt["network_state_dict"])
                agent.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
                agent.train_steps, agent._aux_training_step = ckpt["train_steps"], ckpt["aux_training_step"]
                agent.value_normalizer.load_state_dict(ckpt["value_normalizer_state_dict"])
                return agent

            def update(self, batch):
                from esper.tamiyo.networks import FactoredRecurrentActorCritic
                net = self.policy.network
                assert isinstance(net, FactoredRecurrentActorCritic)
                log_probs, values, entropy, _, contributions, q = net.evaluate_actions(
                    batch["states"], batch["blueprint_indices"], batch["actions"],
                    **{f"{h}_mask": m for h, m in batch["masks"].items()})
                loss = (-sum(lp.mean() for lp in log_probs.values()) + (values - batch["returns"]).pow(2).mean()
                        + (q - batch["returns"]).pow(2).mean())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.train_steps += 1
                return {"loss": float(loss.detach())}
    """,
}


def write_standin(root: Path, layout: str = "0872525b") -> Path:
    """Write the stand-in package under ``root``; returns ``root`` (put it on sys.path)."""
    files = dict(_FILES)
    if layout == "head_v2":
        del files["esper/simic/agent/ppo.py"]
        files.update(_HEAD_FILES)
        files["esper/tamiyo/networks/factored_lstm.py"] = _NETWORK_V2
    else:
        signature = _SIGNATURES["head" if layout == "head" else "0872525b"]
        files["esper/tamiyo/networks/factored_lstm.py"] = _NETWORK.replace("{signature}", signature).replace(
            "{extra}", _EXTRA[layout]
        )
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def drop_esper_modules() -> None:
    """Forget every imported ``esper`` module (so the next import reads the current sys.path)."""
    for name in [n for n in sys.modules if n == "esper" or n.startswith("esper.")]:
        del sys.modules[name]


def _fixture(layout: str):
    import pytest

    @pytest.fixture
    def standin(tmp_path, monkeypatch):
        """The stand-in esper importable for one test; unpatched and forgotten afterwards."""
        import esper_fast

        esper_fast.unpatch_esper()
        drop_esper_modules()
        monkeypatch.syspath_prepend(str(write_standin(tmp_path / f"esper_{layout}", layout)))
        yield layout
        esper_fast.unpatch_esper()
        drop_esper_modules()

    return standin


esper_standin = _fixture("0872525b")
esper_standin_head = _fixture("head")
esper_standin_extra = _fixture("extra_module")
esper_standin_head_v2 = _fixture("head_v2")
