"""The planner: every kernel path, forced by name, matches the reference and keeps its bits for any
thread count; forcing a path takes effect; the loops' own constants change no bits; the kernels
were built with the planner's compile-time constants; bad settings raise naming the field."""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastbn
from fastbn import _planner
from registry import OPS, assert_close

needs_compiled = pytest.mark.skipif("cython" not in fastbn.available_backends(),
                                    reason="compiled kernels are not built")


def _op(name, mode="train", layout=None):
    return next(op for op in OPS if op.name == name and op.mode == mode and not op.param_broadcast
                and (layout is None or op.layout == layout))


def _op_id(op_id):
    return next(op for op in OPS if op.id == op_id)


# The ops and shapes each path setting governs: shapes that would take another path from the
# shape alone, odd sizes, and (for the rows) short, four-row and long rows.
COLS_CASES = [(_op("batchnorm"), s) for s in ((64, 33), (1003, 50), (300, 1001), (2, 5))] + [
    (_op("batchnorm", "test"), (300, 1001)),
    (_op("spatial_batchnorm", layout="NHWC"), (4, 9, 7, 33)),
]
PLANES_CASES = [(_op("spatial_batchnorm", layout="NCHW"), s) for s in ((8, 16, 7, 7), (5, 3, 4, 5), (1, 9, 3, 3))]
ROWS_CASES = [(_op(name), s) for name in ("layernorm", "rmsnorm")
              for s in ((64, 33), (300, 256), (3, 16500), (7, 128), (2, 3, 17))] + [
    (_op("groupnorm"), (3, 8, 7, 7)),
]
STREAM_CASES = [(_op("batchnorm"), (300, 1001)), (_op("spatial_batchnorm", layout="NCHW"), (4, 6, 45, 47)),
                (_op("layernorm"), (40, 1100)), (_op("groupnorm"), (2, 8, 9, 11))]
GOVERNS = {"cols_path": COLS_CASES, "planes_path": PLANES_CASES, "rows_forward_path": ROWS_CASES,
           "rows_backward_path": ROWS_CASES, "stream_path": STREAM_CASES}
CASES = [(field, path, op, shape) for field, paths in _planner.PATHS.items() for path in paths
         for op, shape in GOVERNS[field]]
IDS = [f"{field}={path}-{op.id}-{'x'.join(map(str, shape))}" for field, path, op, shape in CASES]


def _run(op, shape, dtype, backend):
    x, gamma, beta, param = op.make(shape, dtype)
    out, cache = op.forward(x, gamma, beta, param, backend=backend)
    dout = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    return [out, cache.mean, cache.invstd, *op.backward(dout, cache, backend=backend)], dout, gamma


def _assert_matches_reference(got, want, dout, gamma, dtype):
    dx_scale = float(np.max(np.abs(dout)) * np.max(np.abs(gamma)) * np.max(want[2], initial=0))
    for name, a, b in zip(("out", "mean", "invstd", "dx", "dgamma", "dbeta"), got, want):
        assert_close(a, b, dtype, name, scale=dx_scale if name == "dx" else 0.0)


def test_every_path_setting_has_cases():
    assert set(GOVERNS) == set(_planner.PATHS)


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("field, path, op, shape", CASES, ids=IDS)
def test_forced_path_matches_reference_and_keeps_bits_for_any_thread_count(field, path, op, shape, dtype):
    want, dout, gamma = _run(op, shape, dtype, "numpy")
    with _planner.override(**{field: path}):
        runs = []
        for n in (1, 2):
            with threadpool_limits(n, user_api="openmp"):
                runs.append(_run(op, shape, dtype, "cython")[0])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    _assert_matches_reference(runs[0], want, dout, gamma, dtype)


# Paths that sum in another order than the one the shape chooses: forcing them changes the last
# bits of some result, which shows that the setting reaches the kernels.
DIFFERENT = [
    ("cols_path", "grid", _op("batchnorm"), (300, 1001)),
    ("cols_path", "blocked", _op("batchnorm"), (1003, 50)),
    ("planes_path", "chunks", _op("spatial_batchnorm", layout="NCHW"), (8, 16, 7, 7)),
    ("planes_path", "channels", _op("spatial_batchnorm", layout="NCHW"), (20, 3, 4, 5)),
    ("rows_forward_path", "segments", _op("layernorm"), (64, 33)),
    ("rows_backward_path", "short_rows", _op("layernorm"), (300, 256)),
    ("rows_backward_path", "segments", _op("rmsnorm"), (300, 256)),
]


@needs_compiled
@pytest.mark.parametrize("field, path, op, shape", DIFFERENT,
                         ids=[f"{f}={p}-{op.id}" for f, p, op, _ in DIFFERENT])
def test_forcing_a_path_reaches_the_kernels(field, path, op, shape):
    auto, _, _ = _run(op, shape, np.float64, "cython")
    with _planner.override(**{field: path}):
        forced, _, _ = _run(op, shape, np.float64, "cython")
    assert any(not np.array_equal(a, b) for a, b in zip(auto, forced))


# The rules the grids decided (docs/decisions.md, "The grid"): the path the shape alone picks
# gives the bits of that path forced by name, and not those of the path it replaced.
RULES = [
    # (M, D) arrays under blocked_min_bytes: blocked up to blocked_max_rows rows, else the grid
    ("cols_path", "blocked", "grid", _op("batchnorm"), (300, 500)),
    ("cols_path", "grid", "blocked", _op("batchnorm"), (1003, 500)),
    # layernorm/RMSNorm backward of at most few_rows rows: column segments
    ("rows_backward_path", "segments", "four_rows", _op("layernorm"), (100, 700)),
    ("rows_backward_path", "segments", "short_rows", _op("rmsnorm"), (16, 500)),
    ("rows_backward_path", "four_rows", "segments", _op("layernorm"), (300, 1024)),
]


@needs_compiled
@pytest.mark.parametrize("field, chosen, other, op, shape", RULES,
                         ids=[f"{f}={c}-{op.id}-{'x'.join(map(str, s))}" for f, c, _, op, s in RULES])
def test_the_shape_picks_the_path_the_grid_chose(field, chosen, other, op, shape):
    auto, _, _ = _run(op, shape, np.float64, "cython")
    results = {}
    for path in (chosen, other):
        with _planner.override(**{field: path}):
            results[path] = _run(op, shape, np.float64, "cython")[0]
    for a, b in zip(auto, results[chosen]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(auto, results[other]))


# Large (M, D) arrays (blocked_min_bytes or more): blocked -- the backward's short-run blocks
# shared by the threads -- up to blocked_large_max_rows rows, else the grid; checked with the
# limit on both sides of the shape, whatever this CPU's setting.
@needs_compiled
@pytest.mark.parametrize("limit, chosen, other", [(4096, "grid", "shared_blocks"),
                                                  (8192, "shared_blocks", "grid")])
def test_large_arrays_are_blocked_up_to_the_row_limit(limit, chosen, other):
    op, shape = _op("batchnorm"), (8192, 256)  # 16 MiB of float64: blocks of 512-byte runs
    with _planner.override(blocked_large_max_rows=limit):
        auto, _, _ = _run(op, shape, np.float64, "cython")
        results = {}
        for path in (chosen, other):
            with _planner.override(cols_path=path):
                results[path] = _run(op, shape, np.float64, "cython")[0]
    for a, b in zip(auto, results[chosen]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(auto, results[other]))


def test_the_plan_at_import_is_the_defaults_with_this_cpus_settings(monkeypatch):
    assert _planner.for_cpu(None) == _planner.Plan() == _planner.for_cpu("no such vendor")
    # an entry of a vendor (none today: docs/decisions.md, "Per CPU") amends the defaults
    monkeypatch.setitem(_planner.CPU_SETTINGS, "SomeVendor",
                        {"blocked_large_max_rows": 1 << 40, "sweep_wide_bytes": 0})
    for vendor, settings in _planner.CPU_SETTINGS.items():
        plan = _planner.for_cpu(vendor)
        changed = {f for f in _planner.Plan.__dataclass_fields__
                   if getattr(plan, f) != getattr(_planner.Plan(), f)}
        assert changed == set(settings)
        assert all(getattr(plan, f) == v for f, v in settings.items())
    mine = _planner.for_cpu(_planner.cpu_vendor())
    assert _planner.current().blocked_large_max_rows == mine.blocked_large_max_rows


# The loops' own constants choose a loop order or a prefetch distance, never a value: forced far
# from their defaults, on shapes where that changes what the loops do, every result keeps the bits
# of the plan without the change (other settings of a case, as streaming, apply to both).
LOOP_FIELDS = ("affine_short_run_bytes", "mask_prefetch_values",
               "sums_prefetch_min_bytes", "sums_prefetch_max_run_bytes", "grad_sums_four_rows_bytes",
               "sweep_wide_bytes")
LOOP_CASES = [
    ({"affine_short_run_bytes": 1}, _op("batchnorm"), (300, 1001)),  # one row at a time
    ({"affine_short_run_bytes": 1 << 30}, _op("batchnorm"), (64, 5000)),  # four rows, long runs
    ({"affine_short_run_bytes": 1 << 30}, _op_id("batchnorm_relu-train-res"), (40, 5000)),
    ({"mask_prefetch_values": 8}, _op("spatial_batchnorm_relu", layout="NCHW"), (4, 6, 45, 47)),
    # column sums with and without prefetching, whichever the CPU's plan does (blocked: sums of 300
    # rows; the fused op: gradient sums through the mask)
    ({"sums_prefetch_min_bytes": 0}, _op("batchnorm"), (300, 1001)),
    ({"sums_prefetch_min_bytes": 1 << 40}, _op("batchnorm"), (300, 1001)),
    ({"sums_prefetch_min_bytes": 0}, _op("batchnorm_relu"), (96, 1024)),
    ({"sums_prefetch_min_bytes": 1 << 40}, _op("batchnorm_relu"), (96, 1024)),
    ({"sums_prefetch_min_bytes": 0, "cols_path": "grid"}, _op("batchnorm"), (1003, 50)),  # wide rows
    ({"sums_prefetch_min_bytes": 1 << 40, "cols_path": "grid"}, _op("batchnorm"), (1003, 50)),
    ({"sums_prefetch_min_bytes": 0, "cols_path": "shared_blocks"}, _op("batchnorm"), (300, 1001)),
    # ... and prefetching only over runs shorter than a line (none) or than the whole row (all)
    ({"sums_prefetch_min_bytes": 0, "sums_prefetch_max_run_bytes": 64}, _op("batchnorm"), (300, 1001)),
    ({"sums_prefetch_min_bytes": 0, "sums_prefetch_max_run_bytes": 1 << 20, "cols_path": "grid"},
     _op("batchnorm"), (300, 1001)),
    ({"sums_prefetch_min_bytes": 0, "sums_prefetch_max_run_bytes": 64, "cols_path": "grid"},
     _op("batchnorm_relu"), (96, 1024)),
    # gradient column sums by passes of four rows on every shape (1), or of eight on every shape (0)
    ({"grad_sums_four_rows_bytes": 1}, _op("batchnorm"), (300, 1001)),
    ({"grad_sums_four_rows_bytes": 0}, _op("batchnorm"), (300, 1001)),
    ({"grad_sums_four_rows_bytes": 1}, _op("batchnorm_relu"), (96, 1024)),
    ({"grad_sums_four_rows_bytes": 1, "cols_path": "grid"}, _op("batchnorm"), (1003, 50)),
    ({"grad_sums_four_rows_bytes": 1, "cols_path": "shared_blocks"}, _op("batchnorm"), (301, 1001)),
    ({"grad_sums_four_rows_bytes": 1, "sums_prefetch_min_bytes": 0}, _op("spatial_batchnorm", layout="NHWC"),
     (5, 7, 9, 64)),
    # streamed sweeps of short rows as wide rows (4096: of 4 KiB; 2^20: the whole array as one),
    # or as the statistics cut them (0), whichever the CPU's plan does; rows left over (301)
    ({"sweep_wide_bytes": 4096, "stream_path": "always", "cols_path": "grid"}, _op("batchnorm"),
     (301, 64)),
    ({"sweep_wide_bytes": 0, "stream_path": "always", "cols_path": "grid"}, _op("batchnorm"),
     (301, 64)),
    ({"sweep_wide_bytes": 1 << 20, "stream_path": "always", "cols_path": "grid"},
     _op("batchnorm"), (301, 64)),
    ({"sweep_wide_bytes": 4096, "stream_path": "always"}, _op("batchnorm", "test"), (300, 64)),
    ({"sweep_wide_bytes": 0, "stream_path": "always"}, _op("batchnorm", "test"), (300, 64)),
    ({"sweep_wide_bytes": 4096, "stream_path": "always"}, _op("batchnorm_relu"), (97, 64)),
    ({"sweep_wide_bytes": 4096, "stream_path": "always"}, _op_id("batchnorm_relu-train-res"),
     (97, 64)),
    ({"sweep_wide_bytes": 4096, "stream_path": "always"}, _op("batchnorm_relu", "test"), (97, 64)),
    ({"sweep_wide_bytes": 4096, "stream_path": "always", "cols_path": "grid"},
     _op("spatial_batchnorm", layout="NHWC"), (3, 5, 7, 32)),
    ({"mask_prefetch_values": 1 << 20}, _op_id("spatial_batchnorm_relu-train-NCHW-res"),
     (3, 2, 33, 35)),
]
LOOP_IDS = [f"{'-'.join(f'{k}={v}' for k, v in changes.items())}-{op.id}-{'x'.join(map(str, shape))}"
            for changes, op, shape in LOOP_CASES]


def test_every_loop_constant_has_cases():
    forced = {field for changes, _, _ in LOOP_CASES for field in changes}
    assert forced & set(LOOP_FIELDS) == set(LOOP_FIELDS)


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("changes, op, shape", LOOP_CASES, ids=LOOP_IDS)
def test_loop_constants_keep_the_bits_for_any_thread_count(changes, op, shape, dtype):
    want, dout, gamma = _run(op, shape, dtype, "numpy")
    with _planner.override(**{k: v for k, v in changes.items() if k not in LOOP_FIELDS}):
        plain = _run(op, shape, dtype, "cython")[0]
    with _planner.override(**changes):
        runs = []
        for n in (1, 2):
            with threadpool_limits(n, user_api="openmp"):
                runs.append(_run(op, shape, dtype, "cython")[0])
    for a, b, c in zip(plain, *runs):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(c, a)
    _assert_matches_reference(runs[0], want, dout, gamma, dtype)


@needs_compiled
def test_the_kernels_were_built_with_the_planners_compiled_constants():
    """setup.py passes _planner.COMPILED to the compiler: a build from before a change of them
    (or a constant the build does not pass) shows here."""
    from fastbn import _kernels
    assert _kernels.compiled_constants() == _planner.COMPILED


def test_override_restores_the_plan():
    before = _planner.current()
    with pytest.raises(RuntimeError):
        with _planner.override(cols_path="grid", col_block=64):
            assert _planner.current().col_block == 64
            raise RuntimeError
    assert _planner.current() == before
    if "cython" in fastbn.available_backends():
        from fastbn import _kernels
        assert _kernels.get_plan() == before.kernel_settings()


@pytest.mark.parametrize("changes, message", [
    ({"cols_path": "columns"}, r"cols_path must be one of \['auto', 'blocked', 'shared_blocks', 'grid'\], got 'columns'"),
    ({"rows_backward_path": None}, r"rows_backward_path must be one of .*, got None"),
    ({"col_block": 0}, "col_block must be a positive integer, got 0"),
    ({"segment_bytes": 8.5}, "segment_bytes must be a positive integer, got 8.5"),
    ({"stream_min_bytes": True}, "stream_min_bytes must be a positive integer, got True"),
    ({"load_check_ms": -1}, "load_check_ms must be an integer >= 0, got -1"),
    ({"load_window_ms": 0}, "load_window_ms must be a positive integer, got 0"),
    ({"sums_prefetch_min_bytes": -8}, "sums_prefetch_min_bytes must be an integer >= 0, got -8"),
    ({"sums_prefetch_max_run_bytes": -1}, "sums_prefetch_max_run_bytes must be an integer >= 0, got -1"),
    ({"grad_sums_four_rows_bytes": -64}, "grad_sums_four_rows_bytes must be an integer >= 0, got -64"),
    ({"sweep_wide_bytes": -1}, "sweep_wide_bytes must be an integer >= 0, got -1"),
    ({"affine_short_run_bytes": 0}, "affine_short_run_bytes must be a positive integer, got 0"),
    ({"sweep_wide_bytes": 4096.0}, "sweep_wide_bytes must be an integer >= 0, got 4096.0"),
    ({"mask_prefetch_values": -8}, "mask_prefetch_values must be a positive integer, got -8"),
    ({"blocked_max_rows": 0}, "blocked_max_rows must be a positive integer, got 0"),
    ({"blocked_large_max_rows": -4096}, "blocked_large_max_rows must be a positive integer, got -4096"),
    ({"few_rows": "128"}, "few_rows must be a positive integer, got '128'"),
    ({"dx_page_shift": 100}, "dx_page_shift must be a multiple of 64 below 4096, got 100"),
    ({"dx_page_shift": 4096}, "dx_page_shift must be a multiple of 64 below 4096, got 4096"),
    ({"dx_page_shift": -64}, "dx_page_shift must be an integer >= 0, got -64"),
])
def test_bad_settings_raise_naming_the_field(changes, message):
    before = _planner.current()
    with pytest.raises(ValueError, match=message):
        with _planner.override(**changes):
            pass
    assert _planner.current() == before


@needs_compiled
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape, layout", [((301, 64), None), ((3, 5, 7, 32), "NHWC")],
                         ids=["batchnorm-301x64", "NHWC-3x5x7x32"])
def test_wide_sweeps_keep_the_bits_of_the_backward_with_given_sums(shape, layout, dtype):
    """The dx sweep of fastbn.distributed's backward (given gradient sums), streamed, as wide
    rows of 4 KiB or as one row (sweep_wide_bytes) or as the statistics cut the rows (0): the
    same bits, on both thread counts, and the values of the plain backward."""
    from fastbn import _compiled
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    C = shape[-1]
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(dtype), rng.uniform(-0.5, 0.5, C).astype(dtype)
    if layout is None:
        _, cache = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    else:
        _, cache = fastbn.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train", "layout": layout})
    sums = _compiled.grad_sums(dout, cache)
    count = x.size // C
    runs = []
    for value in (0, 4096, 1 << 20):
        with _planner.override(sweep_wide_bytes=value, stream_path="always"):
            for n in (1, 2):
                with threadpool_limits(n, user_api="openmp"):
                    runs.append(_compiled.backward_given(dout, cache, sums, count))
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            np.testing.assert_array_equal(b, a)
    plain = (fastbn.batchnorm_backward if layout is None else fastbn.spatial_batchnorm_backward)(dout, cache)
    for a, b in zip(runs[0], plain):
        np.testing.assert_allclose(a, b, rtol=1e-4 if dtype == np.float32 else 1e-10,
                                   atol=1e-4 if dtype == np.float32 else 1e-10)
