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


def per_iteration(
    fn,
    short: int,
    long: int,
    repeats: int,
    *,
    warm: bool = True,
    min_seconds: float = 0.3,
    cap: int = 400,
) -> float:
    """Seconds per iteration from ``fn(n_iter)``: the difference between the best long and the
    best short run (each of ``repeats`` runs) over the difference in iterations, which removes
    the set-up cost. With ``warm``, each length first runs once untimed (for programs that
    compile on their first call).

    When the first long run takes less than ``min_seconds`` more than the short one, the long
    run is lengthened (up to ``cap`` iterations) until it would: a fast case is otherwise lost
    in timer and scheduling noise, and the difference can even come out negative.
    """
    if warm:
        fn(short)
        fn(long)
    t_short = [_best_time(lambda: fn(short), 1)]
    t_long = [_best_time(lambda: fn(long), 1)]
    extra = t_long[0] - t_short[0]
    if extra < min_seconds and long < cap:
        long = min(cap, short + math.ceil((long - short) * min_seconds / max(extra, 1e-3)))
        if warm:
            fn(long)
        t_long = [_best_time(lambda: fn(long), 1)]
    for _ in range(repeats - 1):
        t_short.append(_best_time(lambda: fn(short), 1))
        t_long.append(_best_time(lambda: fn(long), 1))
    return max(min(t_long) - min(t_short), 1e-12) / (long - short)


def matmul_rate(dtype, size: int | None = None, repeats: int = 5) -> float:
    """Measured FLOP/s of a square ``size`` x ``size`` matrix product in ``dtype`` at the
    precision jaxgmm's own products use (``HIGHEST``: full float32 on a GPU, not TF32).
    ``size`` defaults to 1024 on the CPU and 8192 on an accelerator, which a 1024 product
    leaves mostly idle."""
    if size is None:
        size = 1024 if jax.default_backend() == "cpu" else 8192
    a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dtype)
    product = jax.jit(lambda x: jnp.matmul(x, x, precision=jax.lax.Precision.HIGHEST))
    product(a).block_until_ready()
    seconds = _best_time(lambda: product(a).block_until_ready(), repeats)
    return 2.0 * size**3 / seconds


def flops_per_iteration(n: int, d: int, k: int, covariance_type: str) -> float:
    """Floating-point operations of the two products of one EM iteration: the E-step
    ``phi(X) @ W`` and the M-step ``R.T @ phi(X)``, each ``2 N P K`` with ``P`` features."""
    width = cov.n_feature_columns(covariance_type, d)
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
    """Measure and return one ``BenchRow`` per (shape, covariance type, dtype)."""
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


# --- model selection: one compiled sweep against loops of separate fits


@dataclass
class SelectBench:
    """Wall times in seconds of fitting every (K, covariance type) cell; ``*_cold`` include
    JAX compilation (the first call in the process for those shapes), ``*_warm`` repeat the
    same calls compiled. The ratios are loop time over sweep time (above 1: the sweep is
    faster)."""

    n_samples: int
    n_features: int
    K: list
    covariance_types: list
    n_init: int
    dtype: str
    select_cold_s: float
    select_warm_s: float
    jaxgmm_loop_cold_s: float | None
    jaxgmm_loop_warm_s: float | None
    sklearn_loop_s: float | None
    sklearn_threads: int | None
    sklearn_ratio_cold: float | None
    sklearn_ratio_warm: float | None
    jaxgmm_ratio_cold: float | None
    jaxgmm_ratio_warm: float | None
    select_choice: str
    sklearn_choice: str | None


def select_benchmark_data(n_samples=10_000, n_features=8, n_clusters=5, seed=0) -> np.ndarray:
    """``n_clusters`` Gaussian clusters with random full covariances, float64."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(n_clusters, n_features))
    mixing = rng.normal(scale=0.4, size=(n_clusters, n_features, n_features))
    mixing += np.eye(n_features)
    labels = rng.integers(0, n_clusters, n_samples)
    noise = rng.normal(size=(n_samples, n_features))
    return centers[labels] + np.einsum("nij,nj->ni", mixing[labels], noise)


def run_select_benchmark(
    n_samples=10_000,
    n_features=8,
    K=range(1, 11),
    covariance_types=("full", "diag", "spherical", "tied"),
    n_init=1,
    dtype="float64",
    with_jaxgmm_loop=True,
    with_sklearn=True,
    sklearn_threads=None,
    seed=0,
    progress=None,
) -> SelectBench:
    """Time ``jaxgmm.select`` against a Python loop of ``jaxgmm.fit`` calls and a loop
    of ``sklearn.mixture.GaussianMixture`` fits over the same cells.

    All three use k-means++ starts (scikit-learn's ``init_params="k-means++"``), ``n_init``
    restarts per cell, ``tol=1e-3`` and ``max_iter=100``. Each jaxgmm timing blocks on the
    results. Run in a fresh process for the cold (compilation included) numbers.
    ``sklearn_threads`` caps scikit-learn's BLAS/OpenMP threads (``threadpoolctl``); on a
    machine shared with other work its default thread pools can be many times slower.

    Returns
    -------
    SelectBench
    """
    from jaxgmm._src.selection import count_parameters, select

    if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
        raise RuntimeError("float64 benchmarks need jax_enable_x64")
    Ks = [int(k) for k in K]
    kinds = list(covariance_types)
    X64 = select_benchmark_data(n_samples, n_features, seed=seed)
    X = jnp.asarray(X64.astype(dtype))
    say = progress or (lambda message: None)

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        jax.block_until_ready(jax.tree.leaves(out))
        return time.perf_counter() - start, out

    def run_select(key):
        return select(key, X, Ks, covariance_types=kinds, n_init=n_init, init="kmeans++")

    select_cold, selection = timed(lambda: run_select(jax.random.key(seed)))
    say(f"select (compilation included): {select_cold:.2f} s")
    select_warm, _ = timed(lambda: run_select(jax.random.key(seed + 1)))
    say(f"select (compiled): {select_warm:.2f} s")

    def jax_loop(key):
        results = []
        for kind in kinds:
            for k in Ks:
                results.append(fit(key, X, k, covariance_type=kind, n_init=n_init, init="kmeans++"))
        return [r.log_likelihood for r in results]

    loop_cold = loop_warm = None
    if with_jaxgmm_loop:
        loop_cold, _ = timed(lambda: jax_loop(jax.random.key(seed)))
        say(f"loop of jaxgmm.fit (compilation included): {loop_cold:.2f} s")
        loop_warm, _ = timed(lambda: jax_loop(jax.random.key(seed + 1)))
        say(f"loop of jaxgmm.fit (compiled): {loop_warm:.2f} s")

    sklearn_s = sklearn_choice = None
    if with_sklearn:
        from sklearn.mixture import GaussianMixture
        from threadpoolctl import threadpool_limits

        bic = {}
        start = time.perf_counter()
        with threadpool_limits(sklearn_threads), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for kind in kinds:
                for k in Ks:
                    model = GaussianMixture(
                        k,
                        covariance_type=kind,
                        n_init=n_init,
                        init_params="k-means++",
                        random_state=seed,
                    ).fit(X64)
                    bic[kind, k] = -2 * model.score(X64) * n_samples + count_parameters(
                        k, n_features, kind
                    ) * math.log(n_samples)
        sklearn_s = time.perf_counter() - start
        kind, k = min(bic, key=bic.get)
        sklearn_choice = f"{kind} K={k}"
        say(f"loop of scikit-learn fits: {sklearn_s:.2f} s")

    def ratio(a, b):
        return None if a is None else a / b

    return SelectBench(
        n_samples=n_samples,
        n_features=n_features,
        K=Ks,
        covariance_types=kinds,
        n_init=n_init,
        dtype=str(np.dtype(dtype)),
        select_cold_s=select_cold,
        select_warm_s=select_warm,
        jaxgmm_loop_cold_s=loop_cold,
        jaxgmm_loop_warm_s=loop_warm,
        sklearn_loop_s=sklearn_s,
        sklearn_threads=sklearn_threads,
        sklearn_ratio_cold=ratio(sklearn_s, select_cold),
        sklearn_ratio_warm=ratio(sklearn_s, select_warm),
        jaxgmm_ratio_cold=ratio(loop_cold, select_cold),
        jaxgmm_ratio_warm=ratio(loop_warm, select_warm),
        select_choice=f"{selection.covariance_type} K={selection.n_components}",
        sklearn_choice=sklearn_choice,
    )


def format_select_bench(bench: SelectBench) -> str:
    """The measurement as a few aligned lines."""

    def seconds(value):
        return "-" if value is None else f"{value:8.2f} s"

    def times(value):
        return "-" if value is None else f"{value:.1f}x"

    head = (
        f"select over K = {bench.K[0]}..{bench.K[-1]} x {len(bench.covariance_types)} "
        f"covariance types, N = {bench.n_samples:,}, D = {bench.n_features}, "
        f"n_init = {bench.n_init}, {bench.dtype}"
    )
    rows = [
        ("", "compilation included", "compiled"),
        ("jaxgmm.select (one sweep)", seconds(bench.select_cold_s), seconds(bench.select_warm_s)),
        (
            "loop of jaxgmm.fit",
            seconds(bench.jaxgmm_loop_cold_s),
            seconds(bench.jaxgmm_loop_warm_s),
        ),
        (
            "loop of scikit-learn fits"
            + ("" if bench.sklearn_threads is None else f" ({bench.sklearn_threads} thread(s))"),
            seconds(bench.sklearn_loop_s),
            seconds(bench.sklearn_loop_s),
        ),
        (
            "speed-up over the jaxgmm loop",
            times(bench.jaxgmm_ratio_cold),
            times(bench.jaxgmm_ratio_warm),
        ),
        (
            "speed-up over scikit-learn",
            times(bench.sklearn_ratio_cold),
            times(bench.sklearn_ratio_warm),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [head]
    lines += [
        f"{r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2].rjust(widths[2])}" for r in rows
    ]
    lines.append(
        f"choice: jaxgmm {bench.select_choice}; scikit-learn {bench.sklearn_choice or '-'}"
    )
    return "\n".join(lines)
