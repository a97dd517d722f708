"""The unconstrained parameterisation: exact round trips both ways, the maps written out
independently in numpy, differentiability of ``log_prob`` through it (checked against finite
differences), pytree behaviour and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm import GMM, UnconstrainedGMM, from_unconstrained, to_unconstrained

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
K, D = 3, 2


def random_gmm(kind, seed=0, dtype=np.float64) -> GMM:
    """A mixture with well-conditioned, clearly non-diagonal covariances (numpy-made)."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(K) * 3)
    means = rng.normal(scale=3.0, size=(K, D))
    a = rng.normal(size=(K, D, D))
    full = a @ np.swapaxes(a, 1, 2) + 0.5 * np.eye(D)
    covariances = {
        "full": full,
        "tied": full[0],
        "diag": rng.uniform(0.3, 3.0, size=(K, D)),
        "spherical": rng.uniform(0.3, 3.0, size=(K,)),
    }[kind]
    leaves = [jnp.asarray(x.astype(dtype)) for x in (weights, means, covariances)]
    return GMM(*leaves, kind)


def random_unconstrained(kind, seed=1) -> UnconstrainedGMM:
    """Arbitrary real arrays (lower triangular for the Cholesky types)."""
    rng = np.random.default_rng(seed)
    shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[kind]
    raw = rng.normal(size=shape)
    if kind in ("full", "tied"):
        raw = np.tril(raw)
    return UnconstrainedGMM(
        jnp.asarray(rng.normal(size=K)),
        jnp.asarray(rng.normal(size=(K, D))),
        jnp.asarray(raw),
        kind,
    )


def numpy_from_unconstrained(u: UnconstrainedGMM):
    """The documented map, written out with numpy: softmax, ``L L'`` with an exp diagonal,
    ``exp`` of log-variances."""
    logits = np.asarray(u.log_weights)
    weights = np.exp(logits - logits.max())
    weights /= weights.sum()
    raw = np.asarray(u.cov_unconstrained)
    if u.covariance_type in ("full", "tied"):
        batch = raw.reshape((-1, D, D))
        covs = []
        for c in batch:
            chol = np.tril(c, -1) + np.diag(np.exp(np.diag(c)))
            covs.append(chol @ chol.T)
        covariances = np.stack(covs).reshape(raw.shape)
    else:
        covariances = np.exp(raw)
    return weights, np.asarray(u.means), covariances


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_round_trip_params_to_unconstrained_and_back(kind):
    params = random_gmm(kind)
    u = to_unconstrained(params)
    back = from_unconstrained(u)
    assert back.covariance_type == kind
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            getattr(back, name), getattr(params, name), rtol=1e-12, atol=1e-12, err_msg=name
        )


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_round_trip_unconstrained_to_params_and_back(kind):
    u = random_unconstrained(kind)
    again = to_unconstrained(from_unconstrained(u))
    # log_weights come back normalised (log of the softmax), i.e. shifted by a constant.
    shift = np.asarray(u.log_weights - again.log_weights)
    np.testing.assert_allclose(shift, shift[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(again.means, u.means, rtol=0, atol=0)
    np.testing.assert_allclose(again.cov_unconstrained, u.cov_unconstrained, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_map_matches_its_numpy_definition(kind):
    u = random_unconstrained(kind, seed=2)
    params = from_unconstrained(u)
    weights, means, covariances = numpy_from_unconstrained(u)
    np.testing.assert_allclose(params.weights, weights, rtol=1e-13)
    np.testing.assert_allclose(params.means, means, rtol=0)
    np.testing.assert_allclose(params.covariances, covariances, rtol=1e-13)
    if kind in ("full", "tied"):
        # the upper triangle is ignored
        noisy = u.replace(cov_unconstrained=u.cov_unconstrained + jnp.triu(jnp.ones((D, D)), 1))
        np.testing.assert_array_equal(from_unconstrained(noisy).covariances, params.covariances)
        # and to_unconstrained returns a lower-triangular array
        back = np.asarray(to_unconstrained(params).cov_unconstrained)
        np.testing.assert_array_equal(np.triu(back, 1), 0.0)


def test_reg_covar_is_added_to_the_diagonal():
    for kind in COVARIANCE_TYPES:
        u = random_unconstrained(kind, seed=3)
        plain = from_unconstrained(u).covariances
        reg = from_unconstrained(u, reg_covar=0.25).covariances
        if kind in ("full", "tied"):
            np.testing.assert_allclose(reg - plain, 0.25 * np.broadcast_to(np.eye(D), plain.shape))
        else:
            np.testing.assert_allclose(reg - plain, 0.25)


@jax.jit
def _directional(u, direction, X):
    """``grad f(u) . direction`` and ``f`` at ``u +- h direction`` for ``f = log_likelihood``."""

    def f(v):
        return jaxgmm.log_likelihood(from_unconstrained(v), X)

    g = jax.grad(f)(u)
    analytic = sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    h = 1e-5

    def shifted(sign):
        return jax.tree.map(lambda a, b: a + sign * h * b, u, direction)

    numeric = (f(shifted(1.0)) - f(shifted(-1.0))) / (2 * h)
    return analytic, numeric


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_log_prob_gradient_matches_finite_differences(kind, blobs):
    """Central differences in float64 have error ~ h^2 f''' + eps f / h ~ 1e-9 relative;
    a wrong gradient (e.g. a missing chain-rule factor for the exp diagonal) is off by O(1)."""
    X = jnp.asarray(blobs[:60])
    u = to_unconstrained(random_gmm(kind, seed=4))
    rng = np.random.default_rng(5)
    for _ in range(2):
        direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), u)
        analytic, numeric = _directional(u, direction, X)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6)
        assert abs(float(analytic)) > 1e-3  # the check is not vacuous


@jax.jit
def _grad_log_likelihood(u, X):
    return jax.grad(lambda v: jaxgmm.log_likelihood(from_unconstrained(v), X))(u)


@pytest.mark.parametrize("dtype", (np.float64, np.float32))
def test_zero_weight_maps_to_a_finite_log_weight_and_back(dtype):
    params = random_gmm("diag", dtype=dtype)
    params = params.replace(weights=jnp.array([0.5, 0.0, 0.5], dtype))
    u = to_unconstrained(params)
    assert float(u.log_weights[1]) == pytest.approx(0.5 * np.log(np.finfo(dtype).tiny))
    back = from_unconstrained(u)
    np.testing.assert_allclose(back.weights, params.weights, atol=1e-15)
    X = jnp.asarray(np.random.default_rng(0).normal(size=(20, D)), dtype)
    g = _grad_log_likelihood(u, X)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))
    assert abs(float(g.log_weights[1])) < 1e-10  # the dead component stays dead


@pytest.mark.parametrize("kind", ("full", "spherical"))
def test_dtype_is_kept(kind):
    params = random_gmm(kind, dtype=np.float32)
    u = to_unconstrained(params)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(u))
    back = from_unconstrained(u, reg_covar=1e-6)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(back))
    np.testing.assert_allclose(back.covariances, params.covariances, rtol=1e-5)


def test_pytree_static_metadata_jit_and_vmap():
    u = random_unconstrained("full")
    leaves, treedef = jax.tree.flatten(u)
    assert len(leaves) == 3
    assert "full" in str(treedef)
    batch = jax.tree.map(lambda a: jnp.stack([a, a + 0.1]), u)
    out = jax.jit(jax.vmap(from_unconstrained))(batch)
    assert out.covariances.shape == (2, K, D, D)
    single = from_unconstrained(jax.tree.map(lambda a: a[1], batch))
    np.testing.assert_allclose(out.covariances[1], single.covariances, rtol=1e-14)
    # optax-style arithmetic on the pytree works leaf by leaf
    moved = jax.tree.map(lambda a, b: a - 0.1 * b, u, u)
    assert isinstance(moved, UnconstrainedGMM) and moved.covariance_type == "full"


def test_errors_name_the_argument():
    u = random_unconstrained("diag")
    with pytest.raises(TypeError, match="UnconstrainedGMM"):
        from_unconstrained(random_gmm("diag"))
    with pytest.raises(ValueError, match="cov_unconstrained"):
        from_unconstrained(u.replace(cov_unconstrained=jnp.zeros((K,))))
    with pytest.raises(ValueError, match="log_weights"):
        from_unconstrained(u.replace(log_weights=jnp.zeros((K + 1,))))
    with pytest.raises(ValueError, match="covariance_type"):
        from_unconstrained(u.replace(covariance_type="banana"))
    with pytest.raises(ValueError, match="reg_covar"):
        from_unconstrained(u, reg_covar=-1.0)
    with pytest.raises(TypeError, match="GMM"):
        to_unconstrained(u)
