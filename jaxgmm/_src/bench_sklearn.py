"""Wall time of the scikit-learn estimator against scikit-learn's own: ``check_estimator`` and a
5-fold ``GridSearchCV`` over ``n_components`` (many small fits of different sizes, where JAX
compilation could dominate). Needs scikit-learn.

Run it in a fresh process for numbers that include compilation::

    python -c "from jaxgmm._src.bench_sklearn import main; main()"
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np


@dataclasses.dataclass
class EstimatorBench:
    """Seconds for each job with jaxgmm's estimator and with scikit-learn's."""

    job: str
    jaxgmm_s: float
    sklearn_s: float

    @property
    def ratio(self) -> float:
        """jaxgmm time over scikit-learn time (below 1: jaxgmm is faster)."""
        return self.jaxgmm_s / self.sklearn_s


def _time(fn) -> float:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fn()
    return time.perf_counter() - start


def time_check_estimator() -> EstimatorBench:
    """``sklearn.utils.estimator_checks.check_estimator`` on both estimators."""
    from sklearn import mixture
    from sklearn.utils.estimator_checks import check_estimator

    from jaxgmm.sklearn import GaussianMixture

    ours = _time(lambda: check_estimator(GaussianMixture()))
    theirs = _time(lambda: check_estimator(mixture.GaussianMixture()))
    return EstimatorBench("check_estimator", ours, theirs)


def time_grid_search(X=None, K=range(1, 7), cv=5, covariance_type="full") -> EstimatorBench:
    """``GridSearchCV`` over ``n_components`` in ``K`` with ``cv`` folds (held-out
    log-likelihood as the score), on ``X`` (default: iris, 150 x 4)."""
    from sklearn import mixture
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV

    from jaxgmm.sklearn import GaussianMixture

    X = load_iris().data if X is None else np.asarray(X)
    grid = {"n_components": list(K)}

    def search(estimator):
        return lambda: GridSearchCV(estimator, grid, cv=cv).fit(X)

    ours = _time(search(GaussianMixture(covariance_type=covariance_type, random_state=0)))
    theirs = _time(search(mixture.GaussianMixture(covariance_type=covariance_type, random_state=0)))
    return EstimatorBench(f"GridSearchCV {cv}-fold, K = {K[0]}..{K[-1]}", ours, theirs)


def run_estimator_benchmark() -> list[EstimatorBench]:
    """Both measurements (compilation included when run first in a process)."""
    return [time_grid_search(), time_check_estimator()]


def format_estimator_bench(rows: list[EstimatorBench]) -> str:
    """An aligned text table."""
    header = ("job", "jaxgmm s", "scikit-learn s", "ratio")
    cells = [(r.job, f"{r.jaxgmm_s:.2f}", f"{r.sklearn_s:.2f}", f"{r.ratio:.1f}x") for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))
        )
    ]
    for c in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))
            )
        )
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - a report
    print(format_estimator_bench(run_estimator_benchmark()))
