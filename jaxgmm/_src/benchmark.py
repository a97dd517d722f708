"""``jaxgmm bench``: time per EM iteration of jaxgmm against scikit-learn in the same run."""

from __future__ import annotations

import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import covariances as cov
from jaxgmm._src.fitting import fit
from jaxgmm._src.initialization import init_params

DEFAULT_SHAPES = ((100_000, 16, 16),)


@dataclass
class BenchRow:
    """One benchmark measurement (times in milliseconds per EM iteration)."""

    n_samples: int
    n_features: int
    n_components: int
    covariance_type: str
    dtype: str
    jaxgmm_ms: float
    sklearn_ms: float | None
    speedup: float | None
    gflop_per_iter: float
    jaxgmm_gflops: float
    matmul_gflops: float
    fraction_of_matmul: float


def _best_time(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def per_iteration(fn, short: int, long: int, repeats: int) -> float:
    """Seconds per iteration from ``fn(n_iter)``: the difference between a long and a short
    run over the difference in iterations, each the best of ``repeats`` (removes set-up)."""
    fn(short)
    fn(long)
    t_short = _best_time(lambda: fn(short), repeats)
    t_long = _best_time(lambda: fn(long), repeats)
    return max(t_long - t_short, 1e-12) / (long - short)


def matmul_rate(dtype, size: int = 1024, repeats: int = 5) -> float:
    """Measured FLOP/s of a square ``size`` x ``size`` matrix product in ``dtype``."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dtype)
    product = jax.jit(lambda x: x @ x)
    product(a).block_until_ready()
    seconds = _best_time(lambda: product(a).block_until_ready(), repeats)
    return 2.0 * size**3 / seconds


def flops_per_iteration(n: int, d: int, k: int, covariance_type: str) -> float:
    """Floating-point operations of the two products of one EM iteration: the E-step
    ``phi(X) @ W`` and the M-step ``R.T @ phi(X)``, each ``2 N P K`` with ``P`` features."""
    width = cov.n_quadratic_features(covariance_type, d) + d + 1
    return 4.0 * n * k * width


def _sklearn_per_iteration(X, params, short, long, repeats):
    from sklearn.mixture import GaussianMixture

    kind = params.covariance_type
    weights = np.asarray(params.weights, np.float64)
    covariances = np.asarray(params.covariances, np.float64)
    if kind in ("full", "tied"):
        precisions = np.linalg.inv(covariances)
    else:
        precisions = 1.0 / covariances

    def run(n_iter):
        model = GaussianMixture(
            params.n_components,
            covariance_type=kind,
            max_iter=n_iter,
            tol=0.0,
            weights_init=weights / weights.sum(),
            means_init=np.asarray(params.means, np.float64),
            precisions_init=precisions,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X)

    return per_iteration(run, short, long, repeats)


def run_benchmark(
    shapes=DEFAULT_SHAPES,
    covariance_types=("full", "diag"),
    dtypes=("float64", "float32"),
    with_sklearn=True,
    repeats=3,
    iterations=(2, 12),
    seed=0,
    progress=None,
) -> list[BenchRow]:
    """Measure and return one :class:`BenchRow` per (shape, covariance type, dtype)."""
    rows = []
    rates = {}
    for n, d, k in shapes:
        rng = np.random.default_rng(seed)
        centers = rng.normal(scale=4.0, size=(k, d))
        X64 = centers[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))
        for kind in covariance_types:
            for dtype_name in dtypes:
                dtype = np.dtype(dtype_name)
                if dtype == np.float64 and not jax.config.jax_enable_x64:
                    raise RuntimeError("float64 benchmarks need jax_enable_x64")
                X = jnp.asarray(X64.astype(dtype))
                start = init_params(jax.random.key(seed), X, k, covariance_type=kind)

                def run_jax(n_iter, X=X, start=start, kind=kind, k=k):
                    result = fit(
                        jax.random.key(seed),
                        X,
                        k,
                        covariance_type=kind,
                        init_params=start,
                        max_iter=n_iter,
                        tol=0.0,
                    )
                    result.log_likelihood.block_until_ready()

                jax_s = per_iteration(run_jax, *iterations, repeats)
                sk_s = None
                if with_sklearn:
                    sk_s = _sklearn_per_iteration(np.asarray(X), start, *iterations, repeats)
                if dtype_name not in rates:
                    rates[dtype_name] = matmul_rate(dtype)
                flops = flops_per_iteration(n, d, k, kind)
                row = BenchRow(
                    n_samples=n,
                    n_features=d,
                    n_components=k,
                    covariance_type=kind,
                    dtype=dtype_name,
                    jaxgmm_ms=jax_s * 1e3,
                    sklearn_ms=None if sk_s is None else sk_s * 1e3,
                    speedup=None if sk_s is None else sk_s / jax_s,
                    gflop_per_iter=flops / 1e9,
                    jaxgmm_gflops=flops / jax_s / 1e9,
                    matmul_gflops=rates[dtype_name] / 1e9,
                    fraction_of_matmul=flops / jax_s / rates[dtype_name],
                )
                rows.append(row)
                if progress is not None:
                    progress(row)
    return rows


def format_table(rows: list[BenchRow]) -> str:
    """The rows as an aligned text table."""
    header = (
        "N",
        "D",
        "K",
        "cov",
        "dtype",
        "jaxgmm ms/it",
        "sklearn ms/it",
        "speedup",
        "GFLOP/it",
        "GFLOP/s",
        "matmul GFLOP/s",
        "of matmul",
    )
    lines = []
    for r in rows:
        lines.append(
            (
                f"{r.n_samples:,}",
                str(r.n_features),
                str(r.n_components),
                r.covariance_type,
                r.dtype,
                f"{r.jaxgmm_ms:.2f}",
                "-" if r.sklearn_ms is None else f"{r.sklearn_ms:.2f}",
                "-" if r.speedup is None else f"{r.speedup:.1f}x",
                f"{r.gflop_per_iter:.3f}",
                f"{r.jaxgmm_gflops:.1f}",
                f"{r.matmul_gflops:.1f}",
                f"{100 * r.fraction_of_matmul:.0f}%",
            )
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)
    return "\n".join(out)


def machine_description() -> dict:
    """Where the benchmark ran."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
    }


def write_json(path, rows: list[BenchRow]) -> None:
    """Write the rows and the machine description as JSON."""
    with open(path, "w") as handle:
        json.dump(
            {"machine": machine_description(), "rows": [asdict(r) for r in rows]}, handle, indent=2
        )
