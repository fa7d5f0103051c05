"""The operations under test, described once so that every test can be parametrized over them.

An :class:`Op` knows how to make valid inputs of a given shape, how to call its forward and its
backward(s) through the public API, and which shapes are worth testing. Tests iterate over
``OPS`` (or ``CASES``: op x shape) instead of hand-writing a test per function.
"""
from dataclasses import dataclass, field

import numpy as np

import fastbn

DTYPES = (np.float64, np.float32)
BACKENDS = ("cython", "numpy")

# Relative tolerances for compiled == reference (elementwise, scaled by the largest magnitude).
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


@dataclass(frozen=True)
class Op:
    """One public operation (with a mode/layout variant) under test."""

    name: str
    shapes: tuple
    forward_name: str
    backward_names: tuple
    mode: str = "train"  # 'train' or 'test' for batch statistics ops; 'train' otherwise
    layout: str = None  # spatial batchnorm only
    groups: int = None  # groupnorm only: G as a function of C is chosen in param_shape
    param_broadcast: bool = False  # give gamma/beta in their broadcast shape ((1, C, 1, 1), ...)
    extra: dict = field(default_factory=dict)

    @property
    def id(self):
        parts = [self.name, self.mode]
        if self.layout:
            parts.append(self.layout)
        if self.param_broadcast:
            parts.append("bcast")
        return "-".join(parts)

    @property
    def uses_running_stats(self):
        return self.name in ("batchnorm", "spatial_batchnorm")

    def channels(self, shape):
        if self.name == "batchnorm":
            return shape[1]
        if self.name == "spatial_batchnorm":
            return shape[1] if self.layout == "NCHW" else shape[3]
        if self.name == "layernorm":
            return shape[-1]
        return shape[1]

    def G(self, shape):
        """Groups for groupnorm: the largest of (4, 2, 1) that divides C."""
        C = shape[1]
        return next(g for g in (4, 2, 1) if C % g == 0)

    def param_shape(self, shape):
        C = self.channels(shape)
        if not self.param_broadcast:
            return (C,)
        if self.name == "batchnorm":
            return (1, C)
        if self.name == "layernorm":
            return (1,) * (len(shape) - 1) + (C,)
        if self.name == "spatial_batchnorm" and self.layout == "NHWC":
            return (1, 1, 1, C)
        return (1, C, 1, 1)

    def make(self, shape, dtype=np.float64, seed=0, offset=3.0, scale=2.0):
        """Random valid (x, gamma, beta, param) for this op; test mode gets running stats."""
        rng = np.random.default_rng(seed)
        x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
        pshape = self.param_shape(shape)
        gamma = (1.0 + 0.5 * rng.standard_normal(pshape)).astype(dtype)
        beta = rng.standard_normal(pshape).astype(dtype)
        param = {"mode": self.mode}
        if self.layout:
            param["layout"] = self.layout
        if self.mode == "test":
            C = self.channels(shape)
            param["running_mean"] = (offset + 0.1 * rng.standard_normal(C)).astype(dtype)
            param["running_var"] = (scale**2 * (1 + 0.1 * rng.random(C))).astype(dtype)
        return x, gamma, beta, param

    def forward(self, x, gamma, beta, param, backend="auto"):
        fn = getattr(fastbn, self.forward_name)
        if self.name == "groupnorm":
            return fn(x, gamma, beta, self.G(x.shape), param, backend=backend)
        return fn(x, gamma, beta, param, backend=backend)

    def reference_forward(self, x, gamma, beta, param):
        fn = getattr(fastbn.reference, self.forward_name)
        if self.name == "groupnorm":
            return fn(x, gamma, beta, self.G(x.shape), param)
        return fn(x, gamma, beta, param)

    def backward(self, dout, cache, backend="auto", which=0):
        return getattr(fastbn, self.backward_names[which])(dout, cache, backend=backend)


# (1003, 50), (1200, 64) and NHWC (8, 32, 32, 3): the compiled kernels see few columns as wide
# rows of several rows each, the last three with rows left over ((1200, 64): 17 rows of 64 per
# wide row, since 16 would make it 4 KiB of float32).
BN_SHAPES = ((2, 1), (3, 7), (64, 33), (1000, 257), (5, 1024), (127, 3), (1003, 50), (1200, 64))
SPATIAL_SHAPES = ((2, 3, 4, 5), (1, 2, 3, 3), (8, 16, 7, 7), (3, 5, 1, 1), (2, 8, 13, 11), (8, 32, 32, 3))
# (5, 16500): rows of more than 64 KiB, which the compiled backward takes by column segments.
LN_SHAPES = ((1, 1), (3, 7), (64, 33), (2, 3, 17), (300, 257), (4, 1024), (5, 16500))
GN_SHAPES = ((1, 4, 3, 3), (2, 6, 5, 5), (3, 8, 7, 7), (2, 16, 1, 1), (4, 12, 9, 13))

OPS = (
    Op("batchnorm", BN_SHAPES, "batchnorm_forward", ("batchnorm_backward", "batchnorm_backward_alt")),
    Op("batchnorm", BN_SHAPES, "batchnorm_forward", ("batchnorm_backward", "batchnorm_backward_alt"),
       mode="test"),
    Op("batchnorm", BN_SHAPES[:3], "batchnorm_forward", ("batchnorm_backward",), param_broadcast=True),
    Op("spatial_batchnorm", SPATIAL_SHAPES, "spatial_batchnorm_forward",
       ("spatial_batchnorm_backward",), layout="NCHW"),
    Op("spatial_batchnorm", SPATIAL_SHAPES, "spatial_batchnorm_forward",
       ("spatial_batchnorm_backward",), layout="NHWC"),
    Op("spatial_batchnorm", SPATIAL_SHAPES, "spatial_batchnorm_forward",
       ("spatial_batchnorm_backward",), mode="test", layout="NCHW"),
    Op("spatial_batchnorm", SPATIAL_SHAPES, "spatial_batchnorm_forward",
       ("spatial_batchnorm_backward",), mode="test", layout="NHWC"),
    Op("spatial_batchnorm", SPATIAL_SHAPES[:3], "spatial_batchnorm_forward",
       ("spatial_batchnorm_backward",), layout="NCHW", param_broadcast=True),
    Op("layernorm", LN_SHAPES, "layernorm_forward", ("layernorm_backward",)),
    Op("layernorm", LN_SHAPES[:3], "layernorm_forward", ("layernorm_backward",), param_broadcast=True),
    Op("groupnorm", GN_SHAPES, "spatial_groupnorm_forward", ("spatial_groupnorm_backward",)),
    Op("groupnorm", GN_SHAPES, "spatial_groupnorm_forward", ("spatial_groupnorm_backward",),
       param_broadcast=True),
)


def copy_param(param):
    """A copy of a param dict whose arrays (running statistics) are copied too."""
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in param.items()}


def batch_too_small(op, shape):
    """Train-mode batch statistics need at least two values per feature/channel."""
    if not op.uses_running_stats or op.mode != "train":
        return False
    return int(np.prod(shape)) // op.channels(shape) < 2


CASES = [(op, shape) for op in OPS for shape in op.shapes]
CASE_IDS = [f"{op.id}-{'x'.join(map(str, shape))}" for op, shape in CASES]
VALID_CASES = [(op, shape) for op, shape in CASES if not batch_too_small(op, shape)]
VALID_CASE_IDS = [f"{op.id}-{'x'.join(map(str, shape))}" for op, shape in VALID_CASES]


def assert_close(actual, desired, dtype, what="", scale=0.0):
    """Values agree within the per-dtype tolerance, relative to the largest magnitude.

    `scale` raises that magnitude where the result is a cancellation of larger terms (dx of a
    batch of two is exactly 0 up to rounding of terms of size |gamma * invstd * dout|).
    """
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.dtype == desired.dtype, f"{what}: dtype {actual.dtype} != {desired.dtype}"
    assert actual.shape == desired.shape, f"{what}: shape {actual.shape} != {desired.shape}"
    if desired.size == 0:
        return
    rtol = RTOL[np.dtype(dtype)]
    scale = max(float(np.max(np.abs(desired))), scale, np.finfo(np.float64).tiny)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=what)
