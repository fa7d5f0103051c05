"""Build configuration, backends and thread control."""
import io
import os

import pytest
from threadpoolctl import threadpool_limits

import fastbn
from fastbn import _backends
from fastbn._config import build_info


def test_show_config_reports_build():
    buf = io.StringIO()
    fastbn.show_config(file=buf)
    text = buf.getvalue()
    assert text.startswith(f"fastbn {fastbn.__version__}")
    assert "OpenMP: " in text and "threads: " in text
    if "cython" in fastbn.available_backends():
        assert "compile flags: -O" in text
        assert "-march=native" not in text
        assert "-ffp-contract=off" in text  # the SIMD paths compute the same bits
        assert f"SIMD: {_backends.kernels().simd()}" in text


def test_binary_matches_the_build_decision():
    """The extension was compiled as setup.py decided (no stale objects from another build);
    CI also says which build it made through FASTBN_EXPECT_OPENMP=0/1."""
    kernels = _backends.kernels()
    assert kernels is not None, "the compiled extension is not built"
    assert kernels.openmp_enabled() == build_info()["openmp"]
    expected = os.environ.get("FASTBN_EXPECT_OPENMP")
    if expected is not None:
        assert kernels.openmp_enabled() == (expected == "1")


def test_compiled_backend_is_built():
    """`pip install .` must build the kernels: 'auto' resolves to them."""
    assert fastbn.available_backends() == ("cython", "numpy")
    assert _backends.resolve("auto") == "cython"


@pytest.mark.parametrize("backend", ["gpu", "", None, "Cython"])
def test_unknown_backend_lists_available(backend):
    import numpy as np
    with pytest.raises(ValueError, match="backend must be one of .*available here"):
        fastbn.layernorm_forward(np.ones((2, 3)), np.ones(3), np.zeros(3), {}, backend=backend)


def test_set_num_threads_caps_the_thread_count():
    try:
        fastbn.set_num_threads(1)
        assert fastbn.get_num_threads() == 1
        fastbn.set_num_threads(64)
        with threadpool_limits(1, user_api="openmp"):
            assert fastbn.get_num_threads() == 1
    finally:
        fastbn.set_num_threads(None)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError),
                                        ("2", TypeError), (True, TypeError)])
def test_set_num_threads_rejects_bad_values(bad, error):
    with pytest.raises(error, match="n must be a positive integer or None"):
        fastbn.set_num_threads(bad)
