"""The sdist is complete: built from this tree, unpacked, built into a wheel and installed into a
fresh virtual environment, it passes its own tests (a subset: the build, docs, errors, typing,
command line and ops tests).

About 1-2 minutes (mostly compiling the kernels), so it runs only with ``FASTBN_TEST_SDIST=1``
(a step of .ci/run): ``FASTBN_TEST_SDIST=1 pytest tests/test_sdist.py``. It needs ``build``
(``pip install build``) and reuses this environment's packages (``venv --system-site-packages``,
``--no-build-isolation``), so it makes no downloads.
"""
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

from fastbn._config import build_info

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUBSET = ["test_build.py", "test_docs.py", "test_errors.py", "test_typing.py", "test_bench_cli.py",
          "test_ops.py"]

pytestmark = [
    pytest.mark.sdist,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("FASTBN_TEST_SDIST") != "1",
                       reason="set FASTBN_TEST_SDIST=1 to build and test the sdist (1-2 minutes)"),
]


def _run(args, cwd, env):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{args}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_the_sdist_installs_and_passes_its_own_tests(tmp_path):
    pytest.importorskip("build")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FASTBN_TEST_SDIST")}
    _run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", tmp_path / "dist", ROOT],
         ROOT, env)
    (sdist,) = (tmp_path / "dist").glob("fastbn-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "src", filter="data")
    tree = tmp_path / "src" / sdist.name[:-len(".tar.gz")]
    for required in ("LICENSE", "README.md", "fastbn/py.typed", "fastbn/_kernels.pyx",
                     "fastbn/_buffers.pyx", "fastbn/_src/buffer_pool.h", "fastbn/_planner.py",
                     "tests/conftest.py", "tests/registry.py", "docs/fastbn-bench.png",
                     "docs/performance.md", "benchmarks/test_benchmarks.py", "examples/_net.py"):
        assert (tree / required).is_file(), f"the sdist has no {required}"
    generated = [n for n in names if n.endswith((".so", "_build_info.py"))
                 or n.split("/")[-2:-1] == ["fastbn"] and n.endswith((".c", ".html"))]
    assert not generated, generated

    venv = tmp_path / "venv"
    # without a pip of its own: the venv's python runs this environment's pip and builds with
    # its setuptools (ensurepip's bundled setuptools can be too old for pyproject.toml)
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
          tmp_path / "wheels", tree], tmp_path, env)
    (wheel,) = (tmp_path / "wheels").glob("fastbn-*.whl")
    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
        (extension,) = [n for n in files if n.startswith("fastbn/_kernels") and n.endswith(".so")]
        binary = z.read(extension)
    assert "fastbn/py.typed" in files and "fastbn/_build_info.py" in files
    for module in build_info()["glue"]:  # each compiled, beside its source
        assert f"fastbn/{module}.py" in files
        assert [n for n in files if n.startswith(f"fastbn/{module}.") and n.endswith(".so")], module
    assert not [n for n in files if n.endswith((".c", ".h", ".pyx"))], files
    assert b".debug_info" not in binary, "the release extension carries debug information"

    # --ignore-installed: a fastbn in the base environment is left alone, the venv gets its own
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel],
         tmp_path, env)
    where = _run([python, "-c", "import fastbn; print(fastbn.__file__)"], tmp_path, env)
    assert pathlib.Path(where.strip()).is_relative_to(venv)
    assert _run([venv / "bin" / "fastbn-bench", "--help"], tmp_path, env).startswith(
        "usage: fastbn-bench ")
    # from outside the tree, so that the installed package is the one tested
    out = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                *(tree / "tests" / name for name in SUBSET)], tmp_path, env)
    assert " passed" in out and " failed" not in out
