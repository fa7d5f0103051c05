"""The planner: every path choice and tuning constant of the compiled kernels, in one place.

A :class:`Plan` holds each constant with a line on what it governs, and for each family of
kernels a ``*_path`` field that forces one of its paths by name (``"auto"``: the shape decides).
The kernels (:mod:`fastbn._kernels`) read the plan in force, which :func:`use` hands them (the C
loops get theirs as arguments); tests force every path with :func:`override`. The few constants
the C loops need at compile time (they size register arrays and unrolled cases) are in
``COMPILED``, a literal mapping that ``setup.py`` reads from this file without importing fastbn
and passes to the compiler (``-DFASTBN_REG_MAX=...``): changing one takes a rebuild, and
``fastbn._kernels.compiled_constants()`` says what the extension was built with. Why a constant
has its value -- the measurements -- is in ``docs/decisions.md``, not here.

Paths (``PATHS``) and where a forced one applies (elsewhere the shape still decides):

``cols_path`` -- (M, D) arrays (batchnorm, NHWC)
    ``"blocked"``: blocks of columns over all rows, statistics then sweep while in cache (one
    read of x); ``"shared_blocks"``: the backward takes one block at a time, its rows shared by
    the threads (the forward as ``"blocked"``); ``"grid"``: a grid of row chunks x column blocks
    of partials merged in chunk order, then a separate sweep (x read twice; rows of fewer than
    ``wide_max_d`` values seen as wide rows).
``planes_path`` -- NCHW spatial batchnorm
    ``"channels"``: a task per channel, statistics then sweep while its planes are in cache;
    ``"chunks"``: chunks of planes per channel, merged, then a separate sweep.
``rows_forward_path`` / ``rows_backward_path`` -- layernorm, RMSNorm, groupnorm
    ``"short_rows"``: many rows per C call (forward: rows held in registers on AVX-512 when they
    fit); ``"four_rows"`` (backward): rows four at a time, their dgamma/dbeta partials added
    once per four rows; ``"segments"``: long rows (and, backward, few rows) by column segments;
    ``"per_row"``: a row (or a group's planes) at a time. ``short_rows``, ``four_rows`` and ``segments`` apply to rows of
    layernorm/RMSNorm (one group, contiguous values).
``stream_path``
    ``"always"`` / ``"never"``: write large outputs with streaming stores or not (no value
    changes).

Settings that won on one of the project's CPUs only are in ``CPU_SETTINGS``, keyed by the CPU's
vendor (``/proc/cpuinfo``'s ``vendor_id``; none today): the plan in force at import is
:func:`for_cpu` of the CPU fastbn runs on, the defaults of :class:`Plan` amended by that entry.
``show_config()`` says which; ``python benchmarks/grid.py --per-cpu`` times, on the CPU it runs
on, the default, the values it was decided against and every vendor's value of each tuned
field.

Every path computes with chunks fixed by the shape (and the plan): results do not depend on the
thread count. Different paths may differ in the last bits (they sum in other orders).

Examples
--------
>>> from fastbn import _planner
>>> _planner.current().stream_min_bytes
8388608
>>> with _planner.override(rows_forward_path="per_row"):
...     _planner.current().rows_forward_path
'per_row'
"""
import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass

from fastbn import _backends

PATHS = {
    "cols_path": ("blocked", "shared_blocks", "grid"),
    "planes_path": ("channels", "chunks"),
    "rows_forward_path": ("short_rows", "segments", "per_row"),
    "rows_backward_path": ("short_rows", "four_rows", "segments", "per_row"),
    "stream_path": ("never", "always"),
}


# Compile-time constants of the C loops, as macros (a literal dict: setup.py reads it with
# ast.literal_eval, without importing fastbn).
COMPILED = {
    "FASTBN_REG_MAX": 128,  # AVX-512: short rows of up to this many values stay in registers (16, 32, ..., 128)
}

# Settings measured to win on one vendor's CPUs only, by vendor (docs/decisions.md: "Per CPU");
# other CPUs keep the defaults. None today: every setting first measured to win on the EPYC won
# or tied on the Xeon too, and is a default.
CPU_SETTINGS = {}

ZERO_ALLOWED = ("load_check_ms", "dx_page_shift", "sums_prefetch_min_bytes",
                "sums_prefetch_max_run_bytes", "grad_sums_four_rows_bytes",
                "sweep_wide_bytes")  # fields that may be 0 (the others: >= 1)


@dataclass(frozen=True)
class Plan:
    """Tuning constants and forced paths of the kernels (sizes in bytes or values, as named)."""

    # --- threads
    min_elements_per_thread: int = 1 << 17  # inputs under 2x this run on one thread; else a thread per this many
    load_check_ms: int = 20  # large calls leave cores to other running processes, counted this often (0: never)
    load_window_ms: int = 100  # ... from the CPU time those took over the last window at least this long
    handout_bytes: int = 1 << 18  # dynamic loops over small items hand out about this much input at a time
    # --- memory
    buffer_min_bytes: int = 1 << 17  # outputs this large come from the buffer cache (fastbn._memory)
    dx_page_shift: int = 2048  # ... a backward's dx there starts this many bytes past x's offset in a page (< 4096)
    # --- (M, D): statistics per column
    col_block: int = 4096  # columns per task of the grid path, at most
    min_chunk_rows: int = 64  # rows per row chunk of the grid path, at least
    target_tasks: int = 16  # about this many tasks per grid (and planes, rows) pass
    max_partials: int = 1 << 18  # per-chunk partial values kept, at most (row chunks x columns)
    wide_max_d: int = 128  # rows of fewer values are seen as wide rows of several rows (grid path)
    wide_cols: int = 1024  # values per wide row, at least
    wide_aliased: int = 512  # a wide row of a multiple of this many values takes one row more
    min_wide_rows: int = 16  # wide rows needed, at least, to use them
    blocked_min_bytes: int = 1 << 23  # arrays this large are blocked only with whole-line rows, blocks sized by block_bytes
    block_bytes: int = 1 << 22  # bytes of x (and dy) per column block of a large array
    block_min_lines: int = 4  # cache lines per block row of a large array, at least
    blocked_min_blocks: int = 4  # column blocks needed, at least (small arrays: also two per thread)
    blocked_max_rows: int = 512  # arrays under blocked_min_bytes are blocked only with at most this many rows
    blocked_large_max_rows: int = 3072  # ... and larger arrays only with at most this many
    sums_prefetch_min_bytes: int = 1 << 22  # column sums over arrays this large prefetch the next eight rows (0: all)
    sums_prefetch_max_run_bytes: int = 4096  # ... when each row's run (the columns of a task) is shorter than this (0: any run)
    grad_sums_four_rows_bytes: int = 2048  # backward column sums over rows a multiple of this many bytes apart read four rows per pass, not eight (0: never)
    shared_max_run_bytes: int = 512  # large-array backward blocks of runs up to this are shared by the threads
    block_row_chunks: int = 4  # row chunks of a shared block
    sweep_wide_bytes: int = 4096  # streamed sweeps (grid path, test mode) of rows of whole lines shorter than this take them as wide rows of at least this (0: as the statistics do)
    affine_rows: int = 32  # rows per tile of the (M, D) elementwise sweeps, at least
    affine_tile_bytes: int = 1 << 18  # output bytes per tile of those sweeps, about
    affine_cols: int = 4096  # columns per tile of those sweeps, at most
    affine_short_run_bytes: int = 2048  # the affine ones not streamed go four rows at a time over parts of rows shorter than this
    # --- (N, C, L): statistics per channel over planes
    min_channels_blocked: int = 8  # channels for the per-channel path, at least
    mask_prefetch_values: int = 2048  # the fused forward over planes prefetches its ReLU mask this many values ahead
    # --- rows: layernorm, RMSNorm, groupnorm
    short_row_bytes: int = 4096  # layernorm rows shorter than this go many per C call
    row_task_bytes: int = 1 << 18  # bytes of rows per task of those calls
    rows4_min_values: int = 256  # layernorm backward takes rows of at least this many values four at a time
    few_rows: int = 128  # layernorm backward of at most this many rows goes by column segments
    long_row_bytes: int = 1 << 16  # layernorm rows longer than this go by column segments (forward and backward)
    segment_bytes: int = 1 << 13  # bytes per row of a column segment of long rows
    run_bytes: int = 1 << 16  # bytes per run of the long rows' dx sweep
    # --- output stores
    stream_min_bytes: int = 1 << 23  # outputs this large are written with streaming stores
    stream_min_run_bytes: int = 4096  # ... when written in contiguous runs of at least this
    # --- forced paths ("auto": chosen from the shape)
    cols_path: str = "auto"
    planes_path: str = "auto"
    rows_forward_path: str = "auto"
    rows_backward_path: str = "auto"
    stream_path: str = "auto"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in PATHS:
                allowed = ("auto", *PATHS[field.name])
                if value not in allowed:
                    raise ValueError(f"{field.name} must be one of {list(allowed)}, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < (
                    0 if field.name in ZERO_ALLOWED else 1):
                what = "an integer >= 0" if field.name in ZERO_ALLOWED else "a positive integer"
                raise ValueError(f"{field.name} must be {what}, got {value!r}")
        if self.dx_page_shift % 64 or self.dx_page_shift >= 4096:  # keeps the data aligned
            raise ValueError(f"dx_page_shift must be a multiple of 64 below 4096, got {self.dx_page_shift!r}")

    def kernel_settings(self):
        """The plan as the kernels take it: paths as indices into PATHS (-1 for "auto")."""
        settings = dataclasses.asdict(self)
        for name, paths in PATHS.items():
            settings[name] = -1 if settings[name] == "auto" else paths.index(settings[name])
        # read by fastbn._threads and fastbn._memory
        del settings["min_elements_per_thread"], settings["load_check_ms"], settings["load_window_ms"]
        del settings["buffer_min_bytes"]
        del settings["dx_page_shift"]
        return settings


def cpu_vendor():
    """The CPU's vendor string (``'GenuineIntel'``, ``'AuthenticAMD'``, ...) from
    ``/proc/cpuinfo``, or None where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    return value.strip()
    except OSError:
        pass
    return None


def for_cpu(vendor):
    """The default plan for a CPU of `vendor`: :class:`Plan` with ``CPU_SETTINGS[vendor]``."""
    return dataclasses.replace(Plan(), **CPU_SETTINGS.get(vendor, {}))


CPU_VENDOR = cpu_vendor()
_current = for_cpu(CPU_VENDOR)


def current():
    """The plan in force."""
    return _current


def use(plan):
    """Put `plan` (a :class:`Plan`) in force for every later call."""
    global _current
    kernels = _backends.kernels()
    if kernels is not None:
        kernels.set_plan(plan.kernel_settings())
    _current = plan


@contextmanager
def override(**changes):
    """Within the block, the plan in force with `changes` (fields of :class:`Plan`)."""
    previous = _current
    use(dataclasses.replace(previous, **changes))
    try:
        yield _current
    finally:
        use(previous)


use(_current)
