"""Which path of each kernel family wins, over a grid of shapes wider than the benchmark cases.

For every shape of the grid and every path the planner can force (``fastbn._planner.PATHS``),
fastbn's forward + backward (train mode, ``out=`` buffers, the default thread count) is timed in
interleaved rounds (each round runs every path once; the median over rounds is kept), and the
time of each path is printed relative to the path the planner chooses from the shape ("auto").
A path earns its place where it is the fastest; the results go into ``docs/decisions.md``.

Usage::

    python benchmarks/grid.py                  # the whole grid (tens of minutes on 2 cores)
    python benchmarks/grid.py --family rows    # one family: cols, nhwc, planes, rows, rows_forward,
                                               # or a finer grid: cols_small, cols_large,
                                               # cols_streamed, rows_segments, cols_few_rows
    python benchmarks/grid.py --json grid.json --repeat 5
    python benchmarks/grid.py --family cols_large --split   # forward, test mode, backward apart
    python benchmarks/grid.py --family cols --setting sums_prefetch_min_bytes=0,4194304
                                               # values of one tuning constant instead of the paths

With ``--setting FIELD=V1,V2,...`` the plans compared are the plan in force with each value of
that field of :class:`fastbn._planner.Plan` (a per-CPU setting is decided this way: it goes into
``CPU_SETTINGS`` only where it wins on that vendor's CPUs alone). ``--per-cpu`` does that for
every tuned setting of ``PER_CPU_FAMILIES`` (each measured on one CPU first, then on another)
over the families it was decided on, with its default, the values it was decided against and
every vendor's value, and sums up which value is fastest on this CPU: run it on a CPU of another
vendor (or model) to see whether the defaults and the entries hold there. ``--setting`` ends
with the same summary, per family.

    python benchmarks/grid.py --per-cpu --dtype float64 --repeat 9
"""
import argparse
import dataclasses
import json
import platform
import time

import numpy as np

import fastbn
from fastbn import _bench, _planner

SHORT = {"forward": "fwd", "test": "test", "backward": "bwd"}
MAX_BYTES = 1 << 28  # shapes whose x exceeds this are left out (x, out, dy and dx must fit)
M_GRID = (64, 1000, 4096, 65536)
D_GRID = (3, 64, 500, 1024, 4099, 65536)
FAMILIES = {
    "cols": ("cols_path", [("batchnorm", (M, D), "NC") for M in M_GRID for D in D_GRID]),
    "nhwc": ("cols_path", [("spatial_batchnorm", (N, HW, HW, C), "NHWC")
                           for N in (8, 32) for C in (3, 16, 64, 256) for HW in (7, 28, 56)]),
    "planes": ("planes_path", [("spatial_batchnorm", (N, C, HW, HW), "NCHW")
                               for N in (8, 32) for C in (3, 16, 64, 256) for HW in (7, 28, 56)]),
    "rows": ("rows_backward_path", [("layernorm", (M, D), "ND") for M in M_GRID for D in D_GRID]),
    "rows_forward": ("rows_forward_path", [("layernorm", (M, D), "ND") for M in M_GRID for D in D_GRID]),
    # finer grids where the grids above left a rule in doubt (docs/decisions.md): the rows bound
    # of the small-array blocked (M, D) path, and column segments for few or many long rows
    "cols_small": ("cols_path", [("batchnorm", (M, D), "NC") for M in (128, 256, 512, 768, 1000, 1500, 2048)
                                 for D in (256, 500, 1024)]),
    "rows_segments": ("rows_backward_path", [("layernorm", (M, D), "ND") for M in (16, 32, 64, 128, 256)
                                             for D in (500, 1024, 4099)]
                      + [("layernorm", (M, D), "ND") for M in (16, 64, 128) for D in (64, 128, 256)]
                      + [("layernorm", (M, 65536), "ND") for M in (64, 256, 1000)]),
    # small batches of many features (MLP layers): the per-column constants weigh there
    "cols_few_rows": ("cols_path", [("batchnorm", (M, D), "NC") for M in (2, 8, 16, 32, 64, 128)
                                    for D in (1024, 4096, 16384)]),
    # (M, D) arrays with streamed outputs and rows of whole cache lines under 4 KiB
    "cols_streamed": ("cols_path", [("batchnorm", (M, D), "NC") for M, D in (
        (65536, 128), (65536, 256), (32768, 512), (16384, 768))]
        + [("spatial_batchnorm", (N, HW, HW, C), "NHWC") for N, HW, C in (
            (32, 56, 128), (32, 28, 256), (32, 56, 256), (32, 14, 512))]),
    # large (M, D) arrays of 2048 to 16384 rows, on both sides of blocked_large_max_rows
    "cols_large": ("cols_path", [("batchnorm", (M, D), "NC") for M, D in (
        (2048, 4096), (4096, 4096), (8192, 2048), (16384, 1024), (2048, 8192), (8192, 4096),
        (3072, 4096), (4096, 1536), (4096, 2048), (4096, 8192))]),
}


# The settings that --per-cpu re-checks on the CPU it runs on: every field an entry of
# fastbn._planner.CPU_SETTINGS sets (a test checks that it is here) and every default that won on
# one CPU before it was measured on the other, with the families of shapes it was decided on and
# the values it was decided against (docs/decisions.md, "Per CPU").
PER_CPU_FAMILIES = {
    "blocked_large_max_rows": (("cols_large",), (1 << 40,)),  # no limit
    "sums_prefetch_min_bytes": (("cols", "cols_small", "nhwc"), (0,)),  # prefetch on every array
    "sums_prefetch_max_run_bytes": (("cols_large", "cols", "nhwc"), (0,)),  # ... over any run
    "grad_sums_four_rows_bytes": (("cols", "cols_small", "cols_large", "nhwc"), (0,)),  # never
    "sweep_wide_bytes": (("cols_streamed", "nhwc"), (0,)),  # rows as the statistics take them
}


def _cases(family, dtype):
    field, shapes = FAMILIES[family]
    for op, shape, layout in shapes:
        if np.prod(shape) * np.dtype(dtype).itemsize <= MAX_BYTES:
            yield field, _bench.Case(op, shape, dtype, layout=layout)


def path_plans(field):
    """The plans of the paths of `field` (and "auto": the plan in force), by name."""
    base = _planner.current()
    return {"auto": base, **{p: dataclasses.replace(base, **{field: p}) for p in _planner.PATHS[field]}}


def setting_plans(field, values):
    """The plan in force (as "auto") and the plans with each of `values` of the numeric `field`,
    named ``field=value``."""
    base = _planner.current()
    return {"auto": base, **{f"{field}={v}": dataclasses.replace(base, **{field: v}) for v in values}}


def per_cpu_plans(field):
    """The plan in force (as "auto") and a plan per value of `field` among the default, the
    values it was decided against (``PER_CPU_FAMILIES``) and the entries of ``CPU_SETTINGS``
    (see :func:`setting_plans`)."""
    values = {getattr(_planner.Plan(), field), *PER_CPU_FAMILIES[field][1]}
    values |= {entry[field] for entry in _planner.CPU_SETTINGS.values() if field in entry}
    return setting_plans(field, sorted(values))


def summarize(records):
    """``{(plan, direction): (geometric mean of time / time of "auto", shapes faster by 5% or
    more, shapes slower by 5% or more, shapes)}`` over `records` (as :func:`run_families` makes;
    direction "+" joins forward and backward timed together)."""
    ratios = {}
    for record in records:
        t = record["seconds"]
        for name in t:
            if name != "auto":
                ratios.setdefault((name, "+".join(record["directions"])), []).append(t[name] / t["auto"])
    return {key: (float(np.exp(np.mean(np.log(r)))), sum(x <= 0.95 for x in r), sum(x >= 1.05 for x in r),
                  len(r)) for key, r in ratios.items()}


def time_paths(case, field, repeat, directions=("forward", "backward"), plans=None):
    """Median seconds of the `directions` together (forward + backward by default) per path of
    `field` (and "auto") for `case`, or per plan of `plans` ({name: Plan}) when given."""
    calls = _bench.implementations(case)
    steps = [calls[d]["fastbn out="] for d in directions]
    base = _planner.current()
    if plans is None:
        plans = path_plans(field)
    times = {name: [] for name in plans}
    inner = 1
    try:
        for name, plan in plans.items():  # warm-up, and calls per timed run for small shapes
            _planner.use(plan)
            start = time.perf_counter()
            for step in steps:
                step()
            inner = max(inner, min(int(0.002 / max(time.perf_counter() - start, 1e-7)) + 1, 1000))
        for _ in range(repeat):
            for name, plan in plans.items():
                _planner.use(plan)
                start = time.perf_counter()
                for _ in range(inner):
                    for step in steps:
                        step()
                times[name].append((time.perf_counter() - start) / inner)
    finally:
        _planner.use(base)
    return {name: float(np.median(t)) for name, t in times.items()}


def run_families(families, dtype, repeat, split, plans=None):
    """Time every case of `families` (see :func:`time_paths`), printing a line per case and
    direction; return the records."""
    records = []
    for family in families:
        print(f"\n{family}: time of each {'plan' if plans else 'path'} / time of the plan in force (auto)")
        for field, case in _cases(family, dtype):
            for directions in ([(d,) for d in case.directions] if split else (("forward", "backward"),)):
                t = time_paths(case, field, repeat, directions, plans)
                best = min((p for p in t if p != "auto"), key=t.get)
                ratios = "  ".join(f"{p}={t[p] / t['auto']:.2f}" for p in t if p != "auto")
                label = f"{case.name} {'+'.join(SHORT[d] for d in directions)}"
                print(f"  {label:52s} auto {t['auto'] * 1e3:9.3f} ms  {ratios}  best: {best}", flush=True)
                records.append({"family": family, "field": field, "case": case.id,
                                "directions": list(directions), "seconds": t, "best": best})
    return records


def print_summary(field, records, label=""):
    """The per-CPU verdict on `field` from its records (see :func:`summarize`), headed by
    `label` (as a family's name) when given."""
    print(f"\n{label + ': ' if label else ''}{field}: this CPU's plan has "
          f"{field}={getattr(_planner.current(), field)} "
          f"(vendor {_planner.CPU_VENDOR}); time of each value / time of the plan in force,")
    print("geometric mean over the shapes (shapes 5% faster / 5% slower / all):")
    for (name, direction), (mean, faster, slower, n) in sorted(summarize(records).items()):
        print(f"  {name:40s} {direction:18s} {mean:6.3f}  ({faster} faster / {slower} slower / {n})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/grid.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), action="append",
                        help="families to run (default: all)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--repeat", type=_bench.positive_int, default=5)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--split", action="store_true",
                        help="time the forward, test mode (where the op has one) and the backward apart (default: forward + backward together)")
    parser.add_argument("--setting", metavar="FIELD=V1,V2,...",
                        help="compare these values of a numeric Plan field instead of the paths")
    parser.add_argument("--per-cpu", action="store_true",
                        help="every tuned setting's values on its families (directions apart, as --split)")
    args = parser.parse_args(argv)
    problem = args.json and _bench.output_problem("--json", args.json)
    if problem:
        parser.error(problem)  # now, not after tens of minutes of timing
    plans = None
    if args.setting:
        name, _, values = args.setting.partition("=")
        try:
            numbers = [int(v) for v in values.split(",")]
        except ValueError:
            numbers = None
        if name not in _planner.Plan.__dataclass_fields__ or name in _planner.PATHS or not numbers:
            parser.error(f"--setting must be FIELD=V1,V2,... with a numeric Plan field and integers, "
                         f"got {args.setting!r}")
        plans = setting_plans(name, numbers)
    if args.per_cpu and (args.setting or args.family):
        parser.error("--per-cpu takes its own fields and families: not with --setting or --family")
    split = args.split or args.per_cpu
    print(f"fastbn {fastbn.__version__} | CPU {_bench.cpu_model()} | threads {fastbn.get_num_threads()} "
          f"| {args.dtype} | {'directions apart' if split else 'forward + backward'}, "
          f"median of {args.repeat} interleaved rounds")
    if args.per_cpu:
        records, verdicts = [], []
        for field, (families, _) in PER_CPU_FAMILIES.items():
            mine = run_families(families, args.dtype, args.repeat, True, per_cpu_plans(field))
            verdicts.append((field, mine))
            records += mine
        for field, mine in verdicts:
            print_summary(field, mine)
    else:
        families = args.family or list(FAMILIES)
        records = run_families(families, args.dtype, args.repeat, split, plans)
        if args.setting:
            for family in families:
                print_summary(name, [r for r in records if r["family"] == family], family)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": _bench.cpu_model(), "machine": platform.machine(), "dtype": args.dtype,
                       "threads": fastbn.get_num_threads(), "results": records}, f, indent=1)


if __name__ == "__main__":
    main()
