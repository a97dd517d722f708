"""MAP adaptation of a background mixture (map_adapt), against Reynolds, Quatieri and Dunn's
formulas written out in NumPy (float64), against one EM step in the limit of a weightless
prior, and under jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import jaxgmm

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
K = 3
RELEVANCE = 16.0
ALL = ("weights", "means", "covariances")


@pytest.fixture(scope="module")
def background(blobs):
    """(180, 2) data of three clusters and a speaker's 40 samples near two of them."""
    rng = np.random.default_rng(1)
    centers = blobs.reshape(3, 60, 2).mean(axis=1)
    near_first = centers[0] + 0.8 + 0.4 * rng.normal(size=(25, 2))
    near_second = centers[1] - 0.5 + rng.normal(size=(15, 2))
    return blobs, np.concatenate([near_first, near_second])


@pytest.fixture(scope="module")
def ubms(background):
    X, _ = background
    return {
        kind: jaxgmm.fit(jax.random.key(0), X, K, covariance_type=kind).params
        for kind in COVARIANCE_TYPES
    }


def full_covariances(params):
    c = np.asarray(params.covariances)
    K, D = np.asarray(params.means).shape
    return {
        "full": lambda: c,
        "tied": lambda: np.broadcast_to(c, (K, D, D)),
        "diag": lambda: np.stack([np.diag(v) for v in c]),
        "spherical": lambda: c[:, None, None] * np.eye(D),
    }[params.covariance_type]()


def reynolds(prior, X, relevance, adapt, n_iter=1, sample_weight=None):
    """MAP-EM with the prior's parameters as ``relevance`` pseudo-samples per component, in
    the form of Reynolds et al. (sums of second moments)."""
    kind = prior.covariance_type
    w0, mu0, S0 = np.asarray(prior.weights), np.asarray(prior.means), full_covariances(prior)
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight)
    weights, means, covs = w0, mu0, S0
    for _ in range(n_iter):
        log_joint = np.stack(
            [
                np.log(weights[k]) + multivariate_normal(means[k], covs[k]).logpdf(X)
                for k in range(K)
            ],
            axis=1,
        )
        resp = np.exp(log_joint - np.logaddexp.reduce(log_joint, axis=1, keepdims=True))
        g = resp * w[:, None]
        n = g.sum(axis=0)
        first = g.T @ X
        new_means = (first + relevance * mu0) / (n + relevance)[:, None]
        if "means" in adapt:  # Reynolds et al.: second moments, less the new mean's square
            second = np.einsum("nk,ni,nj->kij", g, X, X)
            prior_second = relevance * (S0 + mu0[:, :, None] * mu0[:, None, :])
            outer = (n + relevance)[:, None, None] * new_means[:, :, None] * new_means[:, None, :]
            scatter = second + prior_second - outer
        else:  # the means stay: the scatter about them
            about = X[None, :, :] - mu0[:, None, :]
            scatter = np.einsum("nk,kni,knj->kij", g, about, about) + relevance * S0
        if kind == "tied":
            new_covs = np.broadcast_to(scatter.sum(0) / (n + relevance).sum(), S0.shape)
        else:
            new_covs = scatter / (n + relevance)[:, None, None]
            if kind in ("diag", "spherical"):
                diagonal = np.diagonal(new_covs, axis1=1, axis2=2)
                if kind == "spherical":
                    diagonal = np.repeat(diagonal.mean(axis=1, keepdims=True), X.shape[1], 1)
                new_covs = np.stack([np.diag(d) for d in diagonal])
        alpha = n / (n + relevance)
        new_weights = alpha * n / n.sum() + (1 - alpha) * w0
        weights = new_weights / new_weights.sum() if "weights" in adapt else w0
        means = new_means if "means" in adapt else mu0
        covs = new_covs if "covariances" in adapt else S0
    return weights, means, covs


def assert_close_to(params, expected, rtol):
    weights, means, covs = expected
    np.testing.assert_allclose(params.weights, weights, rtol=rtol, atol=1e-14)
    np.testing.assert_allclose(params.means, means, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(full_covariances(params), covs, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_matches_reynolds_formulas(background, ubms, kind):
    _, speaker = background
    ubm = ubms[kind]
    for n_iter in (1, 2):
        adapted = jaxgmm.map_adapt(ubm, speaker, relevance=RELEVANCE, adapt=ALL, n_iter=n_iter)
        assert adapted.covariance_type == kind
        assert jax.tree.map(jnp.shape, adapted) == jax.tree.map(jnp.shape, ubm)
        assert_close_to(adapted, reynolds(ubm, speaker, RELEVANCE, ALL, n_iter), rtol=1e-9)


def test_components_without_samples_keep_their_prior():
    means = np.array([[-20.0, 0.0], [0.0, 0.0], [20.0, 0.0]])
    ubm = jaxgmm.GMM(np.full(3, 1 / 3), means, np.stack([np.eye(2)] * 3), "full")
    speaker = np.array([[21.0, 0.5], [20.5, -0.5], [21.5, 0.0], [21.0, 1.0]])  # n = 4 by the third
    adapted = jaxgmm.map_adapt(ubm, speaker, adapt=ALL)
    np.testing.assert_allclose(adapted.means[:2], means[:2], atol=1e-12)
    np.testing.assert_allclose(adapted.covariances[:2], np.stack([np.eye(2)] * 2), atol=1e-12)
    # the third moves by alpha = 4 / (4 + 16) of the way to the samples' mean
    np.testing.assert_allclose(adapted.means[2], means[2] + 0.2 * (speaker.mean(0) - means[2]))
    # weights proportional to alpha n_k / N + (1 - alpha) pi_k: 1/3, 1/3 and 0.2 + 0.8 / 3
    raw = np.array([1 / 3, 1 / 3, 0.2 + 0.8 / 3])
    np.testing.assert_allclose(adapted.weights, raw / raw.sum())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unvisited_components_keep_their_prior_far_from_the_data(dtype):
    """A component 40 units from the new data, given none of it, keeps its mean and
    covariance to rounding, also in float32 and with a weak prior (relevance 0.01)."""
    means = np.array([[-20.0, 0.0], [20.0, 0.0]], dtype)
    ubm = jaxgmm.GMM(np.full(2, 0.5, dtype), means, np.ones((2, 2), dtype), "diag")
    speaker = np.array([[21.0, 0.5], [20.5, -0.5], [21.5, 0.0], [21.0, 1.0]], dtype)
    adapted = jaxgmm.map_adapt(ubm, speaker, relevance=0.01, adapt=ALL)
    tolerance = 10 * np.finfo(dtype).eps
    np.testing.assert_allclose(adapted.means[0], means[0], rtol=tolerance)
    np.testing.assert_allclose(adapted.covariances[0], 1.0, rtol=tolerance)


def test_only_the_named_parameters_change(background, ubms):
    _, speaker = background
    ubm = ubms["full"]
    adapted = jaxgmm.map_adapt(ubm, speaker)  # means only, relevance 16 (Reynolds et al.)
    np.testing.assert_array_equal(adapted.weights, ubm.weights)
    np.testing.assert_array_equal(adapted.covariances, ubm.covariances)
    assert_close_to(adapted, reynolds(ubm, speaker, RELEVANCE, ("means",)), rtol=1e-9)
    both = jaxgmm.map_adapt(ubm, speaker, adapt=["covariances", "weights"])
    np.testing.assert_array_equal(both.means, ubm.means)
    assert_close_to(both, reynolds(ubm, speaker, RELEVANCE, ("weights", "covariances")), 1e-9)


def test_sample_weights_count_as_repeated_samples(background, ubms):
    _, speaker = background
    counts = np.arange(len(speaker)) % 3
    weighted = jaxgmm.map_adapt(ubms["diag"], speaker, adapt=ALL, sample_weight=counts)
    repeated = jaxgmm.map_adapt(ubms["diag"], np.repeat(speaker, counts, axis=0), adapt=ALL)
    for a, b in zip(jax.tree.leaves(weighted), jax.tree.leaves(repeated)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_limits_of_the_relevance(background, ubms):
    _, speaker = background
    ubm = ubms["full"]
    # A prior worth 1e12 samples does not move.
    stiff = jaxgmm.map_adapt(ubm, speaker, relevance=1e12, adapt=ALL)
    for a, b in zip(jax.tree.leaves(stiff), jax.tree.leaves(ubm)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # A prior worth nothing gives one EM step (with no reg_covar) from the background model.
    loose = jaxgmm.map_adapt(ubm, speaker, relevance=1e-10, adapt=ALL)
    log_resp, _ = jaxgmm.e_step(ubm, speaker)
    step = jaxgmm.m_step(speaker, log_resp, covariance_type="full", reg_covar=0.0)
    for a, b in zip(jax.tree.leaves(loose), jax.tree.leaves(step)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_vmap_over_speakers_and_jit(background, ubms):
    _, speaker = background
    ubm = ubms["diag"]
    speakers = jnp.stack([speaker, speaker[::-1] + 0.3, speaker * 1.1])
    adapt = jax.jit(jax.vmap(lambda x: jaxgmm.map_adapt(ubm, x, relevance=8.0, adapt=ALL)))
    batch = adapt(speakers)
    for s in range(3):
        single = jaxgmm.map_adapt(ubm, speakers[s], relevance=8.0, adapt=ALL)
        for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(single)):
            np.testing.assert_allclose(a[s], b, rtol=1e-12, atol=1e-14)
    # Speakers with fewer samples: padding rows with zero weight change nothing.
    padded = np.concatenate([speaker, np.full((10, 2), 50.0)])
    weights = np.concatenate([np.ones(len(speaker)), np.zeros(10)])
    with_padding = jaxgmm.map_adapt(ubm, padded, relevance=8.0, adapt=ALL, sample_weight=weights)
    alone = jaxgmm.map_adapt(ubm, speaker, relevance=8.0, adapt=ALL)
    for a, b in zip(jax.tree.leaves(with_padding), jax.tree.leaves(alone)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # relevance is traced: a new value reuses the compiled program
    traced = jax.jit(lambda r: jaxgmm.map_adapt(ubm, speaker, relevance=r).means)
    np.testing.assert_allclose(
        traced(4.0), jaxgmm.map_adapt(ubm, speaker, relevance=4.0).means, rtol=1e-12
    )


def test_float32(background, ubms):
    _, speaker = background
    ubm32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), ubms["full"])
    adapted = jaxgmm.map_adapt(ubm32, speaker.astype(np.float32), adapt=ALL)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(adapted))
    expected = reynolds(ubms["full"], speaker, RELEVANCE, ALL)
    assert_close_to(adapted, expected, rtol=2e-4)


def test_errors(background, ubms):
    _, speaker = background
    ubm = ubms["full"]
    for adapt in ("mean", (), ("means", "precisions"), [1]):
        with pytest.raises(ValueError, match="adapt must name"):
            jaxgmm.map_adapt(ubm, speaker, adapt=adapt)
    for relevance in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="relevance"):
            jaxgmm.map_adapt(ubm, speaker, relevance=relevance)
    with pytest.raises(ValueError, match="n_iter"):
        jaxgmm.map_adapt(ubm, speaker, n_iter=0)
    with pytest.raises(ValueError, match="params"):
        jaxgmm.map_adapt(ubm, speaker[:, :1])
    with pytest.raises(ValueError, match="X: the log-likelihood of X under params is not"):
        jaxgmm.map_adapt(ubm, speaker + 1e200)
    with pytest.raises(TypeError, match="adapt"):
        jaxgmm.map_adapt(ubm, speaker, adapt=None)
    with pytest.raises(TypeError, match="relevance"):
        jaxgmm.map_adapt(ubm, speaker, relevance=True)
    ubm32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), ubm)
    with pytest.raises(ValueError, match=r"relevance = 1e\+300 overflows float32"):
        jaxgmm.map_adapt(ubm32, speaker.astype(np.float32), relevance=1e300)


def test_traced_invalid_arguments_give_nan(background, ubms):
    _, speaker = background
    adapt = jax.jit(
        lambda r, w: jaxgmm.map_adapt(ubms["full"], speaker, relevance=r, sample_weight=w)
    )
    ones = np.ones(len(speaker))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(adapt(16.0, ones)))
    for r, w in ((0.0, ones), (-4.0, ones), (16.0, -ones)):
        assert all(np.all(np.isnan(leaf)) for leaf in jax.tree.leaves(adapt(r, w)))


def test_gradients_match_finite_differences(background, ubms):
    _, speaker = background
    ubm = ubms["full"]

    def summary(relevance, X):
        adapted = jaxgmm.map_adapt(ubm, X, relevance=relevance, adapt=ALL)
        return jnp.sum(adapted.covariances) + jnp.sum(adapted.means**2) + adapted.weights[0]

    d_relevance, d_X = jax.grad(summary, argnums=(0, 1))(RELEVANCE, jnp.asarray(speaker))
    h = 1e-5
    central = (summary(RELEVANCE + h, speaker) - summary(RELEVANCE - h, speaker)) / (2 * h)
    np.testing.assert_allclose(d_relevance, central, rtol=1e-6)
    step = np.zeros_like(speaker)
    step[3, 1] = h
    central = (summary(RELEVANCE, speaker + step) - summary(RELEVANCE, speaker - step)) / (2 * h)
    np.testing.assert_allclose(d_X[3, 1], central, rtol=1e-6)
