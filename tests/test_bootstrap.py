"""tools/bootstrap.py (make train / make test): what it runs, and pytest's exit code 5 said out loud."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bootstrap(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("bootstrap", ROOT / "tools" / "bootstrap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []
    monkeypatch.setattr(mod, "ensure_venv", lambda: tmp_path / "bin" / "python")
    monkeypatch.setattr(mod, "ensure_torch", lambda python: calls.append(("torch", python)))
    monkeypatch.setattr(mod, "ensure_project", lambda python, extras: calls.append(("project", extras)))
    mod.calls = calls
    return mod


@pytest.mark.parametrize("rc,expected", [(0, 0), (1, 1), (2, 2), (5, 0)])
def test_test_command_passes_pytest_codes_on_and_names_code_5(bootstrap, monkeypatch, capsys, rc, expected):
    ran = []
    monkeypatch.setattr(bootstrap, "run", lambda cmd, **kw: ran.append(cmd) or rc)
    assert bootstrap.main(["test", "-k", "gym"]) == expected
    assert ran[0][1:] == ["-m", "pytest", "-q", "-k", "gym"]
    assert ("project", "test,triton") in bootstrap.calls
    assert ("no tests were collected" in capsys.readouterr().out) == (rc == 5)


def test_train_command_runs_the_default_training(bootstrap, monkeypatch):
    ran = []
    monkeypatch.setattr(bootstrap, "run", lambda cmd, **kw: ran.append(cmd) or 0)
    assert bootstrap.main(["train"]) == 0
    assert ran[0][1:] == ["-m", "esper_fast", "train"]
    assert ("project", "train") in bootstrap.calls


def test_unknown_command_prints_usage(bootstrap, capsys):
    assert bootstrap.main(["deploy"]) == 2
    assert "make train" in capsys.readouterr().out


def test_the_stamp_follows_the_sources(bootstrap):
    assert bootstrap.stamp_of("train") == bootstrap.stamp_of("train")
    assert bootstrap.stamp_of("train") != bootstrap.stamp_of("test,triton")
