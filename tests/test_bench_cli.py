"""``python -m fastbn`` / ``fastbn-bench``: the check, the table, the plot and the JSON record."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbn
from fastbn import __main__ as cli
from fastbn import _bench

needs_compiled = pytest.mark.skipif("cython" not in fastbn.available_backends(),
                                    reason="compiled kernels are not built")
TINY_CASES = [_bench.Case("batchnorm", (64, 33), "float64"),
              _bench.Case("groupnorm", (4, 8, 5, 4), "float32", groups=4)]


@needs_compiled
def test_main_prints_the_check_and_the_table_and_writes_plot_and_json(tmp_path, capsys):
    plot_path, json_path = tmp_path / "bench.png", tmp_path / "bench.json"
    status = cli.main(["--repeat", "1", "--plot", str(plot_path), "--json", str(json_path)],
                      cases=TINY_CASES)
    out = capsys.readouterr().out
    assert status == 0
    for case in _bench.CHECK_CASES:
        assert f"{case.name}" in out
    assert "FAILED" not in out
    assert "/memcpy" in out and "ref/fastbn" in out and "read/memcpy" in out
    for case in TINY_CASES:
        for direction in case.directions:
            assert any(line.startswith(case.name) and cli.DIRECTION_LABELS[direction] in line
                       for line in out.splitlines())
    record = json.loads(json_path.read_text())
    assert len(record["results"]) == sum(len(case.directions) for case in TINY_CASES)
    assert all(r["seconds"][name] > 0 for r in record["results"] for name in ("fastbn", "memcpy", "read"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in out
    else:
        assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_compiled
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [0, 1, 65535, 65536, 3 * 65536 + 17])
@pytest.mark.parametrize("threads", [1, 2])
def test_yardsticks_read_and_copy_every_value(n, dtype, threads):
    kernels = fastbn._backends.kernels()
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    assert kernels.parallel_read(x, threads) == pytest.approx(x.sum(dtype=np.float64), abs=1e-9 * max(n, 1))
    dst = np.full_like(x, np.nan)
    kernels.parallel_copy(x, dst, threads)
    np.testing.assert_array_equal(dst, x)


def test_a_failed_check_exits_non_zero(monkeypatch, capsys):
    case = _bench.CHECK_CASES[0]
    monkeypatch.setattr(_bench, "check", lambda: [(case, "dx: relative error 1 (tolerance 1e-10)")])
    assert cli.main(["--no-plot"], cases=TINY_CASES) == 1
    captured = capsys.readouterr()
    assert "CHECK FAILED" in captured.err and case.name in captured.err


def test_check_passes_on_every_op():
    assert _bench.check() == []


@needs_compiled
def test_python_dash_m_fastbn_runs(tmp_path):
    """The real command line in a subprocess: --help, and a bad --threads is a usage error."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-m", "fastbn", "--help"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0
    assert "--quick" in result.stdout and "--plot" in result.stdout
    result = subprocess.run([sys.executable, "-m", "fastbn", "--threads", "0"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 2


@needs_compiled
def test_shared_core_mode_times_one_and_two_threads_beside_a_busy_process(capsys):
    status = cli.main(["--shared-core", "--repeat", "1"], cases=TINY_CASES)
    out = capsys.readouterr().out
    assert status == 0
    assert "2t/1t" in out
    rows = [line for line in out.splitlines() if line.startswith(tuple(c.name for c in TINY_CASES))]
    assert len(rows) == sum(len(case.directions) for case in TINY_CASES)
    assert all(float(line.split()[-1]) > 0 for line in rows)


def test_busy_core_runs_a_spinning_process_only_within_the_block():
    with _bench.busy_core() as spinner:
        assert spinner.poll() is None
    assert spinner.poll() is not None
