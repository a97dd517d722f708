"""Many small mixtures at once: one ``jax.vmap`` of ``jaxgmm.fit`` over groups, timed
against a Python loop of single jaxgmm fits and a loop of scikit-learn fits.

Run it with ``python -m jaxgmm._src.bench_groups`` (add ``--help`` for the options).
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src.benchmark import _best_time
from jaxgmm._src.fitting import fit


@dataclass
class GroupsBenchmark:
    """Timings of fitting ``n_groups`` mixtures (seconds, for all ``n_groups`` groups).

    The loop times are measured on the first ``loop_groups`` groups and scaled by
    ``n_groups / loop_groups``; compilation is excluded everywhere (``vmap_compile_s`` is the
    one-off compilation of the vmapped program).
    """

    n_groups: int
    n_samples: int
    n_components: int
    covariance_type: str
    dtype: str
    vmap_compile_s: float
    vmap_s: float
    loop_groups: int
    jaxgmm_loop_measured_s: float
    jaxgmm_loop_s: float
    sklearn_loop_measured_s: float | None
    sklearn_loop_s: float | None
    speedup_vs_jaxgmm_loop: float
    speedup_vs_sklearn_loop: float | None
    vmap_max_n_iter: int
    vmap_mean_n_iter: float
    max_rel_diff_vs_loop: float
    backend: str


def make_groups_data(n_groups: int, n: int, K: int, seed: int = 0) -> np.ndarray:
    """``n_groups`` one-dimensional data sets of ``n`` samples from ``K`` components each.

    Every group has its own component means (spread 5), scale (0.5 to 1.5) and labels.

    Returns
    -------
    ndarray, shape (n_groups, n, 1), float64
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=5.0, size=(n_groups, K))
    labels = rng.integers(0, K, size=(n_groups, n))
    scales = rng.uniform(0.5, 1.5, size=(n_groups, 1))
    X = np.take_along_axis(means, labels, axis=1) + scales * rng.normal(size=(n_groups, n))
    return X[..., None]


@functools.lru_cache(maxsize=16)
def fit_groups_function(K: int, covariance_type: str = "full"):
    """``jax.jit(jax.vmap(fit))``: fits one mixture per group of a ``(G, N, D)`` array.

    The returned function takes ``keys`` (shape ``(G,)``) and ``X`` (shape ``(G, N, D)``)
    and returns a ``FitResult`` whose every leaf has a leading axis ``G``.
    """
    one = functools.partial(fit, K=K, covariance_type=covariance_type)
    return jax.jit(jax.vmap(lambda key, x: one(key, x)))


def run_groups_benchmark(
    n_groups: int = 1000,
    n: int = 500,
    K: int = 3,
    *,
    covariance_type: str = "full",
    dtype: str = "float32",
    loop_groups: int = 50,
    repeats: int = 3,
    with_sklearn: bool = True,
    seed: int = 0,
) -> GroupsBenchmark:
    """Time ``vmap(fit)`` over ``n_groups`` one-dimensional groups against two loops.

    Parameters
    ----------
    n_groups : int
        Number of groups (mixtures), each fitted separately.
    n : int
        Samples per group.
    K : int
        Components per mixture.
    covariance_type : str
        For both jaxgmm and scikit-learn.
    dtype : {"float32", "float64"}
        Dtype of the jaxgmm fits (float64 needs ``jax_enable_x64``); scikit-learn computes
        in float64.
    loop_groups : int
        The Python loops run over the first ``loop_groups`` groups only; their times are
        scaled up to ``n_groups``.
    repeats : int
        Each timing is the best of this many runs.
    with_sklearn : bool
        Also time a loop of ``sklearn.mixture.GaussianMixture`` fits.
    seed : int

    Returns
    -------
    GroupsBenchmark

    Notes
    -----
    All fits use the same stopping rule (change of the mean per-sample log-likelihood below
    ``1e-3``, at most 100 iterations) and a k-means++ start (scikit-learn's
    ``init_params="k-means++"``; its default, ``"kmeans"``, is slower). Compilation is
    excluded: the vmapped program is compiled ahead of time (timed separately) and each loop
    runs once before it is timed. Every fit takes the iterations it needs: on the CPU the
    batched loop works on the groups still running only (``jaxgmm._src.batched_em``); on an
    accelerator it iterates the whole batch until the slowest group has converged, freezing
    the others.

    Examples
    --------
    >>> from jaxgmm._src.bench_groups import run_groups_benchmark
    >>> r = run_groups_benchmark(4, 50, 2, loop_groups=2, with_sklearn=False)  # doctest: +SKIP
    >>> r.n_groups, r.loop_groups  # doctest: +SKIP
    (4, 2)
    """
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise RuntimeError("dtype='float64' needs jax.config.update('jax_enable_x64', True)")
    loop_groups = min(loop_groups, n_groups)
    X64 = make_groups_data(n_groups, n, K, seed)
    X = jnp.asarray(X64.astype(dtype))
    keys = jax.random.split(jax.random.key(seed), n_groups)

    # vmap over all groups: compile ahead of time, then time the compiled program.
    start = time.perf_counter()
    compiled = fit_groups_function(K, covariance_type).lower(keys, X).compile()
    compile_s = time.perf_counter() - start
    batch = compiled(keys, X)
    jax.block_until_ready(batch)
    vmap_s = _best_time(lambda: jax.block_until_ready(compiled(keys, X)), repeats)

    # A Python loop of single fits, on arrays already on the device.
    singles = [X[g] for g in range(loop_groups)]
    loop_keys = [keys[g] for g in range(loop_groups)]

    def jax_loop():
        results = [
            fit(loop_keys[g], singles[g], K, covariance_type=covariance_type)
            for g in range(loop_groups)
        ]
        jax.block_until_ready(results)
        return results

    loop_results = jax_loop()
    jax_loop_s = _best_time(jax_loop, repeats)
    loop_ll = np.array([float(r.log_likelihood) for r in loop_results])
    vmap_ll = np.asarray(batch.log_likelihood[:loop_groups], np.float64)
    max_rel_diff = float(np.max(np.abs(vmap_ll - loop_ll) / np.abs(loop_ll)))

    sk_s = None
    if with_sklearn:
        from sklearn.mixture import GaussianMixture

        def sklearn_loop():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for g in range(loop_groups):
                    GaussianMixture(
                        K,
                        covariance_type=covariance_type,
                        tol=1e-3,
                        max_iter=100,
                        init_params="k-means++",
                        random_state=g,
                    ).fit(X64[g])

        sklearn_loop()
        sk_s = _best_time(sklearn_loop, repeats)

    scale = n_groups / loop_groups
    n_iter = np.asarray(batch.n_iter)
    return GroupsBenchmark(
        n_groups=n_groups,
        n_samples=n,
        n_components=K,
        covariance_type=covariance_type,
        dtype=dtype,
        vmap_compile_s=compile_s,
        vmap_s=vmap_s,
        loop_groups=loop_groups,
        jaxgmm_loop_measured_s=jax_loop_s,
        jaxgmm_loop_s=jax_loop_s * scale,
        sklearn_loop_measured_s=sk_s,
        sklearn_loop_s=None if sk_s is None else sk_s * scale,
        speedup_vs_jaxgmm_loop=jax_loop_s * scale / vmap_s,
        speedup_vs_sklearn_loop=None if sk_s is None else sk_s * scale / vmap_s,
        vmap_max_n_iter=int(n_iter.max()),
        vmap_mean_n_iter=float(n_iter.mean()),
        max_rel_diff_vs_loop=max_rel_diff,
        backend=jax.default_backend(),
    )


def format_groups_benchmark(r: GroupsBenchmark) -> str:
    """A readable report of a ``GroupsBenchmark``."""
    scaled = r.loop_groups != r.n_groups
    note = (
        f"(measured on {r.loop_groups} groups, scaled x{r.n_groups / r.loop_groups:g})"
        if scaled
        else "(measured on all groups)"
    )
    lines = [
        f"{r.n_groups:,} groups x {r.n_samples} samples, D=1, K={r.n_components}, "
        f"covariance_type={r.covariance_type!r}, jaxgmm dtype {r.dtype}, backend {r.backend}",
        f"  vmap(fit), all groups      {r.vmap_s:9.3f} s   (compilation excluded; "
        f"compile {r.vmap_compile_s:.2f} s)",
        f"  loop of jaxgmm.fit         {r.jaxgmm_loop_s:9.3f} s   {note}   "
        f"-> vmap {r.speedup_vs_jaxgmm_loop:.1f}x faster",
    ]
    if r.sklearn_loop_s is not None:
        lines.append(
            f"  loop of sklearn fits       {r.sklearn_loop_s:9.3f} s   {note}   "
            f"-> vmap {r.speedup_vs_sklearn_loop:.1f}x faster"
        )
    lines.append(
        f"  EM iterations under vmap: max {r.vmap_max_n_iter}, mean {r.vmap_mean_n_iter:.1f} "
        "(on the CPU each iteration runs on the groups still running only)"
    )
    lines.append(
        f"  vmap vs single fits, same keys: max relative difference of the log-likelihood "
        f"{r.max_rel_diff_vs_loop:.1e}"
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--K", type=int, default=3)
    parser.add_argument("--covariance-type", default="full")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--loop-groups", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args(argv)
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    result = run_groups_benchmark(
        args.groups,
        args.n,
        args.K,
        covariance_type=args.covariance_type,
        dtype=args.dtype,
        loop_groups=args.loop_groups,
        repeats=args.repeats,
        with_sklearn=not args.no_sklearn,
    )
    if args.json:
        import json

        print(json.dumps(asdict(result), indent=2))
    else:
        print(format_groups_benchmark(result))


if __name__ == "__main__":
    main()
