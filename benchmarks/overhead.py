"""Fixed cost per call: a public call on a tiny batch against its compiled kernel alone.

For a 4x5 batchnorm (and the other ops on tiny inputs) this times the plain public call
(validation, dispatch, output allocation, cache) and the compiled kernel function it ends in,
called directly with arguments prepared once; the difference is the Python-side overhead.
Both are the best of several rounds of many calls, measured in the same run. With
``--other CHECKOUT`` it instead times the public calls of this build and of another one (a
checkout whose kernels are built in place, imported as ``fastbn_old`` as ``ab.py`` does) in
one process, in shuffled interleaved rounds, and prints both and their ratio.

    python benchmarks/overhead.py
    python benchmarks/overhead.py --other /tmp/old     # this build's public calls against another's
"""
import argparse
import random
import time
import timeit

import numpy as np

import fastbn
from fastbn import _backends

NUMBER = 2000
REPEAT = 9


def best(call):
    """Best time per call, in microseconds."""
    return min(timeit.repeat(call, number=NUMBER, repeat=REPEAT)) / NUMBER * 1e6


def public_calls(module):
    """The public calls of `module` (fastbn or another build of it) on tiny inputs, and a
    cs231n-sized forward + backward (200x500 float64)."""
    rng = np.random.default_rng(0)
    x, dout = rng.standard_normal((4, 5)), np.ones((4, 5))
    gamma, beta = np.ones(5), np.zeros(5)
    param = {"mode": "train"}
    _, cache = module.batchnorm_forward(x, gamma, beta, param)
    _, ln_cache = module.layernorm_forward(x, gamma, beta, {})
    test = dict(param, mode="test")
    big, big_dout = rng.standard_normal((200, 500)), rng.standard_normal((200, 500))
    big_gamma, big_beta, big_param = np.ones(500), np.zeros(500), {"mode": "train"}

    def step():
        _, c = module.batchnorm_forward(big, big_gamma, big_beta, big_param)
        return module.batchnorm_backward(big_dout, c)

    return {
        "batchnorm 4x5 forward": lambda: module.batchnorm_forward(x, gamma, beta, param),
        "batchnorm 4x5 backward": lambda: module.batchnorm_backward(dout, cache),
        "batchnorm 4x5 test": lambda: module.batchnorm_forward(x, gamma, beta, test),
        "layernorm 4x5 forward": lambda: module.layernorm_forward(x, gamma, beta, {}),
        "layernorm 4x5 backward": lambda: module.layernorm_backward(dout, ln_cache),
        "cs231n 200x500 fwd+bwd": step,
    }


def compare(other_tree, rounds=15):
    """This build's public calls against those of the build in `other_tree`, interleaved."""
    from ab import import_other

    old = import_other(other_tree)
    calls = {(name, side): call for side, module in (("other", old), ("this", fastbn))
             for name, call in public_calls(module).items()}
    fastest = dict.fromkeys(calls, float("inf"))
    order = list(calls)
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for key in order:
            n = 40 if key[0].startswith("cs231n") else NUMBER // 2
            start = time.perf_counter()
            for _ in range(n):
                calls[key]()
            fastest[key] = min(fastest[key], (time.perf_counter() - start) / n * 1e6)
    print(f"{'call':26s} {'other':>9s} {'this':>9s} {'this/other':>10s}  (us, best of {rounds} rounds)")
    for name in public_calls(fastbn):
        a, b = fastest[name, "other"], fastest[name, "this"]
        print(f"{name:26s} {a:9.2f} {b:9.2f} {b / a:10.3f}")


def main():
    parser = argparse.ArgumentParser(prog="python benchmarks/overhead.py",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", metavar="CHECKOUT",
                        help="compare the public calls with those of this other build")
    args = parser.parse_args()
    if args.other:
        return compare(args.other)
    kernels = _backends.kernels()
    if kernels is None:
        raise SystemExit("the compiled kernels are not built")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5))
    gamma, beta, dout = np.ones(5), np.zeros(5), np.ones((4, 5))
    param = {"mode": "train"}
    _, cache = fastbn.batchnorm_forward(x, gamma, beta, param)
    out = np.empty_like(x)
    mean, invstd, var, dgamma, dbeta = (np.empty(5) for _ in range(5))
    running_mean, running_var = param["running_mean"], param["running_var"]
    h = rng.standard_normal((4, 5))
    _, ln_cache = fastbn.layernorm_forward(h, gamma, beta, {})
    rows = (np.empty(4), np.empty(4))
    cases = {
        "batchnorm 4x5 forward": (
            lambda: fastbn.batchnorm_forward(x, gamma, beta, param),
            lambda: kernels.cols_forward_train(x, gamma, beta, 1e-5, out, mean, invstd, var,
                                               running_mean, running_var, 0.9, 1)),
        "batchnorm 4x5 backward": (
            lambda: fastbn.batchnorm_backward(dout, cache),
            lambda: kernels.cols_backward(x, dout, cache.mean, cache.invstd, gamma, True, out,
                                          dgamma, dbeta, 1)),
        "layernorm 4x5 forward": (
            lambda: fastbn.layernorm_forward(h, gamma, beta, {}),
            lambda: kernels.rows_forward_train(h.reshape(4, 5, 1), gamma, beta, 1, 1e-5, True,
                                               out.reshape(4, 5, 1), *rows, 1)),
        "layernorm 4x5 backward": (
            lambda: fastbn.layernorm_backward(dout, ln_cache),
            lambda: kernels.rows_backward(h.reshape(4, 5, 1), dout.reshape(4, 5, 1),
                                          ln_cache.mean, ln_cache.invstd, gamma, 1, True,
                                          out.reshape(4, 5, 1), dgamma, dbeta, 1)),
    }
    print(f"{'call':26s} {'public':>9s} {'kernel':>9s} {'overhead':>9s}  (us, best of {REPEAT} x {NUMBER})")
    for name, (public, kernel) in cases.items():
        total, alone = best(public), best(kernel)
        print(f"{name:26s} {total:9.2f} {alone:9.2f} {total - alone:9.2f}")


if __name__ == "__main__":
    main()
