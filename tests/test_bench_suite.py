"""The benchmark suite's plumbing: table, JSON round trip, figure, memory probe, skips.
(Measuring itself is exercised by the run_suite doctest at a tiny size.)"""

import numpy as np
import pytest

from jaxgmm import GMM
from jaxgmm._src import bench_suite


def synthetic_rows():
    common = dict(n_features=2, n_components=3, covariance_type="full", n_init=1)
    return [
        bench_suite.SuiteRow(
            "jaxgmm",
            1000,
            dtype="float32",
            ms_per_iter=1.0,
            compile_s=0.5,
            converge_s=0.01,
            n_iter=7,
            mean_log_likelihood=-3.2,
            peak_mb=12.0,
            **common,
        ),
        bench_suite.SuiteRow(
            "sklearn",
            1000,
            dtype="float32",
            ms_per_iter=4.0,
            converge_s=0.05,
            n_iter=8,
            mean_log_likelihood=-3.2,
            peak_mb=3.0,
            speedup=4.0,
            **common,
        ),
        bench_suite.SuiteRow("gmmx", 1000, dtype="float64", note="float32 only", **common),
    ]


def test_table_json_and_figure(tmp_path):
    rows = synthetic_rows()
    table = bench_suite.format_suite_table(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "ms/iter" in lines[0] and "4.0x" in table and "float32 only" in table
    assert len({len(line) for line in lines}) == 1  # aligned
    path = tmp_path / "suite.json"
    bench_suite.write_suite_json(path, rows)
    assert bench_suite.read_suite_json(path) == rows
    figure = tmp_path / "suite.png"
    bench_suite.plot_suite(rows, figure)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peak_memory_sees_an_allocation():
    def allocate():
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        return float(block[-1])

    value, peak = bench_suite.peak_memory_mb(allocate)
    assert value == 1.0
    if peak is None:
        pytest.skip("no /proc on this platform")
    assert peak > 48


def test_unsupported_cases_are_noted_not_measured():
    X = np.zeros((10, 2), np.float32)
    start = GMM(np.ones(2) / 2, np.zeros((2, 2)), np.ones(2), "spherical")
    row = bench_suite.measure_case("gmmx", X, start)
    assert row.ms_per_iter is None and row.note == "no spherical covariances"
    with pytest.raises(ValueError, match="libraries"):
        bench_suite.run_suite(libraries=["nope"])


class _FakeClock:
    """A clock that only moves when the measured function runs: ``setup`` seconds per call
    plus ``per_iter`` seconds per iteration."""

    def __init__(self, setup, per_iter):
        self.now, self.setup, self.per_iter, self.lengths = 0.0, setup, per_iter, []

    def __call__(self):
        return self.now

    def run(self, n_iter):
        self.lengths.append(n_iter)
        self.now += self.setup + self.per_iter * n_iter


@pytest.mark.parametrize("warm", [True, False])
def test_per_iteration_lengthens_fast_cases(monkeypatch, warm):
    from jaxgmm._src import benchmark

    clock = _FakeClock(setup=0.05, per_iter=1e-4)
    monkeypatch.setattr(benchmark.time, "perf_counter", clock)
    seconds = benchmark.per_iteration(clock.run, 2, 12, 3, warm=warm, min_seconds=0.3)
    assert seconds == pytest.approx(1e-4)
    # 10 extra iterations took 1 ms, far below 0.3 s: the long run grows, to the cap...
    assert max(clock.lengths) == 400
    # ...and without `warm` every call is timed (no untimed first runs).
    assert clock.lengths.count(12) == (2 if warm else 1)


def test_per_iteration_keeps_slow_cases(monkeypatch):
    from jaxgmm._src import benchmark

    clock = _FakeClock(setup=0.05, per_iter=0.05)
    monkeypatch.setattr(benchmark.time, "perf_counter", clock)
    assert benchmark.per_iteration(clock.run, 2, 12, 3) == pytest.approx(0.05)
    assert max(clock.lengths) == 12
