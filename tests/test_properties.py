"""Property: EM never decreases the log-likelihood, over random data, shapes and types.

Hypothesis draws the data (a random mixture of a random number of clusters, random spread,
scale and offset) and the starting parameters; the shapes come from a small fixed set so that
each (shape, covariance type) compiles once.

The guarantee (ll(theta_new) - ll(theta_old) >= Q(theta_new) - Q(theta_old) >= 0) needs the
M-step to maximise Q exactly, i.e. ``reg_covar = 0``. With ``reg_covar = r > 0`` the step can
lower the likelihood by up to the loss in Q from adding r to the covariances,

    Delta = sum_k N_k / 2 * sum_i [log(1 + r / lam_ki) - r / (lam_ki + r)],

lam_ki the eigenvalues of the unregularised covariance of component k (scikit-learn's EM shows
the same small decreases on data whose variance is not large against r). So ``fit`` is
checked with ``reg_covar = 0`` on non-degenerate outcomes, and the hand-made alternation with
the default ``reg_covar = 1e-6`` against the bound ``Delta``.
"""

import jax
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxgmm
from jaxgmm import GMM

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
# (N, D, K): small, two compilations per covariance type for the fit test (D = 1 and 3,
# K = 2 and 3; K = 1 is a single Gaussian, where EM reaches the optimum in one step); the
# hand-made alternation uses (48, 2, 3).
SHAPES = ((24, 1, 3), (48, 3, 2))
MAX_ITER = 15
KEY = jax.random.key(0)
REG_COVAR = 1e-6

# Rounding slack on the mean per-sample log-likelihood. Its rounding error is of order
# eps * (1 + |ll|) times the conditioning of the covariances (eps = 2.2e-16 in float64); on
# non-degenerate problems that stays below 1e-12 * (1 + |ll|), and 1e-9 leaves a margin while
# a genuine decrease from a wrong step is many orders of magnitude larger.
RELATIVE_SLACK = 1e-9

log_likelihood = jax.jit(jaxgmm.log_likelihood)


@st.composite
def problems(draw, shapes=SHAPES):
    """(X, K, rng): data from a random mixture and a generator for the starting point."""
    n, d, k = draw(st.sampled_from(shapes))
    seed = draw(st.integers(0, 2**32 - 1))
    n_clusters = draw(st.integers(1, 4))
    spread = draw(st.floats(0.0, 8.0))
    log_scale = draw(st.floats(-2.0, 2.0))
    offset = draw(st.floats(-100.0, 100.0))
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(n_clusters, d))
    labels = rng.integers(0, n_clusters, size=n)
    stretch = rng.uniform(0.2, 2.0, size=(n_clusters, d))
    X = (centres[labels] + stretch[labels] * rng.normal(size=(n, d))) * 10.0**log_scale + offset
    return X, k, rng


def start_params(X, k, covariance_type, rng) -> GMM:
    """Means at random data points, weights from a Dirichlet, covariances from the data."""
    n, d = X.shape
    weights = rng.dirichlet(np.full(k, 2.0))
    means = X[rng.choice(n, k, replace=False)]
    variances = np.var(X, axis=0) * rng.uniform(0.1, 1.0, size=(k, d))
    covariances = {
        "full": variances[:, :, None] * np.eye(d),
        "diag": variances,
        "spherical": variances.mean(axis=1),
        "tied": np.diag(variances.mean(axis=0)),
    }[covariance_type]
    return GMM(weights, means, covariances, covariance_type)


def assert_non_decreasing(values, allowed_loss, what):
    """``values[t + 1] >= values[t] - allowed_loss[t] - rounding``."""
    values = np.asarray(values, dtype=np.float64)
    assert np.all(np.isfinite(values)), (what, values)
    slack = RELATIVE_SLACK * (1.0 + np.abs(values[1:])) + allowed_loss
    steps = np.diff(values)
    assert np.all(steps >= -slack), (what, values, steps, slack)


def unregularised_eigenvalues(X, resp, covariance_type):
    """Counts N_k (K,) and the eigenvalues of the exact (reg_covar = 0) M-step covariances,
    (K, D), in NumPy float64; for "tied" the pooled eigenvalues with the total count."""
    counts = resp.sum(axis=0)
    means = resp.T @ X / counts[:, None]
    scatter = np.stack(
        [(resp[:, k, None] * (X - means[k])).T @ (X - means[k]) for k in range(resp.shape[1])]
    )
    if covariance_type == "tied":
        return counts.sum()[None], np.linalg.eigvalsh(scatter.sum(axis=0) / counts.sum())[None]
    covariances = scatter / counts[:, None, None]
    if covariance_type == "full":
        return counts, np.linalg.eigvalsh(covariances)
    variances = np.diagonal(covariances, axis1=1, axis2=2)
    if covariance_type == "diag":
        return counts, variances
    return counts, np.repeat(variances.mean(axis=1, keepdims=True), X.shape[1], axis=1)


def regularisation_loss(X, resp, covariance_type, reg_covar):
    """Delta / N: how far below the exact maximiser's Q the regularised M-step lands (per
    sample); +inf when an unregularised covariance is singular (no guarantee is left)."""
    counts, lam = unregularised_eigenvalues(X, resp, covariance_type)
    if np.any(lam <= 0):
        return np.inf
    per_eigenvalue = np.log1p(reg_covar / lam) - reg_covar / (lam + reg_covar)
    return float(np.sum(counts[:, None] / 2 * per_eigenvalue)) / X.shape[0]


def is_degenerate(result, X, covariance_type):
    """A component holding at most D samples' worth of responsibility, or a covariance with
    an eigenvalue tiny against the data's variance: the likelihood is unbounded there and
    with reg_covar = 0 rounding (or the library's repair of a singular covariance) decides."""
    if int(result.n_iter) != MAX_ITER:  # stopped on a non-finite log-likelihood
        return True
    params = result.params
    counts = np.asarray(params.weights) * X.shape[0]  # N_k of the last M-step
    covariances = np.asarray(params.covariances)
    if covariance_type in ("full", "tied"):
        covariances = np.linalg.eigvalsh(covariances)
    return counts.min() < X.shape[1] + 1 or covariances.min() < 1e-8 * X.var(axis=0).max()


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
@settings(max_examples=25, deadline=None, database=None)
@given(problem=problems())
def test_fit_history_never_decreases(kind, problem):
    X, k, rng = problem
    start = start_params(X, k, kind, rng)
    result = jaxgmm.fit(
        KEY, X, k, covariance_type=kind, init_params=start, tol=0.0, max_iter=MAX_ITER,
        reg_covar=0.0,
    )  # fmt: skip
    assume(not is_degenerate(result, X, kind))
    # The first value is the mean log-likelihood at the start, before any M-step.
    initial = float(log_likelihood(start, X)) / X.shape[0]
    history = np.concatenate([[initial], np.asarray(result.history)])
    assert_non_decreasing(history, 0.0, "history")
    np.testing.assert_allclose(
        history[-1] * X.shape[0], float(result.log_likelihood), rtol=1e-12, atol=1e-9
    )


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
@settings(max_examples=10, deadline=None, database=None)
@given(problem=problems(shapes=((48, 2, 3),)))
def test_manual_e_m_alternation_never_decreases(kind, problem):
    """The public e_step / m_step alternated by hand, at the default reg_covar = 1e-6: each
    step loses at most the regularisation bound Delta (usually ~0). e_step's mean
    log-likelihood is that of its input parameters."""
    X, k, rng = problem
    params = start_params(X, k, kind, rng)
    values, allowed = [], []
    for _ in range(8):
        log_resp, mean_ll = jaxgmm.e_step(params, X)
        # Same eager code path, so equal up to the rounding of a mean against a sum.
        np.testing.assert_allclose(
            float(mean_ll) * X.shape[0], float(jaxgmm.log_likelihood(params, X)), rtol=1e-12
        )
        values.append(float(mean_ll))
        params = jaxgmm.m_step(X, log_resp, covariance_type=kind, reg_covar=REG_COVAR)
        allowed.append(regularisation_loss(X, np.exp(np.asarray(log_resp)), kind, REG_COVAR))
    values.append(float(jaxgmm.log_likelihood(params, X)) / X.shape[0])
    assert_non_decreasing(values, np.asarray(allowed), "e_step/m_step")


def test_regularisation_loss_is_attained_by_one_component():
    """Why the bound is needed, and a check of it: with one component the responsibilities
    are all one, so log L = Q and the exact M-step is the maximum likelihood estimate. Adding
    reg_covar = 1e-6 to data of variance 1e-4 lowers the log-likelihood by exactly Delta.
    (Rounding: |log L| ~ 300 gives absolute errors ~1e-13 against a drop of ~1e-3.)"""
    rng = np.random.default_rng(0)
    X = 0.01 * rng.normal(size=(48, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]])
    log_resp = np.zeros((48, 1))
    exact = jaxgmm.m_step(X, log_resp, covariance_type="full", reg_covar=0.0)
    regularised = jaxgmm.m_step(X, log_resp, covariance_type="full", reg_covar=REG_COVAR)
    drop = float(jaxgmm.log_likelihood(exact, X) - jaxgmm.log_likelihood(regularised, X)) / 48
    bound = regularisation_loss(X, np.ones((48, 1)), "full", REG_COVAR)
    assert drop > 1e-6
    np.testing.assert_allclose(drop, bound, rtol=1e-6)
