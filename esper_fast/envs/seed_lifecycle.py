"""``SeedLifecycleEnv``: a batched, tensor-only simulation of esper's morphogenesis loop.

One env is one host network trained for ``episode_length`` epochs; every epoch the controller
takes one factored action (esper's eight heads) on one of ``num_slots`` seed slots. All state
lives in ``[E]`` / ``[E, S]`` tensors on one device; ``step`` has no Python loop over envs and no
host sync (except the opt-in action range check).

Ops act on the chosen slot; an op the slot does not allow acts as WAIT (esper's rule):

* GERMINATE (blueprint, style, tempo, alpha_target): empty slot -> GERMINATED seed;
* ADVANCE: GERMINATED -> TRAINING -> BLENDING (alpha ramps 0 -> alpha_target over the tempo's
  epochs, with the style's curve) -> HOLDING once the ramp is done (else the gate rejects it);
* SET_ALPHA_TARGET (style, alpha_target, alpha_speed, alpha_curve): a new ramp, and a new style;
  a HOLDING seed whose alpha moves re-enters BLENDING;
* PRUNE (alpha_speed, alpha_curve): instant at alpha 0 or speed INSTANT, else alpha ramps down
  first; then PRUNED (1 epoch) -> EMBARGOED (embargo_epochs) -> RESETTING (1) -> DORMANT;
* FOSSILIZE: HOLDING -> FOSSILIZED, for good (alpha and maturity frozen, reduced rent).

Dynamics (accuracy in points, 0..100; numbers are ``EnvConfig`` defaults):

* host accuracy ``acc0 + (acc_max - acc0) * (1 - exp(-epoch / tau))``, per-episode random curve;
* a seed's hidden true contribution is ``c ~ N(mean_bp, std_bp)`` (``BLUEPRINT_PROFILES``: means,
  spreads and parameter costs differ), shifted once more when it starts blending
  (``blend_surprise * TEMPO_RISK[tempo]``: fast blends are riskier), scaled by its style
  (``STYLE_PROFILES``: MULTIPLY amplifies gains and more so losses, GATE damps losses) and by its
  maturity ``1 - exp(-trained_epochs / maturity_tau)``; blended and fossilised seeds add
  ``alpha * that`` (saturating sum, ``seed_gain_cap``);
* every change of alpha permanently costs the host ``shock_coef * d_alpha**2`` per epoch, so
  instant blends and prunes hurt while slow tempos and speeds cost time and rent instead;
* live seeds pay ``rent_coef * cost`` per epoch (fossilised ones ``fossil_rent_factor`` of it);
* the observed estimate of a seed is its true current contribution plus noise of std
  ``est_noise / sqrt(1 + age)`` (fresh each epoch; the obs also carries an EMA);
* reward = observed accuracy gain - rent; at the last epoch only fossilised seeds stay in the
  model and ``terminal_acc_bonus * accuracy`` is added (truncation); true accuracy falling
  ``governor_drop`` below its best is esper's governor rollback: ``terminated``, reward
  ``-death_penalty``.

Observation: ``BASE_FEATURES`` (24) then ``SLOT_FEATURES`` (30) per slot; accuracies as fractions,
accuracy changes / contribution estimates / rewards in points / 10, ages in units of
FULL_EVALUATION_AGE. Random numbers come from a counter-based hash of (seed, env index, env step
counter, lane): every env has its own stream, independent of ``num_envs`` and of the device (the
uniforms are bit-identical on CPU and CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from esper_fast.constants import (
    ALPHA_CURVE_STEEPNESS,
    ALPHA_SPEED_STEPS,
    ALPHA_TARGET_VALUES,
    HEAD_NAMES,
    NUM_OPS,
    TEMPO_EPOCHS,
    AlphaCurveAction,
    AlphaMode,
    BlueprintAction,
    GerminationStyle,
    LifecycleOp,
    SeedStage,
    get_action_head_sizes,
    get_feature_size,
)
from esper_fast.envs.masks import (
    FULL_EVALUATION_AGE,
    blueprint_mask_for,
    compute_action_masks,
    compute_slot_by_op_mask,
    effective_op,
    stage_in,
    topology_blueprints,
)

__all__ = [
    "EnvConfig",
    "EnvObs",
    "StepResult",
    "SeedLifecycleEnv",
    "BLUEPRINT_PROFILES",
    "STYLE_PROFILES",
    "TEMPO_RISK",
    "BASE_FEATURES",
    "SLOT_FEATURES",
    "STAGE_ORDER",
]

_BP = BlueprintAction
BLUEPRINT_PROFILES: dict[BlueprintAction, tuple[float, float, float]] = {
    # blueprint: (mean contribution [points], std [points], parameter cost [host units])
    _BP.NOOP: (0.0, 0.0, 0.0),
    _BP.CONV_LIGHT: (3.5, 3.5, 0.35),
    _BP.ATTENTION: (5.0, 8.0, 1.00),
    _BP.NORM: (1.5, 1.5, 0.05),
    _BP.DEPTHWISE: (4.5, 4.0, 0.30),
    _BP.BOTTLENECK: (3.0, 5.0, 0.50),
    _BP.CONV_SMALL: (2.5, 3.0, 0.20),
    _BP.CONV_HEAVY: (6.5, 5.0, 2.00),
    _BP.LORA: (3.0, 3.0, 0.25),
    _BP.LORA_LARGE: (5.0, 4.5, 1.00),
    _BP.MLP_SMALL: (2.0, 3.5, 0.30),
    _BP.MLP: (4.0, 5.5, 1.20),
    _BP.FLEX_ATTENTION: (6.0, 8.5, 1.80),
}
_GS, _AC = GerminationStyle, AlphaCurveAction
STYLE_PROFILES: dict[GerminationStyle, tuple[float, float, float, AlphaCurveAction]] = {
    # style: (gain multiplier, loss multiplier, extra cost, blend curve used by ADVANCE)
    _GS.LINEAR_ADD: (1.0, 1.0, 0.0, _AC.LINEAR),
    _GS.LINEAR_MULTIPLY: (1.2, 1.5, 0.0, _AC.LINEAR),
    _GS.SIGMOID_ADD: (1.0, 0.9, 0.0, _AC.SIGMOID),
    _GS.GATED_GATE: (0.9, 0.4, 0.10, _AC.COSINE),
}
TEMPO_RISK: tuple[float, ...] = (1.5, 1.0, 0.6)  # blend-surprise multiplier for FAST, STANDARD, SLOW
# Stage one-hot order: SeedStage values ascending, 5 (reserved) skipped.
STAGE_ORDER: tuple[SeedStage, ...] = tuple(SeedStage)
_SEED_STAGES = (SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING, SeedStage.FOSSILIZED)
_COOLING_STAGES = (SeedStage.PRUNED, SeedStage.EMBARGOED, SeedStage.RESETTING)
_TRAINING_STAGES = (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.HOLDING)
_BLENDED_STAGES = (SeedStage.BLENDING, SeedStage.HOLDING)

BASE_FEATURES: tuple[str, ...] = (
    "epoch_frac",
    "accuracy",
    "accuracy_delta",
    "accuracy_trend",
    "best_accuracy",
    "epochs_since_best",
    "param_cost",
    "rent",
    "active_seeds",
    "fossilized_seeds",
    "empty_slots",
    "cooling_slots",
    "seeds_germinated",
    "last_reward",
    *(f"last_op_{op.name.lower()}" for op in LifecycleOp),
    "last_action_invalid",
    "fossilized_estimate",
    "blended_estimate",
    "governor_margin",
)
SLOT_FEATURES: tuple[str, ...] = (
    "enabled",
    "occupied",
    *(f"stage_{s.name.lower()}" for s in STAGE_ORDER),
    "age",
    "stage_epochs",
    "alpha",
    "alpha_target",
    *(f"alpha_mode_{m.name.lower()}" for m in AlphaMode),
    "ramp_progress",
    "estimate",
    "estimate_std",
    "estimate_ema",
    "param_cost",
    *(f"style_{s.name.lower()}" for s in GerminationStyle),
    "tempo",
    "pruning",
)


@dataclass(frozen=True)
class EnvConfig:
    """Dynamics and layout of :class:`SeedLifecycleEnv` (accuracy quantities in points, 0..100)."""

    num_slots: int = 3
    """Seed slots per env (slot head size; obs has 24 + 30 * num_slots features)."""
    episode_length: int = 150
    """Epochs (decisions) per episode before truncation."""
    topology: str = "cnn"
    """Blueprint set: "cnn" or "transformer" (esper's topology sets)."""
    enabled_slots: tuple[int, ...] | None = None
    """Slots the controller may use; None = all."""
    max_seeds: int = 0
    """Germinations allowed per episode; 0 = unlimited."""
    embargo_epochs: int = 3
    """Epochs a pruned slot spends EMBARGOED (after 1 epoch PRUNED, before 1 epoch RESETTING)."""
    host_acc_start: tuple[float, float] = (30.0, 45.0)
    """Range of the host's initial accuracy (uniform per episode)."""
    host_acc_max: tuple[float, float] = (65.0, 80.0)
    """Range of the host's asymptotic accuracy."""
    host_tau: tuple[float, float] = (20.0, 40.0)
    """Range of the host training curve's time constant, in epochs."""
    blend_surprise: float = 3.0
    """Std of the change of a seed's true contribution when it starts blending (host interaction),
    times ``TEMPO_RISK[tempo]``: what looked good in isolation can hurt once blended."""
    maturity_tau: float = 4.0
    """Time constant (trained epochs) of a seed's maturity 1 - exp(-n / tau)."""
    seed_gain_cap: float = 80.0
    """Saturation of the summed seed gain g: realised gain = g * cap / (cap + g) for g > 0."""
    shock_coef: float = 2.0
    """Permanent host damage per unit of squared alpha change in one epoch."""
    acc_noise: float = 0.5
    """Std of the observation noise on accuracy."""
    est_noise: float = 6.0
    """Std of a seed's contribution estimate at age 0; shrinks as 1 / sqrt(1 + age)."""
    estimate_ema: float = 0.7
    """Decay of the per-slot estimate EMA feature."""
    rent_coef: float = 0.03
    """Reward cost per epoch per unit of live seed parameter cost."""
    fossil_rent_factor: float = 0.5
    """Fraction of the rent that fossilised (frozen) seeds pay."""
    terminal_acc_bonus: float = 0.1
    """Extra reward per accuracy point at the final epoch (truncation)."""
    discard_unfossilized: bool = True
    """At the final epoch, seeds that are not fossilised leave the model (their gain is lost)."""
    governor_drop: float = 12.0
    """Governor rollback (true terminal) when true accuracy falls this far below its best."""
    death_penalty: float = 20.0
    """Reward of a governor-rollback step is -death_penalty."""
    validate_actions: bool = True
    """Check action ranges in ``step`` (one host sync per step)."""

    def __post_init__(self) -> None:
        if self.num_slots < 1:
            raise ValueError(f"num_slots: expected >= 1, got {self.num_slots}")
        if self.episode_length < 1:
            raise ValueError(f"episode_length: expected >= 1, got {self.episode_length}")
        topology_blueprints(self.topology)  # raises on unknown topology
        if self.enabled_slots is not None:
            bad = [s for s in self.enabled_slots if not 0 <= s < self.num_slots]
            if bad or not self.enabled_slots:
                raise ValueError(
                    f"enabled_slots: expected a non-empty subset of 0..{self.num_slots - 1}, got {self.enabled_slots}"
                )
        for name in ("max_seeds", "embargo_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        for name in ("host_acc_start", "host_acc_max", "host_tau"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"{name}: expected 0 <= low <= high, got {(lo, hi)}")
        if self.host_acc_max[0] < self.host_acc_start[1] or self.host_acc_max[1] > 100:
            raise ValueError(f"host_acc_max: expected within [max(host_acc_start), 100], got {self.host_acc_max}")
        if self.host_tau[0] <= 0:
            raise ValueError(f"host_tau: expected > 0, got {self.host_tau}")
        for name in ("maturity_tau", "seed_gain_cap", "governor_drop"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected > 0, got {getattr(self, name)}")
        for name in (
            "blend_surprise",
            "shock_coef",
            "acc_noise",
            "est_noise",
            "rent_coef",
            "terminal_acc_bonus",
            "death_penalty",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        for name in ("estimate_ema", "fossil_rent_factor"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: expected in [0, 1], got {getattr(self, name)}")


class EnvObs(NamedTuple):
    """One decision's observation (raw, un-normalised)."""

    obs: Tensor  # (E, 24 + 30 S) float32, layout BASE_FEATURES then SLOT_FEATURES per slot
    blueprint_indices: Tensor  # (E, S) int64, -1 where no live seed
    masks: dict[str, Tensor]  # head -> (E, n_head) bool, True = valid, keys in HEAD_NAMES order
    slot_by_op: Tensor  # (E, NUM_OPS, S) bool, execution-time validity of (op, slot)


class StepResult(NamedTuple):
    """Outcome of :meth:`SeedLifecycleEnv.step`."""

    next: EnvObs  # observation for the next decision (finished rows already reset)
    reward: Tensor  # (E,) float32
    terminated: Tensor  # (E,) bool, governor rollback (no bootstrap)
    truncated: Tensor  # (E,) bool, time limit (bootstrap from `final`)
    final: EnvObs  # observation reached by this step before auto-reset
    effective_op: Tensor  # (E,) int64, op after the invalid -> WAIT rule
    episode_return: Tensor  # (E,) float32, return of the episode that ended here, else 0
    episode_length: Tensor  # (E,) int64, length of the episode that ended here, else 0


# ---------------------------------------------------------------- counter-based random numbers
_M32 = 0xFFFFFFFF
_STEP_LANES, _RESET_LANES = 0, 1 << 20


def _mix32(x: Tensor) -> Tensor:
    """32-bit integer hash on int64 tensors holding values in [0, 2**32) (products stay < 2**63)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x31848BAB) & _M32
    return x ^ (x >> 16)


def _uniforms(env_key: Tensor, counter: Tensor, first_lane: int, n: int) -> Tensor:
    """``(E, n)`` float32 uniforms in (0, 1) for lanes ``first_lane ..``; pure function of the keys."""
    lanes = _mix32(torch.arange(first_lane, first_lane + n, device=env_key.device))
    h = _mix32(_mix32(env_key ^ (counter & _M32)).unsqueeze(1) ^ lanes)
    h = _mix32((h + 0x6A09E667) & _M32)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def _normals(env_key: Tensor, counter: Tensor, first_lane: int, n: int) -> Tensor:
    """``(E, n)`` float32 standard normals (Box-Muller on 2n uniforms)."""
    u = _uniforms(env_key, counter, first_lane, 2 * n)
    return torch.sqrt(-2.0 * torch.log(u[:, :n])) * torch.cos((2.0 * math.pi) * u[:, n:])


def _curve_shape(p: Tensor, curve: Tensor, steepness: Tensor) -> Tensor:
    """Ramp fraction at progress ``p`` in [0, 1] for esper's alpha curves (all [E, S])."""
    s = steepness[curve].clamp(min=1.0)
    lo, hi = torch.sigmoid(-0.5 * s), torch.sigmoid(0.5 * s)
    sig = (torch.sigmoid(s * (p - 0.5)) - lo) / (hi - lo)
    cos = 0.5 * (1.0 - torch.cos(math.pi * p))
    out = torch.where(curve == int(AlphaCurveAction.COSINE), cos, sig)
    return torch.where(curve == int(AlphaCurveAction.LINEAR), p, out)


def _one_hot(x: Tensor, n: int) -> Tensor:
    """float32 one-hot of int64 ``x`` (any shape) -> ``[..., n]``; no range check, no host sync."""
    return (x.unsqueeze(-1) == torch.arange(n, device=x.device)).float()


class SeedLifecycleEnv:
    """Batched seed-lifecycle env: ``num_envs`` independent hosts with ``num_slots`` slots each.

    State tensors are public attributes (``stage``, ``age``, ``alpha``, ``alpha_mode``,
    ``contribution`` (hidden true value), ``epoch`` ...), ``[E]`` or ``[E, S]``; tests may edit them.
    """

    def __init__(
        self, num_envs: int, config: EnvConfig | None = None, device: str | torch.device = "cpu", seed: int | None = 0
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        self.config = config if config is not None else EnvConfig()
        self.num_envs, self.num_slots = int(num_envs), self.config.num_slots
        self.device = torch.empty(0, device=device).device  # "cuda" -> "cuda:<current>"
        self.obs_dim = get_feature_size(self.num_slots)
        self.head_sizes = get_action_head_sizes(self.num_slots)
        self._build_tables()
        if seed is None:  # draw from torch's global RNG, so torch.manual_seed still pins it
            seed = int(torch.randint(0, 2**31 - 1, ()))
        self.reset(seed)

    # ------------------------------------------------------------------ setup
    def _build_tables(self) -> None:
        cfg, dev, f32 = self.config, self.device, torch.float32
        prof = torch.tensor([BLUEPRINT_PROFILES[b] for b in BlueprintAction], dtype=f32, device=dev)
        self._bp_mean, self._bp_std, self._bp_cost = prof.unbind(1)
        styles = [STYLE_PROFILES[s] for s in GerminationStyle]
        self._style_gain = torch.tensor([s[0] for s in styles], dtype=f32, device=dev)
        self._style_loss = torch.tensor([s[1] for s in styles], dtype=f32, device=dev)
        self._style_cost = torch.tensor([s[2] for s in styles], dtype=f32, device=dev)
        self._style_curve = torch.tensor([int(s[3]) for s in styles], device=dev)
        self._tempo_epochs = torch.tensor(TEMPO_EPOCHS, device=dev)
        self._tempo_risk = torch.tensor(TEMPO_RISK, dtype=f32, device=dev)
        self._target_values = torch.tensor(ALPHA_TARGET_VALUES, dtype=f32, device=dev)
        self._speed_steps = torch.tensor(ALPHA_SPEED_STEPS, device=dev)
        self._steepness = torch.tensor(ALPHA_CURVE_STEEPNESS, dtype=f32, device=dev)
        self._bp_valid = blueprint_mask_for(cfg.topology, dev)
        onehot_index = torch.zeros(max(STAGE_ORDER) + 1, dtype=torch.long)
        onehot_index[[int(s) for s in STAGE_ORDER]] = torch.arange(len(STAGE_ORDER))
        self._stage_onehot_index = onehot_index.to(dev)
        probe = torch.zeros(1, dtype=torch.long, device=dev)
        for stages in (_SEED_STAGES, _COOLING_STAGES, _TRAINING_STAGES, _BLENDED_STAGES):
            stage_in(probe, stages)  # build the cached lookup tables now, not inside step()
        slots = cfg.enabled_slots if cfg.enabled_slots is not None else range(self.num_slots)
        self.enabled = torch.tensor([i in slots for i in range(self.num_slots)], device=dev)

    def _fresh_state(self) -> dict[str, Tensor]:
        """State of a new episode for every env (host curve drawn from the reset lanes)."""
        cfg, E, S, dev = self.config, self.num_envs, self.num_slots, self.device
        u = _uniforms(self._env_key, self._counter, _RESET_LANES, 3)
        lerp = lambda rng, x: rng[0] + (rng[1] - rng[0]) * x  # noqa: E731
        acc0 = lerp(cfg.host_acc_start, u[:, 0])
        zf, zi = torch.zeros(E, device=dev), torch.zeros(E, dtype=torch.long, device=dev)
        sf, si = torch.zeros(E, S, device=dev), torch.zeros(E, S, dtype=torch.long, device=dev)
        state = {name: zf for name in ("damage", "acc_delta", "acc_trend", "last_reward", "last_rent", "ep_return")}
        state.update({name: zi for name in ("epoch", "best_epoch", "total_seeds", "last_op")})
        state.update(
            acc0=acc0,
            acc_max=lerp(cfg.host_acc_max, u[:, 1]),
            host_tau=lerp(cfg.host_tau, u[:, 2]),
            acc_true=acc0,
            acc_obs=acc0,
            best_true=acc0,
            best_obs=acc0,
            last_invalid=torch.zeros(E, dtype=torch.bool, device=dev),
        )
        state.update(
            {
                name: sf
                for name in ("alpha", "alpha_start", "alpha_target", "contribution", "cost", "estimate", "estimate_ema")
            }
        )
        state.update(
            {
                name: si
                for name in ("age", "stage_epochs", "train_epochs", "style", "tempo", "curve", "ramp_steps", "ramp_k")
            }
        )
        state.update(
            stage=torch.full((E, S), int(SeedStage.DORMANT), device=dev),
            blueprint=torch.full((E, S), -1, device=dev),
            alpha_mode=torch.full((E, S), int(AlphaMode.HOLD), device=dev),
            pruning=torch.zeros(E, S, dtype=torch.bool, device=dev),
        )
        return state

    def reset(self, seed: int | None = None) -> EnvObs:
        """Start a new episode in every env.

        With ``seed``, every env's random stream restarts from that seed (same seed, same
        episodes); without, the streams continue, so the new episodes differ from the last ones.
        """
        if seed is not None:
            ids = torch.arange(self.num_envs, device=self.device)
            key = int(_mix32(torch.tensor((int(seed) ^ (int(seed) >> 32)) & _M32)))
            self._env_key = _mix32(((ids * 0x9E3779B1) & _M32) ^ key)
            self._counter = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        for name, value in self._fresh_state().items():
            setattr(self, name, value.clone())
        self._counter = self._counter + 1
        return self.observe()

    # ------------------------------------------------------------------ observation
    def observe(self) -> EnvObs:
        """Observation, blueprint indices and masks of the current state."""
        sbo = compute_slot_by_op_mask(
            self.stage, self.age, self.alpha_mode, self.enabled, self.total_seeds, self.config.max_seeds
        )
        masks = compute_action_masks(
            self.stage,
            self.age,
            self.alpha_mode,
            self.enabled,
            self.total_seeds,
            self.config.max_seeds,
            self.config.topology,
            slot_by_op=sbo,
        )
        live = stage_in(self.stage, _SEED_STAGES)
        bp_idx = torch.where(live, self.blueprint, torch.full_like(self.blueprint, -1))
        slots = self._slot_features(live)
        obs = torch.cat([self._base_features(live), slots.flatten(1)], dim=1)
        return EnvObs(obs, bp_idx, masks, sbo)

    def _base_features(self, live: Tensor) -> Tensor:
        cfg, S = self.config, float(self.num_slots)
        fossil = self.stage == int(SeedStage.FOSSILIZED)
        blended = stage_in(self.stage, _BLENDED_STAGES)
        empty = ((self.stage == int(SeedStage.DORMANT)) & self.enabled).float().sum(1)
        cols = [
            self.epoch.float() / cfg.episode_length,
            self.acc_obs / 100,
            self.acc_delta / 10,
            self.acc_trend / 10,
            self.best_obs / 100,
            (self.epoch - self.best_epoch).float() / cfg.episode_length,
            (self.cost * live).sum(1),
            self.last_rent / 10,
            (live & ~fossil).float().sum(1) / S,
            fossil.float().sum(1) / S,
            empty / S,
            stage_in(self.stage, _COOLING_STAGES).float().sum(1) / S,
            self.total_seeds.float() / 10,
            self.last_reward / 10,
        ]
        last_op = _one_hot(self.last_op, NUM_OPS)
        tail = [
            self.last_invalid.float(),
            (self.estimate_ema * fossil).sum(1) / 10,
            (self.alpha * self.estimate_ema * blended).sum(1) / 10,
            (self.acc_obs - self.best_obs + cfg.governor_drop) / cfg.governor_drop,
        ]
        return torch.cat([torch.stack(cols, 1), last_op, torch.stack(tail, 1)], dim=1)

    def _slot_features(self, live: Tensor) -> Tensor:
        cfg = self.config
        stage_oh = _one_hot(self._stage_onehot_index[self.stage], len(STAGE_ORDER))
        mode_oh = _one_hot(self.alpha_mode, len(AlphaMode)) * live.unsqueeze(-1)
        style_oh = _one_hot(self.style, len(GerminationStyle)) * live.unsqueeze(-1)
        ramping = self.alpha_mode != int(AlphaMode.HOLD)
        progress = torch.where(
            ramping, self.ramp_k.float() / self.ramp_steps.clamp(min=1).float(), torch.ones_like(self.alpha)
        )
        est_std = cfg.est_noise / torch.sqrt(1.0 + self.age.float())
        lf = live.float()
        front = [self.enabled.expand_as(live).float(), lf]
        middle = [
            self.age.float() * lf / FULL_EVALUATION_AGE,
            self.stage_epochs.float() / FULL_EVALUATION_AGE,
            self.alpha,
            self.alpha_target * lf,
        ]
        seed = [progress * lf, self.estimate / 10, est_std * lf / 10, self.estimate_ema / 10, self.cost * lf]
        back = [self._tempo_epochs[self.tempo].float() / TEMPO_EPOCHS[-1] * lf, self.pruning.float()]
        feats = torch.cat(
            [
                torch.stack(front, -1),
                stage_oh,
                torch.stack(middle, -1),
                mode_oh,
                torch.stack(seed, -1),
                style_oh,
                torch.stack(back, -1),
            ],
            dim=-1,
        )
        return feats * self.enabled.view(1, -1, 1)  # (E, S, 30)

    # ------------------------------------------------------------------ step
    def _check_actions(self, actions: Mapping[str, Tensor]) -> dict[str, Tensor]:
        missing = [h for h in HEAD_NAMES if h not in actions]
        extra = [h for h in actions if h not in HEAD_NAMES]
        if missing or extra:
            raise KeyError(f"actions: expected heads {list(HEAD_NAMES)}, missing {missing}, unknown {extra}")
        out = {}
        for head in HEAD_NAMES:
            a = actions[head]
            if not isinstance(a, Tensor) or a.shape != (self.num_envs,) or a.is_floating_point() or a.is_complex():
                desc = f"{a.dtype} {tuple(a.shape)}" if isinstance(a, Tensor) else type(a).__name__
                raise ValueError(f"actions[{head!r}]: expected integer tensor of shape ({self.num_envs},), got {desc}")
            if a.device != self.device:
                raise ValueError(f"actions[{head!r}]: expected device {self.device}, got {a.device}")
            out[head] = a.long()
        if self.config.validate_actions:
            bad = torch.stack([(out[h] < 0) | (out[h] >= self.head_sizes[h]) for h in HEAD_NAMES])
            if bool(bad.any()):
                head = HEAD_NAMES[int(bad.any(1).long().argmax())]
                raise ValueError(
                    f"actions[{head!r}]: expected values in [0, {self.head_sizes[head]}), "
                    f"got {out[head][bad[HEAD_NAMES.index(head)]].tolist()[:8]}"
                )
        return out

    def _set(self, name: str, where: Tensor, value: Tensor | float | int) -> None:
        old = getattr(self, name)
        if isinstance(value, Tensor) and value.dtype != old.dtype:
            value = value.to(old.dtype)
        setattr(self, name, torch.where(where, value, old))

    def _start_ramp(self, where: Tensor, target: Tensor, steps: Tensor, curve: Tensor) -> None:
        """Begin an alpha ramp towards ``target`` over ``steps`` epochs (0 = instant)."""
        self._set("alpha_start", where, self.alpha)
        self._set("alpha_target", where, target)
        self._set("ramp_steps", where, steps)
        self._set("ramp_k", where, 0)
        self._set("curve", where, curve)
        mode = torch.where(target > self.alpha, int(AlphaMode.UP), int(AlphaMode.DOWN))
        mode = torch.where(target == self.alpha, int(AlphaMode.HOLD), mode)
        self._set("alpha_mode", where, mode)

    def _apply_ops(self, eff: Tensor, a: dict[str, Tensor], z_germ: Tensor, z_blend: Tensor) -> None:
        """Apply the (effective) op to the chosen slot of every env."""
        S = self.num_slots
        acting = (eff != int(LifecycleOp.WAIT)).unsqueeze(1)
        at = (a["slot"].unsqueeze(1) == torch.arange(S, device=self.device)) & acting  # (E, S)
        is_op = lambda op: at & (eff == int(op)).unsqueeze(1)  # noqa: E731
        col = lambda head: a[head].unsqueeze(1).expand(-1, S)  # noqa: E731
        stage, mode_hold = self.stage, self.alpha_mode == int(AlphaMode.HOLD)
        # GERMINATE: a new seed with a hidden contribution drawn from its blueprint profile.
        g, bp, style = is_op(LifecycleOp.GERMINATE), col("blueprint"), col("style")
        self._set("contribution", g, self._bp_mean[bp] + self._bp_std[bp] * z_germ)
        self._set("cost", g, self._bp_cost[bp] + self._style_cost[style])
        for name, value in (
            ("blueprint", bp),
            ("style", style),
            ("tempo", col("tempo")),
            ("curve", self._style_curve[style]),
            ("alpha_target", self._target_values[col("alpha_target")]),
            ("alpha", 0.0),
            ("age", 0),
            ("train_epochs", 0),
            ("pruning", False),
            ("estimate", 0.0),
            ("estimate_ema", 0.0),
            ("alpha_mode", int(AlphaMode.HOLD)),
        ):
            self._set(name, g, value)
        self.total_seeds = self.total_seeds + g.any(1).long()
        # ADVANCE: GERMINATED -> TRAINING -> BLENDING (ramp over the tempo) -> HOLDING (ramp done).
        adv = is_op(LifecycleOp.ADVANCE)
        to_blend = adv & (stage == int(SeedStage.TRAINING))
        surprise = self.config.blend_surprise * self._tempo_risk[self.tempo] * z_blend
        self._set("contribution", to_blend, self.contribution + surprise)
        self._start_ramp(to_blend, self.alpha_target, self._tempo_epochs[self.tempo], self.curve)
        new_stage = torch.where(g, int(SeedStage.GERMINATED), stage)
        new_stage = torch.where(adv & (stage == int(SeedStage.GERMINATED)), int(SeedStage.TRAINING), new_stage)
        new_stage = torch.where(to_blend, int(SeedStage.BLENDING), new_stage)
        new_stage = torch.where(adv & (stage == int(SeedStage.BLENDING)) & mode_hold, int(SeedStage.HOLDING), new_stage)
        # SET_ALPHA_TARGET: new target/speed/curve/style; a HOLDING seed whose alpha moves re-enters BLENDING.
        sat = is_op(LifecycleOp.SET_ALPHA_TARGET)
        target, steps = self._target_values[col("alpha_target")], self._speed_steps[col("alpha_speed")]
        new_stage = torch.where(
            sat & (stage == int(SeedStage.HOLDING)) & (target != self.alpha), int(SeedStage.BLENDING), new_stage
        )
        self._set("style", sat, style)
        self._set("cost", sat, self._bp_cost[self.blueprint.clamp(min=0)] + self._style_cost[style])
        self._start_ramp(sat, target, steps, col("alpha_curve"))
        # PRUNE: instant when alpha is 0 or speed INSTANT, else ramp alpha down first.
        pr = is_op(LifecycleOp.PRUNE)
        slow = pr & (self.alpha > 0) & (self._speed_steps[col("alpha_speed")] > 0)
        self._start_ramp(slow, torch.zeros_like(self.alpha), self._speed_steps[col("alpha_speed")], col("alpha_curve"))
        self._set("pruning", slow, True)
        new_stage = torch.where(pr & ~slow, int(SeedStage.PRUNED), new_stage)
        self._set("alpha", pr & ~slow, 0.0)
        # FOSSILIZE: HOLDING -> FOSSILIZED (alpha and maturity frozen for good).
        new_stage = torch.where(is_op(LifecycleOp.FOSSILIZE), int(SeedStage.FOSSILIZED), new_stage)
        self._set("stage_epochs", new_stage != stage, 0)
        self.stage = new_stage

    def _advance_time(self) -> None:
        """One epoch passes: alpha ramps progress, cooling slots move on, counters tick."""
        ramping = self.alpha_mode != int(AlphaMode.HOLD)
        self.ramp_k = self.ramp_k + ramping.long()
        p = (self.ramp_k.float() / self.ramp_steps.clamp(min=1).float()).clamp(max=1.0)
        shape = _curve_shape(p, self.curve, self._steepness)
        done = ramping & (self.ramp_k >= self.ramp_steps)
        ramp_alpha = torch.where(
            done, self.alpha_target, self.alpha_start + (self.alpha_target - self.alpha_start) * shape
        )
        self.alpha = torch.where(ramping, ramp_alpha, self.alpha)
        self._set("alpha_mode", done, int(AlphaMode.HOLD))
        pruned = done & self.pruning
        self._set("stage", pruned, int(SeedStage.PRUNED))
        self._set("stage_epochs", pruned, 0)
        self._set("pruning", pruned, False)
        se, st = self.stage_epochs, self.stage
        nxt = torch.where((st == int(SeedStage.PRUNED)) & (se >= 1), int(SeedStage.EMBARGOED), st)
        nxt = torch.where(
            (st == int(SeedStage.EMBARGOED)) & (se >= self.config.embargo_epochs), int(SeedStage.RESETTING), nxt
        )
        nxt = torch.where((st == int(SeedStage.RESETTING)) & (se >= 1), int(SeedStage.DORMANT), nxt)
        self.stage_epochs = torch.where(nxt != st, 0, se)
        self.stage = nxt
        dormant = nxt == int(SeedStage.DORMANT)
        self._set("blueprint", dormant, -1)
        self._set("alpha", ~stage_in(nxt, _SEED_STAGES), 0.0)
        self.stage_epochs = self.stage_epochs + (~dormant).long()
        self.age = self.age + stage_in(nxt, _SEED_STAGES).long()
        trains = stage_in(nxt, _TRAINING_STAGES)
        self.train_epochs = self.train_epochs + trains.long()
        self.epoch = self.epoch + 1

    def counterfactual_contributions(self) -> tuple[Tensor, Tensor]:
        """Each seed's true counterfactual contribution now: ``(targets [E, S] float, active [E, S] bool)``.

        ``targets[e, s]`` = the host's true accuracy with every live seed minus the same with seed ``s``
        removed (accuracy points; 0 where not active), in the state the current observation shows.
        ``active``: live, blended in (alpha > 0) and not fossilised - the seeds esper HEAD measures by
        ablation each epoch (its ``val_acc - baseline_acc`` targets for the contribution predictor), here
        without measurement noise. A training target only; the observation never contains it.
        """
        live = stage_in(self.stage, _SEED_STAGES)
        active = live & (self.alpha > 0) & (self.stage != int(SeedStage.FOSSILIZED))
        host, realised = self._host_accuracy(), self._realised()
        full = (host + self._seed_gain(realised, live)).clamp(0.0, 100.0)
        eye = torch.eye(self.num_slots, dtype=torch.bool, device=live.device)
        without = torch.stack(
            [(host + self._seed_gain(realised, live & ~eye[s])).clamp(0.0, 100.0) for s in range(self.num_slots)], dim=1
        )
        return torch.where(active, full.unsqueeze(1) - without, torch.zeros_like(without)), active

    def _realised(self) -> Tensor:
        """``(E, S)`` what each seed would add at alpha 1 now: style-scaled contribution x maturity."""
        c = self.contribution
        c_eff = c * torch.where(c > 0, self._style_gain[self.style], self._style_loss[self.style])
        return c_eff * (1.0 - torch.exp(-self.train_epochs.float() / self.config.maturity_tau))

    def _seed_gain(self, realised: Tensor, keep: Tensor) -> Tensor:
        """``(E,)`` accuracy gain of the seeds in ``keep`` (alpha-weighted, saturating sum)."""
        g = (self.alpha * realised * keep).sum(1)
        cap = self.config.seed_gain_cap
        return torch.where(g > 0, g * cap / (cap + g.clamp(min=0)), g)

    def _host_accuracy(self) -> Tensor:
        t = self.epoch.float()
        return self.acc0 + (self.acc_max - self.acc0) * (1.0 - torch.exp(-t / self.host_tau)) - self.damage

    def _update_estimates(self, realised: Tensor, live: Tensor, z_est: Tensor) -> None:
        """Noisy contribution estimates (std est_noise / sqrt(1 + age)) and their EMA."""
        noise = self.config.est_noise / torch.sqrt(1.0 + self.age.float()) * z_est
        est = torch.where(live, realised + noise, torch.zeros_like(realised))
        beta = self.config.estimate_ema
        ema = torch.where(self.age <= 1, est, beta * self.estimate_ema + (1 - beta) * est)
        self.estimate, self.estimate_ema = est, torch.where(live, ema, torch.zeros_like(ema))

    def step(self, actions: Mapping[str, Tensor]) -> StepResult:
        """Apply one factored action per env (head -> ``(E,)`` int64) and advance one epoch."""
        cfg, S = self.config, self.num_slots
        a = self._check_actions(actions)
        z = _normals(self._env_key, self._counter, _STEP_LANES, 1 + 3 * S)
        z_acc, z_est, z_germ, z_blend = z[:, 0], z[:, 1 : 1 + S], z[:, 1 + S : 1 + 2 * S], z[:, 1 + 2 * S :]
        eff = effective_op(
            a["op"], a["slot"], self.stage, self.age, self.alpha_mode, self.enabled, self.total_seeds, cfg.max_seeds
        )
        bad_bp = (eff == int(LifecycleOp.GERMINATE)) & ~self._bp_valid[a["blueprint"].clamp(0, len(self._bp_valid) - 1)]
        eff = torch.where(bad_bp, torch.zeros_like(eff), eff)
        alpha_before = self.alpha
        self._apply_ops(eff, a, z_germ, z_blend)
        self._advance_time()
        self.damage = self.damage + cfg.shock_coef * ((self.alpha - alpha_before) ** 2).sum(1)

        live = stage_in(self.stage, _SEED_STAGES)
        fossil = self.stage == int(SeedStage.FOSSILIZED)
        host, realised = self._host_accuracy(), self._realised()
        self.acc_true = (host + self._seed_gain(realised, live)).clamp(0.0, 100.0)
        terminated = self.acc_true < self.best_true - cfg.governor_drop
        self.best_true = torch.maximum(self.best_true, self.acc_true)
        truncated = (self.epoch >= cfg.episode_length) & ~terminated
        acc_true = self.acc_true
        if cfg.discard_unfossilized:
            acc_true = torch.where(truncated, (host + self._seed_gain(realised, fossil)).clamp(0.0, 100.0), acc_true)
        acc_obs = acc_true + cfg.acc_noise * z_acc
        self._update_estimates(realised, live, z_est)

        rent = cfg.rent_coef * (self.cost * (live & ~fossil) + cfg.fossil_rent_factor * self.cost * fossil).sum(1)
        reward = acc_obs - self.acc_obs - rent + truncated * (cfg.terminal_acc_bonus * acc_obs)
        reward = torch.where(terminated, torch.full_like(reward, -cfg.death_penalty), reward)
        self.acc_delta = acc_obs - self.acc_obs
        self.acc_trend = 0.7 * self.acc_trend + 0.3 * self.acc_delta
        self.acc_obs = acc_obs
        improved = acc_obs > self.best_obs
        self.best_obs = torch.where(improved, acc_obs, self.best_obs)
        self.best_epoch = torch.where(improved, self.epoch, self.best_epoch)
        self.last_invalid, self.last_op = eff != a["op"], eff
        self.last_reward, self.last_rent = reward, rent
        self.ep_return = self.ep_return + reward

        final = self.observe()
        done = terminated | truncated
        ep_return = torch.where(done, self.ep_return, torch.zeros_like(reward))
        ep_length = torch.where(done, self.epoch, torch.zeros_like(self.epoch))
        # On CPU a data-dependent branch costs no sync; on accelerators stay branch-free.
        if self.device.type != "cpu" or bool(done.any()):
            self._reset_rows(done)
            nxt = self.observe()  # equals `final` on rows that did not end
        else:
            nxt = final
        self._counter = self._counter + 1
        return StepResult(nxt, reward, terminated, truncated, final, eff, ep_return, ep_length)

    def _reset_rows(self, done: Tensor) -> None:
        """Start a new episode in the rows where ``done`` (no host sync)."""
        for name, value in self._fresh_state().items():
            old = getattr(self, name)
            mask = done.view(-1, *([1] * (old.dim() - 1)))
            setattr(self, name, torch.where(mask, value, old))
