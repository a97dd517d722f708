"""Gradients through ``fit``: implicit differentiation at the EM fixed point and unrolled
EM agree with each other and with central finite differences (float64)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
KEY = jax.random.key(0)
MAX_ITER = 200  # enough for these well-separated data to converge to ~1e-15 (checked below)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 1, (40, 2)), rng.normal(4, 0.7, (40, 2))])


def _loss_factory(kind, start, gradient):
    def loss(X, weights):
        result = jaxgmm.fit(
            KEY,
            X,
            2,
            covariance_type=kind,
            init_params=start,
            tol=0.0,
            max_iter=MAX_ITER,
            sample_weight=weights,
            gradient=gradient,
        )
        p = result.params
        return (
            jnp.sum(p.means[:, 0] ** 2)
            + jnp.sum(p.covariances)
            + jnp.sum(p.weights**3)
            + 1e-2 * result.log_likelihood
        )

    return loss


def _finite_difference_check(value, gX, gw, data, weights):
    # Central differences with h = 1e-4: truncation error O(h^2 f''') ~ 1e-8 relative,
    # rounding ~ eps * |f| / h ~ 1e-12; together well inside 1e-5.
    h = 1e-4
    for i, j in [(0, 0), (45, 1), (7, 1)]:
        bump = np.zeros_like(data)
        bump[i, j] = h
        fd = (value(data + bump, weights) - value(data - bump, weights)) / (2 * h)
        np.testing.assert_allclose(gX[i, j], fd, rtol=1e-5, atol=1e-9)
    for i in (3, 60):
        bump = np.zeros_like(weights)
        bump[i] = h
        fd = (value(data, weights + bump) - value(data, weights - bump)) / (2 * h)
        np.testing.assert_allclose(gw[i], fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_implicit_gradient_matches_finite_differences(data, kind):
    start = jaxgmm.init_params(KEY, data, 2, covariance_type=kind)
    weights = np.linspace(0.5, 1.5, data.shape[0])
    loss = _loss_factory(kind, start, "implicit")
    gX, gw = jax.grad(loss, argnums=(0, 1))(data, weights)
    assert np.all(np.isfinite(gX)) and np.all(np.isfinite(gw))
    _finite_difference_check(jax.jit(loss), gX, gw, data, weights)


@pytest.mark.parametrize("kind", ["full", "spherical"])
def test_implicit_matches_unrolled(data, kind):
    start = jaxgmm.init_params(KEY, data, 2, covariance_type=kind)
    weights = np.linspace(0.5, 1.5, data.shape[0])
    gX, gw = jax.grad(_loss_factory(kind, start, "implicit"), argnums=(0, 1))(data, weights)
    uX, uw = jax.grad(_loss_factory(kind, start, "unroll"), argnums=(0, 1))(data, weights)
    # Unrolling 200 converged iterations sums the same Neumann series to machine precision.
    np.testing.assert_allclose(gX, uX, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(gw, uw, rtol=1e-7, atol=1e-12)


def test_gradient_with_respect_to_weights_alone(data):
    # Only the weights are traced (X is a concrete array): the implicit gradient must still be
    # attached, and equal the weights part of the joint gradient.
    start = jaxgmm.init_params(KEY, data, 2, covariance_type="full")
    weights = np.linspace(0.5, 1.5, data.shape[0])
    loss = _loss_factory("full", start, "implicit")
    _, gw = jax.grad(loss, argnums=(0, 1))(data, weights)
    alone = jax.grad(lambda w: loss(jnp.asarray(data), w))(weights)
    np.testing.assert_allclose(alone, gw, rtol=1e-12, atol=1e-15)
    assert np.max(np.abs(alone)) > 1e-3


def test_gradient_under_vmap(data):
    start = jaxgmm.init_params(KEY, data, 2, covariance_type="diag")
    loss = _loss_factory("diag", start, "implicit")
    weights = np.ones(data.shape[0])
    batch = jnp.stack([data, data * 1.1])
    grads = jax.vmap(jax.grad(loss), in_axes=(0, None))(batch, weights)
    single = jax.grad(loss)(jnp.asarray(batch[1]), weights)
    np.testing.assert_allclose(grads[1], single, rtol=1e-9, atol=1e-12)


def test_gradient_of_log_likelihood_is_the_score(data):
    # At the MLE the parameters are stationary, so d(max log-lik)/dx_n = d log p(x_n)/dx_n at
    # the fitted parameters (envelope theorem): an independent check of the adjoint.
    start = jaxgmm.init_params(KEY, data, 2, covariance_type="full")

    # reg_covar=0 makes the M-step the exact maximiser (with reg_covar > 0 the fixed point is
    # not stationary for the likelihood and the identity holds only to O(reg_covar)).
    options = dict(init_params=start, tol=0.0, max_iter=MAX_ITER, reg_covar=0.0)

    def max_log_likelihood(X):
        return jaxgmm.fit(KEY, X, 2, **options).log_likelihood

    g = jax.grad(max_log_likelihood)(jnp.asarray(data))
    params = jaxgmm.fit(KEY, data, 2, **options).params
    fixed = jax.grad(lambda X: jaxgmm.log_likelihood(params, X))(jnp.asarray(data))
    np.testing.assert_allclose(g, fixed, rtol=1e-10, atol=1e-12)


def test_log_likelihood_gradient_at_the_default_tol_is_that_of_the_fixed_point():
    # Overlapping components: EM converges slowly and the default stopping rule (tol=1e-3)
    # ends 5 iterations in, visibly short of the fixed point. The implicit gradient is taken
    # at the polished fixed point. Reference: central differences of a fit run to the fixed
    # point (2000 iterations, tol=0; 1000 and 2000 agree to all digits). Without the
    # polishing the gradient was off by up to 3.7 in entries of size 4.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 1.5])
    start = jaxgmm.init_params(KEY, X, 2)

    def max_log_likelihood(X, **options):
        return jaxgmm.fit(KEY, X, 2, init_params=start, reg_covar=0.0, **options).log_likelihood

    assert int(jaxgmm.fit(KEY, X, 2, init_params=start, reg_covar=0.0).n_iter) < 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the polishing settles within the default cap
        g = jax.block_until_ready(jax.grad(max_log_likelihood)(jnp.asarray(X)))
    tight = jax.jit(lambda X: max_log_likelihood(X, tol=0.0, max_iter=2000))
    h = 1e-5
    for i, j in [(0, 0), (57, 1), (150, 0), (199, 1)]:
        bump = np.zeros_like(X)
        bump[i, j] = h
        fd = (tight(X + bump) - tight(X - bump)) / (2 * h)
        np.testing.assert_allclose(g[i, j], fd, rtol=1e-5, atol=1e-8)
    # Translation invariance in float32 (the polishing measures its steps with the means
    # relative to the data mean; measured in raw coordinates it stopped at once here and the
    # gradient came out 200 times too large): float32 rounding costs about 3e-3.
    shift = 100.0
    shifted_start = start.replace(means=start.means + shift)
    g32 = jax.grad(
        lambda X: jaxgmm.fit(KEY, X, 2, init_params=shifted_start, reg_covar=0.0).log_likelihood
    )(jnp.asarray(X + shift, jnp.float32))
    np.testing.assert_allclose(g32, g, atol=2e-2)


def test_implicit_gradient_warns_when_the_fixed_point_is_not_reached():
    # The overlapping components above: the polishing needs a few hundred EM iterations to
    # reach the fixed point. Capped at 20 it stops short, and the gradient says so.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 1.5])

    def capped(X):
        return jaxgmm.fit(KEY, X, 2, reg_covar=0.0, adjoint_max_iter=20).log_likelihood

    gradient = jax.jit(jax.grad(capped))  # compiled once for this and the failed fit below
    with pytest.warns(RuntimeWarning, match="adjoint_max_iter = 20"):
        jax.block_until_ready(gradient(jnp.asarray(X)))
    # Under vmap the flags are reduced over the batch first: one warning (one host callback)
    # for the whole batch, not one per data set.
    batch = jnp.stack([jnp.asarray(X), jnp.asarray(X) + 0.1, jnp.asarray(X) * 1.1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jax.block_until_ready(jax.grad(lambda b: jnp.sum(jax.vmap(capped)(b)))(batch))
    assert [str(w.message).count("adjoint_max_iter = 20") for w in caught] == [1]
    # A fit that failed (NaN data under jit) is not a slow fixed point: its gradient is NaN,
    # with no warning about settling.
    X[3, 0] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = jax.block_until_ready(gradient(jnp.asarray(X)))
    assert caught == [] and np.all(np.isnan(g))


def test_gradient_option_is_checked(data):
    with pytest.raises(ValueError, match="gradient"):
        jaxgmm.fit(KEY, data, 2, gradient="magic")
