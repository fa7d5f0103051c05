"""Fixed cost per call: the Python side of every public call on a tiny batch.

Every op of the op table, in each of its layouts, runs on a 4x5 batch (spatial ops and
groupnorm on 2x2 planes, groupnorm with G=5; float64), forward, test mode where it has one, and
backward. Each call is timed as it is and with the compiled kernels swapped for functions that
do nothing: that time is the Python side (validation, dispatch, allocation of the outputs, the
cache, the running statistics' bookkeeping), and the difference is the kernels'. Best of 15
shuffled, interleaved rounds of 1000 calls, so that both columns meet the same machine state.

With ``--other CHECKOUT`` it instead times the public calls of this build and of another one (a
checkout built in place, imported as ``fastbn_old`` as ``ab.py`` does; its Python modules run
interpreted) in one process, in shuffled interleaved rounds, with a cs231n-sized forward +
backward (200x500 float64) besides, and prints both and their ratio.

    python benchmarks/overhead.py
    python benchmarks/overhead.py --other /tmp/old     # this build's public calls against another's
"""
import argparse
import contextlib
import random
import time
import types

import numpy as np

import fastbn
from fastbn import _backends, _bench
from fastbn._ops import OPS

NUMBER = 1000
ROUNDS = 15
TINY_SHAPES = {"NC": (4, 5), "ND": (4, 5), "NCHW": (4, 5, 2, 2), "NHWC": (4, 2, 2, 5)}


def tiny_cases():
    """Every op in each of its layouts on a 4x5 batch (float64)."""
    return [_bench.Case(name, TINY_SHAPES[layout], "float64", 5 if spec.grouped else 1, layout)
            for name, spec in OPS.items() for layout in spec.layouts]


def public_calls(module, cases):
    """``{(case label, direction): call}``: the plain public calls of `module` (fastbn or another
    build of it), each calling the public function itself with arguments made once."""
    calls = {}
    for case in cases:
        spec = case.spec
        x, dout, gamma, beta = _bench.make_inputs(case)
        # the public backward and the param dict as the benchmarks make them; the public
        # forward itself, without _functions' wrapper (its extra frame would count as overhead)
        _, backward, param = _bench._functions(module, case)
        forward = getattr(module, spec.forward)
        args = spec.forward_args(x, gamma, beta, param, case.groups)
        _, cache = forward(*args)
        calls[case.label, "forward"] = lambda forward=forward, args=args: forward(*args)
        if "test" in case.directions:
            test_args = spec.forward_args(x, gamma, beta, dict(param, mode="test"), case.groups)
            calls[case.label, "test"] = lambda forward=forward, args=test_args: forward(*args)
        calls[case.label, "backward"] = (
            lambda backward=backward, dout=dout, cache=cache: backward(dout, cache))
    return calls


def _noop(*args, **kwargs):
    return None


@contextlib.contextmanager
def kernels_that_do_nothing():
    """Swap the compiled kernels for functions of the same names that return at once."""
    real = _backends._kernels
    _backends._kernels = types.SimpleNamespace(
        **{name: _noop for name in dir(real) if not name.startswith("_")})
    try:
        yield
    finally:
        _backends._kernels = real


def fastest(calls, rounds=ROUNDS, number=NUMBER, setting=None):
    """Best time per call of each of `calls` (``{key: (call, number)}``), in microseconds, over
    shuffled interleaved rounds; `setting(key)` is a context entered around each key's timing."""
    best = dict.fromkeys(calls, float("inf"))
    order = list(calls)
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for key in order:
            call, n = calls[key]
            with setting(key) if setting else contextlib.nullcontext():
                start = time.perf_counter()
                for _ in range(n):
                    call()
                best[key] = min(best[key], (time.perf_counter() - start) / n * 1e6)
    return best


def python_side(rounds=ROUNDS, number=NUMBER):
    """Print the table: each tiny call whole, without its kernels, and their difference."""
    if _backends.kernels() is None:
        raise SystemExit("the compiled kernels are not built")
    calls = public_calls(fastbn, tiny_cases())
    timed = {(key, side): (call, number) for key, call in calls.items()
             for side in ("whole", "python")}
    best = fastest(timed, rounds, setting=lambda key: kernels_that_do_nothing()
                   if key[1] == "python" else contextlib.nullcontext())
    print(f"{_bench.cpu_model()}; best of {rounds} rounds x {number} calls, in us")
    print(f"{'call':34s} {'whole':>7s} {'python':>7s} {'kernels':>7s}")
    for (label, direction) in calls:
        whole, python = best[(label, direction), "whole"], best[(label, direction), "python"]
        name = f"{label} {_bench.DIRECTION_LABELS[direction]}"
        print(f"{name:34s} {whole:7.2f} {python:7.2f} {whole - python:7.2f}")


def cs231n_step(module):
    """A cs231n-sized batchnorm forward + backward (200x500 float64) of `module`."""
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((200, 500)), rng.standard_normal((200, 500))
    gamma, beta, param = np.ones(500), np.zeros(500), {"mode": "train"}

    def step():
        _, cache = module.batchnorm_forward(x, gamma, beta, param)
        return module.batchnorm_backward(dout, cache)

    return step


def compare(other_tree, rounds=ROUNDS, number=NUMBER):
    """This build's public calls against those of the build in `other_tree`, interleaved."""
    from ab import import_other

    old = import_other(other_tree)
    cases = tiny_cases()
    timed = {}
    for side, module in (("other", old), ("this", fastbn)):
        for key, call in public_calls(module, cases).items():
            timed[key, side] = (call, max(1, number // 2))
        timed[("cs231n 200x500 f64", "fwd+bwd"), side] = (cs231n_step(module), max(1, number // 25))
    best = fastest(timed, rounds)
    print(f"{_bench.cpu_model()}; best of {rounds} rounds, in us")
    print(f"{'call':34s} {'other':>9s} {'this':>9s} {'this/other':>10s}")
    for (label, direction) in dict.fromkeys(key for key, _ in timed):
        a, b = best[(label, direction), "other"], best[(label, direction), "this"]
        name = f"{label} {_bench.DIRECTION_LABELS.get(direction, direction)}"
        print(f"{name:34s} {a:9.2f} {b:9.2f} {b / a:10.3f}")


def main():
    parser = argparse.ArgumentParser(prog="python benchmarks/overhead.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", metavar="CHECKOUT",
                        help="compare the public calls with those of this other build")
    parser.add_argument("--rounds", type=_bench.positive_int, default=ROUNDS, help=f"default {ROUNDS}")
    parser.add_argument("--number", type=_bench.positive_int, default=NUMBER,
                        help=f"calls per round and call (default {NUMBER})")
    args = parser.parse_args()
    if args.other:
        return compare(args.other, args.rounds, args.number)
    return python_side(args.rounds, args.number)


if __name__ == "__main__":
    main()
