"""No leaks, and no per-call allocations beyond the outputs and O(features) scratch.

RSS is read from ``/proc/self/statm`` (Linux). The leak bound is tolerant: 5 MB over 10 000
calls lets through less than ~500 bytes per call, so any leaked array, buffer or cache is caught
while allocator noise is not. Measured here: 0 to 80 KB per op.
"""
import gc
import os
import tracemalloc

import numpy as np
import pytest

import fastbn
from registry import OPS

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/statm"),
                                reason="RSS is read from /proc/self/statm (Linux)")

CALLS = 10_000
WARM_UP = 500
MAX_GROWTH = 5 * 2**20
OP_IDS = [op.id for op in OPS]


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _small(op):
    return op.shape("small")


# The fused ops' variants with a residual (the most arrays per call); the others run the same code.
LEAK_OPS = [op for op in OPS if not op.spec.relu or op.residual]


@pytest.mark.parametrize("backend", fastbn.available_backends())
@pytest.mark.parametrize("op", LEAK_OPS, ids=[op.id for op in LEAK_OPS])
def test_no_leak_over_10000_forward_backward_calls(op, backend):
    x, gamma, beta, param = op.make(_small(op))
    dout = np.ones_like(x)

    def step():
        out, cache = op.forward(x, gamma, beta, param, backend=backend)
        op.backward(dout, cache, backend=backend)

    for _ in range(WARM_UP):
        step()
    gc.collect()
    before = _rss()
    for _ in range(CALLS):
        step()
    gc.collect()
    growth = _rss() - before
    assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.2f} MB over {CALLS} calls"


def _peak_allocation(f):
    """Peak bytes allocated (as seen by tracemalloc, which NumPy reports to) while f runs."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        result = f()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start, result


# The "alloc" shapes of the registry have many rows/planes per feature, where scratch
# proportional to the number of planes or rows (instead of features) would show: 1x1 planes make
# NCHW planes one value each.
SCRATCH = 2**20  # O(features) scratch and Python objects: generously 1 MB


@pytest.mark.skipif("cython" not in fastbn.available_backends(), reason="compiled kernels are not built")
@pytest.mark.parametrize("op", [op for op in OPS if not op.param_broadcast],
                         ids=[op.id for op in OPS if not op.param_broadcast])
def test_compiled_calls_allocate_only_outputs_and_small_scratch(op):
    shape = op.shape("alloc")
    x, gamma, beta, param = op.make(shape, np.float32)
    dout = np.ones_like(x)
    kw = {"residual": op.residual_for(x)} if op.residual else {}  # (made outside the measurement)
    forward_peak, (out, cache) = _peak_allocation(
        lambda: op.forward(x, gamma, beta, param, backend="cython", **kw))
    assert forward_peak < x.nbytes + SCRATCH, (
        f"forward allocated {forward_peak / 2**20:.1f} MB for a {x.nbytes / 2**20:.1f} MB output")
    backward_peak, _ = _peak_allocation(lambda: op.backward(dout, cache, backend="cython"))
    outputs = 2 if op.residual else 1  # dx (and dresidual)
    assert backward_peak < outputs * x.nbytes + SCRATCH, (
        f"backward allocated {backward_peak / 2**20:.1f} MB for a {x.nbytes / 2**20:.1f} MB dx")
