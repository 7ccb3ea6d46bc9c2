"""esper_fast.patch_esper(): esper's trainer on esper_fast's network, against a stand-in esper package.

The stand-in (tests/esper_standin.py) is laid out like esper-lite 0872525b where the integration
touches it; the real esper is checked outside CI (scripts/check_esper.sh, README).
"""

from __future__ import annotations

import pickle
import sys
from types import SimpleNamespace

import pytest
import torch

import esper_fast
from esper_fast import HEAD_NAMES, FactoredPolicy
from esper_fast.errors import InvalidActionMaskError
from esper_fast.integrations import esper as integration
from esper_fast.ppo.agent import validation_off
from tests.esper_standin import drop_esper_modules

SMALL = dict(state_dim=114, num_slots=3, feature_dim=16, lstm_hidden_dim=16)


def _inputs(batch: int = 3, state_dim: int = 114, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, state_dim, generator=g), torch.randint(-1, 13, (batch, 3), generator=g)


def _empty_op_mask(batch: int = 3) -> torch.Tensor:
    return torch.zeros(batch, 6, dtype=torch.bool)


# ---- without esper ---------------------------------------------------------------------------------
def test_patch_without_esper_raises_import_error(monkeypatch):
    esper_fast.unpatch_esper()
    drop_esper_modules()
    monkeypatch.setitem(sys.modules, "esper", None)  # makes `import esper` fail, whatever is installed
    with pytest.raises(ImportError, match=r"patch_esper\(\) needs esper .*importable"):
        esper_fast.patch_esper()
    assert integration.active_patch() is None


def test_error_is_esper_fast_class_without_esper(monkeypatch):
    drop_esper_modules()
    monkeypatch.setitem(sys.modules, "esper", None)
    monkeypatch.setattr(integration.importlib.util, "find_spec", lambda name: None)
    net = FactoredPolicy(**SMALL)
    with pytest.raises(esper_fast.InvalidStateMachineError, match="^No valid actions available") as info:
        net.get_action(*_inputs(), op_mask=_empty_op_mask())
    assert type(info.value) is esper_fast.InvalidStateMachineError


# ---- patch / unpatch -------------------------------------------------------------------------------
def test_patch_rebinds_everywhere_and_passes_esper_isinstance_checks(esper_standin):
    rng = torch.get_rng_state()
    patch = esper_fast.patch_esper()
    assert torch.equal(rng, torch.get_rng_state()), "layout probing moved the caller's RNG"
    from esper.simic.agent import PPOAgent
    from esper.tamiyo import networks
    from esper.tamiyo.networks import factored_lstm
    from esper.tamiyo.policy.factory import create_policy

    assert patch.layout == "0872525b"
    assert set(patch.patched) == {
        "esper.tamiyo.networks.FactoredRecurrentActorCritic",
        "esper.tamiyo.networks.factored_lstm.FactoredRecurrentActorCritic",
    }
    assert set(patch.resolved_at_call) == {"esper.tamiyo.policy.lstm_bundle", "esper.simic.agent.ppo"}
    assert patch.wrapped == ["esper.simic.agent.ppo.PPOAgent.load"] and patch.skipped == {}
    assert networks.FactoredRecurrentActorCritic is patch.cls is factored_lstm.FactoredRecurrentActorCritic
    assert issubclass(patch.cls, patch.original) and issubclass(patch.cls, FactoredPolicy)
    assert esper_fast.patch_esper() is patch  # idempotent

    policy = create_policy(policy_type="lstm", state_dim=114, num_slots=3, lstm_hidden_dim=16, device="cpu")
    net = policy.network
    assert type(net) is patch.cls and isinstance(net, patch.original)
    agent = PPOAgent(policy=policy, device="cpu")  # esper's isinstance assertion in __init__
    result = policy.get_action(*_inputs(), {h: None for h in HEAD_NAMES}, deterministic=False)
    assert torch.equal(result.actions["op"], result.actions["op"].clamp(0, 5))
    assert torch.equal(result.sampled_op, result.actions["op"])  # esper's bundle passes on the op q_op was read at
    # esper's update(): isinstance assertion, then evaluate_actions + backward + step on esper_fast's network
    B, T = 2, 4
    states, bp = torch.randn(B, T, 114), torch.randint(-1, 13, (B, T, 3))
    actions = {h: torch.zeros(B, T, dtype=torch.long) for h in HEAD_NAMES}
    batch = {
        "states": states,
        "blueprint_indices": bp,
        "actions": actions,
        "returns": torch.randn(B, T),
        "masks": {h: torch.ones(B, T, n, dtype=torch.bool) for h, n in net.head_sizes.items()},
    }
    before = {k: v.clone() for k, v in net.state_dict().items()}
    agent.update(batch)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_patched_agent_save_load_roundtrip(esper_standin, tmp_path):
    patch = esper_fast.patch_esper()
    from esper.simic.agent import PPOAgent
    from esper.tamiyo.policy.factory import create_policy

    agent = PPOAgent(policy=create_policy(state_dim=114, num_slots=3, lstm_hidden_dim=16), device="cpu")
    agent.train_steps = 7
    agent.save(tmp_path / "agent.pt")
    loaded = PPOAgent.load(tmp_path / "agent.pt", device="cpu")
    assert type(loaded.policy.network) is patch.cls and loaded.train_steps == 7
    for k, v in agent.policy.state_dict().items():
        assert torch.equal(v, loaded.policy.state_dict()[k]), k


def test_agent_load_fails_without_the_load_fix(esper_standin, tmp_path):
    """The stand-in reproduces 0872525b's load(): state_dim from feature_net's width (+ 4 per slot)."""
    esper_fast.patch_esper(fix_agent_load=False)
    from esper.simic.agent import PPOAgent
    from esper.tamiyo.policy.factory import create_policy

    PPOAgent(policy=create_policy(state_dim=114, num_slots=3, lstm_hidden_dim=16), device="cpu").save(tmp_path / "a.pt")
    with pytest.raises(RuntimeError, match="size mismatch for feature_net.0.weight"):
        PPOAgent.load(tmp_path / "a.pt", device="cpu")


def test_unpatch_restores_everything(esper_standin):
    from esper.simic.agent.ppo import PPOAgent
    from esper.tamiyo import networks

    original, load = networks.FactoredRecurrentActorCritic, PPOAgent.__dict__["load"]
    patch = esper_fast.patch_esper()
    assert PPOAgent.__dict__["load"] is not load
    assert esper_fast.unpatch_esper() is patch
    assert networks.FactoredRecurrentActorCritic is original
    assert sys.modules["esper.tamiyo.networks.factored_lstm"].FactoredRecurrentActorCritic is original
    assert PPOAgent.__dict__["load"] is load
    assert esper_fast.unpatch_esper() is None
    again = esper_fast.patch_esper()
    assert again is not patch and networks.FactoredRecurrentActorCritic is again.cls


def test_patched_state_dict_loads_strictly_into_esper_class_and_back(esper_standin):
    patch = esper_fast.patch_esper()
    ours = patch.cls(**SMALL)
    theirs = patch.original(**SMALL)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())


# ---- layout table ----------------------------------------------------------------------------------
def test_unsupported_head_layout_is_refused_naming_what_was_found(esper_standin_head):
    with pytest.raises(integration.UnsupportedEsperError) as info:
        esper_fast.patch_esper()
    text = str(info.value)
    assert "constructor (state_dim, feature_dim, lstm_hidden_dim, lstm_layers, slot_config)" in text
    assert "0872525b" in text and "2016337e" in text
    # HEAD's constructor, but not HEAD's state_dict: the HEAD entry names the keys that differ
    assert "[2016337e: state_dict layout differs: keys only in esper's network ['lstm.weight_ih_l0'" in text
    assert "keys esper's network lacks ['lstm.input_proj.weight'" in text
    assert integration.active_patch() is None


def test_unsupported_state_dict_layout_names_the_extra_keys(esper_standin_extra):
    with pytest.raises(integration.UnsupportedEsperError, match=r"keys only in esper's network \['aux_head.weight'"):
        esper_fast.patch_esper()


def test_a_second_layout_is_one_table_entry(esper_standin_head, monkeypatch):
    monkeypatch.setattr(integration, "LAYOUTS", list(integration.LAYOUTS))
    head_signature = ("state_dim", "feature_dim", "lstm_hidden_dim", "lstm_layers", "slot_config")

    def make_class(esper_class, masks_module):
        return type("FactoredRecurrentActorCritic", (esper_class,), {"made_for": "head"})

    integration.register_layout(
        integration.EsperLayout(
            name="head",
            description="esper HEAD (test entry)",
            make_class=make_class,
            detect=lambda cls: None if integration.constructor_signature(cls) == head_signature else "not HEAD",
        )
    )
    patch = esper_fast.patch_esper()
    from esper.tamiyo import networks

    assert patch.layout == "head" and networks.FactoredRecurrentActorCritic.made_for == "head"
    assert patch.wrapped == []  # the load fix belongs to the 0872525b entry only


# ---- esper HEAD (2016337e, value-head schema v2) ----------------------------------------------------
HEAD_SMALL = dict(state_dim=116, feature_dim=16, lstm_hidden_dim=16)


def test_head_layout_is_detected_and_patched(esper_standin_head_v2):
    from esper_fast.policy_v2 import FactoredPolicyV2Mixin

    rng = torch.get_rng_state()
    patch = esper_fast.patch_esper()
    assert torch.equal(rng, torch.get_rng_state()), "layout probing moved the caller's RNG"
    from esper.simic.agent import PPOAgent
    from esper.tamiyo import networks
    from esper.tamiyo.networks import factored_lstm
    from esper.tamiyo.policy.factory import create_policy

    assert patch.layout == "2016337e"
    assert set(patch.patched) == {
        "esper.tamiyo.networks.FactoredRecurrentActorCritic",
        "esper.tamiyo.networks.factored_lstm.FactoredRecurrentActorCritic",
    }
    assert set(patch.resolved_at_call) == {"esper.tamiyo.policy.lstm_bundle", "esper.simic.agent.ppo_agent"}
    assert patch.wrapped == [] and patch.skipped == {}  # HEAD's load() needs no fix; no ppo module is fine
    assert networks.FactoredRecurrentActorCritic is patch.cls is factored_lstm.FactoredRecurrentActorCritic
    assert issubclass(patch.cls, patch.original) and issubclass(patch.cls, FactoredPolicyV2Mixin)
    assert not issubclass(patch.cls, FactoredPolicy)
    assert esper_fast.patch_esper() is patch

    policy = create_policy(policy_type="lstm", state_dim=116, num_slots=3, lstm_hidden_dim=16, device="cpu")
    net = policy.network
    assert type(net) is patch.cls and isinstance(net, patch.original)
    agent = PPOAgent(policy=policy)  # esper's isinstance assertion
    state, bp = _inputs(state_dim=116)
    result = net.get_action(state, bp, deterministic=False)  # esper_fast's (the stand-in's own raises)
    assert result.values.shape == (3,) and result.q_op.shape == (3,)
    assert torch.equal(result.sampled_op, result.actions["op"]) and bool(
        (result.actions["op"] >= 0).all()
    )  # value_read_op
    out = net(state.unsqueeze(1), bp.unsqueeze(1))
    assert out["state_value"].shape == (3, 1) and out["q_value"].shape == (3, 1)
    B, T = 2, 4
    actions = {h: torch.zeros(B, T, dtype=torch.long) for h in HEAD_NAMES}
    batch = {
        "states": torch.randn(B, T, 116),
        "blueprint_indices": torch.randint(-1, 13, (B, T, 3)),
        "actions": actions,
        "returns": torch.randn(B, T),
        "masks": {h: torch.ones(B, T, net.head_size(h), dtype=torch.bool) for h in HEAD_NAMES},
    }
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert torch.isfinite(torch.tensor(agent.update(batch)["loss"]))
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_head_patched_class_keeps_esper_modules_and_init(esper_standin_head_v2):
    """esper's own __init__ builds the modules: same seed, same weights; strict loads both ways."""
    patch = esper_fast.patch_esper()
    torch.manual_seed(3)
    theirs = patch.original(**HEAD_SMALL)
    torch.manual_seed(3)
    ours = patch.cls(**HEAD_SMALL)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k]), k
    theirs.load_state_dict(ours.state_dict(), strict=True)
    from esper_fast import FactoredPolicyV2

    FactoredPolicyV2(**HEAD_SMALL).load_state_dict(ours.state_dict(), strict=True)  # esper_fast's own class too


def test_head_patched_network_follows_masked_categorical_validate(esper_standin_head_v2, monkeypatch):
    patch = esper_fast.patch_esper()
    from esper.tamiyo.policy.action_masks import InvalidStateMachineError as EsperError
    from esper.tamiyo.policy.action_masks import MaskedCategorical

    net = patch.cls(**HEAD_SMALL)
    state, bp = _inputs(state_dim=116)
    monkeypatch.setattr(MaskedCategorical, "validate", True)
    with pytest.raises(EsperError, match="^No valid op actions available in forward") as info:
        net.get_action(state, bp, op_mask=_empty_op_mask())
    assert isinstance(info.value, esper_fast.InvalidStateMachineError)
    MaskedCategorical.validate = False
    result = net.get_action(state, bp, op_mask=_empty_op_mask())
    assert torch.equal(result.actions["op"], torch.full((3,), -1))
    net.validate = True
    with pytest.raises(EsperError):
        net.get_action(state, bp, op_mask=_empty_op_mask())
    del net.validate
    net.get_action(state, bp, op_mask=_empty_op_mask())


def test_head_unpatch_restores(esper_standin_head_v2):
    from esper.tamiyo import networks

    original = networks.FactoredRecurrentActorCritic
    patch = esper_fast.patch_esper()
    assert esper_fast.unpatch_esper() is patch
    assert networks.FactoredRecurrentActorCritic is original
    assert sys.modules["esper.tamiyo.networks.factored_lstm"].FactoredRecurrentActorCritic is original


# ---- esper's exception and toggle --------------------------------------------------------------------
def test_invalid_mask_raises_esper_and_esper_fast_class(esper_standin):
    from esper.tamiyo.policy.action_masks import InvalidStateMachineError as EsperError

    net = FactoredPolicy(**SMALL)  # plain FactoredPolicy: esper is importable, so its class is used too
    with pytest.raises(EsperError, match="^No valid actions available") as info:
        net.get_action(*_inputs(), op_mask=_empty_op_mask())
    assert isinstance(info.value, esper_fast.InvalidStateMachineError)
    assert isinstance(info.value, InvalidActionMaskError) and isinstance(info.value, RuntimeError)
    state, bp = _inputs()
    with pytest.raises(EsperError, match="^No valid op actions available in forward"):
        net(state.unsqueeze(1), bp.unsqueeze(1), None, op_mask=_empty_op_mask().unsqueeze(1))
    slot_mask = torch.zeros(3, 3, dtype=torch.bool)
    with pytest.raises(EsperError, match="^No valid actions available"):
        net.get_action(*_inputs(), slot_mask=slot_mask)
    try:  # a plain `except` on esper's class catches it too (not only isinstance)
        net.get_action(*_inputs(), op_mask=_empty_op_mask())
    except EsperError as exc:
        assert "Kasmina state machine" in str(exc)
        again = pickle.loads(pickle.dumps(exc))  # e.g. across processes
        assert type(again) is type(exc) and again.args == exc.args


def test_patched_network_follows_masked_categorical_validate(esper_standin, monkeypatch):
    patch = esper_fast.patch_esper()
    from esper.tamiyo.policy.action_masks import InvalidStateMachineError as EsperError
    from esper.tamiyo.policy.action_masks import MaskedCategorical

    net = patch.cls(**SMALL)
    monkeypatch.setattr(MaskedCategorical, "validate", True)
    with pytest.raises(EsperError):
        net.get_action(*_inputs(), op_mask=_empty_op_mask())
    MaskedCategorical.validate = False  # esper's production switch, flipped after construction
    result = net.get_action(*_inputs(), op_mask=_empty_op_mask())
    assert torch.equal(result.actions["op"], torch.full((3,), -1))  # documented: bad rows give -1
    net.validate = True  # an instance setting wins over the class flag
    with pytest.raises(EsperError):
        net.get_action(*_inputs(), op_mask=_empty_op_mask())
    del net.validate  # back to following the class flag
    net.get_action(*_inputs(), op_mask=_empty_op_mask())
    assert patch.cls(**SMALL, validate=True).validate is True


# ---- FactoredPolicy: validate as an instance setting, slot_config ----------------------------------------
def test_validate_is_an_instance_setting_with_the_class_flag_as_default(monkeypatch):
    checked, quiet = FactoredPolicy(**SMALL), FactoredPolicy(**SMALL, validate=False)
    with pytest.raises(InvalidActionMaskError):
        checked.get_action(*_inputs(), op_mask=_empty_op_mask())
    quiet.get_action(*_inputs(), op_mask=_empty_op_mask())  # no raise, no sync
    assert FactoredPolicy.validate is True and "validate" not in vars(checked)
    monkeypatch.setattr(FactoredPolicy, "validate", False)  # the class flag (compatibility)
    checked.get_action(*_inputs(), op_mask=_empty_op_mask())
    assert FactoredPolicy(**SMALL, validate=True).validate is True
    monkeypatch.undo()
    with validation_off(checked):
        checked.get_action(*_inputs(), op_mask=_empty_op_mask())
        assert FactoredPolicy.validate is True  # validation_off no longer mutates the class
    assert "validate" not in vars(checked) and checked.validate is True


def test_slot_config_sizes_the_slot_head_as_in_esper():
    five = SimpleNamespace(num_slots=5)
    net = FactoredPolicy(114, None, None, None, None, None, None, None, None, 16, 16, 1, five)  # positional, last
    assert net.num_slots == 5 and net.slot_head[2].out_features == 5
    assert net.feature_net[0].in_features == 114 + 4 * 5
    assert FactoredPolicy(114, num_slots=2, feature_dim=16, lstm_hidden_dim=16, slot_config=five).num_slots == 2
    with pytest.raises(TypeError, match="slot_config must have an int num_slots"):
        FactoredPolicy(114, feature_dim=16, lstm_hidden_dim=16, slot_config=object())


def test_patch_after_esper_was_reimported_patches_the_new_modules(esper_standin):
    first = esper_fast.patch_esper()
    drop_esper_modules()  # e.g. importlib.reload / a test harness: fresh esper module objects
    second = esper_fast.patch_esper()
    import esper.tamiyo.networks as networks

    assert second is not first and networks.FactoredRecurrentActorCritic is second.cls
