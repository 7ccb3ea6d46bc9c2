"""``PPOConfig``: every knob of the trainer, with esper's values (commit 0872525b) as the defaults.

The defaults are esper's ``PPOAgent`` / ``train_ppo_vectorized`` defaults (esper-lite 0872525b), so a
bare ``PPOConfig()`` is esper's run. Presets (:data:`PRESETS`) override a few fields:

* ``smoke``   - seconds on CPU (2 updates, 32 hidden), for tests and a first try;
* ``default`` - the no-flag CPU run of ``esper-fast train``: 128 hidden, 16 envs x 150 steps, 250
  updates of 4 epochs x 4 minibatches (600k env steps; measured times in the README); beats the heuristic;
* ``cpu-fast`` - the default network and PPO on 256 envs (64 updates of 4 epochs x 16 minibatches of 16 envs,
  2.46M env steps): what the fused paths' cheaper env-step buys; README has its 1024-episode evaluation;
* ``esper``   - esper's exact run (512 hidden, 4 envs x 150 steps, 100 episodes, one full-batch
  epoch), with the slot drawn from the env mask alone as at 0872525b;
* ``esper-head`` - esper HEAD (2016337e)'s network (``FactoredPolicyV2``, value-head schema v2) and
  HEAD's PPO where it differs (``ppo_variant="head"``; see :mod:`esper_fast.ppo.head_update` and
  ``docs/esper-head-ppo.md``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import re
import textwrap
import typing
from dataclasses import dataclass, field
from typing import Any

from esper_fast.constants import HEAD_NAMES, TRAINER_VALUE_MODES

__all__ = ["PPOConfig", "PRESETS", "ENTROPY_COEF_PER_HEAD", "make_config", "field_docs"]

PPO_VARIANTS = ("0872525b", "head")
HEAD_BASELINES = ("state_value", "expected_q")
SEED_LIMIT = 2**62  # seeds plus per-rank offsets stay inside torch.manual_seed's 64-bit range


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# esper's per-head entropy multipliers (simic/agent/ppo.py ENTROPY_COEF_PER_HEAD).
ENTROPY_COEF_PER_HEAD: dict[str, float] = {
    "op": 1.0,
    "slot": 1.0,
    "blueprint": 1.3,
    "style": 1.2,
    "tempo": 1.3,
    "alpha_target": 1.2,
    "alpha_speed": 1.2,
    "alpha_curve": 1.2,
}


@dataclass(frozen=True)
class PPOConfig:
    """Trainer configuration. Sizes are per process; ``total_timesteps`` counts all processes."""

    # ---- run -----------------------------------------------------------------------------------
    seed: int = 42
    """Seeds the network init, the action sampler and the envs (esper's default 42)."""
    device: str = "cpu"
    """Torch device for envs, policy and update: "cpu" (default) or "cuda" / "cuda:N"."""
    torch_threads: int = 1
    """CPU threads for torch (``torch.set_num_threads``); small recurrent nets run fastest on 1.
    0 leaves torch's setting alone."""
    total_timesteps: int = 15_000
    """Env steps to train for, all processes together (esper: 100 episodes x 150 epochs)."""

    # ---- environment (SeedLifecycleEnv; every other dynamic keeps EnvConfig's default) ---------
    num_envs: int = 4
    """Parallel envs per process (esper DEFAULT_N_ENVS)."""
    episode_length: int = 150
    """Epochs (decisions) per episode before truncation (esper DEFAULT_EPISODE_LENGTH)."""
    rollout_steps: int | None = None
    """Steps every env runs per update; None = episode_length (esper: one episode per batch)."""
    num_slots: int = 3
    """Seed slots per env (slot head size; observation has 24 + 30 * num_slots features)."""
    topology: str = "cnn"
    """Blueprint set of the host: "cnn" or "transformer"."""
    max_seeds: int = 0
    """Germinations allowed per episode; 0 = unlimited."""

    # ---- policy ----------------------------------------------------------------------------------
    feature_dim: int = 512
    """Width of feature_net (esper DEFAULT_FEATURE_DIM)."""
    lstm_hidden_dim: int = 512
    """LSTM hidden size H (esper DEFAULT_LSTM_HIDDEN_DIM); heads use H / 2."""
    lstm_layers: int = 1
    """LSTM layers."""
    value_mode: str = "expected"
    """Value baseline: "expected" (default: V(s) = sum_a pi(a|s) Q(s, a) from the same kernel pass;
    unbiased, see docs/value-baselines.md), "q_op" (Q(s, chosen op), bootstrap Q(s', argmax op):
    esper 0872525b's rule, which starves the op head of its advantage), or "legacy" (esper's
    double-draw bug, ablations only). FactoredPolicy itself keeps esper's "q_op" default."""
    backend: str = "auto"
    """select_op backend for FactoredPolicy: "auto", "torch", "cpu", "cuda" or "triton"."""
    op_conditioned_slot: bool = True
    """Sample the slot among the slots where the chosen op is valid (env ``slot_by_op``; esper HEAD).
    Off = esper 0872525b: the slot is drawn from the env's slot mask alone (many actions become WAIT)."""

    ppo_variant: str = "0872525b"
    """Which esper's PPO: "0872525b" (every preset but esper-head; FactoredPolicy, Q(s, op) critic) or "head":
    esper HEAD 2016337e's network FactoredPolicyV2 and update (docs/esper-head-ppo.md): V(s) critic on
    ValueNormalizer-normalised returns (normalization.py:256-316, ppo_agent.py:587-694), explained
    variance de-normalised, advantage std floor 0.1 (leyline:169, rollout_buffer.py:605-646), q_head
    auxiliary at 0.5 * value_coef (ppo_update.py:362-371), forced-step weights (ppo_update.py:273-377),
    causal masks from the effective op (ppo_agent.py:1163-1170), finiteness gate
    (ppo_agent.py:1068-1135), joint-ratio statistics and KL (ppo_update.py:57-150), train_steps counted
    after real optimiser steps (ppo_agent.py:1589-1595), the anchored reference pass for every one of
    update_epochs (HEAD's recurrent_n_epochs, default 1; ppo_agent.py:209-235,921-979,1200-1209), the
    contribution auxiliary loss (contribution_aux below). The observation is the env's (114 features for
    3 slots) fed unchanged: HEAD's network takes state_dim as an argument, see README."""
    value_warmup_steps: int = 0
    """ppo_variant "head": value_coef warms up linearly from value_coef_start over this many optimiser-stepped
    updates (HEAD value_warmup_steps, default 0 = off; ppo_agent.py:128-134,453-470)."""
    value_coef_start: float | None = None
    """ppo_variant "head": the warm-up's start value; None = 0.1 * value_coef (HEAD's default)."""
    head_baseline: str = "state_value"
    """ppo_variant "head": the value GAE uses: "state_value" (HEAD: V(s) from state_value_head) or "expected_q"
    (sum_a pi(a|s) Q(s, a) from q_head, returned by the same get_action kernel pass; a study option,
    docs/value-baselines.md). Both heads are trained either way."""
    probability_floors: bool = True
    """ppo_variant "head": HEAD's PROBABILITY_FLOOR_PER_HEAD in get_action and evaluate_actions
    (ppo_agent.py:260-265,972,1022)."""
    entropy_floor: bool = True
    """ppo_variant "head": HEAD's per-head entropy-floor penalty (ENTROPY_FLOOR_PER_HEAD /
    ENTROPY_FLOOR_PENALTY_COEF, scaled by training progress; ppo_update.py:155-240, ppo_agent.py:472-500)."""
    contribution_aux: bool = True
    """ppo_variant "head": HEAD's contribution auxiliary loss (enable_contribution_aux, default on;
    ppo_agent.py:185,1293-1307): MSE of contribution_predictor (trunk detached, aux_stop_gradient) against
    per-slot counterfactual contributions clipped to +-contribution_loss_clip, over active slots at steps
    with a fresh measurement (ppo_update.py:442-480). Targets here: the env's true counterfactual
    (SeedLifecycleEnv.counterfactual_contributions; HEAD's are measured by ablation,
    action_execution.py:97-143, vectorized_trainer.py:955-992)."""
    aux_contribution_coef: float = 0.05
    """ppo_variant "head": the contribution loss's full coefficient (HEAD aux_contribution_coef, ppo_agent.py:164)."""
    aux_warmup_steps: int = 1000
    """ppo_variant "head": the coefficient ramps linearly from 0 over this many optimiser-stepped updates
    (HEAD aux_warmup_steps, ppo_agent.py:165,1301-1304; its counter advances with train_steps, :1595)."""
    contribution_loss_clip: float = 10.0
    """ppo_variant "head": contribution targets are clipped to +-this (HEAD contribution_loss_clip,
    ppo_agent.py:184; ppo_update.py:466-467)."""

    # ---- speed of the update (issue 9; none changes the math) -------------------------------------
    fused: bool = True
    """The fused paths (FactoredPolicy's fused action selection in the rollout, the fused update path).
    False: the same run with every fused path off - ReferencePolicy (esper's torch ops) in the rollout and
    its per-head ``evaluate_actions`` in the update, from the same initial weights (checks that learning is
    unchanged where the math is unchanged; the action sampler draws a different random stream)."""
    compile: bool = False
    """Compile the update's heads + fused scoring op with torch.compile (the LSTM trunk stays eager:
    nn.LSTM's oneDNN/cuDNN kernel beats an unrolled graph); needs the fused update path (FactoredPolicy)."""
    compile_backend: str = "inductor"
    """torch.compile backend used by ``compile`` ("inductor"; "aot_eager" traces without code generation)."""
    amp: bool = False
    """bf16 autocast around the update's forward pass (meant for GPU; also runs on CPU). Parameters, Adam
    state and the scoring op's outputs stay fp32."""
    fused_adam: bool | None = None
    """Adam's fused (one-kernel) implementation: None = on CUDA only, True = always, False = never."""

    # ---- PPO -----------------------------------------------------------------------------------
    learning_rate: float = 3e-4
    """Adam learning rate (esper DEFAULT_LEARNING_RATE)."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over the run (esper: off)."""
    adam_eps: float = 1e-5
    """Adam epsilon (esper: 1e-5)."""
    gamma: float = 0.995
    """Discount (esper DEFAULT_GAMMA)."""
    gae_lambda: float = 0.98
    """GAE lambda (esper passes 0.98)."""
    clip_ratio: float = 0.2
    """Per-head PPO ratio clip epsilon."""
    clip_value: bool = True
    """Clip the value update around the rollout's Q(s, stored op) (esper: on)."""
    value_clip: float = 10.0
    """Value clip range (esper DEFAULT_VALUE_CLIP)."""
    value_coef: float = 0.5
    """Weight of the value loss (esper DEFAULT_VALUE_COEF at 0872525b)."""
    entropy_coef: float = 0.05
    """Entropy coefficient (start value when annealed; esper DEFAULT_ENTROPY_COEF)."""
    entropy_coef_end: float | None = None
    """Entropy coefficient reached after ``entropy_anneal_updates``; None = entropy_coef (no anneal)."""
    entropy_anneal_updates: int = 0
    """Updates over which the entropy coefficient moves linearly to entropy_coef_end; 0 = none."""
    entropy_coef_min: float = 0.01
    """Floor of the entropy coefficient (esper DEFAULT_ENTROPY_COEF_MIN)."""
    entropy_coef_per_head: dict[str, float] = field(default_factory=lambda: dict(ENTROPY_COEF_PER_HEAD))
    """Per-head entropy multipliers (esper ENTROPY_COEF_PER_HEAD); missing heads use 1.0."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (esper DEFAULT_MAX_GRAD_NORM)."""
    update_epochs: int = 1
    """Passes over the rollout per update (esper: recurrent_n_epochs = 1)."""
    num_minibatches: int = 1
    """Minibatches per pass, each a set of whole env sequences (esper: 1 = the full batch)."""
    target_kl: float | None = 0.015
    """Stop the update before a step whose approx KL exceeds 1.5 * target_kl; None = never."""
    normalize_advantages: bool = True
    """Normalise advantages over the whole rollout (mean 0, std 1; esper: on)."""
    normalize_obs: bool = True
    """Normalise observations with running EMA statistics (esper: on)."""
    obs_norm_momentum: float = 0.99
    """EMA momentum of the observation statistics (esper: 0.99)."""
    obs_clip: float = 10.0
    """Clip of the normalised observations."""
    normalize_rewards: bool = True
    """Divide rewards by their running std (Welford, no mean shift; esper: on)."""
    reward_clip: float = 10.0
    """Clip of the normalised rewards (esper: 10)."""

    # ---- outputs ---------------------------------------------------------------------------------
    checkpoint_every: int = 0
    """Save a numbered checkpoint every this many updates (0 = none; see checkpoint_interval_s)."""
    checkpoint_interval_s: float = 120.0
    """Refresh checkpoints/latest.pt after any update that ends this many seconds after the last save,
    so a SIGKILL (OOM, preemption) loses at most about this much work; 0 = only at the end and on Ctrl-C."""
    eval_episodes: int = 1024
    """Episodes of the final evaluation against the oracle, heuristic and random baselines (0 = skip); at 1024
    the README's runs have standard errors of 0.25-0.45 return points (0.2-0.3 for paired differences to
    the heuristic), and the evaluation takes about 20 s of a loaded 2-core machine."""
    eval_seed: int = 12345
    """Env seed of the final evaluation (the same episodes for every policy)."""

    # ---- derived (computed in __post_init__) -------------------------------------------------
    batch_size: int = field(init=False)
    """Transitions per update per process: num_envs * rollout_steps."""
    minibatch_envs: int = field(init=False)
    """Env sequences per minibatch: num_envs // num_minibatches."""
    num_updates: int = field(init=False)
    """Updates of a single-process run: ceil(total_timesteps / batch_size)."""

    def __post_init__(self) -> None:
        if self.rollout_steps is None:
            object.__setattr__(self, "rollout_steps", self.episode_length)
        object.__setattr__(self, "entropy_coef_per_head", dict(self.entropy_coef_per_head))
        self._validate()
        object.__setattr__(self, "batch_size", self.num_envs * self.rollout_steps)
        object.__setattr__(self, "minibatch_envs", self.num_envs // self.num_minibatches)
        object.__setattr__(self, "num_updates", self.updates_for(1))

    def updates_for(self, world_size: int) -> int:
        """Updates each process runs when ``world_size`` processes share ``total_timesteps``."""
        return max(1, math.ceil(self.total_timesteps / (self.batch_size * world_size)))

    def entropy_coef_at(self, update: int) -> float:
        """esper's ``get_entropy_coef``: linear anneal over ``entropy_anneal_updates``, floored."""
        coef = self.entropy_coef
        if self.entropy_anneal_updates > 0 and self.entropy_coef_end is not None:
            frac = min(1.0, update / self.entropy_anneal_updates)
            coef = self.entropy_coef + frac * (self.entropy_coef_end - self.entropy_coef)
        return max(coef, self.entropy_coef_min)

    def learning_rate_at(self, update: int, num_updates: int) -> float:
        """``learning_rate``, or its linear decay to 0 over ``num_updates`` when ``anneal_lr``."""
        if not self.anneal_lr:
            return self.learning_rate
        return self.learning_rate * max(0.0, 1.0 - update / num_updates)

    def _check_types(self) -> None:
        """Every field holds a value of its annotated type (a checkpoint's ``num_envs: "4"`` is named)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value, kind = getattr(self, f.name), hints[f.name]
            args = typing.get_args(kind)
            if value is None and type(None) in args:
                continue
            base = next((a for a in args if a is not type(None)), kind) if args and type(None) in args else kind
            if typing.get_origin(base) is dict:
                ok = isinstance(value, dict) and all(isinstance(k, str) and _is_real(v) for k, v in value.items())
                want = "a dict head -> number"
            elif base is bool:
                ok, want = isinstance(value, bool), "a bool"
            elif base is int:
                ok, want = isinstance(value, int) and not isinstance(value, bool), "an int"
            elif base is float:
                ok, want = _is_real(value), "a number"
            elif base is str:
                ok, want = isinstance(value, str), "a str"
            else:
                continue
            if not ok:
                raise TypeError(f"{f.name}: expected {want}, got {type(value).__name__} {value!r}")
        for name, value in [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.init] + [
            (f"entropy_coef_per_head[{h!r}]", v) for h, v in self.entropy_coef_per_head.items()
        ]:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value}")

    def _validate(self) -> None:
        self._check_types()
        for name in ("seed", "eval_seed"):
            if not 0 <= getattr(self, name) < SEED_LIMIT:
                raise ValueError(f"{name}: expected an int in [0, 2**62), got {getattr(self, name)}")
        positive = (
            "total_timesteps",
            "num_envs",
            "episode_length",
            "rollout_steps",
            "num_slots",
            "feature_dim",
            "lstm_hidden_dim",
            "lstm_layers",
            "update_epochs",
            "num_minibatches",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        non_negative = (
            "learning_rate",
            "clip_ratio",
            "value_clip",
            "value_coef",
            "entropy_coef",
            "entropy_coef_min",
            "max_grad_norm",
            "reward_clip",
            "obs_clip",
            "max_seeds",
            "entropy_anneal_updates",
            "checkpoint_every",
            "checkpoint_interval_s",
            "eval_episodes",
            "torch_threads",
            "entropy_coef_end",
        )
        for name in non_negative:
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda", "obs_norm_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected in [0, 1], got {getattr(self, name)}")
        if self.lstm_hidden_dim % 2:
            raise ValueError(f"lstm_hidden_dim: expected an even number (heads use H / 2), got {self.lstm_hidden_dim}")
        if self.value_mode not in TRAINER_VALUE_MODES:
            raise ValueError(f"value_mode: expected one of {TRAINER_VALUE_MODES}, got {self.value_mode!r}")
        if self.topology not in ("cnn", "transformer"):
            raise ValueError(f"topology: expected 'cnn' or 'transformer', got {self.topology!r}")
        if self.num_minibatches > self.num_envs:
            raise ValueError(
                f"num_minibatches: minibatches are sets of whole env sequences, so expected "
                f"<= num_envs ({self.num_envs}), got {self.num_minibatches}"
            )
        if self.num_envs % self.num_minibatches:
            raise ValueError(
                f"num_minibatches: expected a divisor of num_envs ({self.num_envs}), got {self.num_minibatches}"
            )
        if self.target_kl is not None and self.target_kl <= 0:
            raise ValueError(f"target_kl: expected > 0 or None, got {self.target_kl}")
        if self.adam_eps <= 0:
            raise ValueError(f"adam_eps: expected > 0, got {self.adam_eps}")
        negative_heads = {h: v for h, v in self.entropy_coef_per_head.items() if v < 0}
        if negative_heads:
            raise ValueError(f"entropy_coef_per_head: expected >= 0, got {negative_heads}")
        unknown = sorted(set(self.entropy_coef_per_head) - set(HEAD_NAMES))
        if unknown:
            raise ValueError(f"entropy_coef_per_head: unknown heads {unknown}, expected a subset of {list(HEAD_NAMES)}")
        if self.ppo_variant not in PPO_VARIANTS:
            raise ValueError(f"ppo_variant: expected one of {PPO_VARIANTS}, got {self.ppo_variant!r}")
        if self.head_baseline not in HEAD_BASELINES:
            raise ValueError(f"head_baseline: expected one of {HEAD_BASELINES}, got {self.head_baseline!r}")
        if self.value_warmup_steps < 0:
            raise ValueError(f"value_warmup_steps: expected >= 0, got {self.value_warmup_steps}")
        if self.value_coef_start is not None and self.value_coef_start < 0:
            raise ValueError(f"value_coef_start: expected >= 0 or None, got {self.value_coef_start}")
        if self.aux_contribution_coef < 0 or self.aux_warmup_steps < 0 or not self.contribution_loss_clip > 0:
            raise ValueError(
                "aux_contribution_coef, aux_warmup_steps: expected >= 0; contribution_loss_clip: > 0; got "
                f"{self.aux_contribution_coef}, {self.aux_warmup_steps}, {self.contribution_loss_clip}"
            )
        if self.ppo_variant == "head":
            if self.lstm_hidden_dim % 8:
                raise ValueError(
                    f"lstm_hidden_dim: ppo_variant 'head' (HEAD's heads use H/2, H/4, H/8) needs a "
                    f"multiple of 8, got {self.lstm_hidden_dim}"
                )
            for name in ("compile", "amp", "clip_value"):
                if getattr(self, name):
                    raise ValueError(
                        f"{name}: not supported with ppo_variant 'head' (HEAD: clip_value off; "
                        "the compiled / autocast update path is FactoredPolicy's)"
                    )
        if self.compile and not self.fused:
            raise ValueError("compile: the compiled update step needs the fused update path (fused True)")
        if not self.fused and (self.ppo_variant == "head" or self.value_mode == "legacy"):
            raise ValueError(
                "fused: False applies to FactoredPolicy runs (ppo_variant '0872525b', value_mode "
                "'q_op' or 'expected'); 'legacy' and 'head' have no fused path to switch off"
            )
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    # ---- conversions -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The constructor arguments (no derived fields), JSON-serialisable."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    def derived(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.init}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PPOConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - known - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown PPOConfig fields {unknown}")
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> PPOConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(num_envs=4, total_timesteps=4 * 150 * 2, feature_dim=32, lstm_hidden_dim=32, eval_episodes=4),
    "default": dict(  # tuned on CPU (docs/learning_curve.png)
        num_envs=16,
        feature_dim=128,
        lstm_hidden_dim=128,
        total_timesteps=16 * 150 * 250,
        update_epochs=4,
        num_minibatches=4,
        learning_rate=1e-3,
        anneal_lr=True,
        target_kl=0.03,
        gamma=0.995,
        gae_lambda=0.95,
        entropy_coef=0.05,
        entropy_coef_end=0.0,
        entropy_anneal_updates=250,
        entropy_coef_min=0.0,
        # op head x3 (esper: x1): on seed 2 the op head's entropy collapsed to ~0.01 nats by mid-run and the
        # policy lost to the heuristic (-0.2 se); x3 beats it by >= 4.2 se on seeds 42/1/2 (train_eval_cpu.md)
        entropy_coef_per_head={**ENTROPY_COEF_PER_HEAD, "op": 3.0},
    ),
    # 256 envs: the fused paths' cheaper env-step (bench_train_cpu: 4x the env-steps/s of 16 envs) buys 4x the
    # data in about the default run's CPU time; minibatches of 16 envs keep the default's optimiser steps
    "cpu-fast": dict(
        num_envs=256,
        feature_dim=128,
        lstm_hidden_dim=128,
        total_timesteps=256 * 150 * 64,
        update_epochs=4,
        num_minibatches=16,
        learning_rate=1e-3,
        anneal_lr=True,
        target_kl=0.03,
        gamma=0.995,
        gae_lambda=0.95,
        entropy_coef=0.05,
        entropy_coef_end=0.0,
        entropy_anneal_updates=64,
        entropy_coef_min=0.0,
    ),
    "esper": dict(op_conditioned_slot=False, value_mode="q_op"),
    # esper HEAD 2016337e: DEFAULT_VALUE_COEF 1.0 (leyline:174), PPOAgent max_grad_norm 5.0 (leyline:181,
    # ppo_agent.py:140), value clipping off (ppo_agent.py:135). Sizes and the rest: the esper preset's.
    "esper-head": dict(ppo_variant="head", value_coef=1.0, max_grad_norm=5.0, clip_value=False),
}
"""Named overrides of :class:`PPOConfig` (``esper``: esper 0872525b's values: q_op baseline, slot drawn
without op-conditioning; ``esper-head``: esper HEAD's network and PPO)."""


def make_config(preset: str = "default", **overrides: Any) -> PPOConfig:
    """``PPOConfig`` from a preset plus explicit field overrides (``ValueError`` on unknown names)."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    known = {f.name for f in dataclasses.fields(PPOConfig) if f.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown PPOConfig fields {unknown}")
    return PPOConfig(**{**PRESETS[preset], **overrides})


@functools.cache
def field_docs() -> dict[str, str]:
    """Field name -> the docstring written under it in :class:`PPOConfig` (drives ``--help``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(PPOConfig)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs
