"""Synchronized batchnorm on MPI ranks trains the same network as one process on the whole batch.

    mpiexec -n 2 python examples/distributed_digits.py [--steps 100]

The network, in float64 NumPy: 64 pixels of an 8x8 digit -> Linear(64, 64) -> batchnorm -> ReLU
-> Linear(64, 10) -> softmax cross-entropy, trained by full-batch gradient descent on
scikit-learn's bundled digits (no download). Each rank holds a contiguous part of the 1437
training images (uneven: 1437 is odd), normalises it with the statistics of the whole batch
(fastbn.distributed) and adds its weight gradients to the other ranks' in rank order. Rank 0 then
trains the same network in one process on the whole batch (fastbn's local functions) and checks
that the two loss curves agree to 1e-10; the script exits with status 1 if they do not.
"""
import argparse
import sys

import numpy as np
from mpi4py import MPI
from sklearn.datasets import load_digits

import fastbn
import fastbn.distributed

TOLERANCE = 1e-10
LEARNING_RATE = 0.5
N_TRAIN = 1437


def load():
    """Training images scaled to [0, 1], their labels, and the held-out rest."""
    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    return x[:N_TRAIN], digits.target[:N_TRAIN], x[N_TRAIN:], digits.target[N_TRAIN:]


def initial_parameters():
    rng = np.random.default_rng(0)
    return {"W1": rng.normal(0.0, np.sqrt(2.0 / 64), size=(64, 64)), "gamma": np.ones(64),
            "beta": np.zeros(64), "W2": rng.normal(0.0, np.sqrt(1.0 / 64), size=(64, 10)),
            "b2": np.zeros(10)}


def step(params, bn_param, x, labels, n_total, batchnorm, add_up):
    """Loss of the whole batch and gradients of the parameters; x, labels: this process's rows;
    batchnorm: (forward, backward) over the whole batch; add_up: the sum over all processes."""
    bn_forward, bn_backward = batchnorm
    h = x @ params["W1"]
    z, cache = bn_forward(h, params["gamma"], params["beta"], bn_param)
    a = np.maximum(z, 0.0)
    logits = a @ params["W2"] + params["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    rows = np.arange(len(labels))
    loss = add_up(-log_p[rows, labels].sum()) / n_total
    dlogits = np.exp(log_p)
    dlogits[rows, labels] -= 1.0
    dlogits /= n_total
    dz = (dlogits @ params["W2"].T) * (z > 0)
    dh, dgamma, dbeta = bn_backward(dz, cache)  # dgamma, dbeta: the whole batch's already
    grads = {"W1": add_up(x.T @ dh), "gamma": dgamma, "beta": dbeta,
             "W2": add_up(a.T @ dlogits), "b2": add_up(dlogits.sum(axis=0))}
    return loss, grads


def train(x, labels, n_total, batchnorm, add_up, steps):
    """The loss curve of `steps` steps of gradient descent, the parameters and bn_param."""
    params, bn_param, losses = initial_parameters(), {"mode": "train"}, []
    for _ in range(steps):
        loss, grads = step(params, bn_param, x, labels, n_total, batchnorm, add_up)
        losses.append(loss)
        for name, grad in grads.items():
            params[name] = params[name] - LEARNING_RATE * grad
    return np.array(losses), params, bn_param


def accuracy(params, bn_param, x, labels):
    """Held-out accuracy, batchnorm in test mode (the running statistics)."""
    z, _ = fastbn.batchnorm_forward(x @ params["W1"], params["gamma"], params["beta"],
                                    dict(bn_param, mode="test"))
    logits = np.maximum(z, 0.0) @ params["W2"] + params["b2"]
    return float(np.mean(logits.argmax(axis=1) == labels))


def main(steps):
    comm = MPI.COMM_WORLD
    x, labels, x_test, labels_test = load()
    mine = np.array_split(np.arange(N_TRAIN), comm.size)[comm.rank]

    def add_up(value):  # the sum over the ranks, in rank order: the same bits on every rank
        total = None
        for part in comm.allgather(value):
            total = part if total is None else total + part
        return total

    synchronized = (
        lambda *args: fastbn.distributed.batchnorm_forward(*args, comm),
        lambda dout, cache: fastbn.distributed.batchnorm_backward(dout, cache, comm),
    )
    losses, params, bn_param = train(x[mine], labels[mine], N_TRAIN, synchronized, add_up, steps)
    ok = True
    if comm.rank == 0:
        local = (fastbn.batchnorm_forward, fastbn.batchnorm_backward)
        single, params_1, bn_param_1 = train(x, labels, N_TRAIN, local, lambda v: v, steps)
        difference = float(np.max(np.abs(losses - single)))
        ok = difference <= TOLERANCE
        split = [len(part) for part in np.array_split(np.arange(N_TRAIN), comm.size)]
        print(f"{comm.size} ranks (rows per rank {split}) against one process on all {N_TRAIN}, "
              f"{steps} steps of full-batch gradient descent")
        print(" step   loss on ranks       loss in one process")
        for i in sorted({0, 1, steps // 4, steps // 2, steps - 1} & set(range(steps))):
            print(f"{i:5d}   {losses[i]:.15f}   {single[i]:.15f}")
        print(f"largest difference of the loss curves: {difference:.3g} "
              f"({'agree' if ok else 'DISAGREE'}: tolerance {TOLERANCE:g})")
        print(f"held-out accuracy ({len(labels_test)} images): ranks "
              f"{accuracy(params, bn_param, x_test, labels_test):.3f}, one process "
              f"{accuracy(params_1, bn_param_1, x_test, labels_test):.3f}")
    if not comm.bcast(ok, root=0):
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="gradient descent steps (100)")
    main(parser.parse_args().steps)
