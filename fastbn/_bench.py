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
import argparse
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np

import fastbn
from fastbn import _backends, _threads, reference
from fastbn._ops import OPS


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes
    ----------
    op : str
        An op name of the op table (:data:`fastbn._ops.OPS`).
    shape : tuple
        Shape of x as fastbn receives it (for NHWC the (N, H, W, C) shape).
    dtype : str
        ``'float32'`` or ``'float64'``.
    groups : int
        G for grouped ops (groupnorm).
    layout : str, optional
        One of the op's layouts; default its first.
    """

    op: str
    shape: tuple
    dtype: str = "float32"
    groups: int = 1
    layout: str = None

    def __post_init__(self):
        if self.layout is None:
            object.__setattr__(self, "layout", self.spec.layouts[0])

    @property
    def spec(self):
        return OPS[self.op]

    @property
    def _label(self):
        """The op, with its layout where the op has several and its groups where it takes them."""
        parts = [self.op]
        if len(self.spec.layouts) > 1:
            parts.append(self.layout)
        return parts, (f"G{self.groups}" if self.spec.grouped else None)

    @property
    def name(self):
        parts, groups = self._label
        dims = "x".join(str(n) for n in self.shape)
        return " ".join([*parts, dims, *([groups.replace("G", "G=")] if groups else []), self.dtype])

    @property
    def id(self):
        """A pytest/JSON-friendly name: ``batchnorm-4096x4096-float32``."""
        parts, groups = self._label
        dims = "x".join(str(n) for n in self.shape)
        return "-".join([*parts, dims, *([groups] if groups else []), self.dtype])

    @property
    def label(self):
        """A short name for tables and plots: ``spatial NHWC 32x56x56x64 f32``."""
        parts, groups = self._label
        parts = [part.replace("spatial_batchnorm", "spatial") for part in parts]
        dims = "x".join(str(n) for n in self.shape)
        dtype = self.dtype.replace("float", "f")
        return " ".join([*parts, dims, *([groups.replace("G", "G=")] if groups else []), dtype])

    @property
    def directions(self):
        return self.spec.directions

    @property
    def nbytes(self):
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def resized(self, shape):
        """The same op, layout, dtype and (at most 4) groups on another shape."""
        return Case(self.op, shape, self.dtype, min(self.groups, 4), self.layout)


# The fused batchnorm + ReLU ops on the headline shapes of batchnorm: each also times fastbn's
# batchnorm alone and batchnorm followed by NumPy's ReLU (see fused_calls).
FUSED_CASES = (
    Case("batchnorm_relu", (4096, 4096)),
    Case("spatial_batchnorm_relu", (32, 64, 56, 56)),
    Case("spatial_batchnorm_relu", (32, 56, 56, 64), layout="NHWC"),
)
# The large cases (float32 and a few float64), cs231n-sized calls and a small batch of many
# features (an MLP layer). The first case of each kernel family is its headline case: ``--quick``
# runs those and the small cases.
HEADLINE_CASES = (
    Case("batchnorm", (4096, 4096)),
    Case("spatial_batchnorm", (32, 64, 56, 56)),
    Case("spatial_batchnorm", (32, 56, 56, 64), layout="NHWC"),
    Case("layernorm", (8192, 1024)),
    Case("groupnorm", (32, 64, 56, 56), groups=32),
    Case("rmsnorm", (8192, 1024)),
)
LARGE_CASES = HEADLINE_CASES + (
    Case("batchnorm", (65536, 256)),
    Case("batchnorm", (256, 65536)),
    Case("batchnorm", (4096, 4099)),
    Case("layernorm", (65536, 64)),
    Case("layernorm", (64, 65536)),
    Case("rmsnorm", (65536, 64)),
    Case("rmsnorm", (2048, 4096)),
    Case("batchnorm", (4096, 4096), "float64"),
    Case("spatial_batchnorm", (32, 64, 56, 56), "float64"),
    Case("spatial_batchnorm", (32, 56, 56, 64), "float64", layout="NHWC"),
    Case("layernorm", (8192, 1024), "float64"),
    Case("groupnorm", (32, 64, 56, 56), "float64", groups=32),
) + FUSED_CASES
SMALL_CASES = (
    Case("batchnorm", (200, 500), "float64"),
    Case("spatial_batchnorm", (50, 3, 32, 32), "float64"),
    Case("spatial_batchnorm", (50, 32, 32, 3), "float64", layout="NHWC"),
    Case("layernorm", (200, 500), "float64"),
    Case("groupnorm", (20, 32, 16, 16), "float64", groups=4),
    Case("rmsnorm", (200, 500), "float64"),
    Case("batchnorm", (64, 4096)),
)
QUICK_CASES = HEADLINE_CASES + SMALL_CASES
# Tiny shapes of every op: the correctness self-check and smoke runs.
CHECK_CASES = (
    Case("batchnorm", (64, 33), "float64"),
    Case("batchnorm", (64, 33), "float32"),
    Case("spatial_batchnorm", (4, 6, 5, 7), "float64"),
    Case("spatial_batchnorm", (4, 5, 7, 6), "float32", layout="NHWC"),
    Case("layernorm", (10, 37), "float64"),
    Case("groupnorm", (3, 8, 5, 4), "float32", groups=4),
    Case("rmsnorm", (10, 37), "float64"),
    Case("rmsnorm", (9, 40), "float32"),
    Case("batchnorm_relu", (64, 33), "float64"),
    Case("spatial_batchnorm_relu", (4, 5, 7, 6), "float64", layout="NHWC"),
)
# A small shape per layout, for smoke runs of the benchmark suite.
SMOKE_SHAPES = {"NC": (64, 48), "NCHW": (4, 8, 6, 6), "NHWC": (4, 6, 6, 8), "ND": (32, 40)}


DIRECTION_LABELS = {"forward": "fwd", "test": "test", "backward": "bwd"}  # as the tables print them


def positive_int(text):
    """An argparse type: an integer >= 1 (counts of threads, rounds, calls).

    Examples
    --------
    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def output_problem(option, path):
    """Why the command-line output `path` given by `option` cannot be written (a missing or
    read-only folder), checked before a run rather than after it; None if it can.

    Examples
    --------
    >>> output_problem("--json", "/no/such/folder/r.json")
    "--json: cannot write '/no/such/folder/r.json': '/no/such/folder' is not a writable folder"
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder) and os.access(folder, os.W_OK):
        return None
    return f"{option}: cannot write {path!r}: {folder!r} is not a writable folder"


def cpu_model():
    """The CPU's model name with its family and model numbers (Linux: /proc/cpuinfo; VMs often
    name only the vendor), else what the platform module says."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    if "model name" in fields:
        return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    import platform
    return platform.processor() or platform.machine()


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
    C = case.spec.channels(case.shape, case.layout)
    gamma = rng.uniform(0.5, 1.5, C).astype(case.dtype)
    beta = rng.uniform(-0.5, 0.5, C).astype(case.dtype)
    return x, dout, gamma, beta


def at_page_offset(shape, dtype, offset=0):
    """An uninitialised array whose data start `offset` bytes past a page boundary (where an
    array starts within a page changes the speed of the loops: docs/decisions.md)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(n + 4096 + offset, np.uint8)
    start = (-buf.ctypes.data) % 4096 + offset
    return buf[start:start + n].view(dtype).reshape(shape)


def _functions(module, case):
    """(forward(x, gamma, beta, param), backward(dout, cache), param) of fastbn or the reference."""
    spec = case.spec
    public_forward = getattr(module, spec.forward)
    param = {"mode": "train"} if spec.running_stats else {}
    if len(spec.layouts) > 1:
        param["layout"] = case.layout

    def forward(x, gamma, beta, param, **kw):
        return public_forward(*spec.forward_args(x, gamma, beta, param, case.groups), **kw)

    return forward, getattr(module, spec.backward[0]), param


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
    if case.layout == "NHWC":  # an (N, C, H, W) view of channels-last memory
        tx = tx.permute(0, 3, 1, 2)
        tdy = tdy.permute(0, 3, 1, 2)
    w = torch.from_numpy(gamma).clone().requires_grad_(True)
    b = torch.from_numpy(beta).clone().requires_grad_(True)
    xg = tx.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
    C = w.shape[0]
    running_mean = torch.zeros(C, dtype=tx.dtype)
    running_var = torch.ones(C, dtype=tx.dtype)
    peer = getattr(F, case.spec.torch)
    if case.spec.relu:  # relu(batch_norm(x))
        bn = peer
        peer = lambda *args: F.relu(bn(*args))  # noqa: E731
    if case.spec.running_stats:
        def forward(t, training=True):
            return peer(t, running_mean, running_var, w, b, training, 0.1, 1e-5)
    elif case.spec.grouped:
        def forward(t, training=True):
            return peer(t, case.groups, w, b, 1e-5)
    elif case.spec.beta:
        def forward(t, training=True):
            return peer(t, (C,), w, b, 1e-5)
    else:
        def forward(t, training=True):
            return peer(t, (C,), w, 1e-5)
    y = forward(xg)
    params = (xg, w, b) if case.spec.beta else (xg, w)

    def run_forward():
        with torch.no_grad():
            return forward(tx)

    calls = {
        "forward": run_forward,
        "backward": lambda: torch.autograd.grad(y, params, tdy, retain_graph=True),
    }
    if "test" in case.directions:
        def run_test():
            with torch.no_grad():
                return forward(tx, training=False)
        calls["test"] = run_test
    return calls


def fused_calls(case, inputs):
    """The yardsticks of a fused batchnorm + ReLU case: ``'batchnorm'``, fastbn's unfused op
    alone, and ``'batchnorm + np.relu'``, that op followed by NumPy's ReLU (``np.maximum(out, 0)``
    forward, ``dout * (out > 0)`` into the backward), as a NumPy user writes it; both write into
    ``out=`` arrays as the ``'fastbn out='`` entry does. ``{direction: {implementation: call}}``."""
    x, dout, gamma, beta = inputs
    unfused = Case(case.spec.unfused, case.shape, case.dtype, case.groups, case.layout)
    forward, backward, param = _functions(fastbn, unfused)
    out = np.empty_like(x)
    train_param = dict(param)
    y, cache = forward(x, gamma, beta, train_param)
    activated = np.maximum(y, 0)

    def with_relu(p):
        y, c = forward(x, gamma, beta, p, out=out)
        return np.maximum(y, 0), c

    calls = {
        "forward": {"batchnorm": lambda: forward(x, gamma, beta, train_param, out=out),
                    "batchnorm + np.relu": lambda: with_relu(train_param)},
        "backward": {"batchnorm": lambda: backward(dout, cache, out=out),
                     "batchnorm + np.relu": lambda: backward(dout * (activated > 0), cache, out=out)},
    }
    if "test" in case.directions:
        test_param = dict(train_param, mode="test")
        calls["test"] = {"batchnorm": lambda: forward(x, gamma, beta, test_param, out=out),
                         "batchnorm + np.relu": lambda: with_relu(test_param)}
    return calls


def implementations(case, torch=None, n_threads=None):
    """Zero-argument callables for a case: ``{direction: {implementation: call}}``.

    Implementations: ``'fastbn'`` (the plain call, as users make it: a new output each call,
    the previous one dropped, as in a training loop), ``'fastbn out='`` (writing into
    preallocated ``out=`` arrays, as the memcpy yardstick does), ``'reference'``, ``'torch'``
    (when `torch` is given; it allocates its outputs), for the fused ops ``'batchnorm'`` and
    ``'batchnorm + np.relu'`` (see :func:`fused_calls`), and the yardsticks ``'memcpy'`` (fastbn's OpenMP ``parallel_copy`` of x into a
    preallocated array on `n_threads` threads), ``'read'`` (a sum of x on `n_threads` threads:
    what reading x once costs, without writing) and ``'torch copy_'``, under every direction.
    """
    inputs = make_inputs(case)
    x = inputs[0]
    calls = {d: {} for d in case.directions}
    for name, module, reuse_output in (("fastbn", fastbn, False), ("fastbn out=", fastbn, True),
                                       ("reference", reference, False)):
        for direction, call in _numpy_calls(module, case, inputs, reuse_output).items():
            calls[direction][name] = call
    if torch is not None:
        for direction, call in _torch_calls(torch, case, inputs).items():
            calls[direction]["torch"] = call
    if case.spec.relu:
        for direction, fused in fused_calls(case, inputs).items():
            calls[direction].update(fused)
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


def time_calls(calls, repeat=7, min_time=0.0, max_time=2.0, fastest=None):
    """Median wall times in seconds of several calls, timed in interleaved rounds.

    Each round times every call once, so a burst of load on a shared machine hits all of them
    alike and their ratios stay meaningful. The order is shuffled from round to round (the same
    shuffles in every run): a call finds the caches as the one before it left them, and that
    must not always be the same call. A call whose runs exceed `max_time` in total stops after
    3 rounds. `fastest`: a dict that receives each call's fastest round.
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
    names = list(calls)
    for round_ in range(repeat):
        order = np.random.default_rng(round_).permutation(len(names)) if round_ else range(len(names))
        for name in [names[i] for i in order]:
            call = calls[name]
            if spent[name] > max_time and len(times[name]) >= 3:
                continue
            n = inner[name]
            start = time.perf_counter()
            for _ in range(n):
                call()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed / n)
            spent[name] += elapsed
    if fastest is not None:
        fastest.update({name: float(np.min(t)) for name, t in times.items()})
    return {name: float(np.median(t)) for name, t in times.items()}


def run(cases, repeat=7, threads=None, torch=None, progress=None):
    """Time every implementation of every case and direction; return a list of records.

    Each record is a dict with ``case`` (:class:`Case`), ``direction``, ``times`` (median
    seconds per implementation, all measured in the same interleaved rounds) and ``fastest``
    (each implementation's fastest round, see :func:`yardstick_warnings`). fastbn runs on
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
                fastest = {}
                times = time_calls(impls, repeat=repeat, min_time=0.002, max_time=1.0,
                                   fastest=fastest)
                records.append({"case": case, "direction": direction, "times": times,
                                "fastest": fastest})
    finally:
        fastbn.set_num_threads(previous)
        if torch is not None:
            torch.set_num_threads(torch_threads)
    return records


@contextmanager
def busy_core():
    """A process that keeps one core busy while the block runs (what a shared machine looks
    like); yields its ``Popen``, killed and reaped on exit."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield spinner
    finally:
        spinner.kill()
        spinner.wait()


def thread_scaling(cases, repeat=5, busy=True, progress=None):
    """fastbn's time (``out=`` calls) on 1 and on 2 threads for every case and direction, with
    (`busy`) another process keeping one core busy all along (:func:`busy_core`), or else on
    the machine as it is and beside the memcpy yardstick's on 1 and 2 threads (a copy beside a
    busy process measures the contention, not the scaling); one record per case and direction
    with ``times`` {``'1 thread'``, ``'2 threads'``[, ``'memcpy 1 thread'``,
    ``'memcpy 2 threads'``]} measured in interleaved rounds."""
    previous = _threads._user_threads
    kernels = _backends.kernels()
    records = []
    with busy_core() if busy else nullcontext():
        try:
            for i, case in enumerate(cases):
                if progress is not None:
                    progress(f"[{i + 1}/{len(cases)}] {case.name}")
                calls = implementations(case)
                copies = {}
                if not busy:
                    src = np.ones(math.prod(case.shape), case.dtype)
                    dst = np.empty_like(src)
                    copies = {f"memcpy {n} thread{'s' if n > 1 else ''}":
                              (lambda n=n: kernels.parallel_copy(src, dst, n)) for n in (1, 2)}
                for direction in case.directions:
                    call = calls[direction]["fastbn out="]

                    def on(n, call=call):
                        fastbn.set_num_threads(n)
                        return call()

                    times = time_calls({"1 thread": lambda: on(1), "2 threads": lambda: on(2),
                                        **copies}, repeat=repeat, min_time=0.002, max_time=1.0)
                    records.append({"case": case, "direction": direction, "times": times})
        finally:
            fastbn.set_num_threads(previous)
    return records


MEMCPY_SPREAD = 2.0  # a memcpy slower than this times its best in the run is implausible
YARDSTICK_PROBLEMS = {  # a code per reason, as the table marks a row, and what it means
    "s": f"memcpy median over {MEMCPY_SPREAD:g}x its fastest round",
    "b": f"memcpy under 1/{MEMCPY_SPREAD:g} of the best GB/s of a copy as large or larger",
    "r": "reading x took longer than copying it",
}


def yardstick_warnings(record, records=()):
    """Why the memcpy yardstick of a record cannot be trusted: codes of
    :data:`YARDSTICK_PROBLEMS` (an empty list when it can be).

    The ratios to the memcpy mean something only if the memcpy itself ran as it does on a quiet
    machine. It did not when it took more than :data:`MEMCPY_SPREAD` times its fastest round
    (``'s'``), or more than that many times the best time per byte of the memcpys of arrays as
    large or larger in the same run, `records` (``'b'``: a smaller array does not copy slower
    per byte; a small case's memcpy took 700 us instead of 15 us while another process kept
    the second core busy),
    or when reading x alone took longer than copying it (``'r'``).
    """
    times, fastest = record["times"], record.get("fastest", {})
    memcpy, read = times.get("memcpy"), times.get("read")
    if memcpy is None:
        return []
    problems = []
    if fastest.get("memcpy") and memcpy > MEMCPY_SPREAD * fastest["memcpy"]:
        problems.append("s")
    nbytes = record["case"].nbytes
    per_byte = [r["times"]["memcpy"] / r["case"].nbytes for r in records
                if "memcpy" in r["times"] and r["case"].nbytes >= max(nbytes, 1)]
    if per_byte and nbytes and memcpy / nbytes > MEMCPY_SPREAD * min(per_byte):
        problems.append("b")
    if read is not None and read > memcpy:
        problems.append("r")
    return problems


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
        labels = ["forward out", "dx", "dgamma"] + ["dbeta"] * case.spec.beta + ["test-mode out"]
        for label, got, want in zip(labels, results["fastbn"], results["reference"]):
            scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
            err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0
            if got.dtype != want.dtype or got.shape != want.shape or not err <= rtol:
                failures.append((case, f"{label}: relative error {err:.3g} (tolerance {rtol:g}), "
                                       f"dtype {got.dtype} vs {want.dtype}"))
    return failures
