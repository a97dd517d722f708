"""Batches of fits that share their data and weights (restarts, screening candidates, a
``vmap`` over ``reg_covar`` or ``tol``) run one component-major pass for the whole batch on
the CPU (``jaxgmm._src.wide_pass``); every fit must still equal the fit it would be alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm._src import batched_em
from jaxgmm._src import covariances as cov
from jaxgmm._src.chunking import Chunking
from jaxgmm._src.em_loop import em_pass
from jaxgmm._src.wide_pass import prefers_wide_pass, wide_em_pass

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
KEY = jax.random.key(4)


@pytest.fixture(scope="module")
def data():
    """(201, 4), three clusters: an odd size that no other module compiles for, so the fits
    here trace."""
    rng = np.random.default_rng(7)
    centers = rng.normal(scale=4.0, size=(3, 4))
    return jnp.asarray(centers[rng.integers(0, 3, 201)] + rng.normal(size=(201, 4)))


def _count_wide_passes(monkeypatch):
    """Wrap the loop's ``wide_em_pass`` so that its (trace-time) calls are counted."""
    calls = []
    original = batched_em.wide_em_pass
    monkeypatch.setattr(
        batched_em, "wide_em_pass", lambda *args: calls.append(1) or original(*args)
    )
    return calls


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_wide_pass_equals_the_pass_of_each_fit(data, kind):
    xc = data - jnp.mean(data, axis=0)
    starts = [jaxgmm.init_params(k, xc, 4, covariance_type=kind) for k in jax.random.split(KEY, 3)]
    params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *starts)
    weights = jnp.asarray(np.random.default_rng(0).random(xc.shape[0])).at[5].set(0.0)
    # 4 chunks and a remainder
    moments, totals = jax.jit(wide_em_pass, static_argnums=3)(params, xc, weights, 47)
    assert moments.shape == (3, 4, cov.n_feature_columns(kind, 4)) and totals.shape == (3,)
    single_pass = jax.jit(em_pass, static_argnums=3)
    for b, start in enumerate(starts):
        one = single_pass(start, xc, weights, 47)
        np.testing.assert_allclose(moments[b], one[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(totals[b], one[1], rtol=1e-13)


def test_wide_pass_only_for_product_passes_on_the_cpu():
    assert prefers_wide_pass("full", 3, 3, 512, "cpu")
    assert prefers_wide_pass("diag", 8, 8, 512, "cpu")
    assert not prefers_wide_pass("full", 1, 3, 512, "cpu")  # elementwise pass for a few columns
    assert not prefers_wide_pass("full", 2, 5, 512, "cpu")
    assert not prefers_wide_pass("full", 16, 16, 512, "gpu")  # not measured there
    assert not prefers_wide_pass("full", 16, 16, Chunking(512, outer_products=True), "cpu")
    assert prefers_wide_pass("full", 16, 16)  # the tests run on the CPU backend


@pytest.mark.parametrize("kind", ["full", "diag"])
def test_restarts_through_the_wide_pass_equal_single_fits(data, kind, monkeypatch):
    calls = _count_wide_passes(monkeypatch)
    result = jaxgmm.fit(KEY, data, 3, covariance_type=kind, n_init=3, max_iter=40, tol=1e-6)
    assert calls  # the restarts ran the wide pass
    keys = jax.random.split(KEY, 3)
    for r, k in enumerate(keys):
        single = jaxgmm.fit(k, data, 3, covariance_type=kind, max_iter=40, tol=1e-6)
        np.testing.assert_allclose(result.all_log_likelihoods[r], single.log_likelihood, rtol=1e-9)
    best = int(np.argmax(result.all_log_likelihoods))
    single = jaxgmm.fit(keys[best], data, 3, covariance_type=kind, max_iter=40, tol=1e-6)
    assert int(result.n_iter) == int(single.n_iter)  # stopped fits wait without moving
    np.testing.assert_allclose(result.history, single.history, rtol=1e-9)
    np.testing.assert_allclose(result.params.covariances, single.params.covariances, rtol=1e-7)


def test_screening_candidates_run_the_wide_pass(data, monkeypatch):
    calls = _count_wide_passes(monkeypatch)
    result = jaxgmm.fit(
        KEY, data, 3, init="random", n_init=2, n_candidates=5, candidate_iter=3, max_iter=40
    )
    assert calls
    starts = [jaxgmm.init_params(k, data, 3, method="random") for k in jax.random.split(KEY, 5)]
    short = [
        float(jaxgmm.fit(KEY, data, 3, init_params=p, max_iter=3, tol=0.0).log_likelihood)
        for p in starts
    ]
    finals = [
        float(jaxgmm.fit(KEY, data, 3, init_params=starts[i], max_iter=40).log_likelihood)
        for i in np.argsort(short)[::-1][:2]
    ]
    np.testing.assert_allclose(np.asarray(result.all_log_likelihoods), finals, rtol=1e-9)


def test_vmap_over_reg_covar_and_tol_of_shared_data(data, monkeypatch):
    # The data (and so their centre) are shared; each fit has its own reg_covar and tol.
    calls = _count_wide_passes(monkeypatch)
    reg = jnp.asarray([1e-6, 1e-3, 1e-1])
    tol = jnp.asarray([1e-3, 1e-6, 1e-9])

    def one(r, t):
        return jaxgmm.fit(KEY, data, 3, reg_covar=r, tol=t, max_iter=60)

    batch = jax.jit(jax.vmap(one))(reg, tol)
    assert calls
    for b in range(3):
        single = one(reg[b], tol[b])
        np.testing.assert_allclose(batch.log_likelihood[b], single.log_likelihood, rtol=1e-9)
        assert int(batch.n_iter[b]) == int(single.n_iter)
        np.testing.assert_allclose(
            batch.params.covariances[b], single.params.covariances, rtol=1e-7
        )


def test_chunks_of_a_wide_batch_are_sized_by_bytes():
    from jaxgmm._src.chunking import auto_chunk_size
    from jaxgmm._src.fitting import pass_chunking

    one = pass_chunking(100_000, 16, 16, "full")
    assert one == auto_chunk_size(100_000, 153)  # P = 136 + 16 + 1 columns
    assert pass_chunking(100_000, 16, 16, "full", batched_fits=8, itemsize=4) == one
    assert pass_chunking(100_000, 16, 16, "full", itemsize=8) == one  # a single fit: as before
    f64 = pass_chunking(100_000, 16, 16, "full", batched_fits=8, itemsize=8)
    assert f64 == auto_chunk_size(100_000, 2 * 153) < one
    # Wider than the features: 64 components x 8 restarts
    assert pass_chunking(100_000, 16, 64, "full", batched_fits=8) == auto_chunk_size(100_000, 512)
    # Sharded data and the elementwise pass of a few features keep the single-fit size.
    sharded = pass_chunking(100_000, 16, 16, "full", batched_fits=8, shards=2, itemsize=8)
    assert sharded.size == auto_chunk_size(50_000, 153)
    assert pass_chunking(20_000, 2, 5, "full", batched_fits=8, itemsize=8) == 20_000


@pytest.mark.parametrize(
    "kind, dtype", [("tied", jnp.float64), ("spherical", jnp.float64), ("full", jnp.float32)]
)
def test_wide_loop_keeps_every_fit_alone_with_failures_and_padding(data, kind, dtype, monkeypatch):
    import dataclasses

    from jaxgmm._src.batched_em import run_em_batchable
    from jaxgmm._src.em_loop import run_em

    calls = _count_wide_passes(monkeypatch)
    xc = (data - jnp.mean(data, axis=0)).astype(dtype)
    weights = jnp.ones(xc.shape[0], dtype).at[:3].set(0.0)
    starts = [jaxgmm.init_params(k, xc, 3, covariance_type=kind) for k in jax.random.split(KEY, 4)]
    nan_means = starts[1].means.at[0, 0].set(jnp.nan)
    starts[1] = dataclasses.replace(starts[1], means=nan_means)  # fails at once
    starts[2] = dataclasses.replace(starts[2], weights=jnp.asarray([0.5, 0.5, 0.0], dtype))
    params0 = jax.tree.map(lambda *leaves: jnp.stack(leaves), *starts)
    active = jnp.asarray([[True] * 3, [True] * 3, [True, True, False], [True] * 3])
    # float32: a fixed number of iterations (a stopping decision can flip with rounding)
    tol = jnp.asarray([1e-3, 1e-3, 1e-8, 1e-10] if dtype == jnp.float64 else [0.0] * 4, dtype)
    reg = jnp.asarray([1e-6, 1e-6, 1e-3, 1e-6], dtype)
    rtol = 1e-10 if dtype == jnp.float64 else 1e-4

    def run(p, t, r, a):
        return run_em_batchable(p, xc, weights, t, r, 30, 64, None, a)

    batch = jax.jit(jax.vmap(run))(params0, tol, reg, active)
    assert calls
    run_alone = jax.jit(lambda p, t, r, a: run_em(p, xc, weights, t, r, 30, 64, None, a))
    for b, start in enumerate(starts):
        alone = run_alone(start, tol[b], reg[b], active[b])
        for got, expected in zip(jax.tree.leaves(batch), jax.tree.leaves(alone)):
            np.testing.assert_allclose(got[b], expected, rtol=rtol, atol=rtol)  # NaNs alike
    assert int(batch[2][1]) == 0 and not np.any(np.isfinite(batch[4][1]))  # the failed start
    assert float(batch[0].weights[2, 2]) == 0.0  # the padding stays empty
