"""Batchnorm against layernorm as the batch gets small.

A 6-layer fully connected ReLU network (100 units per layer, He initialization) on
scikit-learn's digits, trained for a few epochs with batches of 2 to 64 samples. Batchnorm's
statistics come from the batch: with very few samples they are noisy, and the running averages
used at test time do not match what training saw. Layernorm normalizes each sample on its own and
does not depend on the batch size. Saves final validation accuracy against the batch size, and
prints the time per epoch of both networks with fastbn's compiled kernels and with
``backend="numpy"``.

    python examples/batch_size_sweep.py [--quick] [--out PATH]
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _net import Net, load_digits, parser, report_times, save, seconds_per_epoch, train  # noqa: E402

HIDDEN = [100] * 6
WEIGHT_SCALE = np.sqrt(2 / 100)  # He initialization
LEARNING_RATE = 0.01
NORMS = (("batchnorm", "tab:blue"), ("layernorm", "tab:green"), (None, "tab:red"))


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "batch_size_sweep.png").parse_args(argv)
    batch_sizes = (2, 8, 32) if args.quick else (2, 3, 4, 8, 16, 64)
    epochs = 1 if args.quick else 4
    data = load_digits()
    accuracy = {norm: [] for norm, _ in NORMS}
    for batch_size in batch_sizes:
        for norm in accuracy:
            net = Net(64, HIDDEN, 10, norm=norm, weight_scale=WEIGHT_SCALE)
            history = train(net, data, epochs, batch_size, LEARNING_RATE)
            accuracy[norm].append(history["val_acc"][-1])
        print(f"batch {batch_size:3d}: validation accuracy " + ", ".join(
            f"{norm or 'none'} {accuracy[norm][-1]:6.1%}" for norm, _ in NORMS))

    fig, ax = plt.subplots(figsize=(7, 4))
    for norm, color in NORMS:
        ax.semilogx(batch_sizes, accuracy[norm], "o-", color=color, label=norm or "no normalization")
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.minorticks_off()
    ax.set(xlabel="batch size", ylabel=f"validation accuracy after {epochs} epochs", ylim=(0, 1),
           title=f"{len(HIDDEN)} layers of {HIDDEN[0]}, SGD momentum, learning rate {LEARNING_RATE}")
    ax.legend()
    save(fig, args.out)

    for norm in ("batchnorm", "layernorm"):
        times = seconds_per_epoch(
            lambda backend: Net(64, HIDDEN, 10, norm=norm, weight_scale=WEIGHT_SCALE,
                                backend=backend),
            data, 8, LEARNING_RATE, epochs=1 if args.quick else 2)
        report_times(times, f"{norm} network, batch 8")
    return batch_sizes, accuracy


if __name__ == "__main__":
    main()
