"""A/B of another build of fastbn against this one, in one process: the same calls, interleaved.

The other build (a checkout whose kernels are built in place, e.g. a git worktree of the
starting revision after ``python setup.py build_ext --inplace``) is copied to a temporary
directory as the package ``fastbn_old`` (its imports renamed), and both run the cases of the
starting build's ``python -m fastbn`` (batchnorm, spatial NCHW/NHWC, layernorm, groupnorm;
large and cs231n-sized) forward, test mode and backward, with ``out=`` arrays and plain calls,
in shuffled interleaved rounds (``fastbn._bench.time_calls``); inputs and outputs start at page
offset 0. Every result of both builds is compared bit for bit. The other build's Python modules
run from their .py files even where its build compiled them (those extensions would import this
build's modules): compare the kernels with it, and fixed costs only against a build of before
the compiled glue.

    git worktree add /tmp/old 2daeb16 && (cd /tmp/old && python setup.py build_ext --inplace)
    python benchmarks/ab.py /tmp/old                 # FASTBN_DISABLE_AVX512=1: the AVX2 path
"""
import argparse
import atexit
import os
import re
import shutil
import sys
import tempfile

import numpy as np

import fastbn  # this build first: the other one's kernels register under the same module name
from fastbn import _bench

CASES = [  # name, op, shape, dtype, layout or groups
    ("bn 4096x4096 f32", "bn", (4096, 4096), "float32", None),
    ("NCHW 32x64x56x56 f32", "sp", (32, 64, 56, 56), "float32", "NCHW"),
    ("NHWC 32x56x56x64 f32", "sp", (32, 56, 56, 64), "float32", "NHWC"),
    ("LN 8192x1024 f32", "ln", (8192, 1024), "float32", None),
    ("GN 32x64x56x56 G32 f32", "gn", (32, 64, 56, 56), "float32", 32),
    ("bn 65536x256 f32", "bn", (65536, 256), "float32", None),
    ("bn 256x65536 f32", "bn", (256, 65536), "float32", None),
    ("bn 4096x4099 f32", "bn", (4096, 4099), "float32", None),
    ("LN 65536x64 f32", "ln", (65536, 64), "float32", None),
    ("LN 64x65536 f32", "ln", (64, 65536), "float32", None),
    ("bn 4096x4096 f64", "bn", (4096, 4096), "float64", None),
    ("NCHW 32x64x56x56 f64", "sp", (32, 64, 56, 56), "float64", "NCHW"),
    ("NHWC 32x56x56x64 f64", "sp", (32, 56, 56, 64), "float64", "NHWC"),
    ("LN 8192x1024 f64", "ln", (8192, 1024), "float64", None),
    ("GN 32x64x56x56 G32 f64", "gn", (32, 64, 56, 56), "float64", 32),
    ("bn 200x500 f64", "bn", (200, 500), "float64", None),
    ("NCHW 50x3x32x32 f64", "sp", (50, 3, 32, 32), "float64", "NCHW"),
    ("NHWC 50x32x32x3 f64", "sp", (50, 32, 32, 3), "float64", "NHWC"),
    ("LN 200x500 f64", "ln", (200, 500), "float64", None),
    ("GN 20x32x16x16 G4 f64", "gn", (20, 32, 16, 16), "float64", 4),
    # small batches of many features (an MLP layer): the per-column constants weigh most there
    ("bn 16x4096 f32", "bn", (16, 4096), "float32", None),
    ("bn 64x4096 f32", "bn", (64, 4096), "float32", None),
    ("bn 64x1024 f64", "bn", (64, 1024), "float64", None),
]


def import_other(tree):
    """The package of the checkout `tree`, imported as ``fastbn_old`` from a temporary copy,
    removed when the process exits."""
    source = os.path.join(tree, "fastbn")
    if not os.path.isfile(os.path.join(source, "__init__.py")):
        raise SystemExit(f"ab.py: other must be a checkout of fastbn (a folder holding "
                         f"fastbn/__init__.py), got {tree!r}")
    tmp = tempfile.mkdtemp(prefix="fastbn-ab-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    target = os.path.join(tmp, "fastbn_old")

    def ignore(directory, names):
        # the extensions Cython compiled from .py modules import their siblings as fastbn.*,
        # which is this build: the other build runs those modules from their .py files
        compiled = {n for n in names if n.endswith(".so") and n.split(".")[0] + ".py" in names}
        return compiled | set(shutil.ignore_patterns("__pycache__", "*.c")(directory, names))

    shutil.copytree(source, target, ignore=ignore)
    for name in os.listdir(target):
        if name.endswith(".py"):
            path = os.path.join(target, name)
            with open(path) as f:
                text = f.read()
            text = re.sub(r"\bfrom fastbn\b", "from fastbn_old", text)
            text = re.sub(r"\bimport fastbn\b", "import fastbn_old as fastbn", text)
            text = text.replace('"fastbn.', '"fastbn_old.')
            with open(path, "w") as f:
                f.write(text)
    sys.path.insert(0, tmp)
    import fastbn_old
    return fastbn_old


def functions(mod, op, extra):
    if op == "bn":
        return mod.batchnorm_forward, mod.batchnorm_backward
    if op == "sp":
        return mod.spatial_batchnorm_forward, mod.spatial_batchnorm_backward
    if op == "ln":
        return mod.layernorm_forward, mod.layernorm_backward
    return ((lambda x, g, b, p, **kw: mod.spatial_groupnorm_forward(x, g, b, extra, p, **kw)),
            mod.spatial_groupnorm_backward)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/ab.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("other", help="a checkout of the other build, its kernels built in place")
    parser.add_argument("--repeat", type=_bench.positive_int, default=9)
    parser.add_argument("--only", action="append", help="cases whose name contains this")
    args = parser.parse_args(argv)
    old = import_other(args.other)
    print(f"CPU {_bench.cpu_model()} | SIMD this {fastbn._kernels.simd()}, other {old._kernels.simd()}"
          f" | threads {fastbn.get_num_threads()} | median of {args.repeat} interleaved rounds")
    for name, op, shape, dtype, extra in CASES:
        if args.only and not any(o in name for o in args.only):
            continue
        rng = np.random.default_rng(0)
        x, d = _bench.at_page_offset(shape, dtype), _bench.at_page_offset(shape, dtype)
        x[...] = rng.standard_normal(shape) * 2 + 1
        d[...] = rng.standard_normal(shape)
        C = shape[-1] if (op in ("bn", "ln") or extra == "NHWC") else shape[1]
        g = (rng.standard_normal(C) + 1).astype(dtype)
        b = rng.standard_normal(C).astype(dtype)
        directions = ("fwd", "test", "bwd") if op in ("bn", "sp") else ("fwd", "bwd")
        calls, results = {}, {}
        for side, mod in (("old", old), ("new", fastbn)):
            fwd, bwd = functions(mod, op, extra)
            p = {"mode": "train", **({"layout": extra} if op == "sp" else {})}
            out, dx = _bench.at_page_offset(shape, dtype), _bench.at_page_offset(shape, dtype)
            o1, c1 = fwd(x, g, b, p)
            r = [o1, c1.mean, c1.invstd]
            pt = dict(p, mode="test")
            if op in ("bn", "sp"):
                r += [p["running_mean"].copy(), p["running_var"].copy(), fwd(x, g, b, pt)[0]]
            r += [a for a in bwd(d, c1) if a is not None]
            results[side] = r
            calls[f"fwd {side} out="] = lambda fwd=fwd, p=dict(p), out=out: fwd(x, g, b, p, out=out)
            calls[f"fwd {side}"] = lambda fwd=fwd, p=dict(p): fwd(x, g, b, p)
            calls[f"test {side} out="] = lambda fwd=fwd, pt=pt, out=out: fwd(x, g, b, pt, out=out)
            calls[f"test {side}"] = lambda fwd=fwd, pt=pt: fwd(x, g, b, pt)
            calls[f"bwd {side} out="] = lambda bwd=bwd, c1=c1, dx=dx: bwd(d, c1, out=dx)
            calls[f"bwd {side}"] = lambda bwd=bwd, c1=c1: bwd(d, c1)
        same = len(results["old"]) == len(results["new"]) and all(
            np.array_equal(a, b_) for a, b_ in zip(results["old"], results["new"]))
        for direction in directions:
            sub = {k: v for k, v in calls.items() if k.startswith(direction + " ")}
            t = _bench.time_calls(sub, repeat=args.repeat, min_time=0.002, max_time=1.0)
            new_old = t[f"{direction} new out="] / t[f"{direction} old out="]
            plain = t[f"{direction} new"] / t[f"{direction} old"]
            print(f"{name:24s} {direction:4s} out=: old {t[f'{direction} old out='] * 1e3:8.3f} "
                  f"new {t[f'{direction} new out='] * 1e3:8.3f} ms new/old {new_old:.2f} | "
                  f"plain new/old {plain:.2f} | bits {'same' if same else 'DIFFER'}", flush=True)


if __name__ == "__main__":
    main()
