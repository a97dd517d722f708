"""Autodiff proofs of the EM algebra.

``Q(theta, theta_old) = sum_n sum_k gamma_nk(theta_old) [log pi_k + log N(x_n | mu_k, S_k)]``
is written here independently of jaxgmm's internals (``jax.scipy.stats.multivariate_normal``
on full covariance matrices built from each type). With ``reg_covar = 0`` the closed-form
M-step is the exact maximiser of Q over the mixture parameters, so at ``m_step``'s output:

* ``dQ/dmu = 0`` and ``dQ/dS = 0`` (for every covariance type, in its own parameterisation);
* ``dQ/dpi_k = N_k / pi_k = N`` for every k (the Lagrange condition on the simplex);

Fisher's identity, ``grad_theta Q(theta, theta_old) = grad_theta log L(theta)`` at
``theta = theta_old``, ties the E-step to the likelihood; and a generic optimiser (optax L-BFGS
on an unconstrained parameterisation) maximising Q lands on the closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.scipy.stats import multivariate_normal

import jaxgmm
from jaxgmm import GMM

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
K = 3

# Tolerance of "the gradient is zero", relative to the natural scale of that gradient: the sum
# over samples of the absolute per-sample contributions. In float64 (eps = 2.2e-16) the M-step
# loses at most a factor of about (|x - centre| / sigma)^2 ~ 1e3 to the cancellation in
# "second moment minus mean squared" and a factor ~ N ~ 1e2 to summation, so an exact
# maximiser evaluated in floating point leaves a relative gradient below ~1e-11; 1e-9 keeps a
# margin of 100. A wrong formula (e.g. a covariance divided by N_k - 1, or not pooled for
# "tied") leaves a relative gradient of order 1e-2 or more; the negative controls below check
# that the measure detects a perturbation of 1e-6.
STATIONARY_RTOL = 1e-9


def full_covariances(params: GMM) -> jax.Array:
    """Every component's covariance as a (K, D, D) matrix."""
    n_components, d = params.means.shape
    c = params.covariances
    kind = params.covariance_type
    if kind == "full":
        return c
    if kind == "tied":
        return jnp.broadcast_to(c, (n_components, d, d))
    if kind == "diag":
        return jax.vmap(jnp.diag)(c)
    return c[:, None, None] * jnp.eye(d)


def log_joint(params: GMM, X) -> jax.Array:
    """``log pi_k + log N(x_n | mu_k, S_k)``, shape (N, K); no jaxgmm code involved."""
    covs = full_covariances(params)
    logpdf = jax.vmap(multivariate_normal.logpdf, in_axes=(None, 0, 0), out_axes=1)
    return jnp.log(params.weights) + logpdf(X, params.means, covs)


def q_function(params: GMM, X, resp) -> jax.Array:
    """``Q(theta, theta_old)`` with ``resp = gamma(theta_old)`` held fixed."""
    return jnp.sum(resp * log_joint(params, X))


grad_q = jax.jit(jax.grad(q_function))
grad_log_likelihood = jax.jit(jax.grad(jaxgmm.log_likelihood))


@jax.jit
def per_sample_grad_scale(params: GMM, X, resp) -> GMM:
    """``sum_n |d/dtheta (sum_k gamma_nk log pi_k N(x_n | ...))|``: the size of the terms whose
    sum is the gradient of Q, against which 'zero' is measured."""

    def one(x, r):
        return jax.grad(q_function)(params, x[None], r[None])

    per_sample = jax.vmap(one)(X, resp)
    return jax.tree.map(lambda g: jnp.sum(jnp.abs(g), axis=0), per_sample)


def start_params(X, covariance_type, seed=0) -> GMM:
    """A valid, non-stationary mixture drawn with NumPy."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    weights = rng.dirichlet(np.full(K, 5.0))
    means = X[rng.choice(n, K, replace=False)] + rng.normal(scale=0.5, size=(K, d))
    base = np.cov(X.T, bias=True)
    if covariance_type == "full":
        a = rng.normal(scale=0.3, size=(K, d, d))
        covariances = rng.uniform(0.2, 1.0, (K, 1, 1)) * base + a @ np.swapaxes(a, 1, 2)
    elif covariance_type == "tied":
        a = rng.normal(scale=0.3, size=(d, d))
        covariances = 0.5 * base + a @ a.T
    elif covariance_type == "diag":
        covariances = np.diag(base) * rng.uniform(0.2, 1.0, size=(K, d))
    else:
        covariances = np.mean(np.diag(base)) * rng.uniform(0.2, 1.0, size=K)
    return GMM(jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covariances), covariance_type)


@pytest.fixture(scope="module", params=COVARIANCE_TYPES)
def em_step(request, blobs):
    """(X, responsibilities at a non-stationary start, the exact M-step from them)."""
    kind = request.param
    X = jnp.asarray(blobs)
    log_resp, _ = jaxgmm.e_step(start_params(X, kind), X)
    new = jaxgmm.m_step(X, log_resp, covariance_type=kind, reg_covar=0.0)
    return X, jnp.exp(log_resp), new


def relative_gradient(params, X, resp, field):
    grad = getattr(grad_q(params, X, resp), field)
    scale = getattr(per_sample_grad_scale(params, X, resp), field)
    return np.max(np.abs(grad) / scale)


@pytest.mark.parametrize("field", ["means", "covariances"])
def test_m_step_is_stationary_point_of_q(em_step, field):
    X, resp, new = em_step
    assert relative_gradient(new, X, resp, field) < STATIONARY_RTOL


@pytest.mark.parametrize("field", ["means", "covariances"])
def test_stationarity_measure_detects_a_small_perturbation(em_step, field):
    """Negative control: the same measure at a point 1e-6 (relative) away is far from zero."""
    X, resp, new = em_step
    perturbed = new.replace(**{field: getattr(new, field) * (1 + 1e-6)})
    assert relative_gradient(perturbed, X, resp, field) > 100 * STATIONARY_RTOL


def test_weights_satisfy_lagrange_condition(em_step):
    """On the simplex, the constrained maximiser has dQ/dpi_k = N_k / pi_k equal to the
    multiplier for every k, namely sum_k N_k = N. (jaxgmm, like scikit-learn, adds 10 eps to
    N_k, which moves dQ/dpi_k by a relative 1e-14; rounding is at the same level.)"""
    X, resp, new = em_step
    grad = grad_q(new, X, resp).weights
    np.testing.assert_allclose(np.asarray(grad), X.shape[0], rtol=1e-10)
    # Negative control: moving weight between two components breaks the condition.
    shifted = new.replace(weights=new.weights + jnp.array([1e-3, -1e-3, 0.0]))
    shifted_grad = grad_q(shifted, X, resp).weights
    assert np.ptp(np.asarray(shifted_grad)) > 1e-3 * X.shape[0]


# Fisher's identity. Both sides are sums of the same per-sample terms gamma_nk * d/dtheta
# log(pi_k N_k(x_n)), computed along different paths (jaxgmm's feature-matrix log-densities
# vs multivariate_normal.logpdf), so they agree to rounding: relative 1e-13 in practice. 1e-9
# relative to the per-sample scale leaves a large margin and is still 1e6 times smaller than
# the gap the negative control shows for responsibilities taken at a different theta.
FISHER_RTOL = 1e-9


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_fisher_identity(blobs, kind):
    X = jnp.asarray(blobs)
    theta = start_params(X, kind, seed=1)
    log_resp, _ = jaxgmm.e_step(theta, X)
    resp = jnp.exp(log_resp)
    q_grad = grad_q(theta, X, resp)
    grad_ll = grad_log_likelihood(theta, X)
    scale = per_sample_grad_scale(theta, X, resp)
    for field in ("weights", "means", "covariances"):
        difference = np.abs(getattr(q_grad, field) - getattr(grad_ll, field))
        assert np.max(difference / getattr(scale, field)) < FISHER_RTOL, field

    # Negative control: responsibilities from a different theta_old break the identity.
    other_log_resp, _ = jaxgmm.e_step(start_params(X, kind, seed=2), X)
    grad_other = grad_q(theta, X, jnp.exp(other_log_resp))
    gap = np.abs(grad_other.means - grad_ll.means) / scale.means
    assert np.max(gap) > 1e-3


# --- an optimiser maximising Q over an unconstrained parameterisation


def lower_cholesky(a):
    """Lower-triangular factor with positive diagonal from an unconstrained square matrix."""
    diagonal = jnp.exp(jnp.diagonal(a, axis1=-2, axis2=-1))
    return jnp.tril(a, -1) + diagonal[..., None] * jnp.eye(a.shape[-1])


def to_unconstrained(params: GMM) -> dict:
    kind = params.covariance_type
    c = params.covariances
    if kind in ("full", "tied"):
        chol = jnp.linalg.cholesky(c)
        diagonal = jnp.diagonal(chol, axis1=-2, axis2=-1)
        cov = jnp.tril(chol, -1) + jnp.log(diagonal)[..., None] * jnp.eye(c.shape[-1])
    else:
        cov = jnp.log(c)
    return {"logits": jnp.log(params.weights), "means": params.means, "cov": cov}


def from_unconstrained(u: dict, kind: str) -> GMM:
    if kind in ("full", "tied"):
        chol = lower_cholesky(u["cov"])
        cov = chol @ jnp.swapaxes(chol, -1, -2)
    else:
        cov = jnp.exp(u["cov"])
    return GMM(jax.nn.softmax(u["logits"]), u["means"], cov, kind)


def maximise_q(u0: dict, kind: str, X, resp, max_steps=500, gtol=1e-11):
    """L-BFGS on -Q/N until the gradient norm is below ``gtol`` (or ``max_steps``)."""

    def loss(u):
        return -q_function(from_unconstrained(u, kind), X, resp) / X.shape[0]

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        u, state = carry
        value, grad = value_and_grad(u, state=state)
        updates, state = solver.update(grad, state, u, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(u, updates), state

    def keep_going(carry):
        _, state = carry
        count = optax.tree_utils.tree_get(state, "count")
        grad = optax.tree_utils.tree_get(state, "grad")
        return (count == 0) | ((count < max_steps) & (optax.tree_utils.tree_norm(grad) > gtol))

    u, state = jax.lax.while_loop(keep_going, step, (u0, solver.init(u0)))
    grad_norm = optax.tree_utils.tree_norm(jax.grad(loss)(u))
    return u, optax.tree_utils.tree_get(state, "count"), grad_norm


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_optimiser_on_q_reaches_closed_form_m_step(blobs, kind):
    X = jnp.asarray(blobs)
    theta_old = start_params(X, kind, seed=3)
    log_resp, _ = jaxgmm.e_step(theta_old, X)
    resp = jnp.exp(log_resp)
    closed_form = jaxgmm.m_step(X, log_resp, covariance_type=kind, reg_covar=0.0)

    # Start from theta_old itself (a far, perturbed point relative to the maximiser).
    u, n_steps, grad_norm = jax.jit(maximise_q, static_argnums=1)(
        to_unconstrained(theta_old), kind, X, resp
    )
    # The optimiser must have converged (not stopped on the step limit).
    assert float(grad_norm) < 1e-9, (int(n_steps), float(grad_norm))
    found = from_unconstrained(u, kind)
    # Q/N is strongly concave near the maximiser with curvature O(1) in these coordinates
    # (data scale ~1-5), so a gradient norm below 1e-9 puts the optimiser within ~1e-8 of the
    # maximiser; 1e-6 relative leaves a margin of 100, while the start differs from the
    # closed form by O(1) and a wrong closed form (biased or unpooled covariances) by > 1e-3.
    for field in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            np.asarray(getattr(found, field)),
            np.asarray(getattr(closed_form, field)),
            rtol=1e-6,
            atol=1e-8,
            err_msg=field,
        )
    assert not np.allclose(np.asarray(theta_old.means), np.asarray(closed_form.means), atol=1e-2)
