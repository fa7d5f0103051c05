"""Batchnorm rescues a deep network from a bad initialization and a high learning rate.

An 8-layer fully connected ReLU network (100 units per layer) on scikit-learn's digits, weights
drawn with a standard deviation of 0.05 (far below the 0.14 of He initialization, so the signal
fades layer by layer) and trained by SGD with momentum at a learning rate of 0.5. Without
batchnorm it stays at chance (10%); with ``fastbn.batchnorm_forward`` after every affine layer it
learns. Saves the loss and accuracy curves, and prints the time per epoch of the batchnorm network
with fastbn's compiled kernels and with ``backend="numpy"``.

    python examples/deep_network_bad_init.py [--quick] [--out PATH]
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _net import Net, load_digits, parser, report_times, save, seconds_per_epoch, train  # noqa: E402

HIDDEN = [100] * 8
WEIGHT_SCALE = 0.05
LEARNING_RATE = 0.5
BATCH_SIZE = 64


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "deep_network_bad_init.png").parse_args(argv)
    epochs = 3 if args.quick else 20
    data = load_digits()
    results = {}
    for norm in (None, "batchnorm"):
        net = Net(64, HIDDEN, 10, norm=norm, weight_scale=WEIGHT_SCALE)
        with np.errstate(over="ignore", invalid="ignore"):
            results[norm] = train(net, data, epochs, BATCH_SIZE, LEARNING_RATE)
        print(f"{norm or 'no normalization':16s} validation accuracy {results[norm]['val_acc'][-1]:.1%} "
              f"after {epochs} epochs")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for norm, style in ((None, "tab:red"), ("batchnorm", "tab:blue")):
        name = norm or "no normalization"
        left.plot(results[norm]["loss"], color=style, alpha=0.8, label=name)
        right.plot(range(1, epochs + 1), results[norm]["val_acc"], "o-", color=style, label=name)
    left.set(title="training loss", xlabel="iteration", ylabel="softmax cross-entropy")
    right.axhline(0.1, color="gray", linestyle="--", label="chance")
    right.set(title="validation accuracy", xlabel="epoch", ylim=(0, 1))
    right.legend()
    fig.suptitle(f"{len(HIDDEN)} layers of {HIDDEN[0]}, weights ~ {WEIGHT_SCALE} N(0, 1), "
                 f"SGD momentum, learning rate {LEARNING_RATE}")
    save(fig, args.out)

    times = seconds_per_epoch(
        lambda backend: Net(64, HIDDEN, 10, norm="batchnorm", weight_scale=WEIGHT_SCALE,
                            backend=backend),
        data, BATCH_SIZE, LEARNING_RATE, epochs=1 if args.quick else 3)
    report_times(times, f"batchnorm network, batch {BATCH_SIZE}")
    return results


if __name__ == "__main__":
    main()
