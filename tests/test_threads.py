"""esper_fast.ops.threads.cpu_threads: the one thread-count manager (torch's or the cpu backend's)."""

from __future__ import annotations

import pytest
import torch

from esper_fast.ops.backends import available_backends
from esper_fast.ops.threads import cpu_threads


def test_torch_threads_are_set_inside_and_restored_after_an_exception():
    old = torch.get_num_threads()
    want = 1 if old != 1 else 2
    with pytest.raises(RuntimeError, match="boom"), cpu_threads(want):
        assert torch.get_num_threads() == want
        raise RuntimeError("boom")
    assert torch.get_num_threads() == old


def test_no_change_for_zero_or_a_gpu_device():
    old = torch.get_num_threads()
    want = 1 if old != 1 else 2
    with cpu_threads(0):
        assert torch.get_num_threads() == old
    with cpu_threads(want, "cuda"):
        assert torch.get_num_threads() == old


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="runtime"), cpu_threads(1, runtime="openmp"):
        pass
    with pytest.raises(ValueError, match="parallel_threshold"), cpu_threads(1, parallel_threshold=0):
        pass


@pytest.mark.skipif("cpu" not in available_backends(), reason="esper_fast._C not built")
def test_native_threads_and_threshold_are_restored():
    from esper_fast import _C

    old, threshold = _C.get_num_threads(), _C.parallel_threshold()
    with pytest.raises(KeyError), cpu_threads(3, runtime="native", parallel_threshold=7):
        assert (_C.get_num_threads(), _C.parallel_threshold()) == (3, 7)
        raise KeyError
    assert (_C.get_num_threads(), _C.parallel_threshold()) == (old, threshold)
