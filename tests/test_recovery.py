"""Recovery of known parameters, the 1-D case against a NumPy EM, and float32: dtypes in and
out, and accuracy on data far from the origin."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

import jaxgmm
from jaxgmm import GMM

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
KEY = jax.random.key(0)

# --- recovery of the parameters that generated the data

N_SAMPLES = 3000
TRUE_WEIGHTS = np.array([0.2, 0.3, 0.5])
TRUE_MEANS = np.array([[-8.0, 0.0], [0.0, 8.0], [8.0, -2.0]])
TRUE_COVARIANCES = {
    "full": np.array(
        [[[1.0, 0.5], [0.5, 2.0]], [[0.5, -0.2], [-0.2, 0.8]], [[2.0, 0.0], [0.0, 1.0]]]
    ),
    "diag": np.array([[1.0, 2.0], [0.5, 0.8], [2.0, 1.0]]),
    "spherical": np.array([1.0, 0.5, 2.0]),
    "tied": np.array([[1.5, 0.6], [0.6, 1.0]]),
}
# Each estimate is compared with the truth in units of its sampling standard error (SE).
# With ~20 compared numbers per fit, a 4-SE bound is exceeded by chance with probability
# ~20 * 6e-5 ~ 1e-3 (normal approximation); the seeds are fixed, so the test is deterministic.
# The components are 8+ standard deviations apart, so misassigned samples are negligible
# (their effect is far below one SE).
N_SE = 4.0


def full_matrices(covariances, covariance_type, n_components=3, d=2):
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return np.broadcast_to(covariances, (n_components, d, d))
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    return covariances[:, None, None] * np.eye(d)


def covariance_standard_errors(covariance_type, weights, covariances, n):
    """SE of the maximum-likelihood covariance estimate, entry by entry, for Gaussian data:
    Var(S_ij) = (S_ii S_jj + S_ij^2) / n_k for an unrestricted matrix from n_k samples;
    diag: 2 S_ii^2 / n_k; spherical (mean of D variances): 2 s^4 / (D n_k); tied: pooled over
    all n samples."""
    counts = weights * n
    if covariance_type == "full":
        d = np.diagonal(covariances, axis1=1, axis2=2)
        var = (d[:, :, None] * d[:, None, :] + covariances**2) / counts[:, None, None]
    elif covariance_type == "tied":
        d = np.diag(covariances)
        var = (d[:, None] * d[None, :] + covariances**2) / n
    elif covariance_type == "diag":
        var = 2 * covariances**2 / counts[:, None]
    else:
        var = 2 * covariances**2 / (TRUE_MEANS.shape[1] * counts)
    return np.sqrt(var)


MAX_ITER = 40


def start_params(covariance_type, dtype=np.float64, offset=0.0) -> GMM:
    """A rough guess: equal weights, means 1.5-2.5 units off the truth, broad covariances."""
    means = TRUE_MEANS + np.array([[2.0, -1.0], [-1.5, 2.0], [1.0, 1.5]]) + offset
    covariances = {
        "full": np.broadcast_to(4.0 * np.eye(2), (3, 2, 2)),
        "diag": np.full((3, 2), 4.0),
        "spherical": np.full((3,), 4.0),
        "tied": 4.0 * np.eye(2),
    }[covariance_type]
    return GMM(
        np.full(3, 1 / 3, dtype), means.astype(dtype), np.array(covariances, dtype),
        covariance_type,
    )  # fmt: skip


def match_components(means):
    """Index of the fitted component nearest to each true mean (must be a permutation)."""
    distances = np.linalg.norm(np.asarray(means)[None, :, :] - TRUE_MEANS[:, None, :], axis=-1)
    order = np.argmin(distances, axis=1)
    assert sorted(order) == [0, 1, 2], distances
    return order


@functools.cache
def sampled(kind):
    """(X, labels) drawn by jaxgmm.sample from the true mixture of this covariance type."""
    truth = GMM(
        jnp.asarray(TRUE_WEIGHTS), jnp.asarray(TRUE_MEANS), jnp.asarray(TRUE_COVARIANCES[kind]),
        kind,
    )  # fmt: skip
    X, labels = jaxgmm.sample(jax.random.key(1), truth, N_SAMPLES)
    assert X.shape == (N_SAMPLES, 2) and X.dtype == jnp.float64
    return np.asarray(X), np.asarray(labels)


@pytest.fixture(scope="module", params=COVARIANCE_TYPES)
def recovered(request):
    """The sampled data and the fit from a rough start (MAX_ITER iterations; EM on clusters
    this separated reaches its fixed point in ~10)."""
    kind = request.param
    X, labels = sampled(kind)
    result = jaxgmm.fit(
        KEY, X, 3, covariance_type=kind, init_params=start_params(kind), tol=0.0,
        max_iter=MAX_ITER,
    )  # fmt: skip
    return kind, X, labels, result, match_components(result.params.means)


def test_sampled_labels_follow_weights(recovered):
    _, _, labels, _, _ = recovered
    counts = np.bincount(labels, minlength=3)
    se = np.sqrt(TRUE_WEIGHTS * (1 - TRUE_WEIGHTS) * N_SAMPLES)
    assert np.all(np.abs(counts - TRUE_WEIGHTS * N_SAMPLES) < N_SE * se), counts


def test_fit_reached_a_fixed_point(recovered):
    _, _, _, result, _ = recovered
    history = np.asarray(result.history)
    assert np.all(np.isfinite(history))
    # The mean log-likelihood has stopped moving (1e-10 is ~1e-11 relative to |ll| ~ 4).
    assert abs(history[-1] - history[-10]) < 1e-10, history


def test_weights_and_means_recovered(recovered):
    kind, _, _, result, order = recovered
    weights = np.asarray(result.params.weights)[order]
    means = np.asarray(result.params.means)[order]
    weight_se = np.sqrt(TRUE_WEIGHTS * (1 - TRUE_WEIGHTS) / N_SAMPLES)
    assert np.all(np.abs(weights - TRUE_WEIGHTS) < N_SE * weight_se), (weights, weight_se)
    variances = np.diagonal(full_matrices(TRUE_COVARIANCES[kind], kind), axis1=1, axis2=2)
    mean_se = np.sqrt(variances / (TRUE_WEIGHTS[:, None] * N_SAMPLES))
    assert np.all(np.abs(means - TRUE_MEANS) < N_SE * mean_se), (means, mean_se)


def test_covariances_recovered(recovered):
    kind, _, _, result, order = recovered
    covariances = np.asarray(result.params.covariances)
    if kind != "tied":
        covariances = covariances[order]
    truth = TRUE_COVARIANCES[kind]
    se = covariance_standard_errors(kind, TRUE_WEIGHTS, truth, N_SAMPLES)
    assert np.all(np.abs(covariances - truth) < N_SE * se), (covariances, truth, se)


# --- the 1-D case

X1D = np.concatenate(
    [
        np.random.default_rng(2).normal(-3.0, 1.0, 150),
        np.random.default_rng(3).normal(2.0, 0.5, 100),
        np.random.default_rng(4).normal(6.0, 1.5, 50),
    ]
)
START_1D = {"weights": np.array([0.5, 0.3, 0.2]), "means": np.array([-1.0, 0.5, 3.0])}
START_VARIANCES = np.array([2.0, 1.0, 3.0])
N_ITER_1D = 10
REG_COVAR = 1e-6


def start_1d(covariance_type) -> GMM:
    v = START_VARIANCES
    covariances = {
        "full": v[:, None, None],
        "diag": v[:, None],
        "spherical": v,
        "tied": np.array([[2.0]]),
    }[covariance_type]
    return GMM(START_1D["weights"], START_1D["means"][:, None], covariances, covariance_type)


def numpy_em_1d(x, weights, means, variances, tied, n_iter, reg_covar):
    """Plain float64 EM for a 1-D mixture (variances (K,); tied: one shared variance)."""
    eps10 = 10 * np.finfo(np.float64).eps
    for _ in range(n_iter):
        log_joint = (
            np.log(weights)
            - 0.5 * np.log(2 * np.pi * variances)
            - 0.5 * (x[:, None] - means) ** 2 / variances
        )
        resp = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
        counts = resp.sum(axis=0) + eps10
        weights = counts / counts.sum()
        means = resp.T @ x / counts
        scatter = np.sum(resp * (x[:, None] - means) ** 2, axis=0)
        if tied:
            variances = np.full_like(means, scatter.sum() / counts.sum() + reg_covar)
        else:
            variances = scatter / counts + reg_covar
    return weights, means, variances


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_one_dimensional_matches_numpy_em(kind):
    start = start_1d(kind)
    result = jaxgmm.fit(
        KEY, X1D, 3, covariance_type=kind, init_params=start, tol=0.0, max_iter=N_ITER_1D,
        reg_covar=REG_COVAR,
    )  # fmt: skip
    params = result.params
    assert params.means.shape == (3, 1)
    start_var = np.full(3, 2.0) if kind == "tied" else START_VARIANCES
    weights, means, variances = numpy_em_1d(
        X1D, start.weights, START_1D["means"], start_var, kind == "tied", N_ITER_1D, REG_COVAR
    )
    # Float64 throughout; the two differ only in summation order and in jaxgmm centring
    # the data, i.e. by rounding (~1e-13 here). 1e-9 leaves a wide margin while EM has moved
    # every parameter by O(0.1) or more from the start.
    np.testing.assert_allclose(np.asarray(params.weights), weights, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(params.means)[:, 0], means, rtol=1e-9)
    got = np.asarray(params.covariances).reshape(-1)
    expected = variances[:1] if kind == "tied" else variances
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert np.max(np.abs(means - START_1D["means"])) > 0.1


def test_one_dimensional_input_equals_column_input():
    start = start_1d("full")
    flat = jaxgmm.fit(KEY, X1D, 3, init_params=start, tol=0.0, max_iter=N_ITER_1D)
    column = jaxgmm.fit(KEY, X1D[:, None], 3, init_params=start, tol=0.0, max_iter=N_ITER_1D)
    for a, b in zip(jax.tree.leaves(flat), jax.tree.leaves(column)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    params = flat.params
    column_x = X1D[:, None]
    for fn in (jaxgmm.log_prob, jaxgmm.predict_proba, jaxgmm.predict, jaxgmm.log_likelihood):
        np.testing.assert_array_equal(np.asarray(fn(params, X1D)), np.asarray(fn(params, column_x)))
    log_resp, _ = jaxgmm.e_step(params, X1D)
    assert log_resp.shape == (300, 3)
    refit = jaxgmm.m_step(X1D, log_resp)
    assert refit.means.shape == (3, 1) and refit.covariances.shape == (3, 1, 1)


# --- float32

OFFSET = 1e4  # the clusters' standard deviations are ~1


@pytest.fixture(scope="module")
def fits32(recovered):
    """The recovery data offset by 1e4 standard deviations and rounded to float32 (the ulp at
    1e4 is ~1e-3); its float32 fit, and the float64 fit of the same rounded data, both from
    the same (float32) start."""
    kind, X, _, _, _ = recovered
    X32 = (X + OFFSET).astype(np.float32)
    start = start_params(kind, np.float32, OFFSET)
    fit32 = jaxgmm.fit(
        KEY, X32, 3, covariance_type=kind, init_params=start, tol=0.0, max_iter=MAX_ITER
    )
    start64 = jax.tree.map(lambda a: np.asarray(a, np.float64), start)
    fit64 = jaxgmm.fit(
        KEY, X32.astype(np.float64), 3, covariance_type=kind, init_params=start64, tol=0.0,
        max_iter=MAX_ITER,
    )  # fmt: skip
    return kind, X32, fit32, fit64


def assert_float32(tree):
    for leaf in jax.tree.leaves(tree):
        assert leaf.dtype == jnp.float32, leaf.dtype


def float_fields(result):
    """The floating-point parts of a FitResult (n_iter and converged are int and bool)."""
    return (result.params, result.log_likelihood, result.history, result.all_log_likelihoods)


def test_float32_in_float32_out(fits32):
    kind, X, result, fit64 = fits32
    n = X.shape[0]
    assert_float32(float_fields(result))
    assert fit64.params.covariances.dtype == jnp.float64
    params = result.params
    assert_float32(jaxgmm.init_params(KEY, X, 3, covariance_type=kind))
    log_resp, mean_ll = jaxgmm.e_step(params, X)
    assert_float32((log_resp, mean_ll))
    assert_float32(jaxgmm.m_step(X, log_resp, covariance_type=kind))
    assert_float32(jaxgmm.m_step(X, log_resp, covariance_type=kind, sample_weight=np.ones(n)))
    for fn in (jaxgmm.log_prob, jaxgmm.log_likelihood, jaxgmm.predict_proba, jaxgmm.bic,
               jaxgmm.aic):  # fmt: skip
        assert_float32(fn(params, X))
    assert jnp.issubdtype(jaxgmm.predict(params, X).dtype, jnp.integer)
    samples, labels = jaxgmm.sample(KEY, params, 7)
    assert samples.dtype == jnp.float32 and samples.shape == (7, 2)
    assert jnp.issubdtype(labels.dtype, jnp.integer)
    # float64 parameters with float32 data: the data decide.
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    assert_float32(jaxgmm.e_step(params64, X))
    assert_float32(jaxgmm.log_prob(params64, X))


def test_float32_builtin_init_and_restarts_recover_far_from_origin():
    """k-means++ initialisation and two restarts (a vmap) in float32 on the offset data keep
    float32 and still recover the true means (4 SE plus a float32 ulp at 1e4). One covariance
    type: the initialisation and restart path is shared by all."""
    kind = "diag"
    X, _ = sampled(kind)
    X32 = (X + OFFSET).astype(np.float32)
    result = jaxgmm.fit(KEY, X32, 3, covariance_type=kind, n_init=2, max_iter=MAX_ITER)
    assert_float32(float_fields(result))
    assert result.all_log_likelihoods.shape == (2,)
    means = np.asarray(result.params.means, np.float64) - OFFSET
    order = match_components(means)
    variances = np.diagonal(full_matrices(TRUE_COVARIANCES[kind], kind), axis1=1, axis2=2)
    mean_se = np.sqrt(variances / (TRUE_WEIGHTS[:, None] * N_SAMPLES))
    assert np.all(np.abs(means[order] - TRUE_MEANS) < N_SE * mean_se + 2e-3)


def test_float32_accurate_far_from_origin(fits32):
    """The float32 fit of data 1e4 standard deviations from the origin matches the float64 fit
    of the same rounded data from the same start. Raw (uncentred) second moments in float32
    would lose everything here: |x|^2 ~ 1e8 against variances ~1 with eps ~ 1e-7."""
    kind, _, fit32, fit64 = fits32
    cov32 = np.asarray(fit32.params.covariances, np.float64)
    cov64 = np.asarray(fit64.params.covariances)
    # Float32 keeps ~7 digits: after centring, data and means carry errors of ~1e-7 of the
    # offset (~1e-3 absolute, one ulp), which moves unit variances by ~1e-6 relative, plus
    # float32 summation over 3000 samples (~1e-5). The required 1e-3 relative is far above
    # that; the absolute part (1e-3 of the largest entry) is for off-diagonal entries near 0.
    np.testing.assert_allclose(cov32, cov64, rtol=1e-3, atol=1e-3 * np.max(np.abs(cov64)))
    np.testing.assert_allclose(
        np.asarray(fit32.params.weights), np.asarray(fit64.params.weights), rtol=1e-3
    )
    # Means near 1e4 are known to an ulp (~1e-3) in float32.
    np.testing.assert_allclose(
        np.asarray(fit32.params.means), np.asarray(fit64.params.means), rtol=0, atol=1e-2
    )
    # Not vacuous: EM moved the means away from the start by much more than the tolerance.
    start = np.asarray(start_params(kind, offset=OFFSET).means)
    assert np.max(np.abs(np.asarray(fit64.params.means) - start)) > 1.0
