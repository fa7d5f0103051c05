"""The buffer cache: large outputs reuse the memory of dropped ones, and are ordinary arrays.

Outputs and dx arrays of the compiled backend of at least ``Plan.buffer_min_bytes`` come from a
NumPy memory handler whose freed blocks go to a bounded pool (``fastbn/_memory.py``).
"""
import gc
import os
import pickle
import threading

import numpy as np
import pytest

import fastbn
from fastbn import _memory, _planner
from registry import OPS, copy_param, run_script

pytestmark = pytest.mark.skipif(_memory._buffers is None, reason="compiled kernels are not built")

LARGE = (1024, 512)  # 2 MiB in float32, 4 MiB in float64: over buffer_min_bytes
OP_IDS = [op.id for op in OPS]


def _handler_name(a):
    """The NumPy memory handler of the array that owns a's data."""
    from numpy._core.multiarray import get_handler_name

    while a.base is not None:
        a = a.base
    return get_handler_name(a)


@pytest.fixture
def cache_on():
    """A buffer cache of 64 MiB, emptied before the test, and the setting restored after."""
    before = fastbn.buffer_cache_info()["max_bytes"]
    fastbn.set_buffer_cache(0)
    fastbn.set_buffer_cache(64 << 20)
    yield
    gc.collect()
    fastbn.set_buffer_cache(before)


def _large_inputs(op, dtype=np.float32):
    """Inputs of 2 MiB (float32) for `op`: (1024, 512), or (64, 8, 32, 32) in its layout."""
    shape = LARGE if len(op.shape("numerics")) == 2 else (64, 8, 32, 32)
    if op.layout == "NHWC":
        shape = (shape[0], shape[2], shape[3], shape[1])
    return op.make(shape, dtype)


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_a_dropped_output_is_reused_by_the_next_call(op, cache_on):
    x, gamma, beta, param = _large_inputs(op)
    out, cache = op.forward(x, gamma, beta, copy_param(param), backend="cython")
    assert _handler_name(out) == "fastbn_buffer_cache"
    dx = op.backward(np.ones_like(x), cache, backend="cython")[0]
    assert _handler_name(dx) == "fastbn_buffer_cache"
    expected = out.copy()
    del out, cache, dx
    hits = fastbn.buffer_cache_info()["hits"]
    again, _ = op.forward(x, gamma, beta, copy_param(param), backend="cython")
    assert fastbn.buffer_cache_info()["hits"] == hits + 1
    np.testing.assert_array_equal(again, expected, strict=True)


def test_small_outputs_and_a_cache_of_zero_use_numpys_allocator(cache_on):
    op = OPS[0]
    x, gamma, beta, param = op.make((8, 6), np.float32)
    out, _ = op.forward(x, gamma, beta, param, backend="cython")
    assert _handler_name(out) == "default_allocator"
    fastbn.set_buffer_cache(0)
    x, gamma, beta, param = _large_inputs(op)
    out, _ = op.forward(x, gamma, beta, param, backend="cython")
    assert _handler_name(out) == "default_allocator"


def test_cs231n_sized_outputs_come_from_the_cache(cache_on):
    # 200x500 float64 (800 KB) is above glibc's mmap threshold: from NumPy's allocator, a loop
    # that drops each output page-faults it anew every call (docs/decisions.md)
    op = OPS[0]
    x, gamma, beta, param = op.make((200, 500), np.float64)
    out, cache = op.forward(x, gamma, beta, param, backend="cython")
    dx = op.backward(np.ones_like(x), cache, backend="cython")[0]
    assert _handler_name(out) == _handler_name(dx) != "default_allocator"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_start_at_the_offset_of_x_within_a_page_and_dx_half_a_page_further(dtype, cache_on):
    op = OPS[0]
    x, gamma, beta, param = _large_inputs(op, dtype)
    for shift in (0, 1, 3):
        shifted = np.empty(x.size + 8, dtype)[shift:shift + x.size].reshape(x.shape)
        shifted[...] = x
        out, cache = op.forward(shifted, gamma, beta, copy_param(param), backend="cython")
        assert out.ctypes.data % 4096 == shifted.ctypes.data % 4096
        dx = op.backward(np.ones_like(x), cache, backend="cython")[0]
        assert dx.ctypes.data % 4096 == (shifted.ctypes.data + 2048) % 4096
        with _planner.override(dx_page_shift=64):
            dx = op.backward(np.ones_like(x), cache, backend="cython")[0]
        assert dx.ctypes.data % 4096 == (shifted.ctypes.data + 64) % 4096


def test_returned_arrays_behave_as_ordinary_arrays(cache_on):
    op = OPS[0]
    x, gamma, beta, param = _large_inputs(op)
    out, _ = op.forward(x, gamma, beta, param, backend="cython")
    expected = out.copy()
    # pickling
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(out)), expected, strict=True)
    # a view that outlives the array keeps its memory: the next output does not get it
    view = out[10:20]
    assert np.shares_memory(view, out)
    del out
    gc.collect()
    nxt, _ = op.forward(x, gamma, beta, param, backend="cython")
    assert not np.shares_memory(view, nxt)
    np.testing.assert_array_equal(view, expected[10:20], strict=True)
    # writable, resizable: it owns its data
    assert nxt.flags.owndata and nxt.base is None and nxt.flags.writeable
    nxt[...] = 1
    grown = nxt.copy()
    nxt.resize(nxt.size * 2, refcheck=False)  # the handler's realloc
    np.testing.assert_array_equal(nxt[: grown.size].reshape(grown.shape), grown)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("shape", ["large", "small"])
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_outputs_and_gradients_own_their_data(op, shape, backend, cache_on):
    """out, dx (and the fused op's dresidual) are arrays of their own in x's shape, not views of
    the kernels' shapes: resize works, and nothing else refers to their memory."""
    if shape == "large":
        x, gamma, beta, param = _large_inputs(op)
    else:
        x, gamma, beta, param = op.make(op.shape("small"), np.float64, seed=3)
    out, cache = op.forward(x, gamma, beta, copy_param(param), backend=backend)
    grads = op.grads(op.backward(np.ones_like(x), cache, backend=backend))
    arrays = [out, grads["dx"]] + ([grads["dresidual"]] if op.residual else [])
    for a in arrays:
        assert a.shape == x.shape and a.flags.owndata and a.base is None
        a.resize(a.size + 1, refcheck=False)


def test_arrays_freed_in_another_thread_or_after_the_setting_changed(cache_on):
    op = OPS[0]
    x, gamma, beta, param = _large_inputs(op)
    arrays = [op.forward(x, gamma, beta, param, backend="cython")[0] for _ in range(3)]
    cached = fastbn.buffer_cache_info()["cached_bytes"]

    def drop():
        arrays.pop()
        gc.collect()

    thread = threading.Thread(target=drop)
    thread.start()
    thread.join()
    assert fastbn.buffer_cache_info()["cached_bytes"] > cached
    fastbn.set_buffer_cache(0)  # the next freed block is unmapped, not kept
    assert fastbn.buffer_cache_info()["cached_bytes"] == 0
    arrays.pop()
    gc.collect()
    assert fastbn.buffer_cache_info()["cached_bytes"] == 0
    fastbn.set_buffer_cache(64 << 20)
    arrays.pop()
    gc.collect()
    assert fastbn.buffer_cache_info()["cached_bytes"] > 0


def test_concurrent_calls_from_threads_get_separate_buffers_and_the_same_bits(cache_on):
    op = OPS[0]
    x, gamma, beta, param = _large_inputs(op)
    expected, _ = op.forward(x, gamma, beta, copy_param(param), backend="numpy")
    expected_compiled, _ = op.forward(x, gamma, beta, copy_param(param), backend="cython")
    failures = []

    def work():
        for _ in range(5):
            out, _ = op.forward(x, gamma, beta, copy_param(param), backend="cython")
            if not np.array_equal(out, expected_compiled):
                failures.append("bits differ")
            del out

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    np.testing.assert_allclose(expected_compiled, expected, rtol=1e-4, atol=1e-5)


def test_the_cache_is_bounded(cache_on):
    fastbn.set_buffer_cache(8 << 20)
    op = OPS[0]
    arrays = []
    for rows in (1024, 1100, 1200, 1300, 1400):
        x, gamma, beta, param = op.make((rows, 512), np.float32)
        arrays.append(op.forward(x, gamma, beta, param, backend="cython")[0])
    del arrays
    gc.collect()
    info = fastbn.buffer_cache_info()
    assert 0 < info["cached_bytes"] <= 8 << 20


def _sanitized():
    from fastbn import _build_info

    return bool(_build_info.BUILD_INFO.get("sanitize"))


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc/self/statm")
@pytest.mark.skipif(_sanitized(), reason="ASan's quarantine of freed memory grows RSS (the default "
                                         "build runs this test)")
def test_rss_does_not_grow_over_10000_calls_with_varying_shapes(cache_on):
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    fastbn.set_buffer_cache(16 << 20)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1400, 512)).astype(np.float32)
    gamma = np.ones(512, np.float32)
    beta = np.zeros(512, np.float32)
    rows = rng.integers(512, 1400, size=10_500)  # 1 to 2.7 MiB outputs
    for i, n in enumerate(rows):
        if i == 500:
            gc.collect()
            before, cached = rss(), fastbn.buffer_cache_info()["cached_bytes"]
        fastbn.layernorm_forward(base[:n], gamma, beta, {}, backend="cython")
    gc.collect()
    # what the cache took up to its limit (blocks of the sizes met later) is not growth
    filled = fastbn.buffer_cache_info()["cached_bytes"] - cached
    assert filled <= 16 << 20
    growth = rss() - before - filled
    assert growth < 4 << 20, f"RSS grew by {growth / 2**20:.1f} MiB over 10,000 calls"


@pytest.mark.parametrize("text, expected", [("0", 0), ("1048576", 1 << 20), ("256M", 256 << 20),
                                             ("64k", 64 << 10), ("2G", 2 << 30), ("512MiB", 512 << 20)])
def test_the_environment_variable_takes_bytes_with_a_unit(text, expected):
    assert _memory._parse(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "lots", "1.5G", "5iB", "64KIBB", "９", str(1 << 64)])
def test_a_bad_environment_variable_names_itself(text):
    with pytest.raises(ValueError, match="FASTBN_BUFFER_CACHE"):
        _memory._parse(text)


@pytest.mark.parametrize("value", [-1, 1.5, "64M", True, None, 1 << 64])
def test_set_buffer_cache_rejects_what_is_not_a_byte_count(value):
    before = fastbn.buffer_cache_info()["max_bytes"]
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 0"):
        fastbn.set_buffer_cache(value)
    assert fastbn.buffer_cache_info()["max_bytes"] == before


def test_show_config_reports_the_cache(cache_on, capsys):
    fastbn.show_config()
    assert "buffer cache: up to 64 MiB" in capsys.readouterr().out


def test_buffer_min_bytes_is_a_planner_setting(cache_on):
    op = OPS[0]
    x, gamma, beta, param = op.make((64, 64), np.float32)  # 16 KiB
    with _planner.override(buffer_min_bytes=4096):
        out, _ = op.forward(x, gamma, beta, param, backend="cython")
    assert _handler_name(out) == "fastbn_buffer_cache"


def test_an_output_grown_by_resize_keeps_its_offset_within_a_page(cache_on):
    """ndarray.resize moves a grown array through the handler's realloc: the new block takes the
    block's own offset within a page (so its alignment), not that of the thread's last call."""
    out, _ = fastbn.layernorm_forward(np.random.randn(256, 512), np.ones(512), np.zeros(512), {})
    owner = out
    while owner.base is not None:
        owner = owner.base
    del out
    offset = owner.ctypes.data % 4096
    x32 = np.random.randn(256 * 512 + 1).astype(np.float32)[1:].reshape(256, 512)  # 4 mod 8
    fastbn.layernorm_forward(x32, np.ones(512, np.float32), np.zeros(512, np.float32), {})
    owner.resize(owner.size * 4, refcheck=False)
    assert owner.ctypes.data % 4096 == offset and owner.flags.aligned
    assert _handler_name(owner) == "fastbn_buffer_cache"


def test_code_a_collection_runs_during_an_allocation_does_not_get_pool_memory(cache_on):
    """A garbage collection that starts while fastbn's handler is set (CPython 3.11 can start
    one inside setting it, in a context's first setting: every asyncio task's) runs __del__
    methods; their arrays must come from NumPy's own allocator."""
    import contextvars
    import random

    seen = []

    class Cycle:
        def __init__(self):
            self.me = self

        def __del__(self):
            seen.append(_handler_name(np.ones(4)))

    x = np.random.randn(256, 512)

    def call():
        for _ in range(rng.randrange(4)):
            Cycle()
        fastbn.layernorm_forward(x, np.ones(512), np.zeros(512), {})

    rng = random.Random(0)
    for _ in range(3000):
        contextvars.copy_context().run(call)
    gc.collect()
    assert len(seen) > 1000 and set(seen) == {"default_allocator"}


def test_outputs_of_exactly_2_mib_take_2_mib_and_a_page(cache_on):
    """The data starts past the block's header, a little beyond the first 2 MiB: that tail is in
    small pages, not a second huge page (the resident memory was twice the outputs')."""
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    x = np.random.randn(1024, 512).astype(np.float32)  # 2 MiB
    g, b = np.ones(512, np.float32), np.zeros(512, np.float32)
    gc.collect()
    before = rss()
    outs = [fastbn.layernorm_forward(x, g, b, {})[0] for _ in range(20)]
    assert fastbn.buffer_cache_info()["live_bytes"] <= 20 * ((2 << 20) + 8192)
    assert rss() - before < 20 * ((2 << 20) + (512 << 10))
    del outs


ADDRESS_SPACE_SCRIPT = r"""
import gc, resource
import numpy as np
import fastbn

def mapped():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * 4096

g, b = np.ones(1024), np.zeros(1024)
small, big = np.random.randn(8192, 1024), np.random.randn(12288, 1024)
out, _ = fastbn.layernorm_forward(small, g, b, {})
del out
gc.collect()
assert fastbn.buffer_cache_info()["cached_bytes"] >= 64 << 20  # a 64 MiB block kept
resource.setrlimit(resource.RLIMIT_AS, (mapped() + (64 << 20), resource.RLIM_INFINITY))
out, _ = fastbn.layernorm_forward(big, g, b, {})  # 96 MiB: room only without the kept block
assert out.shape == big.shape
print("ok")
"""


def test_a_refused_mapping_is_retried_after_the_cache_lets_its_blocks_go(tmp_path):
    """Under an address-space limit, the blocks the cache keeps may be what stands in the way of
    a new output: they are unmapped and the mapping tried again, instead of a MemoryError."""
    run_script(tmp_path, "address_space.py", ADDRESS_SPACE_SCRIPT)
