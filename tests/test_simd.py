"""The AVX-512 loops and the baseline/AVX2 loops compute the same bits.

The compiled kernels pick their instruction set once, at import (``fastbn._kernels.simd()``);
``FASTBN_DISABLE_AVX512=1`` stops at the AVX2 path (or the baseline on a CPU without AVX2) and
``FASTBN_DISABLE_AVX2=1`` at the baseline. Every op is run in a fresh interpreter per path, over shapes that exercise full vectors, vector tails, unaligned rows,
streamed (>= 8 MiB) and cached outputs, and the results are compared bit for bit.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fastbn import _kernels

# (op id, shape, dtype) -- op ids as in tests/registry.py
CASES = [
    ("batchnorm-train", (64, 33), "float32"),
    ("batchnorm-train", (37, 1027), "float64"),
    ("batchnorm-train", (2100, 1001), "float32"),  # streamed output, unaligned rows
    ("batchnorm-train", (1031, 1031), "float64"),  # streamed output, unaligned rows
    ("batchnorm-test", (2100, 1001), "float32"),
    ("batchnorm-train", (2048, 2048), "float32"),  # column blocks
    ("batchnorm-train", (1500, 1104), "float64"),  # column blocks, a narrower last one
    ("batchnorm-test", (1500, 1104), "float64"),
    ("batchnorm-train", (1024, 2064), "float32"),  # backward in column blocks
    ("batchnorm-train", (4100, 528), "float64"),  # backward in column blocks shared by the threads
    ("batchnorm-train", (300, 1001), "float32"),  # small: column blocks, masked partial vectors
    ("batchnorm-test", (300, 1001), "float32"),
    ("batchnorm-train", (1003, 50), "float32"),  # wide rows of 21 rows, 16 rows left over
    ("batchnorm-test", (1003, 50), "float64"),
    ("batchnorm-train", (1200, 64), "float32"),  # wide rows of 17 rows (not 16: 4 KiB), 10 left
    ("spatial_batchnorm-train-NHWC", (8, 32, 32, 3), "float64"),  # wide rows of 342 rows
    ("spatial_batchnorm-train-NCHW", (4, 6, 45, 47), "float32"),
    ("spatial_batchnorm-train-NCHW", (8, 16, 128, 130), "float32"),  # streamed planes
    ("spatial_batchnorm-train-NCHW", (3, 2, 256, 257), "float64"),  # few channels, streamed
    ("spatial_batchnorm-train-NHWC", (8, 33, 35, 19), "float32"),
    ("spatial_batchnorm-test-NCHW", (8, 16, 128, 130), "float32"),
    ("layernorm-train", (300, 57), "float32"),  # short rows
    ("layernorm-train", (300, 64), "float32"),  # short rows of 16k values: held in registers
    ("layernorm-train", (257, 16), "float64"),
    ("layernorm-train", (70, 96), "float64"),
    ("layernorm-train", (129, 128), "float32"),
    ("layernorm-train", (40, 144), "float32"),  # (too long for registers)
    ("layernorm-train", (96, 1031), "float64"),
    ("layernorm-train", (1100, 2049), "float32"),  # long rows, streamed
    ("layernorm-train", (5, 70001), "float32"),  # backward by column segments
    ("layernorm-train", (6, 9000), "float64"),
    ("groupnorm-train", (4, 12, 9, 13), "float32"),
    ("groupnorm-train", (16, 32, 67, 65), "float32"),  # streamed
    ("groupnorm-train", (3, 8, 31, 33), "float64"),
    ("rmsnorm-train", (300, 57), "float32"),  # the rows paths without centring
    ("rmsnorm-train", (300, 64), "float32"),  # held in registers
    ("rmsnorm-train", (70, 96), "float64"),
    ("rmsnorm-train", (300, 256), "float64"),  # backward four rows at a time
    ("rmsnorm-train", (1100, 2049), "float32"),  # long rows, streamed
    ("rmsnorm-train", (5, 70001), "float32"),  # backward by column segments
    ("batchnorm_relu-train", (2100, 1001), "float32"),  # the fused epilogues: streamed, unaligned
    ("batchnorm_relu-train", (2048, 2048), "float32"),  # column blocks
    ("batchnorm_relu-test", (1003, 50), "float64"),  # wide rows, rows not whole mask bytes
    ("batchnorm_relu-train-res", (300, 1001), "float32"),
    ("spatial_batchnorm_relu-train-NCHW", (8, 16, 128, 130), "float32"),  # streamed planes
    ("spatial_batchnorm_relu-train-NCHW", (4, 6, 45, 47), "float64"),  # planes of odd length
    ("spatial_batchnorm_relu-train-NCHW-res", (3, 2, 256, 257), "float32"),
    ("spatial_batchnorm_relu-test-NHWC-res", (8, 33, 35, 19), "float32"),
    ("spatial_batchnorm_relu-train-NHWC", (8, 32, 32, 3), "float64"),
]

SCRIPT = r"""
import hashlib, json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from registry import OPS
from fastbn import _kernels, _planner
_planner.use(_planner.Plan(min_elements_per_thread=1 << 13))  # as in conftest.py: shapes use threads
ops = {op.id: op for op in OPS}
digests = {"simd": _kernels.simd()}
for op_id, shape, dtype in json.loads(sys.argv[2]):
    op = ops[op_id]
    x, gamma, beta, param = op.make(tuple(shape), np.dtype(dtype), seed=1)
    out, cache = op.forward(x, gamma, beta, param, backend="cython")
    dout = np.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    results = [out, cache.mean, cache.invstd, *op.backward(dout, cache, backend="cython")]
    if cache.mask is not None:
        results.append(cache.mask)
    if op.uses_running_stats and op.mode == "train":
        results += [param["running_mean"], param["running_var"]]
    h = hashlib.sha256()
    for a in results:
        h.update(np.ascontiguousarray(a).tobytes())
    digests[f"{op_id} {shape} {dtype}"] = h.hexdigest()
print(json.dumps(digests))
"""


def _digests(disable_avx512, disable_avx2=False):
    env = dict(os.environ)
    env.pop("FASTBN_DISABLE_AVX512", None)
    env.pop("FASTBN_DISABLE_AVX2", None)
    if disable_avx512:
        env["FASTBN_DISABLE_AVX512"] = "1"
    if disable_avx2:
        env["FASTBN_DISABLE_AVX2"] = "1"
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, tests_dir, json.dumps(CASES)],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout)


def _has_avx512():
    return _kernels.simd() == "avx512"


@pytest.mark.skipif(not _has_avx512(), reason="this CPU (or build) has no AVX-512 path")
def test_avx512_and_baseline_paths_give_identical_bits():
    fast = _digests(disable_avx512=False)
    base = _digests(disable_avx512=True)
    assert fast.pop("simd") == "avx512"
    assert base.pop("simd") in ("avx2", "baseline")
    differing = [case for case in fast if fast[case] != base[case]]
    assert not differing, f"AVX-512 and baseline results differ for {differing}"


def test_disable_switch_selects_the_baseline_path():
    assert _digests(disable_avx512=True)["simd"] in ("avx2", "baseline")


def test_the_baseline_loops_give_the_bits_of_the_best_path():
    best = _digests(disable_avx512=False)
    base = _digests(disable_avx512=True, disable_avx2=True)
    assert base.pop("simd") == "baseline"
    best.pop("simd")
    differing = [case for case in best if best[case] != base[case]]
    assert not differing, f"the baseline and {_kernels.simd()} results differ for {differing}"


MISALIGNED_SCRIPT = r"""
import numpy as np, fastbn
def unaligned(shape, dtype):
    n = int(np.prod(shape))
    buf = bytearray(n * np.dtype(dtype).itemsize + 64)
    return np.frombuffer(buf, dtype, count=n, offset=1).reshape(shape)  # 1 byte off
for shape, dtype in [((2048, 1024), np.float32), ((32768, 64), np.float32), ((1024, 1024), np.float64)]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    g, b = np.ones(shape[1], dtype), np.zeros(shape[1], dtype)
    out, cache = fastbn.batchnorm_forward(x, g, b, {"mode": "train"})
    dx = fastbn.batchnorm_backward(dout, cache)[0]
    out_u = unaligned(shape, dtype)
    dx_u = unaligned(shape, dtype)
    fastbn.batchnorm_forward(x, g, b, {"mode": "train"}, out=out_u)
    fastbn.batchnorm_backward(dout, cache, out=dx_u)
    assert out_u.ctypes.data % np.dtype(dtype).itemsize != 0
    np.testing.assert_array_equal(out_u, out)
    np.testing.assert_array_equal(dx_u, dx)
print("ok")
"""


@pytest.mark.parametrize("disable_avx512", [False, True], ids=["default", "FASTBN_DISABLE_AVX512"])
def test_out_buffers_not_aligned_to_their_element_size(disable_avx512):
    """A caller's out= array may start at any byte (np.frombuffer): streamed outputs (>= 8 MiB)
    then take ordinary stores, with the same results (a streaming store there would crash)."""
    env = dict(os.environ)
    env.pop("FASTBN_DISABLE_AVX512", None)
    if disable_avx512:
        env["FASTBN_DISABLE_AVX512"] = "1"
    proc = subprocess.run([sys.executable, "-c", MISALIGNED_SCRIPT], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("shape, dtype", [((2048, 2048), np.float32), ((1500, 1104), np.float64),
                                          ((300, 1001), np.float32)])
def test_output_address_does_not_change_bits(shape, dtype):
    """Column blocks start on a cache line of the output, so they move with its address; the
    results must not: out= buffers at every element offset within a cache line give the same
    bits."""
    import fastbn

    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    g, b = np.ones(shape[1], dtype), np.zeros(shape[1], dtype)
    out, cache = fastbn.batchnorm_forward(x, g, b, {"mode": "train"})
    dx = fastbn.batchnorm_backward(dout, cache)[0]
    itemsize = np.dtype(dtype).itemsize
    n = x.size
    buf = np.empty(n + 128 // itemsize, dtype)
    start = (-buf.ctypes.data % 64) // itemsize  # first element on a 64-byte boundary
    for offset in range(64 // itemsize):
        view = buf[start + offset:start + offset + n].reshape(shape)
        fastbn.batchnorm_forward(x, g, b, {"mode": "train"}, out=view)
        np.testing.assert_array_equal(view, out)
        fastbn.batchnorm_backward(dout, cache, out=view)
        np.testing.assert_array_equal(view, dx)
