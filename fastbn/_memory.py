"""The buffer cache: output and dx arrays whose memory is reused after the caller drops them.

A training loop drops last iteration's outputs and gradients and asks for new ones of the same
sizes. Large arrays come from the C library as fresh mappings that the OS zeroes page by page on
first touch and unmaps on free, which costs more than normalising them. The compiled backend
therefore allocates its outputs of at least ``Plan.buffer_min_bytes`` through a NumPy memory
handler (NEP 49) whose freed blocks go to a bounded pool (``_src/buffer_pool.h``); the arrays
are ordinary NumPy arrays that own their data.
"""
import os

import numpy as np

from fastbn import _planner

__all__ = ["buffer_cache_info", "set_buffer_cache"]

try:
    from fastbn import _buffers
except ImportError:  # the compiled extension is not built
    _buffers = None

ENV = "FASTBN_BUFFER_CACHE"
DEFAULT_MAX_BYTES = 256 << 20
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _default_max_bytes():
    """256 MiB, or an eighth of the physical memory where that is less."""
    physical = _physical_memory()
    return DEFAULT_MAX_BYTES if physical is None else min(DEFAULT_MAX_BYTES, physical // 8)


def _parse(text):
    """Bytes from the environment variable's text: an integer with an optional K, M or G."""
    value = text.strip().upper()
    value = value.removesuffix("IB") if value[-3:-2] in ("K", "M", "G") else value.removesuffix("B")
    unit = value[-1:] if value[-1:] in ("K", "M", "G") else ""
    number = value[: len(value) - len(unit)]
    nbytes = int(number) * _UNITS[unit] if number.isdigit() and number.isascii() else -1
    if not 0 <= nbytes < 1 << 63:
        raise ValueError(f"{ENV} must be a number of bytes such as 0, 268435456 or 256M, "
                         f"got {text!r}")
    return nbytes


def set_buffer_cache(max_bytes: int) -> None:
    """Bound the memory fastbn keeps for reuse by later outputs; 0 turns the cache off.

    Outputs and ``dx`` arrays of the compiled backend of at least 128 KiB are allocated through
    fastbn's buffer cache: when you drop such an array, its memory is kept (up to `max_bytes`
    in all, oldest blocks evicted first) and the next output of a similar size reuses it
    without the OS mapping and zeroing fresh pages. Blocks of 2 MiB or more ask for
    transparent huge pages. The arrays are ordinary NumPy arrays; this only decides what
    happens to their memory after they are freed. The default is 256 MiB (an eighth of the
    physical memory if that is less), or the environment variable ``FASTBN_BUFFER_CACHE``
    (bytes, with an optional K, M or G suffix) read at import.

    Parameters
    ----------
    max_bytes : int
        Bytes of freed blocks to keep, at most (>= 0). Arrays handed out earlier stay valid
        whatever the setting; their memory goes back under the setting in force when they are
        freed.

    Examples
    --------
    >>> import fastbn
    >>> fastbn.set_buffer_cache(64 << 20)
    >>> fastbn.buffer_cache_info()["max_bytes"]
    67108864
    >>> fastbn.set_buffer_cache(256 << 20)
    """
    if (isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer))
            or not 0 <= max_bytes < 1 << 63):
        raise ValueError(f"max_bytes must be an integer >= 0 (and < 2**63), got {max_bytes!r}")
    if _buffers is not None:
        _buffers.set_max_bytes(int(max_bytes))


def buffer_cache_info() -> dict:
    """What the buffer cache holds: its limit and use, in bytes, and how often it was reused.

    Returns
    -------
    dict
        ``max_bytes`` (the limit, 0 when off), ``cached_bytes`` (freed blocks kept for reuse),
        ``live_bytes`` (blocks of arrays still alive), ``blocks`` (freed blocks kept),
        ``hits`` and ``misses`` (allocations served from the cache or newly mapped). All zero
        without the compiled extension.

    Examples
    --------
    >>> import fastbn
    >>> sorted(fastbn.buffer_cache_info())
    ['blocks', 'cached_bytes', 'hits', 'live_bytes', 'max_bytes', 'misses']
    """
    if _buffers is None:
        return dict.fromkeys(("max_bytes", "cached_bytes", "live_bytes", "blocks", "hits",
                              "misses"), 0)
    return _buffers.info()


def empty(shape, dtype):
    """An uninitialised array of `shape` (a tuple) and `dtype` (a native-byte-order NumPy dtype)
    for an output: from the buffer cache when it is large enough."""
    if _buffers is None:
        return np.empty(shape, dtype)
    return _buffers.empty(shape, dtype, 0, _planner.current().buffer_min_bytes)


def empty_like(a, page_shift=0, shape=None):
    """An uninitialised array like the C-contiguous `a` (of `shape` when given: as many values),
    for an output computed from it: from the buffer cache when it is large enough, starting at
    `a`'s offset within a page plus `page_shift` bytes (a multiple of 64) -- at the same offset,
    for a forward's output, the kernels' loops meet line and page boundaries in both at once; a
    backward's dx goes half a page further, away from x and dy, which usually share their offset
    (docs/decisions.md)."""
    if _buffers is None:
        return np.empty(a.shape if shape is None else shape, a.dtype)
    return _buffers.empty_like(a, page_shift, _planner.current().buffer_min_bytes, shape)


set_buffer_cache(_parse(os.environ[ENV]) if ENV in os.environ else _default_max_bytes())
