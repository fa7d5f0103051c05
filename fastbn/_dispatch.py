"""Validate once, then run the chosen backend: what every public function of :mod:`fastbn._api`
calls with its op's name, and :mod:`fastbn.distributed` with input it has prepared itself.

Compiled with the rest of the glue (setup.py's GLUE), so that a call passes through it without
Python frames of its own.
"""
from fastbn import _backends, _compiled, reference
from fastbn._moments import check_forward_moments
from fastbn._ops import OPS
from fastbn._validation import prepare, prepare_backward


def forward(name, x, gamma, beta, param, groups=None, *, backend, out, moments=None,
            residual=None):
    """Validate the arguments of op `name`'s forward, then run it on `backend` (batchnorm ops:
    with the given `moments`, when there are; fused ops: with the `residual`)."""
    spec = OPS[name]
    prepared = prepare(spec, x, gamma, beta, param, groups, out, residual,
                       whole_batch=moments is None)
    if moments is not None:
        moments = check_forward_moments(moments, prepared)
    return run_forward(spec, prepared, backend, moments)


def run_forward(spec, prepared, backend, moments=None):
    """Run `spec`'s forward on a Prepared input on `backend`, with checked `moments` or None:
    the one place where the local and the distributed forward (fastbn.distributed) compute."""
    numpy = _backends.resolve(backend) == "numpy"
    run = reference.forward_impl(spec) if numpy else _compiled.forward
    return run(prepared) if moments is None else run(prepared, moments)


def backward(name, function, dout, cache, *, backend, out):
    """Validate the arguments of op `name`'s backward `function`, then run it on `backend`."""
    spec = OPS[name]
    dout, out = prepare_backward(dout, cache, spec, function, out)
    if _backends.resolve(backend) == "numpy":
        return reference.backward_impl(spec, function)(dout, cache, out)
    return _compiled.backward(dout, cache, out)
