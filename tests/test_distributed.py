"""fastbn.distributed: synchronized batchnorm over MPI, run by ``mpiexec -n 2`` and ``-n 3`` (the
latter oversubscribes a 2-core machine) in subprocesses, against the single-process functions on
the whole batch.

Each launch runs every case of ``mpi_worker.CASES`` once and writes each rank's results to files;
the tests here read them, one test per case. Skipped only when mpi4py is not installed (CI
installs it: ``pip install mpi4py mpich``).
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import fastbn
import mpi_worker

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                                reason="mpi4py is not installed (pip install mpi4py mpich)")

SIZES = (2, 3)
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}  # relative to the largest magnitude
WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_digits.py"


def mpiexec():
    """The mpiexec of this Python's environment (where the mpich wheel puts it: pip's scripts
    directory, or the user one after ``pip install --user``), else the one on PATH."""
    places = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts")),
              Path(sysconfig.get_path("scripts", f"{os.name}_user"))]
    found = [str(p / "mpiexec") for p in places if (p / "mpiexec").is_file()]
    found = found[0] if found else shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpi4py is installed but there is no mpiexec in pip's scripts directories or "
                    "on PATH: pip install mpich")
    return found


def run_mpi(n, *args, timeout=60):
    """Run ``mpiexec -n n python *args`` with this fastbn, one OpenMP thread per rank; return its
    output (the test fails if it takes longer than `timeout` seconds)."""
    package_root = str(Path(fastbn.__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    # a session of its own, so that a launch that hangs is ended with all its processes
    with subprocess.Popen([mpiexec(), "-n", str(n), sys.executable, *map(str, args)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as launch:
        try:
            stdout, stderr = launch.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            stdout, stderr = launch.communicate()
            pytest.fail(f"mpiexec -n {n} {' '.join(map(str, args))} took more than {timeout} s:\n"
                        f"{stdout[-3000:]}\n{stderr[-3000:]}")
    assert launch.returncode == 0, f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
    return stdout


@pytest.fixture(scope="module", params=SIZES, ids=[f"n{n}" for n in SIZES])
def cases_run(request, tmp_path_factory):
    """The output directory of one ``mpiexec -n n tests/mpi_worker.py cases`` launch, and n."""
    out = tmp_path_factory.mktemp(f"mpi_cases_n{request.param}")
    run_mpi(request.param, WORKER, "cases", out)
    return out, request.param


def _rel_error(actual, expected):
    scale = np.max(np.abs(expected), initial=0.0)
    return np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0) / (scale or 1.0)


def _single_process(name, size):
    """The case's whole batch through the local functions, and each rank's rows."""
    x, dout, gamma, beta, param, rows, op, layout, mode, backend = mpi_worker.make_case(name, size)
    out, cache = getattr(fastbn, f"{op}_forward")(x, gamma, beta, param, backend=backend)
    dx, dgamma, dbeta = getattr(fastbn, f"{op}_backward")(dout, cache, backend=backend)
    return dict(out=out, mean=cache.mean, invstd=cache.invstd, running_mean=param["running_mean"],
                running_var=param["running_var"], dx=dx, dgamma=dgamma, dbeta=dbeta), rows


WHOLE_BATCH = ("mean", "invstd", "running_mean", "running_var", "dgamma", "dbeta")


@pytest.mark.parametrize("name", list(mpi_worker.CASES))
def test_distributed_equals_single_process(cases_run, name):
    """Each rank's output and dx are its rows of the single-process results on the whole batch;
    the statistics, running statistics, dgamma and dbeta are the whole batch's, with identical
    bits on every rank."""
    out_dir, size = cases_run
    expected, rows = _single_process(name, size)
    ranks = [dict(np.load(out_dir / f"{name}.rank{r}.npz")) for r in range(size)]
    tolerance = TOLERANCE[mpi_worker.CASES[name][2]]
    for key in ("out", "dx"):
        for r, result in enumerate(ranks):
            part = mpi_worker.part(expected[key], rows, r)
            assert result[key].shape == part.shape and result[key].dtype == part.dtype
        whole = np.concatenate([result[key] for result in ranks])
        assert _rel_error(whole, expected[key]) <= tolerance, key
    for key in WHOLE_BATCH:
        assert ranks[0][key].dtype == expected[key].dtype, key
        assert _rel_error(ranks[0][key], expected[key]) <= tolerance, key
        for result in ranks[1:]:
            assert result[key].tobytes() == ranks[0][key].tobytes(), f"{key} differs between ranks"


@pytest.mark.parametrize("name", mpi_worker.ERRORS)
def test_collective_errors_raise_on_every_rank(cases_run, name):
    """Ranks that disagree, a whole batch of fewer than two values, or one rank's invalid
    arguments: every rank raises ValueError (the same message, except on the rank whose own
    arguments are invalid), and no bn_param gains or changes running statistics."""
    out_dir, size = cases_run
    errors = [json.loads((out_dir / f"errors.rank{r}.json").read_text())[name] for r in range(size)]
    assert all(error is not None for error in errors), errors
    assert {error["type"] for error in errors} == {"ValueError"}
    last = size - 1
    if name in mpi_worker.INVALID:
        assert mpi_worker.INVALID[name] in errors[last]["message"]
        assert {error["message"] for error in errors[:last]} == {
            f"rank {last} of {size} rejected its arguments (its own error says why); "
            "no rank computed or updated anything"}
    else:
        assert len({error["message"] for error in errors}) == 1, errors
        if name in mpi_worker.DISAGREE:
            assert f"the ranks disagree on {mpi_worker.DISAGREE[name]}" in errors[0]["message"]
    for error in errors:
        assert error["running_mean"] in (None, [0.0, 0.0, 0.0])  # absent, or as given (mode)


@pytest.mark.parametrize("name", mpi_worker.LENIENT)
def test_test_mode_ranks_may_differ_in_what_test_mode_does_not_use(cases_run, name):
    """momentum, unbiased and num_batches_tracked only shape the running statistics' update in
    train mode: test-mode calls whose ranks differ in them run on every rank."""
    out_dir, size = cases_run
    for r in range(size):
        assert json.loads((out_dir / f"lenient.rank{r}.json").read_text())[name] is None


def test_distributed_doctests(cases_run):
    """The examples in fastbn.distributed's docstrings, run on every rank."""
    out_dir, size = cases_run
    for r in range(size):
        attempted, failed = json.loads((out_dir / f"doctest.rank{r}.json").read_text())
        assert attempted > 0 and failed == 0


def test_a_rank_that_skips_the_call_makes_the_others_time_out(tmp_path):
    """The last of 3 ranks never calls; the other two raise CollectiveTimeout after their 1 s
    timeout instead of waiting forever, and the job ends."""
    run_mpi(3, WORKER, "timeout", tmp_path, timeout=60)
    records = [json.loads((tmp_path / f"timeout.rank{r}.json").read_text()) for r in range(3)]
    assert records[2] == {"skipped": True}
    for record in records[:2]:
        assert record["error"][0] == "CollectiveTimeout"
        assert "did not complete within 1 s" in record["error"][1]
        assert 1.0 <= record["seconds"] < 20.0


@pytest.mark.parametrize("timeout, seconds", [(5, 5.0), (np.float32(0.5), 0.5), (10**400, np.inf),
                                               (0.0, None), (-1, None), (True, None),
                                               (np.bool_(True), None), ("5", None), (None, None)])
def test_timeout_is_a_positive_number_of_seconds(timeout, seconds):
    """Any real number > 0 (an int beyond float's range: no timeout), else a ValueError naming it."""
    from fastbn.distributed import _check_timeout
    if seconds is None:
        with pytest.raises(ValueError, match=r"timeout must be a positive number of seconds, got"):
            _check_timeout(timeout)
    else:
        assert _check_timeout(timeout) == seconds


def test_import_fastbn_does_not_import_mpi4py():
    code = "import sys, fastbn; print('mpi4py' in sys.modules, 'fastbn.distributed' in sys.modules)"
    package_root = str(Path(fastbn.__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=package_root), timeout=60, check=True)
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                    reason="scikit-learn is not installed (pip install scikit-learn)")
def test_digits_example_loss_curves_agree():
    """examples/distributed_digits.py, reduced: 2 ranks and one process train the same network;
    the script fails unless their float64 loss curves agree to 1e-10."""
    assert "agree" in run_mpi(2, EXAMPLE, "--steps", "4", timeout=120)
