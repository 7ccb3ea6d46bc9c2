"""Shared test setup: Triton's interpreter on GPU-less machines, and the backend/device matrix."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # must happen before triton is imported anywhere
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from esper_fast import available_backends  # noqa: E402


def backend_device_pairs() -> list[tuple[str, str]]:
    """Every (backend, device) combination that can run here."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [(b, d) for d in devices for b in available_backends(d)]


BACKEND_DEVICES = backend_device_pairs()
NATIVE_BACKEND_DEVICES = [(b, d) for b, d in BACKEND_DEVICES if b != "torch"]


def small_n(backend: str, device: str, n: int) -> int:
    """Caps row counts for Triton's CPU interpreter (~10 ms per program)."""
    return min(n, 2048) if (backend == "triton" and device == "cpu") else n


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# The stand-in esper package (tests/esper_standin.py) as fixtures: esper_standin, esper_standin_head, ...
from tests.esper_standin import (  # noqa: E402, F401
    esper_standin,
    esper_standin_extra,
    esper_standin_head,
    esper_standin_head_v2,
)
