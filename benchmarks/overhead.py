"""Fixed cost per call: a public call on a tiny batch against its compiled kernel alone.

For a 4x5 batchnorm (and the other ops on tiny inputs) this times the plain public call
(validation, dispatch, output allocation, cache) and the compiled kernel function it ends in,
called directly with arguments prepared once; the difference is the Python-side overhead.
Both are the best of several rounds of many calls, measured in the same run.

    python benchmarks/overhead.py
"""
import timeit

import numpy as np

import fastbn
from fastbn import _backends

NUMBER = 2000
REPEAT = 9


def best(call):
    """Best time per call, in microseconds."""
    return min(timeit.repeat(call, number=NUMBER, repeat=REPEAT)) / NUMBER * 1e6


def main():
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
