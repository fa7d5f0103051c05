"""fastbn.show_config: what was built and how it will run."""
from __future__ import annotations

import sys
from typing import TextIO

import numpy as np

from fastbn import _backends
from fastbn._threads import forked_after_threads, get_num_threads


def build_info():
    """The build configuration as a dict (empty when the extension is not built)."""
    try:
        from fastbn._build_info import BUILD_INFO
    except ImportError:
        return {}
    return dict(BUILD_INFO)


def compiled_glue():
    """The Python modules the build compiled (setup.py's GLUE), each with whether it runs
    compiled now (its extension imported rather than its .py file)."""
    import importlib
    import importlib.machinery

    return {name: importlib.import_module(f"fastbn.{name}").__file__.endswith(
                tuple(importlib.machinery.EXTENSION_SUFFIXES))
            for name in build_info().get("glue", ())}


def stale_glue():
    """The compiled modules whose .py file beside them is not the source they were compiled
    from (a checkout edited since its last build): their extensions run older code."""
    import hashlib
    import pathlib

    here = pathlib.Path(__file__).parent
    return [name for name, digest in build_info().get("glue", {}).items()
            if hashlib.sha256((here / f"{name}.py").read_bytes()).hexdigest() != digest]


def _glue_line() -> str:
    compiled = [name for name, is_compiled in compiled_glue().items() if is_compiled]
    return f"compiled Python modules: {', '.join(compiled) or 'none'}"


def _buffer_cache_line() -> str:
    from fastbn._memory import buffer_cache_info

    info = buffer_cache_info()
    if not info["max_bytes"]:
        return "buffer cache: off (fastbn.set_buffer_cache, FASTBN_BUFFER_CACHE)"
    return (f"buffer cache: up to {info['max_bytes'] / 2**20:.0f} MiB, holding "
            f"{info['cached_bytes'] / 2**20:.1f} MiB in {info['blocks']} blocks; "
            f"{info['hits']} reuses, {info['misses']} new")


def _planner_line() -> str:
    """The CPU vendor and the plan's fields in force that differ from the defaults: this CPU's
    settings (fastbn._planner.CPU_SETTINGS) and any later change."""
    import dataclasses

    from fastbn import _planner

    plan, defaults = _planner.current(), _planner.Plan()
    changed = [f"{f.name}={getattr(plan, f.name)}" for f in dataclasses.fields(plan)
               if getattr(plan, f.name) != getattr(defaults, f.name)]
    return (f"planner: CPU vendor {_planner.CPU_VENDOR or 'unknown'}; "
            f"{'changed from the defaults: ' + ', '.join(changed) if changed else 'the defaults'}")


def show_config(file: TextIO | None = None) -> None:
    """Print fastbn's version, backends, OpenMP status, thread count, SIMD path and compile flags.

    Parameters
    ----------
    file : file-like, optional
        Where to print; ``sys.stdout`` by default.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.show_config()  # doctest: +ELLIPSIS
    fastbn ...
    """
    import fastbn

    kernels = _backends.kernels()
    info = build_info()
    lines = [
        f"fastbn {fastbn.__version__}",
        f"python {sys.version.split()[0]}, numpy {np.__version__}",
        f"backends: {', '.join(_backends.available_backends())}",
        f"compiled kernels: {'yes' if kernels is not None else 'no (NumPy reference only)'}",
        f"OpenMP: {'yes' if kernels is not None and kernels.openmp_enabled() else 'no'}",
        f"threads: {get_num_threads()}" + (
            " (forked from a process that ran fastbn on several threads: one thread here)"
            if forked_after_threads() else ""),
        f"OpenMP idle wait: {_backends.OPENMP_WAIT}",
        f"SIMD: {kernels.simd() if kernels is not None else 'none'}"
        " (FASTBN_DISABLE_AVX512=1 / FASTBN_DISABLE_AVX2=1 stop at AVX2 / the baseline; results"
        " are the same bits)",
        _buffer_cache_line(),
        _planner_line(),
        _glue_line(),
    ]
    if info:
        lines += [
            f"compiler: {info.get('compiler', '?')}",
            f"compile flags: {' '.join(info.get('compile_args', []))}",
            f"link flags: {' '.join(info.get('link_args', []))}",
            f"debug build: {'yes' if info.get('debug') else 'no'}",
        ]
    print("\n".join(lines), file=file or sys.stdout)
