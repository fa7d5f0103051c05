"""``python -m fastbn`` (also the ``fastbn-bench`` console script): check, then benchmark.

1. Checks fastbn against the NumPy reference on a small case of every operation and exits with
   status 1 if any result differs.
2. Times fastbn, the reference, PyTorch (when importable) and a memcpy yardstick on the benchmark
   cases, prints a table of times and ratios, and writes a PNG plot of the achieved bandwidth.

Examples
--------
A quick run (about half a minute), then the full one with a JSON record; the fused
batchnorm + ReLU cases alone::

    python -m fastbn --quick
    python -m fastbn --json results.json --plot fastbn-bench.png
    python -m fastbn --fused --no-plot
"""
import argparse
import json
import platform
import sys
import time

import numpy as np

import fastbn
from fastbn import _bench

DIRECTION_LABELS = {"forward": "fwd", "test": "test", "backward": "bwd"}


def _format_time(seconds):
    if seconds is None or not np.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"


def table(records):
    """The results as a text table: times, and ratios measured in the same run.

    ``/memcpy`` is fastbn's time over an OpenMP copy (same thread count) of x into a preallocated array (the
    bandwidth yardstick), ``ref/fastbn`` the reference's time over fastbn's (speed-up),
    ``/torch`` fastbn's time over PyTorch's, ``GB/s`` the least traffic of the call (x and the
    output, plus dout in the backward) over fastbn's time. ``read/memcpy`` is the time of a sweep
    that only reads x over the memcpy's: with r = read/memcpy, an algorithm that reads x twice and
    writes once needs about 1 + r memcpys (see the README's Benchmarks section).
    """
    header = ("case", "dir", "fastbn", "/memcpy", "reference", "ref/fastbn", "torch", "/torch",
              "torch/memcpy", "memcpy", "read/memcpy", "GB/s")
    rows = [header]
    for r in records:
        t = r["times"]
        fb, memcpy, ref, torch = t.get("fastbn"), t.get("memcpy"), t.get("reference"), t.get("torch")
        read = t.get("read")
        gbps = _bench.bytes_moved(r["case"], r["direction"]) / fb / 1e9
        rows.append((r["case"].name, DIRECTION_LABELS[r["direction"]], _format_time(fb),
                     _ratio(fb, memcpy), _format_time(ref), _ratio(ref, fb), _format_time(torch),
                     _ratio(fb, torch), _ratio(torch, memcpy), _format_time(memcpy),
                     _ratio(read, memcpy), f"{gbps:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(w) for cell, w in zip(row[2:], widths[2:])]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def fused_table(records):
    """The fused batchnorm + ReLU cases: the fused call's time over fastbn's batchnorm alone per
    direction (``fused/bn``), and the time of batchnorm followed by NumPy's ReLU over the fused
    call's, forward (train mode) and backward together (``bn+np.relu/fused``)."""
    by_case = {}
    for r in records:
        if r["case"].spec.relu:
            by_case.setdefault(r["case"], {})[r["direction"]] = r["times"]
    if not by_case:
        return ""
    lines = [f"{'fused case':46s} {'fwd fused/bn':>12s} {'test fused/bn':>13s} "
             f"{'bwd fused/bn':>12s} {'bn+np.relu/fused (fwd+bwd)':>27s}"]
    for case, t in by_case.items():
        ratio = {d: t[d]["fastbn"] / t[d]["batchnorm"] for d in t}
        numpy_relu = t["forward"]["batchnorm + np.relu"] + t["backward"]["batchnorm + np.relu"]
        fused = t["forward"]["fastbn"] + t["backward"]["fastbn"]
        lines.append(f"{case.name:46s} {ratio['forward']:12.2f} {ratio.get('test', np.nan):13.2f} "
                     f"{ratio['backward']:12.2f} {numpy_relu / fused:27.2f}")
    return "\n".join(lines)


def plot(records, path, threads):
    """Bar chart of fastbn's achieved GB/s per case and direction against the memcpy yardstick
    (all run on `threads` threads)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, achieved, yardstick, torch_gbps = [], [], [], []
    for r in records:
        t = r["times"]
        labels.append(f"{r['case'].name} {DIRECTION_LABELS[r['direction']]}")
        achieved.append(_bench.bytes_moved(r["case"], r["direction"]) / t["fastbn"] / 1e9)
        yardstick.append(2 * r["case"].nbytes / t["memcpy"] / 1e9 if "memcpy" in t else np.nan)
        torch_gbps.append(_bench.bytes_moved(r["case"], r["direction"]) / t["torch"] / 1e9
                          if "torch" in t else np.nan)
    y = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(labels) + 1.5))
    ax.barh(y, achieved, height=0.7, color="tab:blue", label="fastbn")
    if not np.all(np.isnan(torch_gbps)):
        ax.scatter(torch_gbps, y, marker="o", color="tab:orange", zorder=3, label="PyTorch")
    ax.scatter(yardstick, y, marker="|", s=200, color="black", zorder=3, label=f"memcpy of x ({threads} threads)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.tick_params(axis="x", which="minor", labelsize=6)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s, log scale (least traffic: read x [and dout], write the output)")
    ax.set_title(f"fastbn {fastbn.__version__}: achieved bandwidth, {threads} threads")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _to_json(records, threads):
    return {
        "fastbn": fastbn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": threads,
        "results": [
            {"case": r["case"].id, "op": r["case"].op, "shape": list(r["case"].shape),
             "dtype": r["case"].dtype, "direction": r["direction"], "bytes": _bench.bytes_moved(
                 r["case"], r["direction"]), "seconds": r["times"]}
            for r in records
        ],
    }


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m fastbn",
        description="Check fastbn against its NumPy reference, then benchmark it against the "
                    "reference, PyTorch (if installed) and a memcpy of the same array.")
    parser.add_argument("--quick", action="store_true",
                        help="one large case per kernel family and the cs231n-sized cases (< 30 s)")
    parser.add_argument("--plot", default="fastbn-bench.png", metavar="PATH",
                        help="where to write the PNG plot (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="do not write a plot")
    parser.add_argument("--json", metavar="PATH", help="also write the timings as JSON")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for fastbn, PyTorch and the memcpy yardstick "
                             "(default: fastbn.get_num_threads())")
    parser.add_argument("--repeat", type=int, default=None, metavar="R",
                        help="timed rounds per call; the median is reported (default 7, quick 5)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    parser.add_argument("--fused", action="store_true",
                        help="only the fused batchnorm + ReLU cases, against batchnorm alone and "
                             "batchnorm followed by NumPy's ReLU")
    parser.add_argument("--shared-core", action="store_true",
                        help="instead of the comparison: fastbn on 1 and on 2 threads for every case "
                             "while another process keeps one core busy (2 threads / 1 thread)")
    return parser


def shared_core_table(records):
    """The --shared-core results: 1- and 2-thread times and their ratio per case and direction."""
    lines = [f"{'case':46s} {'dir':4s} {'1 thread':>10s} {'2 threads':>10s} {'2t/1t':>6s}"]
    for r in records:
        t1, t2 = r["times"]["1 thread"], r["times"]["2 threads"]
        lines.append(f"{r['case'].name:46s} {DIRECTION_LABELS[r['direction']]:4s} "
                     f"{_format_time(t1):>10s} {_format_time(t2):>10s} {t2 / t1:6.2f}")
    return "\n".join(lines)


def main(argv=None, cases=None):
    """Run the check and the benchmark; return the exit status (0 on success).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).
    cases : sequence of fastbn._bench.Case, optional
        Benchmark these cases instead of the default lists (used by the tests).
    """
    args = _parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"--threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch = None if args.no_torch else _bench.torch_module()
    available = fastbn.get_num_threads()  # what OpenMP allows; --threads can only lower it
    threads = min(args.threads, available) if args.threads else available
    print(f"fastbn {fastbn.__version__} | CPU: {_bench.cpu_model()} | "
          f"backends: {', '.join(fastbn.available_backends())} | "
          f"threads: {threads} | numpy {np.__version__} | "
          f"PyTorch: {torch.__version__ if torch is not None else 'not installed (skipped)'}")

    print("Checking fastbn against the NumPy reference:", flush=True)
    failures = _bench.check()
    failed = {case for case, _ in failures}
    for case in _bench.CHECK_CASES:
        print(f"  {case.name:40s} {'FAILED' if case in failed else 'OK'}", flush=True)
    if failures:
        for case, problem in failures:
            print(f"fastbn CHECK FAILED: {case.name}: {problem}", file=sys.stderr)
        return 1
    if "cython" not in fastbn.available_backends():
        print("The compiled kernels are not built: only the NumPy backend runs, nothing to "
              "benchmark. Reinstall with `pip install .`.", file=sys.stderr)
        return 1

    if args.shared_core:
        cases = cases or (_bench.HEADLINE_CASES if args.quick else _bench.LARGE_CASES)
        print(f"Timing {len(cases)} cases on 1 and 2 threads beside a busy process:", flush=True)
        records = _bench.thread_scaling(cases, repeat=args.repeat or 5,
                                        progress=lambda message: print(f"  {message}", flush=True))
        print(shared_core_table(records))
        return 0
    if cases is None and args.fused:
        cases = _bench.FUSED_CASES
    if cases is None:
        cases = _bench.QUICK_CASES if args.quick else _bench.LARGE_CASES + _bench.SMALL_CASES
    repeat = args.repeat or (5 if args.quick else 7)
    print(f"Timing {len(cases)} cases (median of {repeat} interleaved rounds each):", flush=True)
    start = time.perf_counter()
    records = _bench.run(cases, repeat=repeat, threads=threads, torch=torch,
                         progress=lambda message: print(f"  {message}", flush=True))
    print(f"done in {time.perf_counter() - start:.0f} s\n")
    print(table(records))
    print(f"\n/memcpy: fastbn time / a {threads}-thread copy of x into a preallocated array; fastbn also "
          "writes into preallocated out= arrays. ref/fastbn: speed-up over the NumPy reference. "
          "/torch: fastbn time / PyTorch time (PyTorch allocates its outputs). read/memcpy: a "
          "sweep that only reads x / the memcpy.")
    fused = fused_table(records)
    if fused:
        print(f"\n{fused}\n(fused: fastbn's batchnorm_relu call; bn: fastbn's batchnorm alone; "
              "bn+np.relu: batchnorm then np.maximum(out, 0), and dout * (out > 0) into its "
              "backward; all in the same interleaved rounds.)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(_to_json(records, threads), f, indent=1)
        print(f"wrote {args.json}")
    if not args.no_plot:
        try:
            plot(records, args.plot, threads)
        except ImportError:
            print("matplotlib is not installed: no plot (pip install 'fastbn[plot]')")
        else:
            print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
