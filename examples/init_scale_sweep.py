"""How the scale of the initial weights matters, with and without batchnorm.

A 6-layer fully connected ReLU network (100 units per layer) on scikit-learn's digits, trained
for a few epochs from weights drawn as ``scale * N(0, 1)`` for scales from 1e-4 to 10. Without
batchnorm only a narrow band of scales trains (the signal vanishes or explodes through the layers);
with ``fastbn.batchnorm_forward`` after every affine layer almost every scale does. Saves final
validation accuracy against the scale, and prints the time per epoch with fastbn's compiled kernels
and with ``backend="numpy"``.

    python examples/init_scale_sweep.py [--quick] [--out PATH]
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _net import Net, load_digits, parser, report_times, save, seconds_per_epoch, train  # noqa: E402

HIDDEN = [100] * 6
LEARNING_RATE = 0.02
BATCH_SIZE = 64


def main(argv=None):
    args = parser(__doc__.splitlines()[0], "init_scale_sweep.png").parse_args(argv)
    scales = np.logspace(-4, 1, 3 if args.quick else 11)
    epochs = 2 if args.quick else 8
    data = load_digits()
    accuracy = {None: [], "batchnorm": []}
    for scale in scales:
        for norm in accuracy:
            net = Net(64, HIDDEN, 10, norm=norm, weight_scale=scale)
            with np.errstate(over="ignore", invalid="ignore"):
                history = train(net, data, epochs, BATCH_SIZE, LEARNING_RATE)
            accuracy[norm].append(history["val_acc"][-1])
        print(f"scale {scale:8.1e}: validation accuracy {accuracy[None][-1]:6.1%} without, "
              f"{accuracy['batchnorm'][-1]:6.1%} with batchnorm")

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogx(scales, accuracy[None], "o-", color="tab:red", label="no normalization")
    ax.semilogx(scales, accuracy["batchnorm"], "o-", color="tab:blue", label="batchnorm")
    ax.axhline(0.1, color="gray", linestyle="--", label="chance")
    ax.set(xlabel="weight initialization scale (standard deviation)",
           ylabel=f"validation accuracy after {epochs} epochs", ylim=(0, 1),
           title=f"{len(HIDDEN)} layers of {HIDDEN[0]}, SGD momentum, learning rate {LEARNING_RATE}")
    ax.legend()
    save(fig, args.out)

    times = seconds_per_epoch(
        lambda backend: Net(64, HIDDEN, 10, norm="batchnorm", weight_scale=0.1, backend=backend),
        data, BATCH_SIZE, LEARNING_RATE, epochs=1 if args.quick else 3)
    report_times(times, f"batchnorm network, batch {BATCH_SIZE}")
    return scales, accuracy


if __name__ == "__main__":
    main()
