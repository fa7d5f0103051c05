"""The small network code the examples share: a fully connected ReLU network in NumPy whose
normalization layers are fastbn's, trained by SGD with momentum on scikit-learn's bundled digits.

Not part of the library: it is what a user writes around fastbn (cs231n's ``FullyConnectedNet``
in a page). Every hidden layer is ``affine -> [batchnorm | layernorm] -> ReLU``; the last is an
affine layer into a softmax cross-entropy loss.
"""
import argparse
import time

import numpy as np

import fastbn

NORMS = (None, "batchnorm", "layernorm")


def load_digits(seed=0, val_fraction=0.25):
    """The 8x8 digits bundled with scikit-learn (1,797 images, 10 classes; no download), split
    into training and validation sets, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    X = (digits.data / 16.0).astype(np.float64)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(X))
    n_val = int(len(X) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return X[train], y[train], X[val], y[val]


class Net:
    """A fully connected network: `hidden` widths, weights drawn as ``weight_scale * N(0, 1)``.

    `norm` is None, ``'batchnorm'`` or ``'layernorm'``; `backend` is passed to every fastbn call.
    """

    def __init__(self, n_in, hidden, n_out, norm=None, weight_scale=1e-2, seed=0, backend="auto"):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        rng = np.random.default_rng(seed)
        sizes = [n_in, *hidden, n_out]
        self.norm, self.backend, self.n_hidden = norm, backend, len(hidden)
        self.params = {}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            self.params[f"W{i}"] = weight_scale * rng.standard_normal((a, b))
            self.params[f"b{i}"] = np.zeros(b)
            if norm is not None and i < self.n_hidden:
                self.params[f"gamma{i}"] = np.ones(b)
                self.params[f"beta{i}"] = np.zeros(b)
        self.bn_params = [{"mode": "train"} for _ in hidden]

    def _norm_forward(self, i, h, mode):
        gamma, beta = self.params[f"gamma{i}"], self.params[f"beta{i}"]
        if self.norm == "batchnorm":
            self.bn_params[i]["mode"] = mode
            return fastbn.batchnorm_forward(h, gamma, beta, self.bn_params[i], backend=self.backend)
        return fastbn.layernorm_forward(h, gamma, beta, {}, backend=self.backend)

    def _norm_backward(self, dh, cache):
        if self.norm == "batchnorm":
            return fastbn.batchnorm_backward(dh, cache, backend=self.backend)
        return fastbn.layernorm_backward(dh, cache, backend=self.backend)

    def scores(self, X, mode="test"):
        """Class scores; ``mode='train'`` also returns what the backward needs."""
        h, caches = X, []
        for i in range(self.n_hidden):
            a = h @ self.params[f"W{i}"] + self.params[f"b{i}"]
            norm_cache = None
            if self.norm is not None:
                a, norm_cache = self._norm_forward(i, a, mode)
            caches.append((h, a, norm_cache))
            h = np.maximum(a, 0.0)
        last = self.n_hidden
        return h @ self.params[f"W{last}"] + self.params[f"b{last}"], (caches, h)

    def loss(self, X, y):
        """Softmax cross-entropy loss of a training batch and the gradient of every parameter."""
        scores, (caches, h) = self.scores(X, mode="train")
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        n = len(X)
        loss = -log_probs[np.arange(n), y].mean()
        dscores = np.exp(log_probs)
        dscores[np.arange(n), y] -= 1.0
        dscores /= n
        grads = {}
        last = self.n_hidden
        grads[f"W{last}"] = h.T @ dscores
        grads[f"b{last}"] = dscores.sum(axis=0)
        dh = dscores @ self.params[f"W{last}"].T
        for i in reversed(range(self.n_hidden)):
            h_in, a, norm_cache = caches[i]
            da = dh * (a > 0)
            if norm_cache is not None:
                da, grads[f"gamma{i}"], grads[f"beta{i}"] = self._norm_backward(da, norm_cache)
            grads[f"W{i}"] = h_in.T @ da
            grads[f"b{i}"] = da.sum(axis=0)
            dh = da @ self.params[f"W{i}"].T
        return loss, grads

    def accuracy(self, X, y):
        scores, _ = self.scores(X, mode="test")
        return float(np.mean(scores.argmax(axis=1) == y))


class SGDMomentum:
    """Stochastic gradient descent with momentum, one velocity per parameter."""

    def __init__(self, learning_rate, momentum=0.9):
        self.learning_rate, self.momentum, self.velocity = learning_rate, momentum, {}

    def step(self, params, grads):
        for name, grad in grads.items():
            v = self.momentum * self.velocity.get(name, 0.0) - self.learning_rate * grad
            self.velocity[name] = v
            params[name] += v


def train(net, data, epochs, batch_size, learning_rate, seed=0):
    """Train `net` on `data` (from :func:`load_digits`); return the history: loss per iteration,
    training and validation accuracy per epoch, and the seconds each epoch took.

    NumPy's BLAS runs on one thread meanwhile: this network's matrix products are far too small
    for threads, which only make each step wait for a second core (measured in
    docs/performance.md, "The examples").
    """
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    with threadpool_limits(1, user_api="blas"):
        return _train(net, data, epochs, batch_size, learning_rate, seed)


def _train(net, data, epochs, batch_size, learning_rate, seed):
    X_train, y_train, X_val, y_val = data
    rng = np.random.default_rng(seed)
    optimizer = SGDMomentum(learning_rate)
    history = {"loss": [], "train_acc": [], "val_acc": [], "epoch_seconds": []}
    for _ in range(epochs):
        start = time.perf_counter()
        order = rng.permutation(len(X_train))
        for k in range(0, len(order) - batch_size + 1, batch_size):  # whole batches only
            batch = order[k:k + batch_size]
            loss, grads = net.loss(X_train[batch], y_train[batch])
            optimizer.step(net.params, grads)
            history["loss"].append(float(loss))
        history["epoch_seconds"].append(time.perf_counter() - start)
        history["train_acc"].append(net.accuracy(X_train, y_train))
        history["val_acc"].append(net.accuracy(X_val, y_val))
    return history


def seconds_per_epoch(make_net, data, batch_size, learning_rate, epochs=2):
    """Median seconds per training epoch of ``make_net(backend)``, for the compiled kernels and
    for ``backend='numpy'`` (fastbn's NumPy reference), in that order."""
    times = {}
    for backend in ("cython", "numpy"):
        if backend not in fastbn.available_backends():
            continue
        history = train(make_net(backend), data, epochs, batch_size, learning_rate)
        times[backend] = float(np.median(history["epoch_seconds"]))
    return times


def report_times(times, what):
    """Print the time per epoch of each backend."""
    parts = [f"{'compiled' if b == 'cython' else 'backend=numpy'} {t * 1e3:.1f} ms"
             for b, t in times.items()]
    ratio = (f" ({times['numpy'] / times['cython']:.2f}x)" if len(times) == 2 else
             " (compiled kernels not built)")
    print(f"time per epoch, {what}: " + ", ".join(parts) + ratio)


def parser(description, default_out):
    """The command line every example takes: --quick (the reduced run CI makes) and --out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="a reduced run (fewer epochs and settings), for CI")
    p.add_argument("--out", default=default_out, help="where to save the plot (default: %(default)s)")
    return p


def save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
