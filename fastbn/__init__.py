"""fastbn: fast, exact CPU batch, spatial batch, layer, group and RMS normalization for NumPy.

The API follows the cs231n ``layers.py`` contract::

    out, cache = fastbn.batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = fastbn.batchnorm_backward(dout, cache)

Every function takes ``backend='auto' | 'cython' | 'numpy'``; :mod:`fastbn.reference` holds the
pure NumPy implementations the compiled kernels are tested against.
"""
from fastbn import _api
from fastbn._api import *  # noqa: F403  (the public functions of every op, fastbn._ops)
from fastbn._backends import available_backends
from fastbn._config import show_config
from fastbn._fold import fold_batchnorm
from fastbn._results import NormCache
from fastbn._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

__all__ = [
    *_api.__all__,  # the public functions of every op in the op table (fastbn._ops)
    "NormCache",
    "available_backends",
    "fold_batchnorm",
    "get_num_threads",
    "set_num_threads",
    "show_config",
]
