"""The table of operations: one row per public operation, read by everything else.

A row (:class:`OpSpec`) says what an operation takes and computes: the public function names,
the parameter dict, the layouts it accepts, whether it keeps running statistics, takes groups,
centres its rows and has a shift ``beta``, and its PyTorch counterpart. The public wrappers
(:mod:`fastbn._api`), input validation (:mod:`fastbn._validation`), the NumPy reference
(:mod:`fastbn.reference`), the compiled glue (:mod:`fastbn._compiled`), the benchmark cases
(:mod:`fastbn._bench`) and the tests' registry all read it, so that one vocabulary of op names
runs through the package and a new operation is a new row here plus the loops it really needs.

A layout names where the channel (feature) axis of x is and how many dimensions x has:

========  ======  ===================  ============  ===================================
layout    ndim    x                    channel axis  kernel family (batch stats / rows)
========  ======  ===================  ============  ===================================
``NC``    2       (N, D)               1             ``cols``
``NCHW``  >= 3    (N, C, *spatial)     1             ``planes`` / ``rows`` (groups)
``NHWC``  >= 3    (N, *spatial, C)     last          ``cols``
``ND``    >= 1    (..., D)             last (or the  ``rows``
                                       trailing axes
                                       from ``axis``)
========  ======  ===================  ============  ===================================

``'channels_first'`` and ``'channels_last'`` are synonyms of ``NCHW`` and ``NHWC``
(:data:`LAYOUT_SYNONYMS`). Groupnorm also takes (N, C) (``OpSpec.min_ndim``). Layernorm and
RMSNorm normalize over the trailing axes from ``ln_param['axis']`` (ONNX's meaning): their
features are then ``x.shape[axis:]``, flattened, and every method below that takes ``axis``
sees them as one channel axis of ``prod(x.shape[axis:])`` values.

Kernel families (see :mod:`fastbn._kernels`): ``cols`` takes x as (M, C) with statistics per
column, ``planes`` as (N, C, L) with statistics per channel over N contiguous planes, ``rows`` as
(R, Cg, L) with statistics per row of Cg * L values (R = N * G). Any rank is one of these free
reshapes (:meth:`OpSpec.view`): N is the product of the axes before the channel axis, L of those
after it.
"""
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["OpSpec", "Shapes", "OPS", "LAYOUTS", "LAYOUT_SYNONYMS", "public_functions"]


def _remembered(method):
    """`method` of an :class:`OpSpec`, remembered per op and arguments (a shape, a layout, ...):
    a training loop calls an op with the same few shapes again and again, and these answers are
    looked up on every call. At most 4096 answers are kept per method and op."""
    answers = {}  # op name -> {arguments: answer}

    @functools.wraps(method)
    def remembered(self, *args):
        try:
            return answers[self.name][args]
        except KeyError:
            mine = answers.setdefault(self.name, {})
            if len(mine) >= 4096:
                mine.clear()
            answer = mine[args] = method(self, *args)
            return answer

    return remembered


@dataclass(frozen=True)
class Layout:
    """Where the channels of x are: the fewest and most dimensions x may have (``max_ndim``
    None: no limit), the channel axis, the shape as the error messages spell it, and whether the
    channels may span every axis from a given one to the last (``trailing``, the ``ND`` layout
    of layernorm and RMSNorm with ``ln_param['axis']``)."""

    name: str
    min_ndim: int
    max_ndim: object
    channel_axis: int
    text: str
    trailing: bool = False

    def axis(self, ndim):
        """The channel axis of an x of `ndim` dimensions, counted from 0."""
        return self.channel_axis % ndim

    def describe(self, min_ndim=None):
        """The accepted x, as error messages spell it (`min_ndim` overrides the layout's)."""
        low = self.min_ndim if min_ndim is None else min_ndim
        if self.max_ndim == low:
            return f"a {low}-D array of shape {self.text}"
        plural = "s" if low != 1 else ""
        return f"an array of at least {low} dimension{plural}, shape {self.text}"


LAYOUTS = {
    "NC": Layout("NC", 2, 2, 1, "(N, D)"),
    "NCHW": Layout("NCHW", 3, None, 1, "(N, C, *spatial)"),
    "NHWC": Layout("NHWC", 3, None, -1, "(N, *spatial, C)"),
    "ND": Layout("ND", 1, None, -1, "(..., D)", trailing=True),
}

# Other names a caller may give ``param['layout']``: Keras' and TensorFlow's words for them.
LAYOUT_SYNONYMS = {"channels_first": "NCHW", "channels_last": "NHWC"}


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
    min_ndim : int
        The fewest dimensions x may have when fewer than its layout's (groupnorm takes (N, C));
        0: the layout's.
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
    min_ndim: int = 0
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
        """The layout named in `param` (validated by the caller; a synonym is translated) or
        the default."""
        if len(self.layouts) == 1:
            return self.layouts[0]
        layout = param.get("layout", self.layouts[0])
        return LAYOUT_SYNONYMS.get(layout, layout)

    @_remembered
    def ndim_range(self, layout):
        """``(fewest, most)`` dimensions of x in `layout` (most None: no limit)."""
        geometry = LAYOUTS[layout]
        return self.min_ndim or geometry.min_ndim, geometry.max_ndim

    def family(self, layout):
        """The kernel family that processes this op in `layout`."""
        if not self.running_stats:
            return "rows"
        return "planes" if layout == "NCHW" else "cols"

    def feature_axes(self, shape, layout, axis=None):
        """``(first, stop)``: the channel (feature) axes of an x of `shape` are
        ``range(first, stop)``: the layout's channel axis, or, for a ``trailing`` layout, every
        axis from `axis` (validated; None: the last axis) on."""
        geometry = LAYOUTS[layout]
        if axis is not None and geometry.trailing:
            return axis % len(shape), len(shape)
        first = geometry.channel_axis % len(shape)
        return first, first + 1

    @_remembered
    def shapes(self, shape, layout, groups=1, axis=None):
        """Everything that follows from the shape of x (a :class:`Shapes` record), looked up
        once per call; the arguments in the order of :meth:`view`. `groups` must divide the
        channel count (the channels themselves do not depend on it, so a caller that has still
        to check G asks with 1 first)."""
        first, stop = self.feature_axes(shape, layout, axis)
        before, after = math.prod(shape[:first]), math.prod(shape[stop:])
        channels = shape[first] if stop == first + 1 else math.prod(shape[first:stop])
        param_shape = (1,) * first + tuple(shape[first:stop]) + (1,) * (len(shape) - stop)
        family = self.family(layout)
        if family == "cols":
            view_shape = (before * after, channels)
        elif family == "planes":
            view_shape = (before, channels, after)
        else:
            view_shape = (before * groups, channels // groups if groups else 0, after)
        if self.running_stats:
            stat_shape = (channels,)
        else:
            stat_shape = tuple(shape[:first]) + ((groups,) if self.grouped else ())
        return Shapes(before, channels, after, param_shape, family, view_shape, stat_shape)

    def channels(self, shape, layout, axis=None):
        """The number of channels (features) of an x of `shape`."""
        return self.shapes(shape, layout, 1, axis).channels

    def param_shape(self, shape, layout, axis=None):
        """The shape of gamma/beta that broadcasts against x ((C,) is accepted too)."""
        return self.shapes(shape, layout, 1, axis).param_shape

    def view(self, shape, layout, groups=1, axis=None):
        """``(family, view_shape)``: the free reshape of x that the kernels and the reference
        process: ``cols`` (M, C), ``planes`` (N, C, L), ``rows`` (N * G, C // G, L), where N is
        the product of the axes before the channel axes and L of those after them."""
        s = self.shapes(shape, layout, groups, axis)
        return s.family, s.view_shape

    def stat_shape(self, shape, layout, groups=1, axis=None):
        """Shape of ``cache.mean`` / ``cache.invstd``: (C,) for batch statistics; else the axes
        before the channel axes, then G for grouped ops."""
        return self.shapes(shape, layout, groups, axis).stat_shape

    def per_channel(self, shape, layout, axis=None):
        """Values per channel: the count M of the batch statistics."""
        s = self.shapes(shape, layout, 1, axis)
        return s.before * s.after


class Shapes(NamedTuple):
    """What follows from the shape of x for one op, layout, axis and G (:meth:`OpSpec.shapes`)."""

    before: int  # product of the axes before the channel axes (N)
    channels: int  # C: product of the channel axes
    after: int  # product of the axes after them (L)
    param_shape: tuple  # gamma/beta's shape that broadcasts against x
    family: str  # the kernel family: "cols", "planes" or "rows"
    view_shape: tuple  # x's free reshape for that family: (M, C), (N, C, L) or (N * G, C // G, L)
    stat_shape: tuple  # shape of the statistics (cache.mean, cache.invstd)


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
               "gn_param", ("NCHW",), grouped=True, torch="group_norm", min_ndim=2),
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
