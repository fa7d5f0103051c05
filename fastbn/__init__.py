"""fastbn: fast, exact CPU batch, spatial batch, layer, group and RMS normalization for NumPy.

The API follows the cs231n ``layers.py`` contract::

    out, cache = fastbn.batchnorm_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = fastbn.batchnorm_backward(dout, cache)

Every function takes ``backend='auto' | 'cython' | 'numpy'``; :mod:`fastbn.reference` holds the
pure NumPy implementations the compiled kernels are tested against.
"""
from typing import TYPE_CHECKING

from fastbn import _api, layers  # noqa: F401  (fastbn.layers: stateful layers, trained state)
from fastbn._api import *  # noqa: F403  (the public functions of every op, fastbn._ops)
from fastbn._backends import available_backends, serial_build_message
from fastbn._config import show_config
from fastbn._fold import fold_batchnorm
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
    "fold_batchnorm",
    "get_num_threads",
    "merge_moments",
    "set_buffer_cache",
    "set_num_threads",
    "show_config",
]

if TYPE_CHECKING:  # the op table's functions by name, for type checkers (tests/test_typing.py)
    from fastbn._api import batchnorm_backward as batchnorm_backward
    from fastbn._api import batchnorm_backward_alt as batchnorm_backward_alt
    from fastbn._api import batchnorm_forward as batchnorm_forward
    from fastbn._api import batchnorm_moments as batchnorm_moments
    from fastbn._api import batchnorm_relu_backward as batchnorm_relu_backward
    from fastbn._api import batchnorm_relu_forward as batchnorm_relu_forward
    from fastbn._api import layernorm_backward as layernorm_backward
    from fastbn._api import layernorm_forward as layernorm_forward
    from fastbn._api import rmsnorm_backward as rmsnorm_backward
    from fastbn._api import rmsnorm_forward as rmsnorm_forward
    from fastbn._api import spatial_batchnorm_backward as spatial_batchnorm_backward
    from fastbn._api import spatial_batchnorm_forward as spatial_batchnorm_forward
    from fastbn._api import spatial_batchnorm_relu_backward as spatial_batchnorm_relu_backward
    from fastbn._api import spatial_batchnorm_relu_forward as spatial_batchnorm_relu_forward
    from fastbn._api import spatial_groupnorm_backward as spatial_groupnorm_backward
    from fastbn._api import spatial_groupnorm_forward as spatial_groupnorm_forward

def _warn_if_serial_build():
    """The RuntimeWarning of a serial build (``_backends.serial_build_message``), pointing at the
    line that imports fastbn: issued here, in Python, since a compiled module has no frame of its
    own to count the warning's stacklevel from."""
    message = serial_build_message()
    if message is not None:
        import warnings

        warnings.warn(message, RuntimeWarning, stacklevel=3)  # past this function and __init__


_warn_if_serial_build()
del _warn_if_serial_build
