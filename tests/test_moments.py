"""Statistics as values: fastbn.batchnorm_moments, fastbn.merge_moments and the forward fed
given moments, in one process (the MPI tests are in test_distributed.py)."""
import numpy as np
import pytest

import fastbn

BACKENDS = ("cython", "numpy")
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-12}
# (shape, layout): (N, D) arrays through the column kernels' grid, wide-row and blocked paths,
# NCHW with few and many channels, NHWC, other spatial ranks
GEOMETRIES = {
    "NC_small": ((37, 5), "NCHW"),
    "NC_wide": ((3000, 6), "NCHW"),
    "NC_grid": ((2000, 300), "NCHW"),
    "NC_blocked": ((64, 2048), "NCHW"),
    "NCHW_chunks": ((9, 3, 7, 5), "NCHW"),
    "NCHW_channels": ((4, 16, 6, 6), "NCHW"),
    "NHWC": ((6, 5, 4, 3), "NHWC"),
    "NCL": ((6, 3, 7), "NCHW"),  # any spatial rank, and the layouts' synonyms
    "NCDHW": ((3, 4, 2, 3, 5), "channels_first"),
    "NDHWC": ((3, 2, 3, 5, 4), "channels_last"),
}
# where a batch of 37 rows (or images) is cut: empty, one-row and uneven parts
CUTS = {"halves": (18,), "empty_first": (0, 20), "one_row": (1, 2, 36), "empty_last": (37,),
        "five_parts": (3, 10, 10, 29)}


def _x(geometry, dtype=np.float64, rows=None, offset=3.0):
    shape, layout = GEOMETRIES[geometry]
    shape = (rows if rows is not None else shape[0], *shape[1:])
    return np.random.default_rng(sum(shape)).normal(offset, 2.0, size=shape).astype(dtype), layout


def _channel_axis(x, layout):
    return 1 if x.ndim == 2 or layout in ("NCHW", "channels_first") else x.ndim - 1


def _direct(x, layout):
    """count, mean, m2 per channel in float64, straight from the definition."""
    axis = _channel_axis(x, layout)
    x = np.moveaxis(x.astype(np.float64), axis, -1).reshape(-1, x.shape[axis])
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    return np.full(x.shape[1], float(len(x))), mean, ((x - mean) ** 2).sum(axis=0)


def _relative(a, b):
    return np.max(np.abs(a - b), initial=0.0) / max(np.max(np.abs(b), initial=0.0), 1e-300)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_moments_are_count_mean_and_m2(geometry, dtype, backend):
    x, layout = _x(geometry, dtype)
    moments = fastbn.batchnorm_moments(x, layout=layout, backend=backend)
    count, mean, m2 = _direct(x, layout)
    assert all(a.dtype == np.float64 and a.shape == count.shape for a in moments)
    np.testing.assert_array_equal(moments.count, count)
    assert _relative(moments.mean, mean) <= 1e-12
    assert _relative(moments.m2, m2) <= 1e-12


@pytest.mark.parametrize("geometry", ["NC_small", "NCHW_chunks", "NHWC"])
@pytest.mark.parametrize("rows", [0, 1])
def test_moments_of_tiny_batches(geometry, rows):
    """No rows: count 0, mean 0, m2 0 (the identity of the merge); one row: m2 is 0 for every
    channel whose values are one (N, D) row."""
    x, layout = _x(geometry, rows=rows)
    for backend in BACKENDS:
        count, mean, m2 = fastbn.batchnorm_moments(x, layout=layout, backend=backend)
        expected = _direct(x, layout)
        np.testing.assert_array_equal(count, expected[0])
        assert _relative(mean, expected[1]) <= 1e-12 and _relative(m2, expected[2]) <= 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_forward_fed_its_own_moments_gives_the_bits_of_the_plain_forward(geometry, dtype,
                                                                         backend):
    """The forward fed batchnorm_moments(x) runs the statistics the plain forward computes
    through the same fold and sweep: the output, cache and running statistics are bit-equal."""
    x, layout = _x(geometry, dtype)
    C = x.shape[_channel_axis(x, layout)]
    rng = np.random.default_rng(1)
    gamma, beta = rng.normal(size=C).astype(dtype), rng.normal(size=C).astype(dtype)
    forward = fastbn.batchnorm_forward if x.ndim == 2 else fastbn.spatial_batchnorm_forward
    results = []
    for moments in (None, fastbn.batchnorm_moments(x, layout=layout, backend=backend)):
        param = {"mode": "train", "layout": layout} if x.ndim > 2 else {"mode": "train"}
        param["running_mean"], param["running_var"] = np.ones(C, dtype), np.ones(C, dtype)
        out, cache = forward(x, gamma, beta, param, backend=backend, moments=moments)
        results.append((out, cache.mean, cache.invstd, param["running_mean"], param["running_var"]))
    for plain, fed in zip(*results):
        assert plain.dtype == fed.dtype and plain.tobytes() == fed.tobytes()


@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("geometry", ["NC_small", "NCHW_chunks", "NHWC"])
def test_merged_moments_of_parts_are_the_moments_of_the_whole(geometry, cut):
    x, layout = _x(geometry)
    parts = np.split(x, CUTS[cut])
    merged = fastbn.merge_moments([fastbn.batchnorm_moments(p, layout=layout) for p in parts])
    count, mean, m2 = _direct(x, layout)
    np.testing.assert_array_equal(merged.count, count)
    assert _relative(merged.mean, mean) <= 1e-12
    assert _relative(merged.m2, m2) <= 1e-12


@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cut", CUTS)
def test_forward_of_parts_fed_merged_moments_is_the_forward_of_the_whole(cut, dtype, backend,
                                                                          unbiased):
    """What a rank of fastbn.distributed computes, in one process: each part normalised with the
    merged moments is that part of the forward on the whole batch; the running statistics too,
    the unbiased variance corrected by the whole batch's count (not the part's)."""
    x, _ = _x("NC_small", dtype, offset=1e3)
    gamma, beta = np.full(5, 1.5, dtype), np.full(5, -0.5, dtype)
    whole_param = {"mode": "train", "unbiased": unbiased}
    whole, whole_cache = fastbn.batchnorm_forward(x, gamma, beta, whole_param, backend=backend)
    parts = np.split(x, CUTS[cut])
    merged = fastbn.merge_moments([fastbn.batchnorm_moments(p, backend=backend) for p in parts])
    outputs = []
    for part in parts:
        param = {"mode": "train", "unbiased": unbiased}
        out, cache = fastbn.batchnorm_forward(part, gamma, beta, param, backend=backend,
                                              moments=merged)
        outputs.append(out)
        for got, expected in ((cache.mean, whole_cache.mean), (cache.invstd, whole_cache.invstd),
                              (param["running_var"], whole_param["running_var"])):
            assert _relative(got.astype(np.float64), expected) <= TOLERANCE[dtype]
    assert _relative(np.concatenate(outputs).astype(np.float64), whole) <= TOLERANCE[dtype]


def test_merge_follows_the_given_order_and_is_repeatable():
    """Chan's formula applied left to right: one step equals the formula written out; the same
    sequence gives the same bits every time."""
    x = np.random.default_rng(2).normal(1e4, 1.0, size=(50, 3))
    a, b = fastbn.batchnorm_moments(x[:20]), fastbn.batchnorm_moments(x[20:])
    merged = fastbn.merge_moments([a, b])
    n = a.count + b.count
    delta = b.mean - a.mean
    np.testing.assert_array_equal(merged.mean, a.mean + delta * (b.count / n))
    np.testing.assert_array_equal(merged.m2, a.m2 + b.m2 + delta * delta * (a.count * b.count / n))
    parts = [fastbn.batchnorm_moments(x[i:i + 7]) for i in range(0, 50, 7)]
    first, again = fastbn.merge_moments(parts), fastbn.merge_moments(parts)
    assert all(u.tobytes() == v.tobytes() for u, v in zip(first, again))


def test_empty_parts_change_nothing():
    x = np.random.default_rng(3).normal(size=(10, 4))
    m, empty = fastbn.batchnorm_moments(x), fastbn.batchnorm_moments(x[:0])
    merged = fastbn.merge_moments([empty, m, empty, empty])
    assert all(u.tobytes() == v.tobytes() for u, v in zip(merged, m))
    alone = fastbn.merge_moments([m])
    assert all(u.tobytes() == v.tobytes() for u, v in zip(alone, m))
    assert alone.mean is not m.mean  # a new result, not the caller's arrays


def test_merge_does_not_modify_its_input():
    parts = [fastbn.batchnorm_moments(np.arange(12.0).reshape(4, 3) * k) for k in (1, 2)]
    before = [[a.copy() for a in p] for p in parts]
    fastbn.merge_moments(parts)
    for part, saved in zip(parts, before):
        for a, b in zip(part, saved):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sequence, error, match", [
    ([], ValueError, "at least one"),
    ("moments", TypeError, "fastbn.Moments"),
    ([fastbn.Moments(np.ones(3), np.zeros(3), np.zeros(3)),
      fastbn.Moments(np.ones(2), np.zeros(2), np.zeros(2))], ValueError, "has 2 channels"),
    ([fastbn.Moments(-np.ones(3), np.zeros(3), np.zeros(3))], ValueError,
     "count must be finite and >= 0"),
    ([fastbn.Moments(np.full(3, np.inf), np.zeros(3), np.zeros(3))], ValueError,
     "count must be finite and >= 0"),
    ([fastbn.Moments(np.ones(3), np.zeros(2), np.zeros(3))], ValueError, "must all have shape"),
    ([fastbn.Moments(np.ones(3), "0", np.zeros(3))], TypeError, "mean must be a 1-D real array"),
], ids=["empty", "not_moments", "channels", "negative_count", "infinite_count", "shapes",
        "field_type"])
def test_merge_rejects(sequence, error, match):
    with pytest.raises(error, match=match):
        fastbn.merge_moments(sequence)


def test_merge_rejects_a_single_moments():
    with pytest.raises(TypeError, match="single Moments"):
        fastbn.merge_moments(fastbn.batchnorm_moments(np.ones((3, 2))))


@pytest.mark.parametrize("backend", BACKENDS)
def test_moments_reject(backend):
    with pytest.raises(ValueError, match="layout must be one of"):
        fastbn.batchnorm_moments(np.ones((3, 2)), layout="NC", backend=backend)
    with pytest.raises(ValueError, match=r"layout must be one of \['NCHW', 'NHWC', "
                                         r"'channels_first', 'channels_last'\], got 'NDHWC'"):
        fastbn.batchnorm_moments(np.ones((3, 2, 2, 2, 2)), layout="NDHWC", backend=backend)
    with pytest.raises(ValueError, match=r"x must be a 2-D array of shape \(N, D\) or an array "
                                         r"of at least 3 dimensions, shape \(N, C, \*spatial\), "
                                         r"got a 1-D array of shape \(3,\)"):
        fastbn.batchnorm_moments(np.ones(3), backend=backend)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        fastbn.batchnorm_moments([[1.0, 2.0]], backend=backend)
    with pytest.raises(TypeError, match="dtype"):
        fastbn.batchnorm_moments(np.ones((3, 2), dtype=complex), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_rejects_unusable_moments_and_changes_nothing(backend):
    x = np.random.default_rng(4).normal(size=(6, 3))
    good = fastbn.batchnorm_moments(x)
    cases = [
        ({"mode": "test", "running_mean": np.zeros(3), "running_var": np.ones(3)}, good,
         ValueError, "mode'] is 'test'"),
        ({"mode": "train"}, fastbn.batchnorm_moments(x[:1]), ValueError, "at least 2 values"),
        ({"mode": "train"}, fastbn.batchnorm_moments(x[:, :2]), ValueError, r"shape \(3,\)"),
        ({"mode": "train"}, (1, 2, 3), TypeError, "1-D real array"),
    ]
    for param, moments, error, match in cases:
        before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in param.items()}
        with pytest.raises(error, match=match):
            fastbn.batchnorm_forward(x, np.ones(3), np.zeros(3), param, backend=backend,
                                     moments=moments)
        assert param.keys() == before.keys()
        for key, value in before.items():
            np.testing.assert_array_equal(param[key], value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("unbiased", [False, True], ids=["biased", "unbiased"])
def test_a_part_with_one_or_no_rows_is_normalised_with_given_moments(unbiased, backend):
    """Given moments, the part itself may be too small for statistics of its own; its running
    variance is the whole batch's, also unbiased (M / (M - 1) of the whole batch's M)."""
    x = np.random.default_rng(5).normal(size=(9, 4))
    merged = fastbn.batchnorm_moments(x)
    whole_param = {"mode": "train", "unbiased": unbiased}
    whole, _ = fastbn.batchnorm_forward(x, np.ones(4), np.zeros(4), whole_param, backend=backend)
    np.testing.assert_allclose(whole_param["running_var"], 0.1 * x.var(axis=0, ddof=int(unbiased)),
                               rtol=1e-12)
    for part in (x[:0], x[:1]):
        param = {"mode": "train", "unbiased": unbiased}
        out, _ = fastbn.batchnorm_forward(part, np.ones(4), np.zeros(4), param, moments=merged,
                                          backend=backend)
        np.testing.assert_allclose(out, whole[:len(part)], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(param["running_var"], whole_param["running_var"], rtol=1e-12)
