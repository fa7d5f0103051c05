"""The operations under test, described once so that every test can be parametrized over them.

An :class:`Op` knows how to make valid inputs of a given shape, how to call its forward and its
backward(s) through the public API, and which shapes are worth testing. Tests iterate over
``OPS`` (or ``CASES``: op x shape) instead of hand-writing a test per function.
"""
from dataclasses import dataclass, field

import numpy as np

import fastbn
import fastbn._ops
import fastbn._validation

DTYPES = (np.float64, np.float32)
BACKENDS = ("cython", "numpy")

# Relative tolerances for compiled == reference (elementwise, scaled by the largest magnitude).
RTOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


@dataclass(frozen=True)
class Op:
    """One public operation (a row of the op table, :data:`fastbn._ops.OPS`) with a mode/layout
    variant, under test."""

    name: str
    shapes: tuple
    mode: str = "train"  # 'train' or 'test' for batch statistics ops; 'train' otherwise
    layout: str = None  # default: the op's first layout
    param_broadcast: bool = False  # give gamma/beta in their broadcast shape ((1, C, 1, 1), ...)
    axis: int = None  # layernorm/RMSNorm: ln_param['axis'] (normalize the trailing axes from it)
    residual: bool = False  # fused ops: the forward gets a residual (see residual_for)

    def __post_init__(self):
        if self.layout is None:
            object.__setattr__(self, "layout", self.spec.layouts[0])

    @property
    def spec(self):
        return fastbn._ops.OPS[self.name]

    @property
    def forward_name(self):
        return self.spec.forward

    @property
    def backward_names(self):
        return self.spec.backward

    @property
    def id(self):
        parts = [self.name, self.mode]
        if len(self.spec.layouts) > 1:
            parts.append(self.layout)
        if self.param_broadcast:
            parts.append("bcast")
        if self.axis is not None:
            parts.append(f"axis{self.axis}")
        if self.residual:
            parts.append("res")
        return "-".join(parts)

    @property
    def uses_running_stats(self):
        return self.spec.running_stats

    @property
    def roles(self):
        """This op's entry of ROLE_SHAPES (ops over several trailing axes: AXIS_ROLE_SHAPES)."""
        return ROLE_SHAPES[self.name] if self.axis is None else AXIS_ROLE_SHAPES

    def shape(self, role):
        """This op's shape for a test `role` (ROLE_SHAPES), in its layout (NHWC: channels last)."""
        shape = self.roles[role]
        if self.layout == "NHWC":
            shape = (shape[0], shape[2], shape[3], shape[1])
        return shape

    def role_shapes(self, role):
        """This op's shapes for a role whose entry is a tuple of shapes."""
        return [(s[0], s[2], s[3], s[1]) if self.layout == "NHWC" else s
                for s in self.roles[role]]

    def feature_axis(self, shape):
        """ln_param['axis'] counted from 0 for an x of `shape` (None: the layout's)."""
        return None if self.axis is None else self.axis % len(shape)

    def channels(self, shape):
        return self.spec.channels(shape, self.layout, self.feature_axis(shape))

    def G(self, shape):
        """Groups for grouped ops: the largest of (4, 2, 1) that divides C; None otherwise."""
        if not self.spec.grouped:
            return None
        C = self.channels(shape)
        return next(g for g in (4, 2, 1) if C % g == 0)

    def param_shape(self, shape):
        if not self.param_broadcast:
            return (self.channels(shape),)
        return self.spec.param_shape(shape, self.layout, self.feature_axis(shape))

    def make(self, shape, dtype=np.float64, seed=0, offset=3.0, scale=2.0):
        """Random valid (x, gamma, beta, param) for this op; test mode gets running stats."""
        rng = np.random.default_rng(seed)
        x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
        pshape = self.param_shape(shape)
        gamma = (1.0 + 0.5 * rng.standard_normal(pshape)).astype(dtype)
        beta = rng.standard_normal(pshape).astype(dtype)
        param = {"mode": self.mode} if self.spec.running_stats else {"mode": "train"}
        if len(self.spec.layouts) > 1:
            param["layout"] = self.layout
        if self.axis is not None:
            param["axis"] = self.axis
        if self.mode == "test":
            C = self.channels(shape)
            param["running_mean"] = (offset + 0.1 * rng.standard_normal(C)).astype(dtype)
            param["running_var"] = (scale**2 * (1 + 0.1 * rng.random(C))).astype(dtype)
        return x, gamma, beta, param

    def args(self, x, gamma, beta, param):
        """Positional arguments of the public forward."""
        return self.spec.forward_args(x, gamma, beta, param, self.G(x.shape))

    def residual_for(self, x):
        """The residual this op's forward gets with x: fixed values of x's shape, in the
        computation dtype of x (so that a test converting x gets the same residual), or None."""
        if not self.residual or not isinstance(x, np.ndarray):
            return None
        dtype = fastbn._validation.compute_dtype(x, "x")[0]
        return np.random.default_rng(7).standard_normal(x.shape).astype(dtype)

    def _residual_kw(self, x, kw):
        if self.residual and "residual" not in kw:
            kw = dict(kw, residual=self.residual_for(x))
        return kw

    def forward(self, x, gamma, beta, param, backend="auto", **kw):
        return getattr(fastbn, self.forward_name)(*self.args(x, gamma, beta, param), backend=backend,
                                                  **self._residual_kw(x, kw))

    def reference_forward(self, x, gamma, beta, param, **kw):
        return getattr(fastbn.reference, self.forward_name)(*self.args(x, gamma, beta, param),
                                                            **self._residual_kw(x, kw))

    @property
    def n_grads(self):
        """How many arrays the backward returns: dx, dgamma[, dbeta][, dresidual]."""
        return 2 + self.spec.beta + self.residual

    def backward(self, dout, cache, backend="auto", which=0):
        return getattr(fastbn, self.backward_names[which])(dout, cache, backend=backend)

    def grads(self, results):
        """Name the gradients a backward returned: dx, dgamma, (ops with beta) dbeta and
        (fused ops given a residual) dresidual."""
        names = ("dx", "dgamma") + (("dbeta",) if self.spec.beta else ()) + (
            ("dresidual",) if self.residual else ())
        return dict(zip(names, results))


# (1003, 50), (1200, 64) and NHWC (8, 32, 32, 3): the compiled kernels see few columns as wide
# rows of several rows each, the last three with rows left over ((1200, 64): 17 rows of 64 per
# wide row, since 16 would make it 4 KiB of float32).
BN_SHAPES = ((2, 1), (3, 7), (64, 33), (1000, 257), (5, 1024), (127, 3), (1003, 50), (1200, 64))
# Spatial ops take any rank: (N, C, L) and (N, C, D, H, W) as well as images.
SPATIAL_SHAPES = ((2, 3, 4, 5), (1, 2, 3, 3), (8, 16, 7, 7), (3, 5, 1, 1), (2, 8, 13, 11), (8, 32, 32, 3),
                  (4, 3, 10), (2, 3, 2, 3, 4))
# (5, 16500): rows of more than 64 KiB, which the compiled backward takes by column segments;
# (300, 256) and (40, 128): the four-row and register-resident short-row paths.
LN_SHAPES = ((1, 1), (3, 7), (64, 33), (2, 3, 17), (300, 257), (4, 1024), (5, 16500), (300, 256),
             (40, 128))
GN_SHAPES = ((1, 4, 3, 3), (2, 6, 5, 5), (3, 8, 7, 7), (2, 16, 1, 1), (4, 12, 9, 13), (3, 8), (2, 6, 10),
             (2, 4, 3, 2, 5))
# Layernorm and RMSNorm over several trailing axes (ln_param['axis']).
LN_AXIS_SHAPES = ((4, 6, 7), (2, 3, 4, 5), (3, 1, 9), (2, 70, 33))

# Shapes of each op for the roles tests give them (spatial ops in NCHW order; Op.shape puts the
# channels last for NHWC): "numerics" (oracle comparisons), "grad" (numeric gradient checks),
# "threads" (concurrency), "small" (10,000-call leak test), "alloc" (allocation test), and
# "bits" (several shapes: 1 vs 2 threads bit for bit, on the paths large inputs take). Batchnorm:
# wide rows (3000, 70); column blocks of a large (2048, 2048) and a small (300, 1001) array, and
# blocks shared by the threads (4100, 528). Rows: short rows held in registers (2000, 64), four
# at a time (700, 300), column segments of long rows (9, 20000).
ROLE_SHAPES = {
    "batchnorm": {"numerics": (64, 33), "grad": (5, 4), "threads": (700, 130), "small": (8, 6),
                  "alloc": (20000, 16),
                  "bits": ((3000, 70), (2048, 2048), (300, 1001), (4100, 528))},
    "spatial_batchnorm": {"numerics": (8, 5, 6, 7), "grad": (3, 2, 3, 2), "threads": (8, 16, 24, 24),
                          "small": (2, 3, 4, 4), "alloc": (20000, 16, 1, 1),
                          "bits": ((16, 8, 24, 24),)},
    "layernorm": {"numerics": (48, 40), "grad": (4, 6), "threads": (500, 160), "small": (4, 10),
                  "alloc": (20000, 16), "bits": ((2000, 64), (700, 300), (9, 20000))},
    "groupnorm": {"numerics": (4, 8, 5, 6), "grad": (2, 4, 3, 2), "threads": (8, 16, 24, 24),
                  "small": (2, 4, 3, 3), "alloc": (5000, 16, 2, 2), "bits": ((16, 8, 24, 24),)},
    "rmsnorm": {"numerics": (48, 40), "grad": (4, 6), "threads": (500, 160), "small": (4, 10),
                "alloc": (20000, 16), "bits": ((2000, 64), (700, 300), (9, 20000))},
}
# The fused ops run the loops of their unfused op; "bits" adds shapes whose rows or planes are
# not whole bytes of the mask (the forward's tasks are cut at multiples of 8 elements).
ROLE_SHAPES["batchnorm_relu"] = dict(
    ROLE_SHAPES["batchnorm"], bits=ROLE_SHAPES["batchnorm"]["bits"] + ((3001, 37), (1001, 203)))
ROLE_SHAPES["spatial_batchnorm_relu"] = dict(
    ROLE_SHAPES["spatial_batchnorm"],
    bits=ROLE_SHAPES["spatial_batchnorm"]["bits"] + ((16, 24, 15, 15), (64, 3, 13, 13)))

# Layernorm and RMSNorm over the trailing axes from ln_param['axis'] (-2 or 1 here): 3-D shapes
# whose features (the last two axes) stay few, as the roles assume.
AXIS_ROLE_SHAPES = {"numerics": (6, 8, 10), "grad": (3, 3, 2), "threads": (100, 16, 40),
                    "small": (2, 3, 4), "alloc": (2000, 10, 16),
                    "bits": ((500, 8, 16), (9, 40, 500))}

OPS = (
    Op("batchnorm", BN_SHAPES),
    Op("batchnorm", BN_SHAPES, mode="test"),
    Op("batchnorm", BN_SHAPES[:3], param_broadcast=True),
    Op("spatial_batchnorm", SPATIAL_SHAPES, layout="NCHW"),
    Op("spatial_batchnorm", SPATIAL_SHAPES, layout="NHWC"),
    Op("spatial_batchnorm", SPATIAL_SHAPES, mode="test", layout="NCHW"),
    Op("spatial_batchnorm", SPATIAL_SHAPES, mode="test", layout="NHWC"),
    Op("spatial_batchnorm", SPATIAL_SHAPES[:3], layout="NCHW", param_broadcast=True),
    Op("layernorm", LN_SHAPES),
    Op("layernorm", LN_SHAPES[:3], param_broadcast=True),
    Op("layernorm", LN_AXIS_SHAPES, axis=-2),
    Op("layernorm", LN_AXIS_SHAPES[:3], axis=1, param_broadcast=True),
    Op("groupnorm", GN_SHAPES),
    Op("groupnorm", GN_SHAPES, param_broadcast=True),
    Op("rmsnorm", LN_SHAPES),
    Op("rmsnorm", LN_SHAPES[:3], param_broadcast=True),
    Op("rmsnorm", LN_AXIS_SHAPES, axis=-2, param_broadcast=True),
    Op("batchnorm_relu", BN_SHAPES),
    Op("batchnorm_relu", BN_SHAPES, mode="test"),
    Op("batchnorm_relu", BN_SHAPES[:5], residual=True),
    Op("spatial_batchnorm_relu", SPATIAL_SHAPES, layout="NCHW"),
    Op("spatial_batchnorm_relu", SPATIAL_SHAPES, layout="NHWC"),
    Op("spatial_batchnorm_relu", SPATIAL_SHAPES, mode="test", layout="NCHW"),
    Op("spatial_batchnorm_relu", SPATIAL_SHAPES, layout="NCHW", residual=True),
    Op("spatial_batchnorm_relu", SPATIAL_SHAPES, mode="test", layout="NHWC", residual=True),
)


def run_script(tmp_path, name, source, timeout=120):
    """Run `source` as the script `name` in a fresh Python process that imports this checkout's
    fastbn; assert that it exits with 0 and prints only "ok"."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / name
    script.write_text(source)
    root = str(Path(fastbn.__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ, PYTHONPATH=root))
    assert result.returncode == 0 and result.stdout.split() == ["ok"], result.stderr[-3000:]


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
