"""Float64 parity with ``sklearn.mixture.GaussianMixture`` started from the same parameters,
and the E- and M-steps against scikit-learn's and against a direct NumPy reference."""

import warnings

import jax
import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

import jaxgmm
from jaxgmm import GMM

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
K = 3
N_ITER = 5
REG_COVAR = 1e-6
KEY = jax.random.key(0)

# Both implementations do the same float64 arithmetic in a different order (jaxgmm centres the
# data and uses a feature-matrix product; scikit-learn works with per-component Cholesky
# factors), so they differ by rounding only: a few hundred ulps after five EM iterations, far
# below RTOL. Entries that are zero up to cancellation (off-diagonal covariances, coordinates of
# a mean near the origin, responsibilities of order 1e-300) carry absolute rounding errors of
# order N * eps * |x|^2 ~ 1e-12 for this data (|x| < 20, N = 240), hence ATOL = 1e-9: six
# orders of magnitude below the O(1) size of these parameters, so no real difference hides in it.
RTOL = 1e-6
ATOL = 1e-9


def start_params(X, n_components, covariance_type, seed=0):
    """A deliberately poor but valid starting mixture drawn with NumPy (not by jaxgmm)."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = X[rng.choice(n, n_components, replace=False)] + rng.normal(
        scale=0.5, size=(n_components, d)
    )
    base = np.cov(X.T, bias=True).reshape(d, d)
    if covariance_type == "full":
        mixing = rng.normal(scale=0.3, size=(n_components, d, d))
        covariances = np.stack(
            [s * base + a @ a.T for s, a in zip(rng.uniform(0.2, 1.0, n_components), mixing)]
        )
    elif covariance_type == "tied":
        a = rng.normal(scale=0.3, size=(d, d))
        covariances = 0.5 * base + a @ a.T
    elif covariance_type == "diag":
        covariances = np.diag(base) * rng.uniform(0.2, 1.0, size=(n_components, d))
    else:
        covariances = np.mean(np.diag(base)) * rng.uniform(0.2, 1.0, size=n_components)
    return GMM(weights, means, covariances, covariance_type)


def precisions(covariances, covariance_type):
    if covariance_type in ("full", "tied"):
        return np.linalg.inv(covariances)
    return 1.0 / covariances


def sklearn_model(params: GMM, **kwargs) -> GaussianMixture:
    """An (unfitted) scikit-learn estimator with jaxgmm's parameters set as its state."""
    kind = params.covariance_type
    model = GaussianMixture(len(params.weights), covariance_type=kind, **kwargs)
    covariances = np.asarray(params.covariances)
    model._set_parameters(
        (
            np.asarray(params.weights),
            np.asarray(params.means),
            covariances,
            _compute_precision_cholesky(covariances, kind),
        )
    )
    return model


def assert_params_close(ours: GMM, weights, means, covariances):
    np.testing.assert_allclose(np.asarray(ours.weights), weights, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(ours.means), means, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(ours.covariances), covariances, rtol=RTOL, atol=ATOL)


def fit_jaxgmm(X, start: GMM, n_iter: int):
    return jaxgmm.fit(
        KEY,
        X,
        K,
        covariance_type=start.covariance_type,
        init_params=start,
        tol=0.0,
        max_iter=n_iter,
        reg_covar=REG_COVAR,
    )


def fit_sklearn(X, start: GMM, n_iter: int) -> GaussianMixture:
    kind = start.covariance_type
    model = GaussianMixture(
        K,
        covariance_type=kind,
        tol=0.0,
        max_iter=n_iter,
        reg_covar=REG_COVAR,
        weights_init=np.asarray(start.weights),
        means_init=np.asarray(start.means),
        precisions_init=precisions(np.asarray(start.covariances), kind),
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X)


@pytest.fixture(scope="module", params=COVARIANCE_TYPES)
def both_fits(request, blobs3d):
    """jaxgmm and scikit-learn, N_ITER iterations each from the same start."""
    kind = request.param
    start = start_params(blobs3d, K, kind)
    return kind, start, fit_jaxgmm(blobs3d, start, N_ITER), fit_sklearn(blobs3d, start, N_ITER)


def test_fit_parameters_match(both_fits):
    kind, start, ours, theirs = both_fits
    assert theirs.n_iter_ == N_ITER
    assert int(ours.n_iter) == N_ITER
    assert_params_close(ours.params, theirs.weights_, theirs.means_, theirs.covariances_)
    # Guard against a vacuous comparison: EM moved the parameters well beyond the tolerance.
    assert np.max(np.abs(np.asarray(ours.params.means) - np.asarray(start.means))) > 1e-2


def test_fit_densities_and_criteria_match(both_fits, blobs3d):
    _, _, ours, theirs = both_fits
    params = ours.params
    np.testing.assert_allclose(
        np.asarray(jaxgmm.log_prob(params, blobs3d)), theirs.score_samples(blobs3d), rtol=RTOL
    )
    np.testing.assert_allclose(
        np.asarray(jaxgmm.predict_proba(params, blobs3d)),
        theirs.predict_proba(blobs3d),
        rtol=RTOL,
        atol=ATOL,
    )
    np.testing.assert_array_equal(
        np.asarray(jaxgmm.predict(params, blobs3d)), theirs.predict(blobs3d)
    )
    np.testing.assert_allclose(
        float(ours.log_likelihood), theirs.score(blobs3d) * len(blobs3d), rtol=RTOL
    )
    np.testing.assert_allclose(float(jaxgmm.bic(params, blobs3d)), theirs.bic(blobs3d), rtol=RTOL)
    np.testing.assert_allclose(float(jaxgmm.aic(params, blobs3d)), theirs.aic(blobs3d), rtol=RTOL)
    assert jaxgmm.n_parameters(params) == theirs._n_parameters()


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_history_matches_sklearn_per_iteration(blobs3d, kind):
    """history[i] is the mean log-likelihood after M-step i+1: scikit-learn with i+1 iterations,
    scored at its final parameters."""
    start = start_params(blobs3d, K, kind, seed=1)
    ours = fit_jaxgmm(blobs3d, start, N_ITER)
    expected = [fit_sklearn(blobs3d, start, n).score(blobs3d) for n in range(1, N_ITER + 1)]
    np.testing.assert_allclose(np.asarray(ours.history), expected, rtol=RTOL)


# --- the single steps, at a start that is not a fixed point


def reference_m_step(X, resp, covariance_type, reg_covar, sample_weight=None):
    """The M-step formulas in plain NumPy float64 (with scikit-learn's 10 eps on N_k)."""
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, float)
    r = resp * w[:, None]
    counts = r.sum(axis=0) + 10 * np.finfo(np.float64).eps
    weights = counts / counts.sum()
    means = r.T @ X / counts[:, None]
    d = X.shape[1]
    scatter = np.stack(
        [(r[:, k, None] * (X - means[k])).T @ (X - means[k]) for k in range(resp.shape[1])]
    )
    full = scatter / counts[:, None, None] + reg_covar * np.eye(d)
    if covariance_type == "full":
        covariances = full
    elif covariance_type == "tied":
        covariances = scatter.sum(axis=0) / counts.sum() + reg_covar * np.eye(d)
    elif covariance_type == "diag":
        covariances = np.diagonal(full, axis1=1, axis2=2)
    else:
        covariances = np.diagonal(full, axis1=1, axis2=2).mean(axis=1)
    return weights, means, covariances


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_e_step_matches_sklearn(blobs3d, kind):
    params = start_params(blobs3d, K, kind, seed=2)
    log_resp, mean_ll = jaxgmm.e_step(params, blobs3d)
    log_prob_norm, sk_log_resp = sklearn_model(params)._estimate_log_prob_resp(blobs3d)
    np.testing.assert_allclose(
        np.exp(np.asarray(log_resp)), np.exp(sk_log_resp), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(float(mean_ll), np.mean(log_prob_norm), rtol=RTOL)
    np.testing.assert_allclose(
        np.asarray(jaxgmm.log_prob(params, blobs3d)), log_prob_norm, rtol=RTOL
    )


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_m_step_matches_sklearn_and_numpy(blobs3d, kind):
    params = start_params(blobs3d, K, kind, seed=3)
    log_resp, _ = jaxgmm.e_step(params, blobs3d)
    ours = jaxgmm.m_step(blobs3d, log_resp, covariance_type=kind, reg_covar=REG_COVAR)
    assert ours.covariance_type == kind

    model = sklearn_model(params, reg_covar=REG_COVAR)
    model._m_step(blobs3d, np.asarray(log_resp))
    assert_params_close(ours, model.weights_, model.means_, model.covariances_)

    assert_params_close(ours, *reference_m_step(blobs3d, np.exp(log_resp), kind, REG_COVAR))


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_weighted_m_step_matches_numpy(blobs3d, kind):
    """sample_weight multiplies each sample's responsibilities (scikit-learn has no weights);
    integer weights equal repeating the samples."""
    params = start_params(blobs3d, K, kind, seed=4)
    log_resp, _ = jaxgmm.e_step(params, blobs3d)
    sample_weight = np.random.default_rng(5).integers(0, 4, size=len(blobs3d)).astype(float)
    ours = jaxgmm.m_step(
        blobs3d, log_resp, covariance_type=kind, reg_covar=REG_COVAR, sample_weight=sample_weight
    )
    resp = np.exp(np.asarray(log_resp))
    assert_params_close(ours, *reference_m_step(blobs3d, resp, kind, REG_COVAR, sample_weight))
    repeats = sample_weight.astype(int)
    assert_params_close(
        ours,
        *reference_m_step(
            np.repeat(blobs3d, repeats, axis=0),
            np.repeat(resp, repeats, axis=0),
            kind,
            REG_COVAR,
        ),
    )
