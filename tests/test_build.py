"""Build configuration, backends and thread control."""
import io
import os
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastbn
from fastbn import _backends
from fastbn._config import build_info


def test_show_config_reports_build():
    buf = io.StringIO()
    fastbn.show_config(file=buf)
    text = buf.getvalue()
    assert text.startswith(f"fastbn {fastbn.__version__}")
    assert "OpenMP: " in text and "threads: " in text
    if "cython" in fastbn.available_backends():
        assert "compile flags: -O" in text
        assert "-march=native" not in text
        assert "-ffp-contract=off" in text  # the SIMD paths compute the same bits
        assert f"SIMD: {_backends.kernels().simd()}" in text


def test_show_config_names_the_planner_settings_in_force():
    from fastbn import _planner

    with _planner.override(few_rows=64):
        buf = io.StringIO()
        fastbn.show_config(file=buf)
    line = next(line for line in buf.getvalue().splitlines() if line.startswith("planner: "))
    assert f"CPU vendor {_planner.CPU_VENDOR or 'unknown'}" in line
    assert "few_rows=64" in line  # a change in force, beside this CPU's settings:
    for name, value in _planner.CPU_SETTINGS.get(_planner.CPU_VENDOR, {}).items():
        assert f"{name}={value}" in line


def test_binary_matches_the_build_decision():
    """The extension was compiled as setup.py decided (no stale objects from another build);
    CI also says which build it made through FASTBN_EXPECT_OPENMP=0/1."""
    kernels = _backends.kernels()
    assert kernels is not None, "the compiled extension is not built"
    assert kernels.openmp_enabled() == build_info()["openmp"]
    expected = os.environ.get("FASTBN_EXPECT_OPENMP")
    if expected is not None:
        assert kernels.openmp_enabled() == (expected == "1")


def test_compiled_backend_is_built():
    """`pip install .` must build the kernels: 'auto' resolves to them."""
    assert fastbn.available_backends() == ("cython", "numpy")
    assert _backends.resolve("auto") == "cython"


def test_the_modules_every_call_runs_through_are_compiled_from_their_sources():
    """setup.py compiles the validation, dispatch and results modules (its GLUE) with Cython:
    each runs from its extension, built from the .py file beside it, and show_config says so."""
    from fastbn import _config

    compiled = _config.compiled_glue()
    assert {"_validation", "_compiled", "_results", "_ops"} <= set(compiled)
    assert all(compiled.values()), compiled
    assert _config.stale_glue() == []
    buf = io.StringIO()
    fastbn.show_config(file=buf)
    assert f"compiled Python modules: {', '.join(compiled)}" in buf.getvalue()


def test_a_module_edited_after_its_build_is_reported_stale(monkeypatch):
    from fastbn import _config

    (name, digest), *_ = build_info()["glue"].items()
    monkeypatch.setattr(_config, "build_info", lambda: {"glue": {name: digest[::-1]}})
    assert _config.stale_glue() == [name]


@pytest.mark.parametrize("backend", ["gpu", "", None, "Cython", np.array(["numpy"])],
                         ids=["gpu", "empty", "None", "Cython", "array"])
def test_unknown_backend_lists_available(backend):
    import numpy as np
    with pytest.raises(ValueError, match="backend must be one of .*available here"):
        fastbn.layernorm_forward(np.ones((2, 3)), np.ones(3), np.zeros(3), {}, backend=backend)


def test_set_num_threads_caps_the_thread_count():
    try:
        fastbn.set_num_threads(1)
        assert fastbn.get_num_threads() == 1
        fastbn.set_num_threads(64)
        with threadpool_limits(1, user_api="openmp"):
            assert fastbn.get_num_threads() == 1
    finally:
        fastbn.set_num_threads(None)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                        ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad_values(bad, error):
    with pytest.raises(error, match="n must be a positive integer or None"):
        fastbn.set_num_threads(bad)


def _fresh_python(code, **env_changes):
    """Run code in a fresh interpreter (no test-suite settings) and return its stdout."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OPENBLAS_NUM_THREADS="1", **env_changes)  # no BLAS threads in the CPU-time measure
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout


IDLE_CPU = r"""
import os, resource, time
import numpy as np
import fastbn
from fastbn import _backends, _kernels
x = np.random.default_rng(0).standard_normal((2000, 1000)); g = np.ones(1000); b = np.zeros(1000)
out, m, i, v = np.empty_like(x), np.empty(1000), np.empty(1000), np.empty(1000)
costs = []
for _ in range(5):
    _kernels.cols_forward_train(x, g, b, 1e-5, out, m, i, v, None, None, 0.9, 2)
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.05)
    after = resource.getrusage(resource.RUSAGE_SELF)
    costs.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
print(sorted(costs)[2] * 1e3, "GOMP_SPINCOUNT" in os.environ, _backends.OPENMP_WAIT.split()[0])
"""


@pytest.mark.skipif(not (_backends.kernels() and _backends.kernels().openmp_enabled()
                         and _backends.kernels().omp_max_threads() >= 2),
                    reason="needs OpenMP kernels and two threads")
def test_idle_openmp_threads_sleep_soon_unless_the_user_asks_otherwise():
    """After a call on two threads, the idle worker burns at most a few ms of CPU while the
    program sleeps 50 ms (median of 5; libgomp's default spin burned about 10 ms here: a core that
    NumPy's BLAS threads needed), and the environment is left as it was. A wait policy set by the
    user is kept: OMP_WAIT_POLICY=active spins through much of the sleep."""
    cpu_ms, leaked, how = _fresh_python(IDLE_CPU).split()
    if not how.startswith("GOMP_SPINCOUNT"):
        pytest.skip(f"fastbn did not set the spin here (OpenMP idle wait: {how} ...)")
    assert float(cpu_ms) < 4.0 and leaked == "False"
    cpu_ms, _, how = _fresh_python(IDLE_CPU, OMP_WAIT_POLICY="active").split()
    assert how == "as" and float(cpu_ms) > 15.0


@pytest.mark.skipif(not (_backends.kernels() and _backends.kernels().omp_max_threads() >= 2),
                    reason="needs two OpenMP threads")
def test_small_inputs_run_on_one_thread_by_default():
    """The default heuristic (this suite lowers it to exercise threads on moderate shapes): a
    cs231n-sized batch of 1e5 values runs on one thread, 2**18 values on two."""
    out = _fresh_python("from fastbn import _planner; from fastbn._threads import threads_for; "
                        "_planner.use(_planner.Plan(load_check_ms=0)); "
                        "print(threads_for(200 * 500), threads_for(1 << 18))")
    assert out.split() == ["1", "2"]


@pytest.mark.skipif(not (_backends.kernels() and _backends.kernels().omp_max_threads() >= 2)
                    or not os.path.exists("/proc/stat"), reason="needs two OpenMP threads and Linux")
def test_large_calls_leave_a_busy_core_to_the_process_running_on_it():
    """With another process spinning, the CPU time it takes over a window is seen as one core
    fewer, and a large call takes one thread fewer (with the check off, as many as OpenMP
    allows)."""
    from fastbn import _bench, _planner, _threads
    cores = len(os.sched_getaffinity(0))
    with _bench.busy_core():
        time.sleep(0.2)  # until it runs
        _threads.free_cores()
        time.sleep(2 * _planner.current().load_window_ms / 1000)
        assert _threads.free_cores() <= cores - 1
        with _planner.override(load_check_ms=1):
            time.sleep(2 * _planner.current().load_window_ms / 1000)
            assert _threads.threads_for(1 << 24) <= max(1, cores - 1)
        with _planner.override(load_check_ms=0):
            assert _threads.threads_for(1 << 24) == fastbn.get_num_threads()


class _Kernels:
    def __init__(self, openmp):
        self._openmp = openmp

    def openmp_enabled(self):
        return self._openmp


@pytest.mark.parametrize("openmp, cpus, environ, warns", [
    (False, 2, {}, True),
    (False, 64, {"FASTBN_SERIAL_OK": "0"}, True),
    (False, 2, {"FASTBN_SERIAL_OK": "1"}, False),
    (False, 1, {}, False),
    (True, 2, {}, False),
])
def test_a_serial_build_on_several_cpus_is_announced(openmp, cpus, environ, warns):
    message = _backends.serial_build_message(_Kernels(openmp), cpus, environ)
    assert (message is not None) == warns
    if warns:
        assert f"without OpenMP: they run on one thread of the {cpus} CPUs" in message
        assert "FASTBN_SERIAL_OK=1" in message


def test_import_warns_once_exactly_when_the_kernels_are_serial_on_several_cpus():
    """`import fastbn` in a fresh interpreter, without FASTBN_SERIAL_OK: one RuntimeWarning
    pointing at the importing line when this build is serial on a machine of 2+ CPUs (the
    serial-build step of .ci/run sets FASTBN_SERIAL_OK for its other tests), none otherwise."""
    import subprocess
    import sys

    code = ("import warnings\nwith warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n    import fastbn\n"
            "print([(w.category.__name__, w.filename, w.lineno) for w in caught])")
    env = {k: v for k, v in os.environ.items() if k != "FASTBN_SERIAL_OK"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    kernels = _backends.kernels()
    serial = kernels is not None and not kernels.openmp_enabled() and _backends._cpu_count() > 1
    assert out.strip() == ("[('RuntimeWarning', '<string>', 4)]" if serial else "[]")
