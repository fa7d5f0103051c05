"""Benchmark cases and timing shared by ``python -m fastbn`` and ``benchmarks/``.

A :class:`Case` is one operation at one shape and dtype. :func:`implementations` turns a case into
zero-argument callables, one per (implementation, direction): ``fastbn``, ``reference`` (the NumPy
oracle) and ``torch`` (when importable) for the directions ``forward`` (train mode), ``test``
(test-mode forward, batch statistics ops only) and ``backward``; and the yardsticks: the two
memcpys, an OpenMP copy of x (``parallel_copy``, same thread count as fastbn) and torch's
``copy_``, and ``read``, an OpenMP sweep that only reads x (``parallel_read``). Everything a
callable needs (outputs, caches, torch tensors) is made before timing, so a timed call is the
public call alone.

:func:`time_call` returns the median of repeated calls; :func:`run` times every case and returns
one record per case and direction with the times of all implementations, measured in the same run,
so the ratios between them are meaningful even on a noisy machine.
"""
import time
from dataclasses import dataclass

import numpy as np

import fastbn
from fastbn import _backends, _threads, reference

DIRECTIONS = ("forward", "test", "backward")


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes
    ----------
    op : str
        ``'batchnorm'``, ``'spatial_nchw'``, ``'spatial_nhwc'``, ``'layernorm'`` or ``'groupnorm'``.
    shape : tuple
        Shape of x (for ``spatial_nhwc`` the (N, H, W, C) shape fastbn receives).
    dtype : str
        ``'float32'`` or ``'float64'``.
    groups : int
        G for groupnorm.
    """

    op: str
    shape: tuple
    dtype: str = "float32"
    groups: int = 1

    @property
    def name(self):
        dims = "x".join(str(n) for n in self.shape)
        extra = f" G={self.groups}" if self.op == "groupnorm" else ""
        return f"{self.op} {dims}{extra} {self.dtype}"

    @property
    def id(self):
        """A pytest/JSON-friendly name: ``batchnorm-4096x4096-float32``."""
        dims = "x".join(str(n) for n in self.shape)
        extra = f"-G{self.groups}" if self.op == "groupnorm" else ""
        return f"{self.op}-{dims}{extra}-{self.dtype}"

    @property
    def directions(self):
        return DIRECTIONS if self.op in ("batchnorm", "spatial_nchw", "spatial_nhwc") else ("forward", "backward")

    @property
    def nbytes(self):
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


# The targets of issue 4 (large, float32 and a few float64) and cs231n-sized calls. The first
# case of each kernel family is its headline case: ``--quick`` runs those and the small cases.
HEADLINE_CASES = (
    Case("batchnorm", (4096, 4096)),
    Case("spatial_nchw", (32, 64, 56, 56)),
    Case("spatial_nhwc", (32, 56, 56, 64)),
    Case("layernorm", (8192, 1024)),
    Case("groupnorm", (32, 64, 56, 56), groups=32),
)
LARGE_CASES = HEADLINE_CASES + (
    Case("batchnorm", (65536, 256)),
    Case("batchnorm", (256, 65536)),
    Case("batchnorm", (4096, 4099)),
    Case("layernorm", (65536, 64)),
    Case("layernorm", (64, 65536)),
    Case("batchnorm", (4096, 4096), "float64"),
    Case("spatial_nchw", (32, 64, 56, 56), "float64"),
    Case("spatial_nhwc", (32, 56, 56, 64), "float64"),
    Case("layernorm", (8192, 1024), "float64"),
    Case("groupnorm", (32, 64, 56, 56), "float64", groups=32),
)
SMALL_CASES = (
    Case("batchnorm", (200, 500), "float64"),
    Case("spatial_nchw", (50, 3, 32, 32), "float64"),
    Case("spatial_nhwc", (50, 32, 32, 3), "float64"),
    Case("layernorm", (200, 500), "float64"),
    Case("groupnorm", (20, 32, 16, 16), "float64", groups=4),
)
QUICK_CASES = HEADLINE_CASES + SMALL_CASES
# Tiny shapes of every op: the correctness self-check and smoke runs.
CHECK_CASES = (
    Case("batchnorm", (64, 33), "float64"),
    Case("batchnorm", (64, 33), "float32"),
    Case("spatial_nchw", (4, 6, 5, 7), "float64"),
    Case("spatial_nhwc", (4, 5, 7, 6), "float32"),
    Case("layernorm", (10, 37), "float64"),
    Case("groupnorm", (3, 8, 5, 4), "float32", groups=4),
)


def torch_module():
    """PyTorch when it is importable, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def make_inputs(case, seed=0):
    """x, dout, gamma, beta of a case (gamma/beta of shape (C,), groupnorm's too)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.shape, dtype=np.float32).astype(case.dtype, copy=False)
    x += 3.0
    dout = rng.standard_normal(case.shape, dtype=np.float32).astype(case.dtype, copy=False)
    C = case.shape[-1] if case.op in ("batchnorm", "spatial_nhwc", "layernorm") else case.shape[1]
    gamma = rng.uniform(0.5, 1.5, C).astype(case.dtype)
    beta = rng.uniform(-0.5, 0.5, C).astype(case.dtype)
    return x, dout, gamma, beta


def _functions(module, case):
    """(forward(x, gamma, beta, param), backward(dout, cache), param) of fastbn or the reference."""
    if case.op == "batchnorm":
        return module.batchnorm_forward, module.batchnorm_backward, {"mode": "train"}
    if case.op in ("spatial_nchw", "spatial_nhwc"):
        layout = "NCHW" if case.op == "spatial_nchw" else "NHWC"
        return (module.spatial_batchnorm_forward, module.spatial_batchnorm_backward,
                {"mode": "train", "layout": layout})
    if case.op == "layernorm":
        return module.layernorm_forward, module.layernorm_backward, {}
    G = case.groups

    def groupnorm_forward(x, gamma, beta, param, **kw):
        return module.spatial_groupnorm_forward(x, gamma, beta, G, param, **kw)

    return groupnorm_forward, module.spatial_groupnorm_backward, {}


def _numpy_calls(module, case, inputs, reuse_output):
    """Calls of fastbn or the reference; with `reuse_output`, outputs go to ``out=`` buffers."""
    x, dout, gamma, beta = inputs
    forward, backward, param = _functions(module, case)
    train_param = dict(param)
    _, cache = forward(x, gamma, beta, train_param)
    kw = {"out": np.empty_like(x)} if reuse_output else {}
    calls = {
        "forward": lambda: forward(x, gamma, beta, train_param, **kw),
        "backward": lambda: backward(dout, cache, **kw),
    }
    if "test" in case.directions:
        test_param = dict(train_param, mode="test")
        calls["test"] = lambda: forward(x, gamma, beta, test_param, **kw)
    return calls


def _torch_calls(torch, case, inputs):
    F = torch.nn.functional
    x, dout, gamma, beta = inputs
    tx = torch.from_numpy(x)
    tdy = torch.from_numpy(dout)
    if case.op == "spatial_nhwc":  # an (N, C, H, W) view of channels-last memory
        tx = tx.permute(0, 3, 1, 2)
        tdy = tdy.permute(0, 3, 1, 2)
    w = torch.from_numpy(gamma).clone().requires_grad_(True)
    b = torch.from_numpy(beta).clone().requires_grad_(True)
    xg = tx.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    C = w.shape[0]
    running_mean = torch.zeros(C, dtype=tx.dtype)
    running_var = torch.ones(C, dtype=tx.dtype)
    if case.op == "layernorm":
        def forward(t, training=True):
            return F.layer_norm(t, (C,), w, b, 1e-5)
    elif case.op == "groupnorm":
        def forward(t, training=True):
            return F.group_norm(t, case.groups, w, b, 1e-5)
    else:
        def forward(t, training=True):
            return F.batch_norm(t, running_mean, running_var, w, b, training, 0.1, 1e-5)
    y = forward(xg)

    def run_forward():
        with torch.no_grad():
            return forward(tx)

    calls = {
        "forward": run_forward,
        "backward": lambda: torch.autograd.grad(y, (xg, w, b), tdy, retain_graph=True),
    }
    if "test" in case.directions:
        def run_test():
            with torch.no_grad():
                return forward(tx, training=False)
        calls["test"] = run_test
    return calls


def implementations(case, torch=None, n_threads=None):
    """Zero-argument callables for a case: ``{direction: {implementation: call}}``.

    Implementations: ``'fastbn'`` (writing into preallocated ``out=`` arrays, as the memcpy
    yardstick does), ``'reference'``, ``'torch'`` (when `torch` is given; it allocates its
    outputs), and the yardsticks ``'memcpy'`` (fastbn's OpenMP ``parallel_copy`` of x into a
    preallocated array on `n_threads` threads), ``'read'`` (a sum of x on `n_threads` threads:
    what reading x once costs, without writing) and ``'torch copy_'``, under every direction.
    """
    inputs = make_inputs(case)
    x = inputs[0]
    calls = {d: {} for d in case.directions}
    for name, module in (("fastbn", fastbn), ("reference", reference)):
        for direction, call in _numpy_calls(module, case, inputs, module is fastbn).items():
            calls[direction][name] = call
    if torch is not None:
        for direction, call in _torch_calls(torch, case, inputs).items():
            calls[direction]["torch"] = call
    yardsticks = {}
    kernels = _backends.kernels()
    if kernels is not None:
        flat = x.reshape(-1)
        dst = np.empty_like(flat)
        threads = n_threads or fastbn.get_num_threads()
        yardsticks["memcpy"] = lambda: kernels.parallel_copy(flat, dst, threads)
        yardsticks["read"] = lambda: kernels.parallel_read(flat, threads)
    if torch is not None:
        tsrc = torch.from_numpy(x)
        tdst = torch.empty_like(tsrc)
        yardsticks["torch copy_"] = lambda: tdst.copy_(tsrc)
    for direction in calls:
        calls[direction].update(yardsticks)
    return calls


def time_call(call, repeat=7, min_time=0.0, max_time=2.0):
    """Median wall time in seconds of `call` over `repeat` timed runs (after one warm-up).

    Fast calls are run in loops of several calls per timed run, so that one run lasts at least
    `min_time` seconds; fewer runs are made once `max_time` seconds have been spent.

    Examples
    --------
    >>> t = time_call(lambda: sum(range(100)), repeat=3)
    >>> 0 < t < 1
    True
    """
    return time_calls({"call": call}, repeat, min_time, max_time)["call"]


def time_calls(calls, repeat=7, min_time=0.0, max_time=2.0):
    """Median wall times in seconds of several calls, timed in interleaved rounds.

    Each round times every call once, so a burst of load on a shared machine hits all of them
    alike and their ratios stay meaningful. A call whose runs exceed `max_time` in total stops
    after 3 rounds.
    """
    inner = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        first = time.perf_counter() - start
        inner[name] = 1
        if min_time > 0 and first < min_time:
            inner[name] = min(int(min_time / max(first, 1e-7)) + 1, 10000)
    times = {name: [] for name in calls}
    spent = dict.fromkeys(calls, 0.0)
    for _ in range(repeat):
        for name, call in calls.items():
            if spent[name] > max_time and len(times[name]) >= 3:
                continue
            n = inner[name]
            start = time.perf_counter()
            for _ in range(n):
                call()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed / n)
            spent[name] += elapsed
    return {name: float(np.median(t)) for name, t in times.items()}


def run(cases, repeat=7, threads=None, torch=None, progress=None):
    """Time every implementation of every case and direction; return a list of records.

    Each record is a dict with ``case`` (:class:`Case`), ``direction`` and ``times`` (median
    seconds per implementation, all measured in the same interleaved rounds). fastbn runs on
    `threads` threads (default: :func:`fastbn.get_num_threads`), and so do torch and the memcpy
    yardstick.
    """
    previous = _threads._user_threads
    if threads:
        fastbn.set_num_threads(threads)
    n_threads = fastbn.get_num_threads()
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n_threads)
    records = []
    try:
        for i, case in enumerate(cases):
            if progress is not None:
                progress(f"[{i + 1}/{len(cases)}] {case.name}")
            calls = implementations(case, torch, n_threads)
            for direction, impls in calls.items():
                times = time_calls(impls, repeat=repeat, min_time=0.002, max_time=1.0)
                records.append({"case": case, "direction": direction, "times": times})
    finally:
        fastbn.set_num_threads(previous)
        if torch is not None:
            torch.set_num_threads(torch_threads)
    return records


def bytes_moved(case, direction):
    """The least traffic a direction needs: read x and write out; the backward also reads dout."""
    return case.nbytes * (3 if direction == "backward" else 2)


def check(cases=CHECK_CASES):
    """Compare fastbn with the reference on small cases; return a list of (case, problem) failures."""
    failures = []
    for case in cases:
        inputs = make_inputs(case, seed=1)
        x, dout, gamma, beta = inputs
        rtol = 1e-10 if case.dtype == "float64" else 1e-4
        results = {}
        for name, module in (("fastbn", fastbn), ("reference", reference)):
            forward, backward, param = _functions(module, case)
            train_param = dict(param)
            out, cache = forward(x, gamma, beta, train_param)
            grads = backward(dout, cache)
            arrays = [out, *grads]
            if "test" in case.directions:
                arrays.append(forward(x, gamma, beta, dict(train_param, mode="test"))[0])
            results[name] = arrays
        labels = ["forward out", "dx", "dgamma", "dbeta", "test-mode out"]
        for label, got, want in zip(labels, results["fastbn"], results["reference"]):
            scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
            err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0
            if got.dtype != want.dtype or got.shape != want.shape or not err <= rtol:
                failures.append((case, f"{label}: relative error {err:.3g} (tolerance {rtol:g}), "
                                       f"dtype {got.dtype} vs {want.dtype}"))
    return failures
