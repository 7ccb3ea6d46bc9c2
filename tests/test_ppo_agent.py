"""ppo/agent.py's two switches: validation_off (instances and classes) and cpu_threads, both restoring."""

from __future__ import annotations

import pytest
import torch

from esper_fast import FactoredPolicy
from esper_fast.ppo.agent import cpu_threads, validation_off


def test_validation_off_on_instances_and_classes_restores_exactly():
    class Policy(FactoredPolicy):  # a class of its own: no class-level setting yet, whatever other tests did
        pass

    own = Policy(114, feature_dim=16, lstm_hidden_dim=16, validate=True)
    follows = Policy(114, feature_dim=16, lstm_hidden_dim=16)
    assert "validate" in vars(own) and "validate" not in vars(follows) and "validate" not in vars(Policy)
    with validation_off(own, Policy):
        assert own.validate is False and follows.validate is False  # the class flag reaches `follows`
    assert own.validate is True and "validate" not in vars(Policy)  # no class attribute left behind
    assert follows.validate is FactoredPolicy.validate
    Policy.validate = True  # a class with its own setting gets it back
    with validation_off(Policy):
        assert follows.validate is False
    assert vars(Policy)["validate"] is True


def test_validation_off_restores_on_error():
    p = FactoredPolicy(114, feature_dim=16, lstm_hidden_dim=16, validate=True)
    with pytest.raises(RuntimeError), validation_off(p):
        raise RuntimeError("boom")
    assert p.validate is True


def test_cpu_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), cpu_threads(1, "cpu"):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with cpu_threads(0, "cpu"):  # 0: leave the count alone
        assert torch.get_num_threads() == before
