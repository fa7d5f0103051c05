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
    assert "time / memcpy of x" in out and "NumPy" in out and "read" in out
    assert "OpenMP: " in out
    for case in TINY_CASES:
        for direction in case.directions:
            assert any(line.startswith(case.label) and cli.DIRECTION_LABELS[direction] in line
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
@pytest.mark.parametrize("mode", ["--shared-core", "--scaling"])
def test_thread_modes_time_one_and_two_threads(mode, capsys):
    status = cli.main([mode, "--repeat", "1"], cases=TINY_CASES)
    out = capsys.readouterr().out
    assert status == 0
    scaling = mode == "--scaling"
    assert ("beside a busy process" in out) != scaling
    assert "speed-up" in out and ("memcpy" in out) == scaling  # the copy's speed-up: idle only
    rows = [line for line in out.splitlines() if line.startswith(tuple(c.name for c in TINY_CASES))]
    assert len(rows) == sum(len(case.directions) for case in TINY_CASES)
    for line in rows:
        gains = [float(v) for v in line.removesuffix(" <").split()[-2 if scaling else -1:]]
        assert all(g > 0 for g in gains)
        assert line.endswith(" <") == (scaling and gains[0] < gains[1])


@pytest.mark.parametrize("argv, message", [
    (["--repeat", "0"], "argument --repeat: must be an integer >= 1, got '0'"),
    (["--repeat", "-1"], "argument --repeat: must be an integer >= 1, got '-1'"),
    (["--threads", "-2"], "argument --threads: must be an integer >= 1, got '-2'"),
    (["--threads", "two"], "argument --threads: must be an integer >= 1, got 'two'"),
])
def test_counts_below_one_are_usage_errors(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(_bench, "check", lambda: pytest.fail("the check ran"))
    with pytest.raises(SystemExit) as raised:
        cli.main(argv, cases=TINY_CASES)
    assert raised.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--scaling", "--json", "x.json"], "--scaling times every case on 1 and on 2 threads"),
    (["--shared-core", "--fused", "--threads", "1"], "--threads, --fused do not apply"),
    (["--scaling", "--plot", "p.png"], "--plot does not apply"),
    (["--no-plot", "--json", "/no/such/folder/r.json"], "--json: cannot write '/no/such/folder/r.json'"),
    (["--plot", "/no/such/folder/p.png"], "--plot: cannot write '/no/such/folder/p.png'"),
])
def test_bad_arguments_are_usage_errors_before_anything_runs(argv, message, monkeypatch, capsys):
    """An option the thread modes do not take, or an output that cannot be written, stops the
    command at once (status 2, the option named), not after the timing."""
    monkeypatch.setattr(_bench, "check", lambda: pytest.fail("the check ran"))
    assert cli.main(argv, cases=TINY_CASES) == 2
    err = capsys.readouterr().err
    assert message in err


def test_a_plot_format_matplotlib_cannot_write_is_a_usage_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(_bench, "check", lambda: pytest.fail("the check ran"))
    assert cli.main(["--plot", str(tmp_path / "plot.txt")], cases=TINY_CASES) == 2
    assert "--plot: matplotlib cannot write" in capsys.readouterr().err


@needs_compiled
def test_header_json_and_plot_name_say_what_ran(tmp_path, capsys):
    """--no-torch is named as such, a --threads above what OpenMP allows is said to be lowered,
    the JSON records the run's context, and a plot name without an extension gets .png."""
    json_path, plot_base = tmp_path / "r.json", tmp_path / "plot"
    status = cli.main(["--no-torch", "--threads", "64", "--repeat", "1", "--json", str(json_path),
                       "--plot", str(plot_base)], cases=TINY_CASES[:1])
    out = capsys.readouterr().out
    assert status == 0
    assert "PyTorch: left out (--no-torch)" in out
    assert f"(--threads 64: more than the {fastbn.get_num_threads()} OpenMP allows)" in out
    record = json.loads(json_path.read_text())
    assert record["repeat"] == 1 and record["torch"] is None and record["cpu"] == _bench.cpu_model()
    assert record["openmp"].startswith(("yes", "NO", "no"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert f"wrote {plot_base}.png" in out and (tmp_path / "plot.png").exists()


def test_fused_table_fits_the_width_in_aligned_columns():
    """The fused cases' table: fused/bn per direction and bn+np.relu over fused (forward +
    backward), every line as long as its header, within the table's width."""
    times = {d: {"fastbn out=": 2.0, "batchnorm": 1.6, "batchnorm + np.relu": 4.0}
             for d in ("forward", "test", "backward")}
    records = [{"case": case, "direction": d, "times": times[d]}
               for case in _bench.FUSED_CASES for d in case.directions]
    lines = cli.fused_table(records).splitlines()
    assert len(lines) == 1 + len(_bench.FUSED_CASES)
    assert len({len(line) for line in lines}) == 1 and len(lines[0]) <= cli.TABLE_WIDTH
    for line in lines[1:]:
        assert line.split()[-4:] == ["1.25", "1.25", "1.25", "2.00"]


def test_the_thread_modes_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--shared-core", "--scaling"])
    assert "not allowed with" in capsys.readouterr().err


def test_busy_core_runs_a_spinning_process_only_within_the_block():
    with _bench.busy_core() as spinner:
        assert spinner.poll() is None
    assert spinner.poll() is not None


def _record(case, direction, memcpy, fastest_memcpy=None, read=None, **times):
    times = dict(times, memcpy=memcpy, **({"read": read} if read is not None else {}))
    return {"case": case, "direction": direction, "times": times,
            "fastest": {"memcpy": fastest_memcpy or memcpy}}


LARGE, SMALL = _bench.HEADLINE_CASES[0], _bench.SMALL_CASES[0]


def _plausible_run():
    return [_record(LARGE, "forward", 6e-3, read=3e-3, fastbn=7e-3, reference=0.2, torch=0.04),
            _record(SMALL, "forward", 1.5e-5, read=8e-6, fastbn=1e-4, reference=8e-4, torch=1e-4)]


@pytest.mark.parametrize("change, codes", [
    ({}, []),
    ({"fastest_memcpy": 1e-5, "memcpy": 2.5e-5}, ["s"]),  # median 2.5x its fastest round
    ({"memcpy": 7e-4, "fastest_memcpy": 6e-4}, ["b"]),  # 700 us instead of 15 us: 0.1x the GB/s
    ({"read": 2e-5}, ["r"]),  # reading slower than copying
])
def test_implausible_yardsticks_are_flagged(change, codes):
    records = _plausible_run()
    small = dict(records[1]["times"])
    memcpy = change.get("memcpy", small["memcpy"])
    records[1] = _record(SMALL, "forward", memcpy, change.get("fastest_memcpy"),
                         change.get("read", small["read"]), fastbn=small["fastbn"],
                         reference=small["reference"], torch=small["torch"])
    assert _bench.yardstick_warnings(records[0], records) == []
    assert _bench.yardstick_warnings(records[1], records) == codes
    text = cli.table(records)
    small_row = next(line for line in text.splitlines() if line.startswith(SMALL.label))
    assert small_row.endswith("!" + "".join(codes)) if codes else "!" not in small_row
    for code in codes:
        assert f"!{code}  {_bench.YARDSTICK_PROBLEMS[code]}" in text


def test_the_table_fits_in_100_columns_for_every_benchmark_case():
    """Every case label of the full run, with times and ratios as wide as they get."""
    records = [_record(case, direction, 1.23e-3, 1.0e-3, read=99.9, fastbn=123.4,
                       reference=0.5, torch=9.99e-4)
               for case in _bench.LARGE_CASES + _bench.SMALL_CASES for direction in case.directions]
    lines = cli.table(records).splitlines()
    assert len(lines) > len(records)
    assert max(map(len, lines)) <= cli.TABLE_WIDTH


def test_plot_marks_the_rows_with_an_implausible_yardstick(tmp_path):
    pytest.importorskip("matplotlib")
    records = _plausible_run()
    records.append(_record(SMALL, "backward", 7e-4, read=1e-5, fastbn=2e-4, reference=1e-3))
    flagged = cli.plot(records, tmp_path / "plot.png", 2)
    assert flagged == [f"{SMALL.label} bwd"]
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_console_script_names_itself_in_its_help(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fastbn-bench", "--help"])
    with pytest.raises(SystemExit):
        cli.main()
    assert capsys.readouterr().out.startswith("usage: fastbn-bench ")
    assert cli._program_name("/x/fastbn/__main__.py") == "python -m fastbn"


def test_time_calls_shuffles_the_order_so_no_call_always_follows_the_same_one():
    from fastbn import _bench

    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abcd"}
    _bench.time_calls(calls, repeat=7)
    rounds = [order[4 + 4 * k: 8 + 4 * k] for k in range(7)]  # after one warm-up call each
    assert all(sorted(r) == list("abcd") for r in rounds)
    predecessors = {(r[i - 1], r[i]) for r in rounds for i in range(1, 4)}
    assert len({before for before, after in predecessors if after == "b"}) > 1
