"""Arrays of more than 2**31 bytes: index arithmetic must not wrap at 32 bits.

Marked slow: about 17 s and 4.5 GB peak RSS here (x and out, then x and dx, of 2.1 GB each; the
backward reuses x as dout). The shape has many rows and few features, so that the kernels'
O(features) scratch stays small and the row offsets ``i * D`` exceed 2**31 bytes. Expected values
come from a closed form, not from the NumPy reference, which would need several more x-sized
temporaries.
"""
import numpy as np
import pytest

import fastbn

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("cython" not in fastbn.available_backends(), reason="compiled kernels are not built"),
]

M, D = 2**25 + 2, 16  # float32: 2**31 + 128 bytes
EPS = 1e-5
GAMMA, BETA = 2.0, 0.5

# Per column j: even rows hold c[j] + d[j], odd rows c[j] - d[j], so the batch mean is c and the
# biased variance d**2, exactly. Equal input rows give bit-identical output rows, so checking rows
# 0 and 1 against the closed form and every other row against them covers the whole array.
c = np.arange(D) * 37.0 - 250.0
d = 1.0 + np.arange(D) % 7
invstd = 1.0 / np.sqrt(d**2 + EPS)


def _check_rows(a, even, odd, atol, what):
    np.testing.assert_allclose(a[0], even, rtol=1e-6, atol=atol, err_msg=what)
    np.testing.assert_allclose(a[1], odd, rtol=1e-6, atol=atol, err_msg=what)
    assert np.array_equal(a[0::2], np.broadcast_to(a[0], a[0::2].shape)), what
    assert np.array_equal(a[1::2], np.broadcast_to(a[1], a[1::2].shape)), what


def test_batchnorm_on_more_than_2_31_bytes():
    x = np.empty((M, D), dtype=np.float32)
    x[0::2] = c + d
    x[1::2] = c - d
    assert x.nbytes > 2**31
    gamma = np.full(D, GAMMA, dtype=np.float32)
    beta = np.full(D, BETA, dtype=np.float32)
    param = {"mode": "train", "momentum": 0.0}
    out, cache = fastbn.batchnorm_forward(x, gamma, beta, param, backend="cython")
    np.testing.assert_allclose(cache.mean, c, rtol=1e-6)
    np.testing.assert_allclose(param["running_var"], d**2, rtol=1e-6)
    _check_rows(out, GAMMA * d * invstd + BETA, -GAMMA * d * invstd + BETA, 0.0, "out")
    del out

    # Backward with dout = x: dbeta = M c, dgamma = M d**2 invstd, and
    # dx = +-gamma * invstd * d * eps / (d**2 + eps): tiny, so it is checked on the scale of the
    # terms it is computed from, gamma * invstd * |x|.
    dx, dgamma, dbeta = fastbn.batchnorm_backward(x, cache, backend="cython")
    np.testing.assert_allclose(dbeta, M * c, rtol=1e-6)
    np.testing.assert_allclose(dgamma, M * d**2 * invstd, rtol=1e-5)
    expected = GAMMA * invstd * d * EPS / (d**2 + EPS)
    terms = float(np.max(GAMMA * invstd * (np.abs(c) + d)))
    _check_rows(dx, expected, -expected, 1e-5 * terms, "dx")
