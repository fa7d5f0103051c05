"""A cs231n-sized batchnorm (200x500 float64): forward + backward as whole Python calls, fastbn
against PyTorch's F.batch_norm and autograd, best of 7 rounds of 200 calls; three rounds, each
side in its own fresh process, alternating.

Each side runs in a process of its own because both load the system's libgomp: importing fastbn
first gives PyTorch's OpenMP threads fastbn's short spin-wait (GOMP_SPINCOUNT, see
docs/performance.md), which made PyTorch's step 1.5x slower here; alone, each has its defaults.

    python benchmarks/cs231n_vs_torch.py     (needs torch)
"""
import subprocess
import sys

SIDE = r"""
import sys, timeit
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((200, 500))
dout = rng.standard_normal((200, 500))
if sys.argv[1] == "fastbn":
    import fastbn
    gamma, beta, param = np.ones(500), np.zeros(500), {"mode": "train"}
    def step():
        _, cache = fastbn.batchnorm_forward(x, gamma, beta, param)
        return fastbn.batchnorm_backward(dout, cache)
else:
    import torch
    torch.set_num_threads(int(sys.argv[2]))
    tx = torch.from_numpy(x).requires_grad_(True)
    tw = torch.ones(500, dtype=torch.float64, requires_grad=True)
    tb = torch.zeros(500, dtype=torch.float64, requires_grad=True)
    rm, rv = torch.zeros(500, dtype=torch.float64), torch.ones(500, dtype=torch.float64)
    tdy = torch.from_numpy(dout)
    def step():
        y = torch.nn.functional.batch_norm(tx, rm, rv, tw, tb, True, 0.1, 1e-5)
        return torch.autograd.grad(y, (tx, tw, tb), tdy)
print(min(timeit.repeat(step, number=200, repeat=7)) / 200 * 1e6)
"""


def _time(side, threads):
    out = subprocess.run([sys.executable, "-c", SIDE, side, str(threads)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main():
    import fastbn
    threads = fastbn.get_num_threads()
    for _ in range(3):
        a = _time("fastbn", threads)
        t = _time("torch", threads)
        print(f"fastbn forward+backward {a:.1f} us, PyTorch {t:.1f} us ({threads} threads), ratio {a / t:.2f}")


if __name__ == "__main__":
    main()
