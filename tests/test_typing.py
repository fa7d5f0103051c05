"""Type information: fastbn ships ``py.typed``, and mypy checks a user's script against the
annotations of the public functions (a correct script passes ``--strict``; mistakes are found)."""
import os
import pathlib
import site
import subprocess
import sys
import textwrap

import pytest

import fastbn

PACKAGE_DIR = pathlib.Path(fastbn.__file__).resolve().parent

USER_SCRIPT = textwrap.dedent('''
    from typing import Any

    import numpy as np
    from numpy.typing import NDArray

    import fastbn
    from fastbn import reference


    def step(x: NDArray[np.float64], gamma: NDArray[np.float64], beta: NDArray[np.float64],
             bn_param: dict[str, Any]) -> float:
        out, cache = fastbn.batchnorm_forward(x, gamma, beta, bn_param, backend="auto")
        dx, dgamma, dbeta = fastbn.batchnorm_backward(np.ones_like(out), cache, out=None)
        mean: NDArray[Any] = cache.mean
        eps: float = cache.eps
        out, _ = fastbn.spatial_groupnorm_forward(x, gamma, beta, 2, {})
        y, rms_cache = reference.rmsnorm_forward(x, gamma, {"eps": 1e-6})
        dx2, dgamma2 = fastbn.rmsnorm_backward(y, rms_cache)
        # a gradient is None where the forward had no gamma (beta): the annotations say so
        assert dgamma is not None and dbeta is not None and dgamma2 is not None
        out, _ = fastbn.layernorm_forward(x, None, None, {})
        fastbn.set_num_threads(None)
        threads: int = fastbn.get_num_threads()
        backends: tuple[str, ...] = fastbn.available_backends()
        fastbn.show_config()
        return float(dx.sum() + dgamma.sum() + dbeta.sum() + mean.sum() + eps + threads
                     + len(backends) + dx2.sum() + dgamma2.sum())
''')

# Each line is a mistake mypy must report (checked line by line).
MISTAKES = textwrap.dedent('''
    import numpy as np
    import fastbn

    x = np.ones((4, 3))
    out, cache = fastbn.layernorm_forward(x, np.ones(3), np.zeros(3), {}, backend=1)
    dx, dgamma, dbeta = fastbn.rmsnorm_backward(out, cache)
    fastbn.batchnorm_backward(out, {"mode": "train"})
    fastbn.set_num_threads("2")
    n: str = fastbn.get_num_threads()
''')


def _mypy(tmp_path, *files):
    """Run mypy --strict on `files` (written to tmp_path) against the fastbn being tested."""
    pytest.importorskip("mypy")
    env = dict(os.environ)
    site_dirs = {pathlib.Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]}
    if PACKAGE_DIR.parent not in site_dirs:  # a checkout: point mypy at it (an installed
        env["MYPYPATH"] = str(PACKAGE_DIR.parent)  # package is found through its py.typed)
    paths = []
    for name, text in files:
        (tmp_path / name).write_text(text)
        paths.append(name)
    # --follow-imports=silent: fastbn's own modules are analysed for their annotations, but
    # only the user's files are judged
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-color-output",
         "--cache-dir", str(tmp_path / ".mypy_cache"), *paths],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return result.stdout + result.stderr


def test_the_package_ships_py_typed():
    assert (PACKAGE_DIR / "py.typed").is_file()


def test_every_public_function_is_annotated():
    import inspect

    for name in fastbn.__all__:
        obj = getattr(fastbn, name)
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            missing = [p for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty]
            assert not missing, f"fastbn.{name}: parameters without annotations: {missing}"
            assert sig.return_annotation is not inspect.Signature.empty, f"fastbn.{name}: no return type"


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory):
    """One mypy run over the three scripts of this file (mypy takes seconds to start)."""
    names = "import fastbn\n" + "".join(f"print(fastbn.{name})\n" for name in fastbn.__all__)
    return _mypy(tmp_path_factory.mktemp("mypy"), ("user.py", USER_SCRIPT),
                 ("mistakes.py", MISTAKES), ("names.py", names))


def test_mypy_checks_a_user_script_against_the_annotations(mypy_report):
    report = mypy_report
    assert "user.py" not in report, report
    lines = MISTAKES.splitlines()
    flagged = {int(line.split(":")[1]) for line in report.splitlines()
               if line.startswith("mistakes.py:") and ": error:" in line}
    for number, line in enumerate(lines, start=1):
        if line.startswith(("out, cache", "dx, dgamma", "fastbn.", "n: str")):
            assert number in flagged, f"mypy did not flag line {number}: {line}\n{report}"


def test_mypy_sees_every_public_name(mypy_report):
    """Every name of ``fastbn.__all__`` (the op table's functions are exported dynamically at run
    time and spelled out for type checkers in fastbn/__init__.py) is known to mypy."""
    assert "names.py" not in mypy_report, mypy_report
