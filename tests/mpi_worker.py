"""Run under ``mpiexec -n P`` by tests/test_distributed.py: the distributed functions on every
rank, results written to files that the tests compare with the single-process functions.

``python tests/mpi_worker.py cases OUT_DIR``: every case of :data:`CASES` (each rank saves its
part of the results to ``OUT_DIR/<case>.rank<r>.npz``), then the collective errors of
:data:`ERRORS` (``OUT_DIR/errors.rank<r>.json``) and the doctests of fastbn.distributed.
``python tests/mpi_worker.py timeout OUT_DIR``: the last rank skips a call that the others make
with a 1 s timeout (``OUT_DIR/timeout.rank<r>.json``).

The case table and the batch of each case (:func:`make_case`) are importable without mpi4py, so
that the tests build the same batches.
"""
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

# Rows (images) per rank, by communicator size: even, uneven, a rank with one row, an empty
# rank, and a whole batch of two rows (the fewest train mode takes).
SPLITS = {
    "even": {2: [16, 16], 3: [11, 11, 11]},
    "uneven": {2: [5, 27], 3: [2, 19, 9]},
    "one_row": {2: [1, 30], 3: [1, 1, 29]},
    "empty": {2: [0, 31], 3: [14, 0, 17]},
    "two_in_all": {2: [1, 1], 3: [0, 1, 1]},
}
# splits whose bn_param keeps the unbiased running variance (PyTorch's): M / (M - 1) of the whole
# batch's M, which no rank holds (and a rank of one row or none would divide by zero with its own)
UNBIASED = ("uneven", "one_row", "empty")
# (op, layout, shape of one row/image): a few features; NCHW with few channels (chunks of
# planes) and with many (a task per channel); NHWC
GEOMETRIES = {
    "NC": ("batchnorm", "NC", (7,)),
    "NCHW": ("spatial_batchnorm", "NCHW", (3, 5, 4)),
    "NCHW16": ("spatial_batchnorm", "NCHW", (16, 3, 3)),
    "NHWC": ("spatial_batchnorm", "NHWC", (5, 4, 3)),
}
# larger batches through the (M, D) grid, wide-row and column-blocked paths: geometry, rows per
# row of the split
LARGE = {
    "grid_NC": ("batchnorm", "NC", (300,), 40),
    "wide_NC": ("batchnorm", "NC", (5,), 60),
    "blocked_NC": ("batchnorm", "NC", (1024,), 2),
}


def _case_list():
    cases = []
    for geometry in GEOMETRIES:
        for split in SPLITS:
            for dtype in ("float32", "float64"):
                cases.append((geometry, split, dtype, "train", "cython"))
        cases.append((geometry, "uneven", "float64", "test", "cython"))
        cases.append((geometry, "empty", "float64", "train", "numpy"))
    cases += [(geometry, "uneven", "float32", "train", "cython") for geometry in LARGE]
    return {"-".join(case): case for case in cases}


CASES = _case_list()


def make_case(name, size):
    """The whole batch of case `name` for `size` ranks: (x, dout, gamma, beta, bn_param, rows
    per rank, op, layout, mode, backend). bn_param holds running statistics to update."""
    geometry, split, dtype, mode, backend = CASES[name]
    op, layout, row_shape, scale = (LARGE[geometry] if geometry in LARGE
                                    else (*GEOMETRIES[geometry], 1))
    rows = [n * scale for n in SPLITS[split][size]]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    channels = row_shape[-1] if layout == "NHWC" else row_shape[0]
    x = rng.normal(2.0, 3.0, size=(sum(rows), *row_shape)).astype(dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    gamma = rng.normal(1.0, 0.5, size=channels).astype(dtype)
    beta = rng.normal(size=channels).astype(dtype)
    param = {"mode": mode, "momentum": 0.8, "unbiased": split in UNBIASED,
             "running_mean": rng.normal(size=channels).astype(dtype),
             "running_var": rng.uniform(0.5, 2.0, size=channels).astype(dtype)}
    if layout == "NHWC":
        param["layout"] = "NHWC"
    return x, dout, gamma, beta, param, rows, op, layout, mode, backend


def part(a, rows, rank):
    """Rank `rank`'s rows of a, for `rows` rows per rank."""
    start = sum(rows[:rank])
    return a[start:start + rows[rank]]


# Calls that must raise on every rank (see _error_call).
ERRORS = ["channels", "dtype", "mode", "layout", "eps", "unbiased", "function", "one_value",
          "no_values", "backward_mode", "local_cache", "invalid_gamma", "invalid_eps",
          "invalid_dout", "invalid_timeout"]
INVALID = {"invalid_gamma": "gamma must have shape", "invalid_dout": "dout must have the shape",
           "invalid_eps": "bn_param['eps'] must be a real number",
           "invalid_timeout": "timeout must be a positive number"}  # the last rank's own error
DISAGREE = {"unbiased": "bn_param['unbiased']",  # what the others' common message names
            "local_cache": "the cache's statistics"}


def _error_call(name, comm, distributed, param):
    """Make rank-dependent calls that must raise on every rank, with bn_param `param`."""
    rank, last = comm.rank, comm.rank == comm.size - 1
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(4, 3))
    ones, zeros = np.ones(3), np.zeros(3)
    if name == "channels":
        C = 2 if last else 3
        distributed.batchnorm_forward(x[:, :C], ones[:C], zeros[:C], param, comm)
    elif name == "dtype":
        dtype = np.float32 if last else np.float64
        distributed.batchnorm_forward(x.astype(dtype), ones, zeros, param, comm)
    elif name == "mode":
        param["mode"] = "test" if last else "train"
        param["running_mean"], param["running_var"] = zeros.copy(), ones.copy()
        distributed.batchnorm_forward(x, ones, zeros, param, comm)
    elif name == "layout":
        images = rng.normal(size=(2, 3, 4, 3))
        param["layout"] = "NHWC" if last else "NCHW"
        distributed.spatial_batchnorm_forward(images, ones, zeros, param, comm)
    elif name == "eps":
        param["eps"] = 1e-3 if last else 1e-5
        distributed.batchnorm_forward(x, ones, zeros, param, comm)
    elif name == "unbiased":
        param["unbiased"] = last
        distributed.batchnorm_forward(x, ones, zeros, param, comm)
    elif name == "function":
        _, cache = fastbn_local().batchnorm_forward(x, ones, zeros, {"mode": "train"})
        if last:
            distributed.batchnorm_backward(x, cache, comm)
        else:
            distributed.batchnorm_forward(x, ones, zeros, param, comm)
    elif name == "one_value":  # one row in the whole batch
        distributed.batchnorm_forward(x[:1] if rank == 0 else x[:0], ones, zeros, param, comm)
    elif name == "no_values":
        distributed.batchnorm_forward(x[:0], ones, zeros, param, comm)
    elif name == "invalid_gamma":
        distributed.batchnorm_forward(x, np.ones(4) if last else ones, zeros, param, comm)
    elif name == "backward_mode":  # the last rank's cache is a (local) test-mode one
        _, cache = distributed.batchnorm_forward(x, ones, zeros, {"mode": "train"}, comm)
        if last:
            _, cache = fastbn_local().batchnorm_forward(
                x, ones, zeros, {"mode": "test", "running_mean": zeros, "running_var": ones})
        distributed.batchnorm_backward(x, cache, comm)
    elif name == "local_cache":  # every rank's cache holds its own rows' statistics
        _, cache = fastbn_local().batchnorm_forward(x, ones, zeros, {"mode": "train"})
        distributed.batchnorm_backward(x, cache, comm)
    elif name == "invalid_eps":  # beyond float's range (OverflowError from float())
        param["eps"] = 10**400 if last else 1e-5
        distributed.batchnorm_forward(x, ones, zeros, param, comm)
    elif name == "invalid_timeout":
        distributed.batchnorm_forward(x, ones, zeros, param, comm, timeout=-1.0 if last else 10.0)
    elif name == "invalid_dout":
        _, cache = distributed.batchnorm_forward(x, ones, zeros, {"mode": "train"}, comm)
        distributed.batchnorm_backward(x[:, :2] if last else x, cache, comm)


# Test-mode calls whose ranks differ only in what test mode does not use: they must succeed.
LENIENT = ["test_momentum", "test_unbiased", "test_batches_tracked"]


def _lenient_call(name, comm, distributed):
    rank = comm.rank
    x = np.random.default_rng(rank).normal(size=(4, 3))
    param = {"mode": "test", "running_mean": np.zeros(3), "running_var": np.ones(3)}
    if name == "test_momentum":
        param["momentum"] = 0.5 + 0.1 * rank
    elif name == "test_unbiased":
        param["unbiased"] = rank % 2 == 1
    elif name == "test_batches_tracked":
        param.update(momentum=None, num_batches_tracked=rank)
    _, cache = distributed.batchnorm_forward(x, np.ones(3), np.zeros(3), param, comm)
    distributed.batchnorm_backward(x, cache, comm)


def fastbn_local():
    import fastbn
    return fastbn


def _run_cases(comm, out_dir):
    import doctest

    import fastbn.distributed as distributed

    for name in CASES:
        x, dout, gamma, beta, param, rows, op, layout, mode, backend = make_case(name, comm.size)
        forward = getattr(distributed, f"{op}_forward")
        backward = getattr(distributed, f"{op}_backward")
        out, cache = forward(part(x, rows, comm.rank), gamma, beta, param, comm, backend=backend)
        dx, dgamma, dbeta = backward(part(dout, rows, comm.rank), cache, comm, backend=backend)
        np.savez(out_dir / f"{name}.rank{comm.rank}.npz", out=out, mean=cache.mean,
                 invstd=cache.invstd, running_mean=param["running_mean"],
                 running_var=param["running_var"], dx=dx, dgamma=dgamma, dbeta=dbeta)
    errors = {}
    for name in ERRORS:
        param = {"mode": "train"}
        try:
            _error_call(name, comm, distributed, param)
        except Exception as e:  # noqa: BLE001 (recorded for the test to judge)
            running = param.get("running_mean")
            errors[name] = {"type": type(e).__name__, "message": str(e),
                            "running_mean": None if running is None else running.tolist()}
        else:
            errors[name] = None
    (out_dir / f"errors.rank{comm.rank}.json").write_text(json.dumps(errors))
    lenient = {}
    for name in LENIENT:
        try:
            _lenient_call(name, comm, distributed)
        except Exception as e:  # noqa: BLE001
            lenient[name] = f"{type(e).__name__}: {e}"
        else:
            lenient[name] = None
    (out_dir / f"lenient.rank{comm.rank}.json").write_text(json.dumps(lenient))
    result = doctest.testmod(distributed, optionflags=doctest.NORMALIZE_WHITESPACE)
    (out_dir / f"doctest.rank{comm.rank}.json").write_text(
        json.dumps([result.attempted, result.failed]))


def _run_timeout(comm, out_dir):
    import fastbn.distributed as distributed

    record = {"skipped": comm.rank == comm.size - 1}
    if not record["skipped"]:
        x = np.random.default_rng(comm.rank).normal(size=(4, 3))
        start = time.monotonic()
        try:
            distributed.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"}, comm,
                                          timeout=1.0)
        except Exception as e:  # noqa: BLE001
            record["error"] = [type(e).__name__, str(e)]
        record["seconds"] = time.monotonic() - start
    (out_dir / f"timeout.rank{comm.rank}.json").write_text(json.dumps(record))


def main(what, out_dir):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out_dir = Path(out_dir)
    (_run_cases if what == "cases" else _run_timeout)(comm, out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:])
