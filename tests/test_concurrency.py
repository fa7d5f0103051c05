"""Concurrent calls and thread-count changes give the same bits as sequential calls.

The compiled kernels release the GIL and run OpenMP regions; several Python threads calling them
at once, inside ``threadpool_limits`` blocks or while ``set_num_threads`` changes, must not share
scratch state or change a single bit of any result.
"""
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import fastbn
from registry import OPS, run_script

pytestmark = pytest.mark.skipif("cython" not in fastbn.available_backends(),
                                reason="compiled kernels are not built")

N_THREADS = 8
CALLS_PER_THREAD = 3
# Large enough that the kernels themselves run on several OpenMP threads (> 2 * 32768 values).
OP_IDS = [op.id for op in OPS]


def _shape(op):
    return op.shape("threads")


def _job(op, seed):
    """Inputs of one forward+backward call, different for every seed."""
    x, gamma, beta, param = op.make(_shape(op), np.float32 if seed % 2 else np.float64, seed=seed)
    dout = np.random.default_rng(seed + 100).standard_normal(x.shape).astype(x.dtype)
    return x, gamma, beta, param, dout


def _call(op, job):
    x, gamma, beta, param, dout = job
    param = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in param.items()}
    out, cache = op.forward(x, gamma, beta, param, backend="cython")
    grads = op.backward(dout, cache, backend="cython")
    running = [param[k] for k in ("running_mean", "running_var") if k in param]
    return [out, cache.mean, cache.invstd, *grads, *running]


def _assert_same_bits(results, expected):
    assert len(results) == len(expected)
    for got, want in zip(results, expected):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b, strict=True)


def _run_threads(target, n):
    errors = []

    def guarded(i):
        try:
            target(i)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_concurrent_calls_match_sequential_calls(op):
    jobs = [_job(op, seed) for seed in range(N_THREADS)]
    expected = [_call(op, job) for job in jobs]
    results = [[None] * CALLS_PER_THREAD for _ in range(N_THREADS)]
    start = threading.Barrier(N_THREADS)

    def work(i):
        start.wait()
        for k in range(CALLS_PER_THREAD):
            results[i][k] = _call(op, jobs[i])

    _run_threads(work, N_THREADS)
    for i in range(N_THREADS):
        _assert_same_bits(results[i], [expected[i]] * CALLS_PER_THREAD)


def test_all_ops_concurrently_match_sequential_calls():
    """Different ops at the same time: each thread runs every op in its own order."""
    jobs = [[_job(op, 10 * i + j) for j, op in enumerate(OPS)] for i in range(N_THREADS)]
    expected = [[_call(op, job) for op, job in zip(OPS, row)] for row in jobs]
    results = [None] * N_THREADS
    start = threading.Barrier(N_THREADS)

    def work(i):
        order = np.random.default_rng(i).permutation(len(OPS))
        start.wait()
        got = [None] * len(OPS)
        for j in order:
            got[j] = _call(OPS[j], jobs[i][j])
        results[i] = got

    _run_threads(work, N_THREADS)
    for i in range(N_THREADS):
        _assert_same_bits(results[i], expected[i])


@pytest.fixture
def restore_threads():
    yield
    fastbn.set_num_threads(None)


SETTINGS = ["threadpool_limits-1", "threadpool_limits-2", "set_num_threads-1", "set_num_threads-2",
            "set_num_threads-64"]


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_thread_settings_do_not_change_bits(op, setting, restore_threads):
    job = _job(op, 3)
    expected = _call(op, job)
    how, n = setting.rsplit("-", 1)
    if how == "threadpool_limits":
        with threadpool_limits(int(n), user_api="openmp"):
            got = _call(op, job)
    else:
        fastbn.set_num_threads(int(n))
        got = _call(op, job)
    _assert_same_bits([got], [expected])


def test_calls_while_another_thread_changes_the_thread_count(restore_threads):
    """set_num_threads from one thread while others compute: results stay identical."""
    jobs = [(op, _job(op, 20 + j)) for j, op in enumerate(OPS)]
    expected = [_call(op, job) for op, job in jobs]
    stop = threading.Event()

    def toggle():
        n = 0
        while not stop.is_set():
            fastbn.set_num_threads([1, 2, None, 3][n % 4])
            n += 1

    toggler = threading.Thread(target=toggle)
    toggler.start()
    try:
        results = [None] * 4

        def work(i):
            results[i] = [_call(op, job) for op, job in jobs]

        _run_threads(work, 4)
    finally:
        stop.set()
        toggler.join()
    for got in results:
        _assert_same_bits(got, expected)


def test_threadpool_limits_in_worker_threads():
    """threadpool_limits entered inside each worker thread (OpenMP limits are per thread)."""
    op = OPS[0]
    jobs = [_job(op, seed) for seed in range(N_THREADS)]
    expected = [_call(op, job) for job in jobs]
    results = [None] * N_THREADS

    def work(i):
        with threadpool_limits(1 + i % 2, user_api="openmp"):
            results[i] = _call(op, jobs[i])

    _run_threads(work, N_THREADS)
    _assert_same_bits(results, expected)


# ---------------------------------------------------------------------------------------------
# set_num_threads / get_num_threads semantics
# ---------------------------------------------------------------------------------------------

def _omp_max():
    from fastbn import _backends
    return _backends.kernels().omp_max_threads()


def test_get_num_threads_defaults_to_openmp(restore_threads):
    fastbn.set_num_threads(None)
    assert fastbn.get_num_threads() == _omp_max() >= 1


@pytest.mark.parametrize("n", [1, 2, np.int64(1), np.uint8(2)], ids=["1", "2", "int64-1", "uint8-2"])
def test_set_num_threads_accepts_integers_and_caps_at_openmp(n, restore_threads):
    fastbn.set_num_threads(n)
    assert fastbn.get_num_threads() == min(int(n), _omp_max())
    assert type(fastbn.get_num_threads()) is int


def test_more_threads_than_openmp_allows_is_capped(restore_threads):
    fastbn.set_num_threads(10_000)
    assert fastbn.get_num_threads() == _omp_max()


def test_set_num_threads_none_restores_the_default(restore_threads):
    fastbn.set_num_threads(1)
    fastbn.set_num_threads(None)
    assert fastbn.get_num_threads() == _omp_max()


def test_threadpool_limits_lowers_and_restores(restore_threads):
    before = fastbn.get_num_threads()
    with threadpool_limits(1, user_api="openmp"):
        assert fastbn.get_num_threads() == 1
    assert fastbn.get_num_threads() == before


@pytest.mark.parametrize("bad, error, message", [
    (np.int64(0), ValueError, "got 0"),
    (-(2**70), ValueError, "got -1180591620717411303424"),
    (np.float64(2.0), TypeError, r"got np\.float64\(2\.0\) of type float64"),
    (np.bool_(True), TypeError, r"got np\.True_ of type bool"),
    ([2], TypeError, r"got \[2\] of type list"),
    (2 + 0j, TypeError, r"got \(2\+0j\) of type complex"),
], ids=["numpy-zero", "huge-negative", "numpy-float", "numpy-bool", "list", "complex"])
def test_set_num_threads_rejects_bad_values_and_keeps_the_setting(bad, error, message, restore_threads):
    fastbn.set_num_threads(1)
    with pytest.raises(error, match="n must be a positive integer or None, " + message):
        fastbn.set_num_threads(bad)
    assert fastbn.get_num_threads() == 1


FORK_SCRIPT = r"""
import multiprocessing, sys
import numpy as np
import fastbn
from fastbn import _planner, _threads

x = np.random.default_rng(0).standard_normal((1024, 1024))
gamma, beta = np.ones(1024), np.zeros(1024)


def work(_):
    out, cache = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx = fastbn.batchnorm_backward(out, cache)[0]
    return fastbn.get_num_threads(), out.tobytes() + dx.tobytes()


if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")
    with _planner.override(load_check_ms=0):  # use both cores even on a busy machine
        with fork.Pool(1) as pool:  # forked before any parallel region: threads as usual
            (threads, _), = pool.map(work, [0])
        assert threads == fastbn.get_num_threads() > 1, threads
        parent = work(0)
        assert _threads._teams["started"]  # the parent ran a kernel on several threads
        with fork.Pool(2) as pool:
            results = pool.map(work, range(4))
    assert fastbn.get_num_threads() > 1
    for threads, bits in results:
        assert threads == 1, threads
        assert bits == parent[1]
    print("ok")
"""


@pytest.mark.skipif(fastbn.get_num_threads() < 2, reason="needs OpenMP and 2 or more CPUs")
def test_a_child_forked_after_parallel_kernels_runs_them_on_one_thread(tmp_path):
    """GNU OpenMP's threads do not survive fork, and a forked child's first parallel region
    waited for them forever (multiprocessing's default start method on Linux). A child forked
    after the parent ran kernels on several threads runs them on one, with the parent's bits;
    one forked before keeps its threads."""
    run_script(tmp_path, "fork_after_threads.py", FORK_SCRIPT)
