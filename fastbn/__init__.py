"""fastbn: fast, exact CPU batch, spatial batch, layer, group and RMS normalization for NumPy.

The API follows the cs231n ``layers.py`` contract::

    out, cache = fastbn.batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = fastbn.batchnorm_backward(dout, cache)

Every function takes ``backend='auto' | 'cython' | 'numpy'``; :mod:`fastbn.reference` holds the
pure NumPy implementations the compiled kernels are tested against.
"""
from fastbn import _api, layers  # noqa: F401  (fastbn.layers: stateful layers, trained state)
from fastbn._api import *  # noqa: F403  (the public functions of every op, fastbn._ops)
from fastbn._backends import available_backends
from fastbn._config import show_config
from fastbn._memory import buffer_cache_info, set_buffer_cache
from fastbn._moments import Moments, merge_moments
from fastbn._results import NormCache
from fastbn._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    *_api.__all__,  # the public functions of every op in the op table (fastbn._ops), batchnorm_moments
    "Moments",
    "NormCache",
    "available_backends",
    "buffer_cache_info",
    "get_num_threads",
    "merge_moments",
    "set_buffer_cache",
    "set_num_threads",
    "show_config",
]
