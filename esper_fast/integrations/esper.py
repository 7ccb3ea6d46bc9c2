"""Run esper's own trainer on esper_fast: :func:`patch_esper` / :func:`unpatch_esper`.

In the pattern of Liger-Kernel's ``apply_liger_kernel_to_*``::

    import esper_fast
    esper_fast.patch_esper()          # before esper builds its policy
    # ... esper's own code: create_policy(...), PPOAgent(policy=...), train_ppo_vectorized(...)

:func:`patch_esper` imports esper, finds out which esper it is (the network's constructor signature
and the state_dict layout of a tiny instance, checked against :data:`LAYOUTS`), builds a class that
**subclasses esper's own** ``FactoredRecurrentActorCritic`` (so esper's ``isinstance`` assertions in
``PPOAgent.__init__`` / ``update`` / ``save`` pass) but runs :class:`esper_fast.FactoredPolicy`'s
methods (fused, single-draw selection), and binds it wherever esper's modules bind the original
class. esper's bundle (``LSTMPolicyBundle.__init__``) and agent (``PPOAgent``) import the class from
``esper.tamiyo.networks`` at call time, so they pick the patched class up from there.

Layouts are a table: each :class:`EsperLayout` entry pairs a detector (None = "this is me", else the
reason why not) with a factory of the patched class. A second esper layout (esper HEAD's) is one more
entry appended with :func:`register_layout`.

Re-exported here: :func:`esper_error_class` (defined in :mod:`esper_fast.errors`, floor 1), the
exception class that is both esper_fast's and esper's ``InvalidStateMachineError`` (used by
:class:`esper_fast.errors.InvalidStateMachineError` whenever esper is importable).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn

from esper_fast.constants import DEFAULT_FEATURE_DIM, DEFAULT_LSTM_HIDDEN_DIM
from esper_fast.errors import ESPER_MASKS_MODULE, esper_error_class
from esper_fast.network_v2 import FactoredNetworkV2
from esper_fast.policy import FactoredPolicy
from esper_fast.policy_v2 import FactoredPolicyV2Mixin

__all__ = [
    "ESPER_NETWORK_MODULE",
    "LAYOUTS",
    "EsperLayout",
    "EsperPatch",
    "UnsupportedEsperError",
    "esper_error_class",
    "patch_esper",
    "register_layout",
    "unpatch_esper",
]

logger = logging.getLogger(__name__)

ESPER_NETWORK_MODULE = "esper.tamiyo.networks.factored_lstm"
# Modules imported (when they import) so that every place esper binds the class is loaded and scanned.
ESPER_MODULES = (
    ESPER_NETWORK_MODULE,
    "esper.tamiyo.networks",
    ESPER_MASKS_MODULE,
    "esper.tamiyo.policy.lstm_bundle",
    "esper.tamiyo.policy.factory",
    "esper.simic.agent.ppo",  # 0872525b's PPOAgent
    "esper.simic.agent.ppo_agent",  # HEAD's PPOAgent
    "esper.simic.agent",
)
ESPER_AGENT_MODULE = "esper.simic.agent.ppo"


class UnsupportedEsperError(RuntimeError):
    """The importable esper has a network layout that esper_fast does not implement."""


# =================================================================================================
# Layout table
# =================================================================================================
@dataclass(frozen=True)
class EsperLayout:
    """One esper network layout esper_fast can stand in for.

    Attributes:
        name: short name (the esper commit it was read from).
        description: the constructor signature / layout in words (used in refusal messages).
        detect: ``detect(esper_class) -> None`` if the class has this layout, else a string saying
            what differs.
        make_class: ``make_class(esper_class, action_masks_module) -> patched class`` (a subclass of
            ``esper_class``).
        agent_load_fix: this esper's ``PPOAgent.load`` rebuilds the network with the wrong
            ``state_dim``; :func:`patch_esper` can wrap it (``fix_agent_load``).
    """

    name: str
    description: str
    detect: Callable[[type], str | None]
    make_class: Callable[[type, ModuleType], type]
    agent_load_fix: bool = False


# esper 0872525b's constructor (``FactoredRecurrentActorCritic.__init__``), in order.
_SIGNATURE_0872525B = (
    "state_dim",
    "num_slots",
    "num_blueprints",
    "num_styles",
    "num_tempo",
    "num_alpha_targets",
    "num_alpha_speeds",
    "num_alpha_curves",
    "num_ops",
    "feature_dim",
    "lstm_hidden_dim",
    "lstm_layers",
    "slot_config",
)
_PROBE = dict(state_dim=5, num_slots=3, feature_dim=8, lstm_hidden_dim=8, lstm_layers=1)


def constructor_signature(esper_class: type) -> tuple[str, ...]:
    """Parameter names of ``esper_class.__init__`` without ``self``."""
    params = list(inspect.signature(esper_class.__init__).parameters)
    return tuple(params[1:])


def _layout_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def layout_difference(theirs: dict[str, tuple[int, ...]], ours: dict[str, tuple[int, ...]]) -> str | None:
    """None if both state_dict layouts have the same keys, order and shapes; else what differs."""
    if list(theirs) == list(ours) and theirs == ours:
        return None
    extra, missing = [k for k in theirs if k not in ours], [k for k in ours if k not in theirs]
    shapes = [f"{k}: esper {theirs[k]}, esper_fast {ours[k]}" for k in theirs if k in ours and theirs[k] != ours[k]]
    parts = []
    if extra:
        parts.append(f"keys only in esper's network {extra[:8]}{' ...' if len(extra) > 8 else ''}")
    if missing:
        parts.append(f"keys esper's network lacks {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if shapes:
        parts.append("different shapes [" + "; ".join(shapes[:8]) + "]")
    if not parts:
        parts.append("same keys in a different registration order")
    return ", ".join(parts)


def _detect_0872525b(esper_class: type) -> str | None:
    found = constructor_signature(esper_class)
    if found != _SIGNATURE_0872525B:
        return f"constructor ({', '.join(found)}) is not ({', '.join(_SIGNATURE_0872525B)})"
    with torch.random.fork_rng(devices=[]):  # probing must not move the caller's RNG
        try:
            theirs = _layout_of(esper_class(**_PROBE))
        except Exception as exc:  # noqa: BLE001 - report what the probe hit
            return f"a probe instance {_PROBE} could not be built: {type(exc).__name__}: {exc}"
        ours = _layout_of(FactoredPolicy(**_PROBE))
    diff = layout_difference(theirs, ours)
    return None if diff is None else f"state_dict layout differs: {diff}"


def _make_0872525b(esper_class: type, action_masks: ModuleType) -> type:
    masked_categorical = action_masks.MaskedCategorical

    class _EsperModuleInit(esper_class):  # type: ignore[misc, valid-type]
        """Sits between FactoredNetwork and esper's class in the MRO: FactoredNetwork's
        ``super().__init__()`` lands here, so esper's own constructor does not build a second set of
        modules (FactoredNetwork builds esper's modules with esper's names, shapes and init)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nn.Module.__init__(self)

    class FactoredRecurrentActorCritic(FactoredPolicy, _EsperModuleInit):
        """esper's ``FactoredRecurrentActorCritic`` (0872525b) running esper_fast's FactoredPolicy.

        A subclass of esper's class (``isinstance`` checks pass); every method esper calls
        (``forward``, ``get_action``, ``evaluate_actions``, ``get_initial_hidden``,
        ``_compute_value``, ``_init_weights``) is FactoredPolicy's. Validation follows esper's
        ``MaskedCategorical.validate`` at call time unless this instance has its own setting
        (``validate=`` keyword or ``net.validate = ...``).
        """

        def __init__(
            self,
            state_dim: int,
            num_slots: int | None = None,
            num_blueprints: int | None = None,
            num_styles: int | None = None,
            num_tempo: int | None = None,
            num_alpha_targets: int | None = None,
            num_alpha_speeds: int | None = None,
            num_alpha_curves: int | None = None,
            num_ops: int | None = None,
            feature_dim: int = DEFAULT_FEATURE_DIM,
            lstm_hidden_dim: int = DEFAULT_LSTM_HIDDEN_DIM,
            lstm_layers: int = 1,
            slot_config: Any | None = None,
            *,
            value_mode: str = "q_op",
            backend: str = "auto",
            validate: bool | None = None,
        ) -> None:
            FactoredPolicy.__init__(
                self,
                state_dim,
                num_slots,
                num_blueprints,
                num_styles,
                num_tempo,
                num_alpha_targets,
                num_alpha_speeds,
                num_alpha_curves,
                num_ops,
                feature_dim,
                lstm_hidden_dim,
                lstm_layers,
                slot_config,
                value_mode=value_mode,
                backend=backend,
                validate=validate,
            )

        @property
        def validate(self) -> bool:  # type: ignore[override]
            own = self.__dict__.get("validate")
            return bool(masked_categorical.validate) if own is None else own

        @validate.setter
        def validate(self, value: bool) -> None:
            self.__dict__["validate"] = bool(value)

        @validate.deleter
        def validate(self) -> None:
            self.__dict__.pop("validate", None)

    FactoredRecurrentActorCritic.__module__ = __name__
    FactoredRecurrentActorCritic.__qualname__ = "FactoredRecurrentActorCritic"
    FactoredRecurrentActorCritic.esper_layout = "0872525b"  # type: ignore[attr-defined]
    return FactoredRecurrentActorCritic


# esper HEAD's constructor (2016337e, value-head schema v2), in order.
_SIGNATURE_HEAD = ("state_dim", "feature_dim", "lstm_hidden_dim", "lstm_layers", "slot_config")
# H a multiple of 8 (HEAD's heads use H/2, H/4, H/8); feature_dim != H so ResidualLSTM has its input_proj.
_PROBE_HEAD = dict(state_dim=5, feature_dim=8, lstm_hidden_dim=16, lstm_layers=1)


def _detect_head(esper_class: type) -> str | None:
    found = constructor_signature(esper_class)
    if found != _SIGNATURE_HEAD:
        return f"constructor ({', '.join(found)}) is not ({', '.join(_SIGNATURE_HEAD)})"
    with torch.random.fork_rng(devices=[]):
        try:
            theirs = _layout_of(esper_class(**_PROBE_HEAD))
        except Exception as exc:  # noqa: BLE001
            return f"a probe instance {_PROBE_HEAD} could not be built: {type(exc).__name__}: {exc}"
        ours = _layout_of(FactoredNetworkV2(**_PROBE_HEAD))
    diff = layout_difference(theirs, ours)
    return None if diff is None else f"state_dict layout differs: {diff}"


def _make_head(esper_class: type, action_masks: ModuleType) -> type:
    masked_categorical = action_masks.MaskedCategorical

    class FactoredRecurrentActorCritic(FactoredPolicyV2Mixin, esper_class):  # type: ignore[misc, valid-type]
        """esper's ``FactoredRecurrentActorCritic`` (HEAD, schema v2) running esper_fast's fused kernel.

        esper's own ``__init__`` builds the modules (names, shapes, init: esper's); the methods esper
        calls (``forward``, ``get_action``, ``evaluate_actions``, ``predict_contributions``,
        ``_compute_state_value``, ``_compute_q``, ``get_initial_hidden``) are
        :class:`esper_fast.policy_v2.FactoredPolicyV2Mixin`'s. Validation follows esper's
        ``MaskedCategorical.validate`` at call time unless the instance has its own ``validate``
        (``net.validate = False``). Empty masks raise esper_fast's ``InvalidStateMachineError``, which is
        also esper's class.
        """

        def _validating(self) -> bool:
            own = self.__dict__.get("validate")
            return bool(masked_categorical.validate) if own is None else bool(own)

    FactoredRecurrentActorCritic.__module__ = __name__
    FactoredRecurrentActorCritic.__qualname__ = "FactoredRecurrentActorCritic"
    FactoredRecurrentActorCritic.esper_layout = "2016337e"  # type: ignore[attr-defined]
    return FactoredRecurrentActorCritic


LAYOUTS: list[EsperLayout] = [
    EsperLayout(
        name="0872525b",
        description="esper-lite 0872525b: FactoredRecurrentActorCritic("
        + ", ".join(_SIGNATURE_0872525B)
        + "), nn.LSTM trunk, 8 heads, op-conditioned value_head Q(s, op)",
        detect=_detect_0872525b,
        make_class=_make_0872525b,
        agent_load_fix=True,
    ),
    EsperLayout(
        name="2016337e",
        description="esper-lite HEAD 2016337e: FactoredRecurrentActorCritic("
        + ", ".join(_SIGNATURE_HEAD)
        + "), ResidualLSTM trunk, 8 heads, state_value_head V(s) + q_head Q(s, op) + "
        "contribution_predictor (value-head schema v2)",
        detect=_detect_head,
        make_class=_make_head,
    ),
]
"""Supported esper layouts, tried in order (first match wins)."""


def register_layout(layout: EsperLayout) -> None:
    """Add a supported esper layout (e.g. esper HEAD's) to :data:`LAYOUTS` (replacing one of that name)."""
    LAYOUTS[:] = [entry for entry in LAYOUTS if entry.name != layout.name] + [layout]


# =================================================================================================
# patch / unpatch
# =================================================================================================
@dataclass
class EsperPatch:
    """What :func:`patch_esper` did.

    Attributes:
        layout: the :class:`EsperLayout` name that matched.
        cls: the patched class (a subclass of ``original``).
        original: esper's own ``FactoredRecurrentActorCritic``.
        patched: ``"module.attribute"`` names now bound to ``cls``.
        wrapped: other esper callables wrapped (``"esper.simic.agent.ppo.PPOAgent.load"``).
        skipped: esper modules that could not be imported (module -> error), so not scanned.
        resolved_at_call: esper modules that import the class inside functions (``from
            esper.tamiyo.networks import FactoredRecurrentActorCritic`` at call time: the bundle, the
            agent), so they use the patched binding of ``esper.tamiyo.networks`` without a rebind.
    """

    layout: str
    cls: type
    original: type
    patched: list[str] = field(default_factory=list)
    wrapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    resolved_at_call: list[str] = field(default_factory=list)
    _restore: list[Callable[[], None]] = field(default_factory=list, repr=False)


_ACTIVE: EsperPatch | None = None


def _import_esper() -> ModuleType:
    try:
        return importlib.import_module("esper")
    except ImportError as exc:
        raise ImportError(
            "esper_fast.patch_esper() needs esper (esper-lite, github.com/tachyon-beep/esper-lite) importable: "
            f"install it (pip install -e <esper checkout>) or put its src/ on sys.path. Import failed: {exc}"
        ) from exc


def _esper_modules() -> list[tuple[str, ModuleType]]:
    return [
        (name, mod)
        for name, mod in list(sys.modules.items())
        if isinstance(mod, ModuleType) and (name == "esper" or name.startswith("esper."))
    ]


def _rebind(old: type, new: type) -> list[tuple[ModuleType, str]]:
    """Set every esper module attribute bound to ``old`` to ``new``; returns (module, attribute)."""
    changed = []
    for _, mod in _esper_modules():
        for attr, value in list(vars(mod).items()):
            if value is old:
                setattr(mod, attr, new)
                changed.append((mod, attr))
    return changed


def _call_time_importers(rebound: set[str]) -> list[str]:
    """Loaded esper modules (of :data:`ESPER_MODULES`) that import the class inside a function."""
    out = []
    for name in ESPER_MODULES:
        mod = sys.modules.get(name)
        if mod is None or name in rebound:
            continue
        try:
            source = inspect.getsource(mod)
        except (OSError, TypeError):
            continue
        if any(
            line.startswith((" ", "\t")) and "import FactoredRecurrentActorCritic" in line
            for line in source.splitlines()
        ):
            out.append(name)
    return out


def _wrap_agent_load(patch: EsperPatch) -> None:
    """Make ``PPOAgent.load`` rebuild the network with ``architecture['state_dim']`` (esper HEAD's rule).

    At 0872525b ``load`` infers ``state_dim`` from ``feature_net.0.weight.shape[1]``, which is
    ``state_dim + 4 * num_slots``, so the rebuilt network never fits the saved weights (measured:
    esper's own ``save`` -> ``load`` round trip raises a size mismatch). The wrapper reads the
    checkpoint's ``architecture['state_dim']`` and hands it to esper's ``create_policy`` during the
    original ``load``; everything else is esper's code.
    """
    agent_module = sys.modules.get(ESPER_AGENT_MODULE)
    agent_cls = getattr(agent_module, "PPOAgent", None)
    raw = None if agent_cls is None else inspect.getattr_static(agent_cls, "load", None)
    if not isinstance(raw, classmethod):
        patch.skipped[f"{ESPER_AGENT_MODULE}.PPOAgent.load"] = "not found (not wrapped)"
        return
    original_load = raw.__func__

    def load(cls: type, path: Any, device: str = "cuda:0") -> Any:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            state_dim = int(ckpt["architecture"]["state_dim"])
            factory = importlib.import_module("esper.tamiyo.policy.factory")
        except Exception:  # noqa: BLE001 - let esper's own load report whatever is wrong
            return original_load(cls, path, device)
        del ckpt
        create_policy = factory.create_policy

        def create_policy_with_state_dim(*args: Any, **kwargs: Any) -> Any:
            if "feature_dim" in kwargs:
                kwargs["feature_dim"] = state_dim
            return create_policy(*args, **kwargs)

        factory.create_policy = create_policy_with_state_dim
        try:
            return original_load(cls, path, device)
        finally:
            factory.create_policy = create_policy

    load.__doc__ = (
        original_load.__doc__ or ""
    ) + "\n\n(esper_fast.patch_esper: the network is rebuilt with architecture['state_dim'].)"
    load.__wrapped__ = original_load  # type: ignore[attr-defined]
    agent_cls.load = classmethod(load)
    patch.wrapped.append(f"{ESPER_AGENT_MODULE}.PPOAgent.load")
    patch._restore.append(lambda: setattr(agent_cls, "load", raw))


def patch_esper(*, fix_agent_load: bool = True) -> EsperPatch:
    """Make esper build and train esper_fast's fused policy. Idempotent; undo with :func:`unpatch_esper`.

    Call it before esper constructs its policy (``create_policy`` / ``LSTMPolicyBundle``): networks
    built earlier stay esper's own and fail esper's ``isinstance`` checks against the patched class.

    Args:
        fix_agent_load: also wrap ``PPOAgent.load`` where the layout's esper rebuilds the network
            with the wrong ``state_dim`` (0872525b: it cannot open any checkpoint, its own included).

    Returns:
        :class:`EsperPatch`: the layout found, the class, and every ``module.attribute`` rebound.

    Raises:
        ImportError: esper cannot be imported (the message says how to make it importable).
        UnsupportedEsperError: esper's network matches no entry of :data:`LAYOUTS` (the message
            names the constructor signature and state_dict differences found).
    """
    global _ACTIVE
    if _ACTIVE is not None:
        current = getattr(sys.modules.get(ESPER_NETWORK_MODULE), "FactoredRecurrentActorCritic", None)
        if current is _ACTIVE.cls:
            return _ACTIVE
        _ACTIVE = None  # esper was re-imported since (fresh module objects): patch the new ones
    _import_esper()
    skipped: dict[str, str] = {}
    for name in ESPER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a module it imports is missing: esper's module is there but broken
                skipped[name] = f"{type(exc).__name__}: {exc}"
            # else: this esper has no such module (0872525b has no ppo_agent, HEAD no ppo): nothing to patch
        except Exception as exc:  # noqa: BLE001 - optional modules; required ones are checked below
            skipped[name] = f"{type(exc).__name__}: {exc}"
    network_module = sys.modules.get(ESPER_NETWORK_MODULE)
    masks_module = sys.modules.get(ESPER_MASKS_MODULE)
    if network_module is None or masks_module is None:
        missing = [n for n in (ESPER_NETWORK_MODULE, ESPER_MASKS_MODULE) if n not in sys.modules]
        raise UnsupportedEsperError(
            f"esper is importable but {missing} are not: " + "; ".join(f"{k}: {skipped.get(k, '?')}" for k in missing)
        )
    original = getattr(network_module, "FactoredRecurrentActorCritic", None)
    if not isinstance(original, type):
        raise UnsupportedEsperError(f"{ESPER_NETWORK_MODULE} has no class FactoredRecurrentActorCritic")
    for needed in ("MaskedCategorical", "InvalidStateMachineError"):
        if not hasattr(masks_module, needed):
            raise UnsupportedEsperError(f"{ESPER_MASKS_MODULE} has no {needed}")
    reasons = {}
    for layout in LAYOUTS:
        reason = layout.detect(original)
        if reason is None:
            break
        reasons[layout.name] = reason
    else:
        where = getattr(inspect.getmodule(original), "__file__", "?")
        raise UnsupportedEsperError(
            f"esper's FactoredRecurrentActorCritic ({where}) has constructor "
            f"({', '.join(constructor_signature(original))}); esper_fast supports: "
            + "; ".join(f"{entry.description} [{entry.name}: {reasons[entry.name]}]" for entry in LAYOUTS)
        )
    cls = layout.make_class(original, masks_module)
    if not issubclass(cls, original):
        raise TypeError(f"layout {layout.name!r}: make_class returned {cls}, not a subclass of esper's class")
    patch = EsperPatch(layout=layout.name, cls=cls, original=original, skipped=skipped)
    changed = _rebind(original, cls)
    patch.patched = [f"{mod.__name__}.{attr}" for mod, attr in changed]
    patch.resolved_at_call = _call_time_importers({mod.__name__ for mod, _ in changed})
    if fix_agent_load and layout.agent_load_fix:
        _wrap_agent_load(patch)
    for name, why in skipped.items():
        logger.warning("esper_fast.patch_esper: %s not imported, so not patched: %s", name, why)
    _ACTIVE = patch
    return patch


def unpatch_esper() -> EsperPatch | None:
    """Undo :func:`patch_esper` (every binding of the patched class goes back to esper's); returns the
    patch that was undone, or None if esper was not patched."""
    global _ACTIVE
    patch, _ACTIVE = _ACTIVE, None
    if patch is None:
        return None
    _rebind(patch.cls, patch.original)  # also modules imported after the patch that bound it
    for restore in reversed(patch._restore):
        restore()
    return patch


def active_patch() -> EsperPatch | None:
    """The current :class:`EsperPatch`, or None."""
    return _ACTIVE
