"""Settings for the whole test suite."""
import pytest

from fastbn import _planner
from fastbn._config import stale_glue


def pytest_configure(config):
    """Stop before any test runs compiled modules built from older sources (a checkout edited
    since its last build)."""
    stale = stale_glue()
    if stale:
        pytest.exit(f"fastbn's compiled {', '.join(stale)} are older than their .py sources: "
                    "rebuild (python setup.py build_ext --inplace, or pip install .)", returncode=4)


@pytest.fixture(autouse=True, scope="session")
def threads_on_moderate_inputs():
    """Give the kernels several threads from 8192 elements per thread on, instead of fastbn's
    default of 131072, so that the suite's moderate shapes exercise the multithreaded paths
    (chunking, merges, column blocks split between threads); the default heuristic itself is
    tested in a fresh interpreter (test_build.py)."""
    with _planner.override(min_elements_per_thread=1 << 13):
        yield
