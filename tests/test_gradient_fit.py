"""``fit_gradient``: reaches EM's maximum, minibatches, weights, jit/vmap, recompiles, errors.

All fits share one data set ((180, 2) float64 blobs), K = 3 and N_STEPS, and the default
optimiser (cached per ``n_steps``), so that only a few programs are compiled.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgmm
from jaxgmm._src.gradient_fit import _fit_gradient_compiled

K = 3
N_STEPS = 600

# Tolerance on |mean log-likelihood(gradient fit) - mean log-likelihood(EM)| per sample.
# Both climb to the same local maximum from the same k-means++ start; near a maximum the
# log-likelihood deficit is quadratic in the parameter error, so 1e-6 per sample means the
# parameters agree to about 1e-3 (in standardised units, i.e. relative to the data's
# spread) -- and the parameters are also compared directly below. EM (tol=1e-12) is at the
# maximum to ~1e-12; the only other difference is ``reg_covar``: EM adds 1e-6 to the
# maximising covariance, the gradient fit can reach the maximiser itself, a difference of
# second order (~1e-12). The start is about 0.4 per sample below the maximum (checked to be
# more than 1e-2), so the tolerance is far tighter than the distance travelled.
LL_TOL = 1e-6


def _sorted(params):
    """Components ordered by the first coordinate of their means (for comparisons)."""
    order = jnp.argsort(params.means[:, 0])
    cov = params.covariances if params.covariance_type == "tied" else params.covariances[order]
    return params.replace(weights=params.weights[order], means=params.means[order], covariances=cov)


@pytest.fixture(scope="module")
def em_fit(blobs):
    """EM run to its maximum (the reference)."""
    return jaxgmm.fit(jax.random.key(0), jnp.asarray(blobs), K, tol=1e-12)


def test_reaches_the_em_log_likelihood(blobs, em_fit):
    """Full covariances; the other types differ only in the unconstrained map, whose values
    and gradients test_unconstrained.py checks (and the jit/vmap test below fits spherical)."""
    X = jnp.asarray(blobs)
    n = X.shape[0]
    em = em_fit
    # EM's k-means++ start (fit with key 0 starts from init_params with key 0); passing it
    # explicitly shares the compiled program with the tests below that need a given start.
    start = jaxgmm.init_params(jax.random.key(0), X, K)
    gd = jaxgmm.fit_gradient(jax.random.key(0), X, K, n_steps=N_STEPS, init_params=start)
    assert bool(em.converged) and bool(gd.converged)
    assert int(gd.n_iter) == N_STEPS and gd.history.shape == (N_STEPS,)
    em_mean = float(em.log_likelihood) / n
    gd_mean = float(gd.log_likelihood) / n
    assert abs(gd_mean - em_mean) < LL_TOL
    # the optimiser did real work: the start was far from the maximum
    assert em_mean - float(gd.history[0]) > 1e-2
    # log_likelihood is the total at the returned params, computed independently
    np.testing.assert_allclose(gd.log_likelihood, jaxgmm.log_likelihood(gd.params, X), rtol=1e-12)
    # history is the full-data mean log-likelihood before each update: it ends at the maximum
    assert abs(float(gd.history[-1]) - em_mean) < LL_TOL
    a, b = _sorted(em.params), _sorted(gd.params)
    np.testing.assert_allclose(b.weights, a.weights, atol=1e-3)
    np.testing.assert_allclose(b.means, a.means, atol=1e-3 * float(np.std(blobs)))
    np.testing.assert_allclose(b.covariances, a.covariances, atol=1e-3 * float(np.var(blobs)))


def test_line_search_optimiser_gets_the_objective(blobs, em_fit):
    """optax.lbfgs needs value and value_fn in its update; 100 steps reach the maximum."""
    X = jnp.asarray(blobs)
    start = jaxgmm.init_params(jax.random.key(0), X, K)
    gd = jaxgmm.fit_gradient(
        jax.random.key(0), X, K, optimizer=optax.lbfgs(), n_steps=100, init_params=start
    )
    assert bool(gd.converged)
    assert abs(float(gd.log_likelihood - em_fit.log_likelihood)) / X.shape[0] < LL_TOL


def test_minibatches_get_close(blobs, em_fit):
    """Minibatch gradients are noisy: with the decaying learning rate, 600 steps of batch 32
    end 1e-3 to 3e-3 per sample below the maximum (measured over four keys). 1e-2 leaves a
    margin of 3 and is still far below the start's deficit (about 0.4 per sample)."""
    X = jnp.asarray(blobs)
    gd = jaxgmm.fit_gradient(jax.random.key(0), X, K, n_steps=N_STEPS, batch_size=32)
    em_mean = float(em_fit.log_likelihood) / X.shape[0]
    gd_mean = float(gd.log_likelihood) / X.shape[0]
    assert em_mean - 1e-2 < gd_mean < em_mean + LL_TOL
    assert bool(jnp.all(jnp.isfinite(gd.history)))
    # history holds minibatch means: noisy, but on average at the end near the maximum
    assert abs(float(jnp.mean(gd.history[-100:])) - em_mean) < 0.1


def test_sample_weight_equals_repeated_rows(blobs):
    """Integer weights act like repeated rows. N is kept fixed (as many rows of weight 2 as of
    weight 0) so both fits share one compiled program; same start, so the same trajectory."""
    X = np.asarray(blobs)
    weights = np.ones(len(X))
    weights[:20] = 2.0
    weights[20:40] = 0.0
    repeated = np.concatenate([X[:20], X[:20], X[40:]])
    start = jaxgmm.init_params(jax.random.key(1), X, K)
    a = jaxgmm.fit_gradient(
        jax.random.key(0), X, K, n_steps=N_STEPS, sample_weight=weights, init_params=start
    )
    b = jaxgmm.fit_gradient(jax.random.key(0), repeated, K, n_steps=N_STEPS, init_params=start)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-10)
    np.testing.assert_allclose(a.history, b.history, rtol=1e-10)
    np.testing.assert_allclose(a.params.means, b.params.means, rtol=1e-8, atol=1e-8)


def test_starting_at_the_em_maximum_stays_there(blobs, em_fit):
    """init_params maps in exactly (reg_covar is not added twice): the first history entry is
    the log-likelihood of the start, and the gradient fit does not move away."""
    X = jnp.asarray(blobs)
    em = em_fit
    gd = jaxgmm.fit_gradient(jax.random.key(0), X, K, n_steps=N_STEPS, init_params=em.params)
    np.testing.assert_allclose(gd.history[0] * X.shape[0], em.log_likelihood, rtol=1e-12)
    assert abs(float(gd.log_likelihood - em.log_likelihood)) / X.shape[0] < LL_TOL


def test_no_recompile_for_new_reg_covar_tol_or_data(blobs):
    X = jnp.asarray(blobs)
    start = jaxgmm.init_params(jax.random.key(0), X, K)
    before = _fit_gradient_compiled._cache_size()
    results = [
        jaxgmm.fit_gradient(
            jax.random.key(0), X + s, K, n_steps=N_STEPS, reg_covar=r, tol=t, init_params=start
        )
        for s, r, t in ((0.0, 1e-6, 1e-3), (1.0, 1e-3, 1e-5), (2.0, 0.1, 0.0))
    ]
    assert _fit_gradient_compiled._cache_size() - before <= 1
    # tol=0 is never met by a finite gradient in floating point
    assert not bool(results[2].converged)
    # reg_covar is in the covariances (data units): at least 0.1 on the diagonal
    assert float(jnp.min(jnp.linalg.eigvalsh(results[2].params.covariances))) >= 0.1 - 1e-9


def test_under_jit_and_vmap_over_data_sets(blobs):
    """jit with static options and vmap over (data, start) pairs: the data shifted by a
    constant with the start shifted alike is the same problem, so both members match the
    eager single fit (whose program the first test compiled). One trace for two calls."""
    X = jnp.asarray(blobs)
    start = jaxgmm.init_params(jax.random.key(0), X, K)
    shift = jnp.array([3.0, -2.0])
    Xs = jnp.stack([X, X + shift])
    starts = jax.tree.map(
        lambda a, b: jnp.stack([a, b]), start, start.replace(means=start.means + shift)
    )
    n_traces = []

    @jax.jit
    def fit_many(keys, Xs, starts, reg):
        n_traces.append(1)

        def one(key, x, s):
            return jaxgmm.fit_gradient(key, x, K, n_steps=N_STEPS, init_params=s, reg_covar=reg)

        return jax.vmap(one)(keys, Xs, starts)

    keys = jax.random.split(jax.random.key(3), 2)
    batch = fit_many(keys, Xs, starts, 1e-6)
    fit_many(keys, Xs, starts, 1e-4)
    assert len(n_traces) == 1
    assert batch.params.means.shape == (2, K, 2) and batch.history.shape == (2, N_STEPS)
    single = jaxgmm.fit_gradient(jax.random.key(0), X, K, n_steps=N_STEPS, init_params=start)
    np.testing.assert_allclose(batch.log_likelihood, single.log_likelihood, rtol=1e-9)
    np.testing.assert_allclose(batch.params.means[1] - shift, single.params.means, atol=1e-6)


def test_float32_keeps_its_dtype(blobs, em_fit):
    X = jnp.asarray(blobs, jnp.float32)
    gd = jaxgmm.fit_gradient(jax.random.key(0), X, K, n_steps=N_STEPS)
    for leaf in (*jax.tree.leaves(gd.params), gd.log_likelihood, gd.history):
        assert leaf.dtype == jnp.float32
    em_mean = float(em_fit.log_likelihood) / X.shape[0]
    assert abs(float(gd.log_likelihood) / X.shape[0] - em_mean) < 1e-4


@pytest.mark.parametrize(
    "kwargs, error, word",
    [
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(n_steps=2.5), TypeError, "n_steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(optimizer="adam"), TypeError, "optimizer"),
        (dict(reg_covar=-1.0), ValueError, "reg_covar"),
        (dict(tol=-1.0), ValueError, "tol"),
        (dict(init="nope"), ValueError, "init"),
        (dict(covariance_type="nope"), ValueError, "covariance_type"),
        (dict(sample_weight=np.ones(3)), ValueError, "sample_weight"),
    ],
)
def test_bad_input_names_the_argument(blobs, kwargs, error, word):
    with pytest.raises(error, match=word):
        jaxgmm.fit_gradient(jax.random.key(0), blobs, K, **kwargs)


def test_failed_start_raises():
    with pytest.raises(ValueError, match="increase reg_covar"):
        jaxgmm.fit_gradient(jax.random.key(0), np.ones((20, 2)), 2, n_steps=5, reg_covar=0.0)


def test_init_params_mismatch(blobs):
    start = jaxgmm.init_params(jax.random.key(0), blobs, K, covariance_type="diag")
    with pytest.raises(ValueError, match="covariance_type"):
        jaxgmm.fit_gradient(jax.random.key(0), blobs, K, init_params=start)
    with pytest.raises(ValueError, match="components"):
        jaxgmm.fit_gradient(
            jax.random.key(0), blobs, K + 1, covariance_type="diag", init_params=start
        )


def test_runaway_step_size_keeps_the_last_finite_parameters():
    # SGD with step 1e6 drives the log-variances past float32's range once mapped back to
    # the data's coordinates: those steps are not taken, and the result is the last finite
    # mixture with its own (finite) total, reported as not converged.
    X = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    start = jaxgmm.init_params(jax.random.key(0), X, 2)
    result = jaxgmm.fit_gradient(
        jax.random.key(0), X, 2, optimizer=optax.sgd(1e6), n_steps=50, init_params=start
    )
    assert int(result.n_iter) < 50 and not bool(result.converged)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(result.params))
    total = float(jaxgmm.log_likelihood(result.params, X))
    np.testing.assert_allclose(float(result.log_likelihood), total, rtol=1e-5)


def test_a_step_to_a_singular_mixture_falls_back_to_the_last_finite_objective():
    # Without regularisation, SGD at step 100 sends a variance to zero: finite parameters
    # whose log-likelihood is not. The result is the last mixture with a finite objective.
    X = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    start = jaxgmm.init_params(jax.random.key(0), X, 2, reg_covar=0.0)
    result = jaxgmm.fit_gradient(
        jax.random.key(0), X, 2, optimizer=optax.sgd(100.0), n_steps=50, reg_covar=0.0,
        init_params=start,
    )  # fmt: skip
    assert int(result.n_iter) < 50 and not bool(result.converged)
    total = float(jaxgmm.log_likelihood(result.params, X))
    assert np.isfinite(total)
    np.testing.assert_allclose(float(result.log_likelihood), total, rtol=1e-5)
