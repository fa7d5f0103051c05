"""pytest-benchmark suite: fastbn, the NumPy reference, PyTorch and a memcpy yardstick side by side.

Every op x case x direction is one benchmark ``group`` holding seven entries: ``fastbn`` (the
plain call, a new output each time), ``fastbn_out=`` (writing into preallocated ``out=``
arrays), ``reference`` (:mod:`fastbn.reference`), ``torch`` (skipped
when PyTorch is not importable), ``memcpy`` (fastbn's OpenMP copy (same thread count) of x into a
preallocated array: the bandwidth yardstick), ``read`` (an OpenMP sweep that only reads x) and
``torch copy_``; the fused batchnorm + ReLU cases add ``batchnorm`` (fastbn's batchnorm alone)
and ``batchnorm + np.relu`` (followed by NumPy's ReLU). The cases are those of
``python -m fastbn`` (:mod:`fastbn._bench`), built from the op table: the large cases (float32 and
float64) and cs231n-sized ones.

Full run, saved and compared across commits::

    pytest benchmarks/ --benchmark-save=mybranch
    pytest benchmarks/ --benchmark-compare --benchmark-group-by=group

Smoke run (CI): ``pytest benchmarks/ --benchmark-disable -q`` calls every entry once, on small
shapes -- with ``--benchmark-disable``, or with the environment variable ``FASTBN_BENCH_SMALL=1``,
every large case is replaced by a small case of the same op and dtype (see ``_small``), so the
smoke run takes seconds and little memory.
"""
import functools
import importlib
import os
import pathlib
import re
import sys

import numpy as np
import pytest

import fastbn
from fastbn import _bench

IMPLEMENTATIONS = ("fastbn", "fastbn out=", "reference", "torch", "memcpy", "read", "torch copy_",
                   "batchnorm", "batchnorm + np.relu")
FUSED_ONLY = ("batchnorm", "batchnorm + np.relu")  # the yardsticks of the fused cases


def _small(case):
    """A case of the same op, layout, dtype and groups on a small shape."""
    return case.resized(_bench.SMOKE_SHAPES[case.layout])


def _params(small):
    cases = _bench.LARGE_CASES + _bench.SMALL_CASES
    if small:  # large cases of one op and layout shrink to the same small one: once each
        cases = list(dict.fromkeys(_small(case) if case.nbytes > 1 << 20 else case for case in cases))
    params = []
    for case in cases:  # grouped by case, so that one case's arrays are built once
        for direction in case.directions:
            for impl in IMPLEMENTATIONS:
                if impl in FUSED_ONLY and not case.spec.relu:
                    continue
                params.append(pytest.param(case, direction, impl,
                                           id=f"{case.id}-{direction}-{impl.replace(' ', '_')}"))
    return params


def pytest_generate_tests(metafunc):
    if {"case", "direction", "impl"} <= set(metafunc.fixturenames):
        small = (metafunc.config.getoption("benchmark_disable", False)
                 or os.environ.get("FASTBN_BENCH_SMALL", "") not in ("", "0"))
        metafunc.parametrize(("case", "direction", "impl"), _params(small))


@functools.lru_cache(maxsize=1)
def _calls(case):
    """The callables of the current case (one case's arrays in memory at a time)."""
    torch = _bench.torch_module()
    if torch is not None:
        torch.set_num_threads(fastbn.get_num_threads())
    return _bench.implementations(case, torch)


def test_normalization(benchmark, case, direction, impl):
    call = _calls(case)[direction].get(impl)
    if call is None:
        pytest.skip(f"{impl} is not available here (PyTorch not importable, kernels not built, "
                    "or an entry of the fused cases only)")
    benchmark.group = f"{case.name} {direction}"
    benchmark.extra_info.update(op=case.op, shape=list(case.shape), dtype=case.dtype,
                                direction=direction, bytes=_bench.bytes_moved(case, direction),
                                threads=fastbn.get_num_threads())
    result = benchmark(call)
    if impl in ("fastbn", "fastbn out=", "reference") and direction == "forward":
        assert np.all(np.isfinite(result[0]))


def _training_step(backend, small):
    """One step of a cs231n two-layer net with batchnorm, with NumPy matmuls around fastbn:
    X @ W1, batchnorm, ReLU, @ W2, and back to dW1. What fastbn costs inside a NumPy program,
    including how its threads and NumPy's BLAS threads share the cores."""
    N, D, H, K = (20, 64, 50, 10) if small else (200, 3072, 500, 10)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, D))
    W1, W2 = rng.standard_normal((D, H)) * 0.01, rng.standard_normal((H, K)) * 0.01
    gamma, beta, bn_param = np.ones(H), np.zeros(H), {"mode": "train"}

    def step():
        h = X @ W1
        out, cache = fastbn.batchnorm_forward(h, gamma, beta, bn_param, backend=backend)
        scores = np.maximum(out, 0) @ W2
        dout = (np.ones_like(scores) @ W2.T) * (out > 0)
        dh, dgamma, dbeta = fastbn.batchnorm_backward(dout, cache, backend=backend)
        return X.T @ dh, dgamma, dbeta

    return step


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_training_step(benchmark, backend, request):
    if backend not in fastbn.available_backends():
        pytest.skip("the compiled kernels are not built")
    small = request.config.getoption("benchmark_disable", False)
    benchmark.group = "cs231n two-layer training step (NumPy matmuls around batchnorm)"
    dW1, dgamma, dbeta = benchmark(_training_step(backend, small))
    assert np.all(np.isfinite(dW1)) and np.all(np.isfinite(dgamma))


def _script(name):
    """The script benchmarks/<name>.py as a module (its directory on sys.path once, as when run:
    the scripts import each other)."""
    here = str(pathlib.Path(__file__).parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module(name)


def test_overhead_script_times_every_tiny_call_with_and_without_its_kernels():
    """benchmarks/overhead.py, one short round: a row per op, layout and direction of the op
    table, each with its whole time, its Python side and their difference; the kernels are
    back in place afterwards."""
    import contextlib
    import io

    from fastbn import _backends

    overhead = _script("overhead")

    if _backends.kernels() is None:
        pytest.skip("compiled kernels are not built")
    kernels = _backends.kernels()
    with overhead.kernels_that_do_nothing():
        assert _backends.kernels() is not kernels
        assert _backends.kernels().cols_forward_train(1, 2, three=3) is None
    assert _backends.kernels() is kernels
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        overhead.python_side(rounds=1, number=2)
    rows = buf.getvalue().splitlines()[2:]
    expected = {(case.label, direction) for case in overhead.tiny_cases()
                for direction in case.directions}
    assert len(rows) == len(expected)
    for row in rows:
        whole, python, kernels_time = map(float, row.split()[-3:])
        assert whole > 0 and python > 0
        assert abs(whole - python - kernels_time) < 0.02


def test_grid_script_compares_the_values_of_a_setting():
    """benchmarks/grid.py --setting FIELD=V1,...: a plan per value beside the plan in force, each
    timed on a small shape; the plan in force is back afterwards; a path or unknown field is
    refused."""
    from fastbn import _planner

    grid = _script("grid")

    before = _planner.current()
    plans = grid.setting_plans("sums_prefetch_min_bytes", [0, 1 << 22])
    assert list(plans) == ["auto", "sums_prefetch_min_bytes=0", "sums_prefetch_min_bytes=4194304"]
    assert plans["auto"] == before
    assert plans["sums_prefetch_min_bytes=4194304"].sums_prefetch_min_bytes == 1 << 22
    t = grid.time_paths(_bench.Case("batchnorm", (40, 24)), "cols_path", 1, ("backward",), plans)
    assert set(t) == set(plans) and all(v > 0 for v in t.values())
    assert _planner.current() == before
    for bad in ("cols_path=0", "no_such_field=1", "sums_prefetch_min_bytes", "sums_prefetch_min_bytes=4k"):
        with pytest.raises(SystemExit):
            grid.main(["--family", "cols", "--setting", bad])


@pytest.mark.parametrize("script, argv, message", [
    ("grid", ["--repeat", "0"], "argument --repeat: must be an integer >= 1, got '0'"),
    ("grid", ["--family", "cols", "--json", "/no/such/folder/g.json"],
     "--json: cannot write '/no/such/folder/g.json'"),
    ("overhead", ["--number", "0"], "argument --number: must be an integer >= 1, got '0'"),
    ("overhead", ["--rounds", "-1"], "argument --rounds: must be an integer >= 1, got '-1'"),
    ("ab", ["/no/such/checkout"], "other must be a checkout of fastbn"),
    ("ab", [".", "--repeat", "0"], "argument --repeat: must be an integer >= 1, got '0'"),
])
def test_scripts_reject_bad_arguments_before_timing(script, argv, message, monkeypatch, capsys):
    """Counts below 1, an output that cannot be written and a checkout that is not one stop a
    script at once, naming the argument (not a traceback, or NaN, after the run)."""
    module = _script(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])
    for name in ("run_families", "python_side", "compare"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("the timing ran"))
    with pytest.raises(SystemExit) as raised:
        module.main() if script == "overhead" else module.main(argv)
    assert message in (capsys.readouterr().err + str(raised.value.code))


def test_grid_script_sums_up_a_setting_per_family(monkeypatch, capsys):
    """--setting ends with the summary of every family it ran: per value and direction, the
    geometric mean of time over the plan in force and the shapes 5% faster / slower / all."""
    grid = _script("grid")
    monkeypatch.setattr(grid, "FAMILIES", {
        "tiny": ("cols_path", [("batchnorm", (40, 24), "NC"), ("batchnorm", (8, 1024), "NC")]),
        "tiny_nhwc": ("cols_path", [("spatial_batchnorm", (2, 3, 3, 16), "NHWC")])})
    grid.main(["--family", "tiny", "--family", "tiny_nhwc", "--split", "--repeat", "1",
               "--setting", "grad_sums_four_rows_bytes=0,1"])
    out = capsys.readouterr().out
    for family, n in (("tiny", 2), ("tiny_nhwc", 1)):
        summary = out.split(f"\n{family}: grad_sums_four_rows_bytes: this CPU's plan has")[1]
        for value in (0, 1):
            for direction in ("backward", "forward"):
                assert re.search(rf"grad_sums_four_rows_bytes={value} +{direction} +[0-9.]+ +"
                                 rf"\(\d+ faster / \d+ slower / {n}\)", summary)


def test_grid_has_the_families_of_every_per_cpu_setting_and_sums_them_up(monkeypatch):
    """Every tuned setting grid.py --per-cpu re-checks, and every field a CPU_SETTINGS entry
    sets, has the families it is decided on; its plans are the default, the values it was
    decided against and every vendor's value; the summary is the geometric mean of time over
    the plan in force, with the shapes 5% faster and slower."""
    from fastbn import _planner

    grid = _script("grid")

    fields = {f for entry in _planner.CPU_SETTINGS.values() for f in entry}
    assert fields <= set(grid.PER_CPU_FAMILIES)
    monkeypatch.setitem(_planner.CPU_SETTINGS, "SomeVendor", {"sweep_wide_bytes": 8192})
    for field, (families, against) in grid.PER_CPU_FAMILIES.items():
        assert field in _planner.Plan.__dataclass_fields__ and set(families) <= set(grid.FAMILIES)
        default = getattr(_planner.Plan(), field)
        assert default not in against
        names = set(grid.per_cpu_plans(field)) - {"auto"}
        vendors = {8192} if field == "sweep_wide_bytes" else set()
        assert names == {f"{field}={v}" for v in {default, *against, *vendors}}
    records = [{"directions": ["forward"], "seconds": {"auto": 1.0, "a": 0.5, "b": 1.0}},
               {"directions": ["forward"], "seconds": {"auto": 2.0, "a": 4.0, "b": 2.02}},
               {"directions": ["backward"], "seconds": {"auto": 1.0, "a": 0.9, "b": 1.1}}]
    summary = grid.summarize(records)
    assert summary[("a", "forward")] == pytest.approx((1.0, 1, 1, 2))
    assert summary[("b", "forward")] == pytest.approx((np.sqrt(1.01), 0, 0, 2))
    assert summary[("a", "backward")] == pytest.approx((0.9, 1, 0, 1))
    assert summary[("b", "backward")] == pytest.approx((1.1, 0, 1, 1))
    with pytest.raises(SystemExit):
        grid.main(["--per-cpu", "--family", "cols"])
