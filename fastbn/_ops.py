"""The table of operations: one row per public operation, read by everything else.

A row (:class:`OpSpec`) says what an operation takes and computes: the public function names,
the parameter dict, the layouts it accepts, whether it keeps running statistics, takes groups,
centres its rows and has a shift ``beta``, and its PyTorch counterpart. The public wrappers
(:mod:`fastbn._api`), input validation (:mod:`fastbn._validation`), the NumPy reference
(:mod:`fastbn.reference`), the compiled glue (:mod:`fastbn._compiled`), the benchmark cases
(:mod:`fastbn._bench`) and the tests' registry all read it, so that one vocabulary of op names
runs through the package and a new operation is a new row here plus the loops it really needs.

A layout names where the channel (feature) axis of x is and how many dimensions x has:

========  =====  ===============  ============  =======================================
layout    ndim   x                channel axis  kernel family (batch statistics / rows)
========  =====  ===============  ============  =======================================
``NC``    2      (N, D)           1             ``cols``
``NCHW``  4      (N, C, H, W)     1             ``planes`` / ``rows`` (groups)
``NHWC``  4      (N, H, W, C)     3             ``cols``
``ND``    >= 1   (..., D)         last          ``rows``
========  =====  ===============  ============  =======================================

Kernel families (see :mod:`fastbn._kernels`): ``cols`` takes x as (M, C) with statistics per
column, ``planes`` as (N, C, L) with statistics per channel over N contiguous planes, ``rows`` as
(R, Cg, L) with statistics per row of Cg * L values (R = N * G).
"""
import math
from dataclasses import dataclass

__all__ = ["OpSpec", "OPS", "LAYOUTS", "public_functions"]


@dataclass(frozen=True)
class Layout:
    """Where the channels of x are: ``ndim`` (None: any rank >= 1), the channel axis and the
    shape as the error messages spell it."""

    name: str
    ndim: object
    channel_axis: int
    text: str

    def axis(self, ndim):
        """The channel axis of an x of `ndim` dimensions, counted from 0."""
        return self.channel_axis % ndim

    def describe(self):
        if self.ndim is None:
            return f"an array of at least 1 dimension, shape {self.text}"
        return f"a {self.ndim}-D array of shape {self.text}"


LAYOUTS = {
    "NC": Layout("NC", 2, 1, "(N, D)"),
    "NCHW": Layout("NCHW", 4, 1, "(N, C, H, W)"),
    "NHWC": Layout("NHWC", 4, 3, "(N, H, W, C)"),
    "ND": Layout("ND", None, -1, "(..., D)"),
}


@dataclass(frozen=True)
class OpSpec:
    """One public operation.

    Attributes
    ----------
    name : str
        The op name used everywhere (cache.op, benchmark cases, test ids).
    forward : str
        Name of the public forward function.
    backward : tuple of str
        Names of the public backward functions (the first is the main one).
    param_name : str
        Name of the parameter dict argument (``'bn_param'``, ``'ln_param'``, ``'gn_param'``).
    layouts : tuple of str
        Accepted layouts (keys of :data:`LAYOUTS`); the first is the default. With more than
        one, ``param['layout']`` chooses.
    running_stats : bool
        Batch statistics per channel with ``'mode'`` and running statistics (batchnorm);
        otherwise statistics per row (sample, group), computed in every call.
    grouped : bool
        Takes a group count ``G`` (groupnorm).
    center : bool
        Subtracts the mean; False for RMSNorm (``x / sqrt(mean(x**2) + eps)``).
    beta : bool
        Has a shift parameter beta (and returns dbeta).
    torch : str
        The ``torch.nn.functional`` counterpart (benchmarks and cross-checks).
    relu : bool
        Fuses a ReLU epilogue into the op named :attr:`unfused`: the forward takes an optional
        ``residual`` and returns ``max(op(x) + residual, 0)``; the cache keeps the ReLU's mask
        packed (``NormCache.mask``); the backward returns ``dresidual`` too when the forward
        had a residual.
    """

    name: str
    forward: str
    backward: tuple
    param_name: str
    layouts: tuple
    running_stats: bool = False
    grouped: bool = False
    center: bool = True
    beta: bool = True
    torch: str = ""
    relu: bool = False

    @property
    def unfused(self):
        """The op whose computation a fused op extends (``'batchnorm'`` for
        ``'batchnorm_relu'``); the op itself otherwise."""
        return self.name.removesuffix("_relu") if self.relu else self.name

    @property
    def functions(self):
        """The public function names of this op: forward first."""
        return (self.forward, *self.backward)

    def forward_args(self, x, gamma, beta, param, groups=None):
        """The positional arguments of the public forward, in its order:
        ``(x, gamma[, beta][, G], param)``."""
        return (x, gamma, *((beta,) if self.beta else ()), *((groups,) if self.grouped else ()),
                param)

    @property
    def directions(self):
        """What the benchmarks time: the train-mode forward, the test-mode forward (ops with
        running statistics) and the backward."""
        return ("forward", "test", "backward") if self.running_stats else ("forward", "backward")

    def layout(self, param):
        """The layout named in `param` (validated by the caller) or the default."""
        return param.get("layout", self.layouts[0]) if len(self.layouts) > 1 else self.layouts[0]

    def family(self, layout):
        """The kernel family that processes this op in `layout`."""
        if not self.running_stats:
            return "rows"
        return "planes" if layout == "NCHW" else "cols"

    def channels(self, shape, layout):
        """The number of channels (features) of an x of `shape`."""
        return shape[LAYOUTS[layout].axis(len(shape))]

    def param_shape(self, shape, layout):
        """The shape of gamma/beta that broadcasts against x ((C,) is accepted too)."""
        axis = LAYOUTS[layout].axis(len(shape))
        return tuple(n if a == axis else 1 for a, n in enumerate(shape))

    def view(self, shape, layout, groups=1):
        """``(family, view_shape)``: the free reshape of x that the kernels and the reference
        process: ``cols`` (M, C), ``planes`` (N, C, L), ``rows`` (N * G, C // G, L), where N is
        the product of the axes before the channel axis and L of those after it."""
        family = self.family(layout)
        axis = LAYOUTS[layout].axis(len(shape))
        C = shape[axis]
        before, after = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
        if family == "cols":
            return family, (before * after, C)
        if family == "planes":
            return family, (before, C, after)
        return family, (before * groups, C // groups if groups else 0, after)

    def stat_shape(self, shape, layout, groups=1):
        """Shape of ``cache.mean`` / ``cache.invstd``: (C,) for batch statistics; else the axes
        before the channel axis, then G for grouped ops."""
        if self.running_stats:
            return (self.channels(shape, layout),)
        axis = LAYOUTS[layout].axis(len(shape))
        return tuple(shape[:axis]) + ((groups,) if self.grouped else ())

    def per_channel(self, shape, layout):
        """Values per channel: the count M of the batch statistics."""
        axis = LAYOUTS[layout].axis(len(shape))
        return math.prod(n for a, n in enumerate(shape) if a != axis)


OPS = {
    spec.name: spec
    for spec in (
        OpSpec("batchnorm", "batchnorm_forward", ("batchnorm_backward", "batchnorm_backward_alt"),
               "bn_param", ("NC",), running_stats=True, torch="batch_norm"),
        OpSpec("spatial_batchnorm", "spatial_batchnorm_forward", ("spatial_batchnorm_backward",),
               "bn_param", ("NCHW", "NHWC"), running_stats=True, torch="batch_norm"),
        OpSpec("layernorm", "layernorm_forward", ("layernorm_backward",), "ln_param", ("ND",),
               torch="layer_norm"),
        OpSpec("groupnorm", "spatial_groupnorm_forward", ("spatial_groupnorm_backward",),
               "gn_param", ("NCHW",), grouped=True, torch="group_norm"),
        OpSpec("rmsnorm", "rmsnorm_forward", ("rmsnorm_backward",), "ln_param", ("ND",),
               center=False, beta=False, torch="rms_norm"),
        OpSpec("batchnorm_relu", "batchnorm_relu_forward", ("batchnorm_relu_backward",),
               "bn_param", ("NC",), running_stats=True, torch="batch_norm", relu=True),
        OpSpec("spatial_batchnorm_relu", "spatial_batchnorm_relu_forward",
               ("spatial_batchnorm_relu_backward",), "bn_param", ("NCHW", "NHWC"),
               running_stats=True, torch="batch_norm", relu=True),
    )
}


def public_functions():
    """Every public function name of every op, in table order."""
    return [name for spec in OPS.values() for name in spec.functions]
