"""One mixture per group for many groups at once: ``jax.vmap(fit)`` over a stacked data set
of shape (G, N, D) gives, for every group, the single fit of that group; and the groups
benchmark runs (at a tiny size: speed is not asserted here)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm._src.bench_groups import (
    fit_groups_function,
    format_groups_benchmark,
    make_groups_data,
    run_groups_benchmark,
)

G, N, K = 16, 100, 3


@pytest.fixture(scope="module")
def groups():
    """(G, N, 1) float64: G one-dimensional data sets of N points from K components each."""
    return jnp.asarray(make_groups_data(G, N, K, seed=3))


@pytest.fixture(scope="module")
def batch(groups):
    keys = jax.random.split(jax.random.key(0), G)
    # jax.jit(jax.vmap(lambda key, x: jaxgmm.fit(key, x, K))), shared with the benchmark
    fit_groups = fit_groups_function(K)
    return keys, fit_groups(keys, groups), fit_groups


def test_batch_has_a_leading_group_axis(batch):
    _, result, _ = batch
    assert result.params.weights.shape == (G, K)
    assert result.params.means.shape == (G, K, 1)
    assert result.params.covariances.shape == (G, K, 1, 1)
    assert result.log_likelihood.shape == (G,) and result.history.shape == (G, 100)
    assert bool(jnp.all(result.converged))


@pytest.mark.parametrize("g", [0, 7])
def test_each_group_equals_its_single_fit(groups, batch, g):
    """Same key and data -> same result: the batched while_loop freezes a group's state once
    it has converged, so even n_iter and the NaN tail of the history agree. Only the order
    of floating-point operations may differ between batched and unbatched kernels."""
    keys, result, _ = batch
    single = jaxgmm.fit(keys[g], groups[g], K)
    one = jax.tree.map(lambda leaf: leaf[g], result)
    assert int(one.n_iter) == int(single.n_iter)
    assert bool(one.converged) == bool(single.converged)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            getattr(one.params, name), getattr(single.params, name), rtol=1e-10, atol=1e-12
        )
    np.testing.assert_allclose(one.log_likelihood, single.log_likelihood, rtol=1e-12)
    np.testing.assert_allclose(one.history, single.history, rtol=1e-12, equal_nan=True)


def test_groups_are_independent(groups, batch):
    """Changing one group's data leaves every other group's fit unchanged."""
    keys, result, fit_groups = batch
    changed = groups.at[3].multiply(2.0)
    again = fit_groups(keys, changed)
    others = np.arange(G) != 3
    np.testing.assert_allclose(
        again.log_likelihood[others], result.log_likelihood[others], rtol=1e-12
    )
    assert not np.isclose(float(again.log_likelihood[3]), float(result.log_likelihood[3]))


def test_groups_benchmark_runs_and_reports():
    # the shapes of the tests above, so the compiled programs are reused
    r = run_groups_benchmark(G, N, K, dtype="float64", loop_groups=4, repeats=1)
    assert r.n_groups == G and r.loop_groups == 4
    assert r.vmap_s > 0 and r.vmap_compile_s > 0
    assert r.jaxgmm_loop_s == pytest.approx(r.jaxgmm_loop_measured_s * 4)
    assert r.sklearn_loop_s == pytest.approx(r.sklearn_loop_measured_s * 4)
    assert r.max_rel_diff_vs_loop < 1e-10  # vmap and the loop fit the same thing
    text = format_groups_benchmark(r)
    assert "measured on 4 groups, scaled x4" in text and "compile" in text


def test_slot_sizes():
    from jaxgmm._src.batched_em import slot_sizes

    assert slot_sizes(16) == (16,)
    assert slot_sizes(40) == (40, 10)
    assert slot_sizes(1000) == (1000, 250, 63, 16)


def test_compacted_batch_equals_single_fits_and_differentiates():
    """With more than 16 groups, the batched loop on the CPU runs each iteration on the groups
    still running only (gathered into 40 or 10 slots here); every group must still end as
    its own single fit, with its own number of iterations, and gradients must pass."""
    n_groups = 40
    data = jnp.asarray(make_groups_data(n_groups, N, K, seed=5))
    keys = jax.random.split(jax.random.key(1), n_groups)
    result = fit_groups_function(K)(keys, data)
    n_iter = np.asarray(result.n_iter)
    assert n_iter.max() > n_iter.min() + 2  # groups stop at different iterations
    for g in range(n_groups):
        single = jaxgmm.fit(keys[g], data[g], K)
        assert int(result.n_iter[g]) == int(single.n_iter), g
        np.testing.assert_allclose(result.params.means[g], single.params.means, rtol=1e-10)
        np.testing.assert_allclose(result.history[g], single.history, rtol=1e-12, equal_nan=True)

    def total(X):
        fits = jax.vmap(lambda k, x: jaxgmm.fit(k, x, K).log_likelihood)(keys[:20], X)
        return jnp.sum(fits)

    grad = jax.grad(total)(data[:20])
    single_grads = [
        jax.grad(lambda x, g=g: jaxgmm.fit(keys[g], x, K).log_likelihood)(data[g]) for g in (0, 19)
    ]
    np.testing.assert_allclose(grad[0], single_grads[0], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(grad[19], single_grads[1], rtol=1e-8, atol=1e-10)


def test_compacted_batch_with_per_group_weights_and_tol():
    """The batched loop with data, sample weights and tol all batched (the other tests share
    unit weights and one tol): every group is still its own weighted single fit."""
    n_groups = 20  # more than 16: the compacted loop
    data = jnp.asarray(make_groups_data(n_groups, N, K, seed=7))
    rng = np.random.default_rng(7)
    weights = jnp.asarray(rng.uniform(0.5, 2.0, (n_groups, N)))
    tols = jnp.asarray(rng.choice([1e-2, 1e-4, 1e-6], n_groups))
    keys = jax.random.split(jax.random.key(2), n_groups)
    fit_weighted = jax.jit(jax.vmap(lambda k, x, w, t: jaxgmm.fit(k, x, K, sample_weight=w, tol=t)))
    result = fit_weighted(keys, data, weights, tols)
    n_iter = np.asarray(result.n_iter)
    assert n_iter.max() > n_iter.min() + 2
    for g in range(n_groups):
        single = jaxgmm.fit(keys[g], data[g], K, sample_weight=weights[g], tol=tols[g])
        assert int(result.n_iter[g]) == int(single.n_iter), g
        np.testing.assert_allclose(result.params.means[g], single.params.means, rtol=1e-10)
        np.testing.assert_allclose(result.log_likelihood[g], single.log_likelihood, rtol=1e-12)
