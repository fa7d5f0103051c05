"""``python -m fastbn`` (also the ``fastbn-bench`` console script): check, then benchmark.

1. Checks fastbn against the NumPy reference on a small case of every operation and exits with
   status 1 if any result differs.
2. Times fastbn, the reference, PyTorch (when importable) and a memcpy yardstick on the benchmark
   cases, prints a table (at most 100 columns) of times and of each time over the memcpy's,
   flagging rows whose yardstick is implausible, and writes a PNG plot of those ratios.

Examples
--------
A quick run (about half a minute), then the full one with a JSON record; the fused
batchnorm + ReLU cases alone::

    python -m fastbn --quick
    python -m fastbn --json results.json --plot fastbn-bench.png
    python -m fastbn --fused --no-plot
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np

import fastbn
from fastbn import _bench

DIRECTION_LABELS = _bench.DIRECTION_LABELS


def _format_time(seconds):
    if seconds is None or not np.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _ratio(a, b):
    if a is None or b is None:
        return "-"
    value = a / b
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


TABLE_WIDTH = 100  # the terminal table fits in this many columns


def table(records):
    """The results as a text table of at most :data:`TABLE_WIDTH` columns: times, and each
    implementation's time over the memcpy's, all measured in the same run.

    ``memcpy`` is an OpenMP copy (same thread count) of x into a preallocated array, the
    bandwidth yardstick; the ratios ``fastbn`` (the plain call: a new output each call, the last
    one dropped), ``out=`` (fastbn writing into a preallocated ``out=`` array), ``NumPy`` (the
    reference), ``torch`` and ``read`` (a sweep that only reads x) are times over the memcpy's:
    lower is better, and a forward cannot go below about 1. A row whose yardstick is implausible is marked ``!`` with the codes
    of :func:`fastbn._bench.yardstick_warnings`, explained under the table.
    """
    header = ("case", "dir", "fastbn", "memcpy", "fastbn", "out=", "NumPy", "torch", "read", "")
    rows, seen = [], set()
    for r in records:
        t = r["times"]
        fb, memcpy = t.get("fastbn"), t.get("memcpy")
        problems = _bench.yardstick_warnings(r, records)
        seen.update(problems)
        rows.append((r["case"].label, DIRECTION_LABELS[r["direction"]], _format_time(fb),
                     _format_time(memcpy), _ratio(fb, memcpy), _ratio(t.get("fastbn out="), memcpy),
                     _ratio(t.get("reference"), memcpy),
                     _ratio(t.get("torch"), memcpy), _ratio(t.get("read"), memcpy),
                     "!" + "".join(problems) if problems else ""))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(w) for cell, w in zip(row[2:-1], widths[2:-1])]
        return "  ".join(cells + [row[-1]]).rstrip()

    ratios_at = len(line(header[:4] + ("",))) + 2
    title = "time".rjust(ratios_at - 2 - widths[3] // 2).ljust(ratios_at) + "time / memcpy of x"
    lines = [title, line(header)]
    lines.append("-" * max(len(text) for text in lines))
    lines += [line(row) for row in rows]
    if seen:
        lines.append("Implausible yardstick (this row's ratios are unreliable; the machine was busy):")
        lines += [f"  !{code}  {text}" for code, text in _bench.YARDSTICK_PROBLEMS.items()
                  if code in seen]
    return "\n".join(lines)


def _panels(records):
    """Large arrays and the small (cache-sized, cs231n) ones in separate panels: their ratios
    are of different sizes."""
    large = [r for r in records if r["case"].nbytes >= SMALL_BYTES]
    small = [r for r in records if r["case"].nbytes < SMALL_BYTES]
    return [(title, rs) for title, rs in (("large arrays", large), ("small arrays (in cache)", small))
            if rs]


SMALL_BYTES = 8 << 20  # arrays below this stay in the last-level cache of most machines


def fused_table(records):
    """The fused batchnorm + ReLU cases, all calls writing into ``out=`` arrays: the fused call's
    time over fastbn's batchnorm alone per direction (``fused/bn``), and the time of batchnorm
    followed by NumPy's ReLU over the fused call's, forward (train mode) and backward together
    (``bn+np.relu/fused``)."""
    by_case = {}
    for r in records:
        if r["case"].spec.relu:
            by_case.setdefault(r["case"], {})[r["direction"]] = r["times"]
    if not by_case:
        return ""
    width = max(len("fused case"), *(len(case.name) for case in by_case))
    lines = [f"{'fused case':{width}s} {'fused/bn fwd':>12s} {'test':>5s} {'bwd':>5s} "
             f"{'bn+np.relu/fused fwd+bwd':>24s}"]
    for case, t in by_case.items():
        ratio = {d: t[d]["fastbn out="] / t[d]["batchnorm"] for d in t}  # both into out= arrays
        numpy_relu = t["forward"]["batchnorm + np.relu"] + t["backward"]["batchnorm + np.relu"]
        fused = t["forward"]["fastbn out="] + t["backward"]["fastbn out="]
        lines.append(f"{case.name:{width}s} {ratio['forward']:12.2f} {ratio.get('test', np.nan):5.2f} "
                     f"{ratio['backward']:5.2f} {numpy_relu / fused:24.2f}")
    return "\n".join(lines)


def plot(records, path, threads):
    """Horizontal bars of each implementation's time over the memcpy's (linear axis, lower is
    better) per case and direction, with the memcpy at 1; bars beyond the axis are cut and
    labelled with their value. Rows whose yardstick is implausible are marked in red. Returns the
    labels of the marked rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contenders = [("fastbn", "fastbn", "tab:blue"), ("torch", "PyTorch", "tab:orange"),
                  ("reference", "NumPy reference", "tab:gray")]
    present = [c for c in contenders if any(c[0] in r["times"] for r in records)]
    panels = _panels(records)
    heights = [len(rs) for _, rs in panels]
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(8.5, 0.27 * sum(heights) + 1.1 * len(panels) + 1.0),
                             gridspec_kw={"height_ratios": heights})
    flagged = []
    bar = 0.8 / len(present)
    for ax, (title, rs) in zip(axes[:, 0], panels):
        labels, ratios = [], {key: [] for key, _, _ in present}
        for r in rs:
            label = f"{r['case'].label} {DIRECTION_LABELS[r['direction']]}"
            if _bench.yardstick_warnings(r, records):
                flagged.append(label)
                label = "(!) " + label
            labels.append(label)
            memcpy = r["times"].get("memcpy", np.nan)
            for key, _, _ in present:
                ratios[key].append(r["times"].get(key, np.nan) / memcpy)
        limit = max(1.5 * np.nanmax(ratios["fastbn"] + [1.0]), 3.0)  # fastbn's bars in full
        y = np.arange(len(rs))
        for k, (key, name, color) in enumerate(present):
            values = np.array(ratios[key])
            offset = (k - (len(present) - 1) / 2) * bar
            ax.barh(y + offset, np.minimum(values, limit), height=bar, color=color, label=name)
            for yi, v in zip(y + offset, values):
                if np.isfinite(v) and v > limit:
                    ax.text(limit, yi, f"{v:.1f}x " if v < 10 else f"{v:.0f}x ", ha="right", va="center", fontsize=6,
                            color="white", fontweight="bold")
        ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_xlim(0, limit)
        ax.set_yticks(y, labels, fontsize=7)
        for tick, label in zip(ax.get_yticklabels(), labels):
            if label.startswith("(!)"):
                tick.set_color("tab:red")
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xlabel("time / memcpy of x  (lower is better; dashed line: the memcpy)", fontsize=8)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=len(present), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.45 / fig.get_figheight()))
    fig.suptitle(f"fastbn {fastbn.__version__} vs a memcpy of x on {threads} threads "
                 "(cut bars: value at their end)", fontsize=10)
    if flagged:
        fig.text(0.01, 0.005, "(!) implausible yardstick (memcpy over 2x its fastest round or a larger "
                 "copy's time per byte, or a read slower than the copy): ratios unreliable",
                 fontsize=7, color="tab:red")
    fig.tight_layout(rect=(0, 0.15 / fig.get_figheight(), 1, 1 - 0.6 / fig.get_figheight()))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return flagged


def _to_json(records, threads, repeat, torch, openmp):
    return {
        "fastbn": fastbn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": _bench.cpu_model(),
        "openmp": openmp,
        "torch": torch.__version__ if torch is not None else None,
        "threads": threads,
        "repeat": repeat,
        "results": [
            {"case": r["case"].id, "op": r["case"].op, "shape": list(r["case"].shape),
             "dtype": r["case"].dtype, "direction": r["direction"], "bytes": _bench.bytes_moved(
                 r["case"], r["direction"]), "seconds": r["times"],
             "fastest_seconds": r.get("fastest", {}),
             "yardstick_warnings": [_bench.YARDSTICK_PROBLEMS[code] for code in
                                    _bench.yardstick_warnings(r, records)]}
            for r in records
        ],
    }


def _program_name(argv0):
    """How the user ran this: ``python -m fastbn``, or the console script's own name."""
    name = os.path.basename(argv0 or "")
    return "python -m fastbn" if name in ("", "__main__.py", "-c") else name


def _parser(prog="python -m fastbn"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check fastbn against its NumPy reference, then benchmark it against the "
                    "reference, PyTorch (if installed) and a memcpy of the same array.")
    parser.add_argument("--quick", action="store_true",
                        help="one large case per kernel family and the cs231n-sized cases (< 30 s)")
    parser.add_argument("--plot", metavar="PATH",
                        help="where to write the plot, PNG unless the name ends in another format "
                             f"matplotlib writes; .png is added to a name without one (default: "
                             f"{DEFAULT_PLOT})")
    parser.add_argument("--no-plot", action="store_true", help="do not write a plot")
    parser.add_argument("--json", metavar="PATH", help="also write the timings as JSON")
    parser.add_argument("--threads", type=_bench.positive_int, metavar="N",
                        help="threads for fastbn, PyTorch and the memcpy yardstick, at most "
                             "fastbn.get_num_threads() (default: that)")
    parser.add_argument("--repeat", type=_bench.positive_int, default=None, metavar="R",
                        help="timed rounds per call; the median is reported (default 7; --quick, "
                             "--shared-core and --scaling 5; calls that take over a second in "
                             "all stop after 3)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if installed")
    parser.add_argument("--fused", action="store_true",
                        help="only the fused batchnorm + ReLU cases, against batchnorm alone and "
                             "batchnorm followed by NumPy's ReLU")
    threads = parser.add_mutually_exclusive_group()
    threads.add_argument("--shared-core", action="store_true",
                         help="instead of the comparison: fastbn on 1 and on 2 threads for every case "
                              "while another process keeps one core busy (speed-up: 1 thread / 2 "
                              "threads)")
    threads.add_argument("--scaling", action="store_true",
                         help="instead of the comparison: fastbn's and the memcpy's speed-up from 1 "
                              "to 2 threads for every case, on the machine as it is")
    return parser


DEFAULT_PLOT = "fastbn-bench.png"


def _usage_error(args):
    """What is wrong with the parsed `args`, before anything is timed (None if nothing): an
    option the thread modes do not take, or an output path that cannot be written (a missing or
    read-only folder, a plot format matplotlib does not write). Counts below 1 are argparse's
    errors (:func:`fastbn._bench.positive_int`)."""
    if args.shared_core or args.scaling:
        mode = "--shared-core" if args.shared_core else "--scaling"
        given = [f"--{name}" for name in ("threads", "fused", "json", "plot")
                 if getattr(args, name) not in (None, False)]
        if given:
            return (f"{mode} times every case on 1 and on 2 threads and prints a table: "
                    f"{', '.join(given)} do{'es' if len(given) == 1 else ''} not apply to it")
    outputs = [("--json", args.json)] + ([("--plot", args.plot)] if not args.no_plot else [])
    for option, path in outputs:
        problem = path is not None and _bench.output_problem(option, path)
        if problem:
            return problem
    if not args.no_plot and args.plot is not None:
        try:
            from matplotlib.figure import Figure
        except ImportError:
            return None  # said after the run: no plot without matplotlib
        suffix = os.path.splitext(args.plot)[1][1:].lower()
        formats = Figure().canvas.get_supported_filetypes()
        if suffix not in formats:
            return (f"--plot: matplotlib cannot write {args.plot!r}: its extension must be one of "
                    f"{', '.join('.' + f for f in sorted(formats))}")
    return None


def _significant(value):
    """`value` to three significant digits, as the thread table prints it."""
    return float(f"{value:.3g}")


def thread_table(records):
    """The --shared-core and --scaling results: per case and direction, fastbn's 1- and
    2-thread times and its speed-up (1 thread / 2 threads); with the memcpy yardstick's
    times (--scaling), its speed-up in the same rounds too, ``<`` marking a speed-up of fastbn
    below the copy's."""
    yardstick = "memcpy 1 thread" in records[0]["times"] if records else False
    lines = [f"{'case':46s} {'dir':4s} {'1 thread':>10s} {'2 threads':>10s} {'speed-up':>8s}"
             + (f" {'memcpy':>6s}" if yardstick else "")]
    for r in records:
        t = r["times"]
        gain = _significant(t["1 thread"] / t["2 threads"])  # as printed: the mark agrees with the digits
        line = (f"{r['case'].name:46s} {DIRECTION_LABELS[r['direction']]:4s} "
                f"{_format_time(t['1 thread']):>10s} {_format_time(t['2 threads']):>10s} {gain:8.3g}")
        if yardstick:
            copy_gain = _significant(t["memcpy 1 thread"] / t["memcpy 2 threads"])
            line += f" {copy_gain:6.3g}{' <' if gain < copy_gain else ''}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, cases: Sequence[_bench.Case] | None = None) -> int:
    """Run the check and the benchmark; return the exit status (0 on success).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).
    cases : sequence of fastbn._bench.Case, optional
        Benchmark these cases instead of the default lists (used by the tests).
    """
    args = _parser(_program_name(sys.argv[0])).parse_args(argv)
    if args.plot is None and not (args.shared_core or args.scaling):
        args.plot = DEFAULT_PLOT
    if args.plot is not None and not os.path.splitext(args.plot)[1]:
        args.plot += ".png"  # as matplotlib would write it
    problem = _usage_error(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    torch = None if args.no_torch else _bench.torch_module()
    available = fastbn.get_num_threads()  # what OpenMP allows; --threads can only lower it
    threads = min(args.threads, available) if args.threads else available
    kernels = fastbn._backends.kernels()
    openmp = ("no compiled kernels" if kernels is None else "yes" if kernels.openmp_enabled() else
              "NO: serial build, every call runs on one thread")
    capped = (f" (--threads {args.threads}: more than the {available} OpenMP allows)"
              if args.threads and args.threads > available else "")
    peer = (torch.__version__ if torch is not None else
            "left out (--no-torch)" if args.no_torch else "not installed (skipped)")
    print(f"fastbn {fastbn.__version__} | CPU: {_bench.cpu_model()}\n"
          f"OpenMP: {openmp} | threads: {threads}{capped} | "
          f"backends: {', '.join(fastbn.available_backends())} | numpy {np.__version__} | "
          f"PyTorch: {peer}")

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

    if args.shared_core or args.scaling:
        cases = cases or (_bench.HEADLINE_CASES if args.quick else _bench.LARGE_CASES)
        where = "beside a busy process" if args.shared_core else "on the machine as it is"
        print(f"Timing {len(cases)} cases on 1 and 2 threads {where}:", flush=True)
        records = _bench.thread_scaling(cases, repeat=args.repeat or 5, busy=args.shared_core,
                                        progress=lambda message: print(f"  {message}", flush=True))
        print(thread_table(records))
        print("\nspeed-up: time on 1 thread / time on 2 threads (out= calls)"
              + ("." if args.shared_core else "; memcpy: the same for an OpenMP copy of x, in the "
                 "same rounds; <: fastbn gains less than the copy."))
        return 0
    if cases is None and args.fused:
        cases = _bench.FUSED_CASES
    if cases is None:
        cases = _bench.QUICK_CASES if args.quick else _bench.LARGE_CASES + _bench.SMALL_CASES
    repeat = args.repeat or (5 if args.quick else 7)
    print(f"Timing {len(cases)} cases (median of {repeat} interleaved rounds each; 3 for calls "
          "that take over a second in all):", flush=True)
    start = time.perf_counter()
    records = _bench.run(cases, repeat=repeat, threads=threads, torch=torch,
                         progress=lambda message: print(f"  {message}", flush=True))
    print(f"done in {time.perf_counter() - start:.0f} s\n")
    print(table(records))
    print(f"\nmemcpy: an OpenMP copy of x into a preallocated array on {threads} threads. "
          "Ratios: time / the memcpy's (lower is better); fastbn: the plain call, a new output "
          "each time (the last one dropped); out=: fastbn writing into a preallocated array; "
          "PyTorch allocates its outputs; NumPy is fastbn's reference; read: a sweep that only "
          "reads x.")
    fused = fused_table(records)
    if fused:
        print(f"\n{fused}\n(fused: fastbn's batchnorm_relu call; bn: fastbn's batchnorm alone; "
              "bn+np.relu: batchnorm then np.maximum(out, 0), and dout * (out > 0) into its "
              "backward; all in the same interleaved rounds.)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(_to_json(records, threads, repeat, torch, openmp), f, indent=1)
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
