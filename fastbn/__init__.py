"""fastbn: fast, exact CPU batch, spatial batch, layer, group and RMS normalization for NumPy.

The API follows the cs231n ``layers.py`` contract::

    out, cache = fastbn.batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = fastbn.batchnorm_backward(dout, cache)

Every function takes ``backend='auto' | 'cython' | 'numpy'``; :mod:`fastbn.reference` holds the
pure NumPy implementations the compiled kernels are tested against.
"""
from fastbn._api import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    layernorm_backward,
    layernorm_forward,
    rmsnorm_backward,
    rmsnorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
)
from fastbn._backends import available_backends, warn_if_serial_build
from fastbn._config import show_config
from fastbn._results import NormCache
from fastbn._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

# Spelled out (not taken from the op table) so that type checkers see every public name;
# tests/test_typing.py checks that it lists every public function of the op table.
__all__ = [
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_alt",
    "spatial_batchnorm_forward",
    "spatial_batchnorm_backward",
    "layernorm_forward",
    "layernorm_backward",
    "spatial_groupnorm_forward",
    "spatial_groupnorm_backward",
    "rmsnorm_forward",
    "rmsnorm_backward",
    "NormCache",
    "available_backends",
    "get_num_threads",
    "set_num_threads",
    "show_config",
]

warn_if_serial_build()
