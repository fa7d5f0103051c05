"""A cs231n-sized batchnorm (200x500 float64): forward + backward as whole Python calls, fastbn
against PyTorch's F.batch_norm and autograd, best of 7 rounds of 200 calls, three times.

    python benchmarks/cs231n_vs_torch.py     (needs torch)
"""
import timeit

import numpy as np
import torch

import fastbn


def main():
    torch.set_num_threads(fastbn.get_num_threads())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 500))
    dout = rng.standard_normal((200, 500))
    gamma, beta, param = np.ones(500), np.zeros(500), {"mode": "train"}

    def fastbn_step():
        _, cache = fastbn.batchnorm_forward(x, gamma, beta, param)
        return fastbn.batchnorm_backward(dout, cache)

    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.ones(500, dtype=torch.float64, requires_grad=True)
    tb = torch.zeros(500, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(500, dtype=torch.float64), torch.ones(500, dtype=torch.float64)
    tdy = torch.from_numpy(dout)

    def torch_step():
        y = torch.nn.functional.batch_norm(tx, rm, rv, tw, tb, True, 0.1, 1e-5)
        return torch.autograd.grad(y, (tx, tw, tb), tdy)

    for _ in range(3):
        a = min(timeit.repeat(fastbn_step, number=200, repeat=7)) / 200 * 1e6
        t = min(timeit.repeat(torch_step, number=200, repeat=7)) / 200 * 1e6
        print(f"fastbn forward+backward {a:.1f} us, PyTorch {t:.1f} us, ratio {a / t:.2f}")


if __name__ == "__main__":
    main()
