"""The public face: shapes, dtypes, errors naming the argument, degenerate data, save/load,
and composition with jit, vmap and grad (including no recompilation for tol / reg_covar)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm import GMM

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def fitted(blobs):
    return {
        kind: jaxgmm.fit(KEY, blobs, 3, covariance_type=kind, max_iter=30)
        for kind in COVARIANCE_TYPES
    }


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_shapes_match_sklearn_conventions(fitted, blobs, kind):
    result = fitted[kind]
    params = result.params
    expected_cov = {"full": (3, 2, 2), "diag": (3, 2), "spherical": (3,), "tied": (2, 2)}[kind]
    assert params.weights.shape == (3,)
    assert params.means.shape == (3, 2)
    assert params.covariances.shape == expected_cov
    assert params.covariance_type == kind
    np.testing.assert_allclose(float(jnp.sum(params.weights)), 1.0, rtol=1e-12)
    assert result.history.shape == (30,)
    assert result.all_log_likelihoods.shape == (1,)
    n = int(result.n_iter)
    assert 1 <= n <= 30
    assert np.all(np.isfinite(result.history[:n])) and np.all(np.isnan(result.history[n:]))
    # log_likelihood is evaluated at the returned parameters.
    np.testing.assert_allclose(
        float(result.log_likelihood), float(jaxgmm.log_likelihood(params, blobs)), rtol=1e-10
    )
    np.testing.assert_allclose(
        float(result.history[n - 1]) * blobs.shape[0], float(result.log_likelihood), rtol=1e-10
    )
    assert jaxgmm.log_prob(params, blobs).shape == (180,)
    assert jaxgmm.predict(params, blobs).shape == (180,)
    proba = jaxgmm.predict_proba(params, blobs)
    np.testing.assert_allclose(np.asarray(proba).sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(np.argmax(proba, axis=1), jaxgmm.predict(params, blobs))
    log_resp, mean_ll = jaxgmm.e_step(params, blobs)
    assert log_resp.shape == (180, 3)
    np.testing.assert_allclose(float(mean_ll) * 180, float(result.log_likelihood), rtol=1e-10)


def test_pytree_metadata_is_static(fitted):
    params = fitted["full"].params
    leaves, treedef = jax.tree.flatten(params)
    assert len(leaves) == 3 and all(isinstance(leaf, jax.Array) for leaf in leaves)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert rebuilt.covariance_type == "full"
    doubled = jax.tree.map(lambda x: 2 * x, params)
    assert isinstance(doubled, GMM) and doubled.covariance_type == "full"


def test_converged_flag_and_tol_zero(blobs):
    loose = jaxgmm.fit(KEY, blobs, 3, tol=1e-1, max_iter=50)
    assert bool(loose.converged) and int(loose.n_iter) < 50
    exact = jaxgmm.fit(KEY, blobs, 3, tol=0.0, max_iter=7)
    assert int(exact.n_iter) == 7 and not bool(exact.converged)
    assert np.all(np.isfinite(exact.history))


def test_restarts_keep_the_best(blobs):
    result = jaxgmm.fit(KEY, blobs, 3, n_init=4, max_iter=30, init="random")
    assert result.all_log_likelihoods.shape == (4,)
    np.testing.assert_allclose(
        float(result.log_likelihood), float(np.max(result.all_log_likelihoods)), rtol=1e-12
    )
    # each restart equals a single fit with the corresponding split key
    keys = jax.random.split(KEY, 4)
    singles = [
        float(jaxgmm.fit(k, blobs, 3, max_iter=30, init="random").log_likelihood) for k in keys
    ]
    np.testing.assert_allclose(np.asarray(result.all_log_likelihoods), singles, rtol=1e-9)


def test_screening_runs_the_best_candidates_to_convergence(blobs):
    # Reference built from public calls: the candidates are the starts of the split keys,
    # each runs candidate_iter iterations, and the n_init best are fitted from their starts.
    n_candidates, n_init, short = 8, 3, 2
    result = jaxgmm.fit(
        KEY, blobs, 3, init="random", n_init=n_init, n_candidates=n_candidates,
        candidate_iter=short, max_iter=30,
    )  # fmt: skip
    starts = [
        jaxgmm.init_params(k, blobs, 3, method="random")
        for k in jax.random.split(KEY, n_candidates)
    ]
    screened = [
        float(jaxgmm.fit(KEY, blobs, 3, init_params=p, max_iter=short, tol=0.0).log_likelihood)
        for p in starts
    ]
    best = np.argsort(screened)[::-1][:n_init]
    finals = [
        float(jaxgmm.fit(KEY, blobs, 3, init_params=starts[i], max_iter=30).log_likelihood)
        for i in best
    ]
    np.testing.assert_allclose(np.asarray(result.all_log_likelihoods), finals, rtol=1e-9)
    np.testing.assert_allclose(float(result.log_likelihood), max(finals), rtol=1e-12)
    single = jaxgmm.fit(
        KEY, blobs, 3, init="random", n_candidates=n_candidates, candidate_iter=short, max_iter=30
    )
    np.testing.assert_allclose(float(single.log_likelihood), finals[0], rtol=1e-9)
    # n_candidates == n_init screens nothing: the plain restarts
    plain = jaxgmm.fit(KEY, blobs, 3, init="random", n_init=n_init, max_iter=30)
    same = jaxgmm.fit(KEY, blobs, 3, init="random", n_init=n_init, n_candidates=n_init, max_iter=30)
    np.testing.assert_array_equal(plain.all_log_likelihoods, same.all_log_likelihoods)


@pytest.mark.parametrize("init", ["kmeans++", "kmeans", "random", "random_from_data"])
def test_every_init_method_runs_and_is_reproducible(blobs, init):
    a = jaxgmm.fit(KEY, blobs, 3, init=init, max_iter=20)
    b = jaxgmm.fit(KEY, blobs, 3, init=init, max_iter=20)
    np.testing.assert_array_equal(a.params.means, b.params.means)
    assert np.isfinite(float(a.log_likelihood))
    start = jaxgmm.init_params(KEY, blobs, 3, method=init)
    assert start.means.shape == (3, 2)
    np.testing.assert_allclose(float(jnp.sum(start.weights)), 1.0, rtol=1e-12)


# One block; blocks of 16 with a short tail; a tail with no mass; blocks of 64 and a tail.
@pytest.mark.parametrize("n_samples", [12, 300, 20, 5000])
def test_kmeans_plusplus_draws_in_proportion_to_mass(n_samples):
    from jaxgmm._src.initialization import _sample_proportional

    rng = np.random.default_rng(1)
    mass = rng.random(n_samples) ** 3
    mass[10:20] = 0.0  # never drawn
    mass[-5:] = 0.0  # an empty tail: rounding must not land there
    draws = jax.jit(jax.vmap(lambda k: _sample_proportional(k, jnp.asarray(mass), 5)))(
        jax.random.split(KEY, 8_000)
    )
    counts = np.bincount(np.asarray(draws).ravel(), minlength=n_samples)
    assert counts[mass == 0].sum() == 0
    expected = mass / mass.sum() * counts.sum()
    positive = mass > 0
    chi2 = np.sum((counts[positive] - expected[positive]) ** 2 / expected[positive])
    dof = positive.sum() - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof)  # five standard deviations of a chi-square


@pytest.mark.parametrize("n_samples", [300, 5000])
def test_block_search_by_comparison_equals_binary_search(n_samples, monkeypatch):
    """Few blocks are searched by comparing every block end with every target, many by a
    binary search: both must pick the same samples."""
    from jaxgmm._src import initialization

    mass = jnp.asarray(np.random.default_rng(2).random(n_samples) ** 3)
    keys = jax.random.split(KEY, 500)

    def draws():
        return jax.vmap(lambda k: initialization._sample_proportional(k, mass, 5))(keys)

    compared = draws()
    monkeypatch.setattr(initialization, "_COMPARE_ALL_MAX", 0)
    np.testing.assert_array_equal(draws(), compared)


def test_rows_by_gather_equal_rows_by_masked_sum():
    from jaxgmm._src.initialization import _rows

    xc = jax.random.normal(KEY, (50, 3))
    index = jnp.asarray([[0, 49, 7], [7, 7, 1]])
    np.testing.assert_array_equal(_rows(xc, index, gather=True), _rows(xc, index))
    np.testing.assert_array_equal(_rows(xc, index, gather=True), np.asarray(xc)[np.asarray(index)])


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_features", [1, 3])
def test_feature_columns_are_the_columns_of_features(kind, n_features):
    from jaxgmm._src import covariances as cov

    xc = jax.random.normal(KEY, (20, n_features))
    columns = cov.feature_columns(xc, kind)
    np.testing.assert_array_equal(jnp.stack(columns, axis=1), cov.features(xc, kind))


@pytest.mark.parametrize("n_features", [1, 3, 12])  # per-feature sums, and the matrix form
def test_weighted_mean(n_features):
    from jaxgmm._src.products import weighted_mean

    rng = np.random.default_rng(2)
    X, w = rng.normal(size=(40, n_features)), rng.random(40)
    np.testing.assert_allclose(
        weighted_mean(jnp.asarray(X), jnp.asarray(w)), (w @ X) / w.sum(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_nearest_center_moments_equal_one_hot_moments(blobs, kind):
    from jaxgmm._src.em import weighted_moments
    from jaxgmm._src.initialization import _nearest_center_moments, hard_responsibilities

    xc = jnp.asarray(blobs) - jnp.mean(blobs, axis=0)
    weights = jnp.asarray(np.random.default_rng(2).random(len(blobs)))
    centers = xc[jnp.array([3, 70, 150, 20])]
    active = jnp.array([True, True, False, True])
    for mask in (None, active):
        expected = weighted_moments(
            xc, weights, hard_responsibilities(xc, centers, mask), kind, chunk_size=50
        )
        got = _nearest_center_moments(xc, weights, centers, kind, chunk_size=50, active=mask)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_kmeans_init_finds_separated_clusters():
    rng = np.random.default_rng(3)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    X = np.concatenate([c + rng.normal(size=(50, 2)) for c in centers])
    start = jaxgmm.init_params(KEY, X, 3, method="kmeans")
    found = np.sort(np.round(np.asarray(start.means) / 20.0), axis=0)
    np.testing.assert_array_equal(found, np.sort(np.round(centers / 20.0), axis=0))


def test_sample_weight_equals_repeated_rows(blobs):
    counts = np.random.default_rng(0).integers(0, 3, size=blobs.shape[0])
    repeated = np.repeat(blobs, counts, axis=0)
    start = jaxgmm.init_params(KEY, blobs, 3)
    weighted = jaxgmm.fit(
        KEY, blobs, 3, init_params=start, sample_weight=counts, tol=0.0, max_iter=10
    )
    plain = jaxgmm.fit(KEY, repeated, 3, init_params=start, tol=0.0, max_iter=10)
    for a, b in zip(jax.tree.leaves(weighted.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(weighted.log_likelihood, plain.log_likelihood, rtol=1e-10)


def test_zero_weight_rows_leave_the_fit_unchanged(blobs):
    start = jaxgmm.init_params(KEY, blobs, 3)
    junk = np.full((20, 2), 1e3)
    padded = np.concatenate([blobs, junk])
    weights = np.concatenate([np.ones(len(blobs)), np.zeros(len(junk))])
    a = jaxgmm.fit(KEY, padded, 3, init_params=start, sample_weight=weights, tol=0.0, max_iter=8)
    b = jaxgmm.fit(KEY, blobs, 3, init_params=start, tol=0.0, max_iter=8)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_chunking_does_not_change_the_result(blobs):
    start = jaxgmm.init_params(KEY, blobs, 3)
    whole = jaxgmm.fit(KEY, blobs, 3, init_params=start, tol=0.0, max_iter=6)
    chunked = jaxgmm.fit(KEY, blobs, 3, init_params=start, tol=0.0, max_iter=6, chunk_size=47)
    for x, y in zip(jax.tree.leaves(whole.params), jax.tree.leaves(chunked.params)):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_automatic_chunks_are_larger_on_accelerators():
    from jaxgmm._src.chunking import auto_chunk_size

    # (1M, 64) full: 2,145 features per sample
    cpu = auto_chunk_size(1_000_000, 2145, platform="cpu")
    gpu = auto_chunk_size(1_000_000, 2145, platform="gpu")
    assert cpu == 256 and gpu == 31_232  # 2**20 and 2**26 elements, in multiples of 256 rows
    assert auto_chunk_size(100, 2145, platform="gpu") == 100
    assert auto_chunk_size(1_000_000, 2145) == cpu  # the tests run on the CPU backend


def _count_outer_features(monkeypatch):
    """Wrap ``covariances.outer_features`` so that its (trace-time) calls are counted."""
    from jaxgmm._src import covariances as cov

    calls = []
    original = cov.outer_features
    monkeypatch.setattr(cov, "outer_features", lambda xc: calls.append(1) or original(xc))
    return calls


@pytest.mark.parametrize("kind", ["full", "tied"])
@pytest.mark.parametrize("n_features", [3, 12])
def test_outer_product_pass_equals_upper_triangle_pass(kind, n_features, monkeypatch):
    from jaxgmm._src import covariances as cov
    from jaxgmm._src.chunking import Chunking
    from jaxgmm._src.em_loop import em_pass

    rng = np.random.default_rng(3)
    xc = jnp.asarray(rng.normal(size=(230, n_features)))
    weights = jnp.asarray(rng.random(230))
    params = jaxgmm.init_params(KEY, xc, 4, covariance_type=kind)
    params_c = cov.shift_means(params, -jnp.mean(xc, axis=0))
    calls = _count_outer_features(monkeypatch)
    upper = em_pass(params_c, xc, weights, 47)
    assert not calls
    outer = em_pass(params_c, xc, weights, Chunking(47, outer_products=True))
    assert calls  # the outer-product path ran
    assert outer[0].shape == upper[0].shape == (4, cov.n_feature_columns(kind, n_features))
    np.testing.assert_allclose(outer[0], upper[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(outer[1], upper[1], rtol=1e-13)


def test_outer_products_only_for_narrow_pair_passes_on_a_gpu():
    from jaxgmm._src.products import prefers_outer_products

    assert prefers_outer_products("full", 64, "gpu") and prefers_outer_products("tied", 1, "gpu")
    assert not prefers_outer_products("full", 65, "gpu")  # e.g. 16 components x 8 restarts
    assert not prefers_outer_products("diag", 4, "gpu")
    assert not prefers_outer_products("full", 4, "cpu")
    assert not prefers_outer_products("full", 4, "tpu")  # not measured there
    assert not prefers_outer_products("full", 4)  # the tests run on the CPU backend


def test_fit_and_the_estimator_ask_for_outer_products_per_batched_columns(blobs, monkeypatch):
    from jaxgmm._src import products
    from jaxgmm.sklearn import GaussianMixture

    asked = []
    monkeypatch.setattr(
        products, "prefers_outer_products", lambda *args: asked.append(args) or False
    )
    jaxgmm.fit(KEY, blobs, 3, n_init=2, max_iter=2)
    jaxgmm.fit(KEY, blobs, 3, covariance_type="tied", n_init=2, n_candidates=5, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two iterations do not converge
        GaussianMixture(3, n_init=4, max_iter=2, random_state=0).fit(np.asarray(blobs))
    assert asked == [("full", 6), ("tied", 15), ("full", 12)]  # K x restarts or candidates


def test_fit_and_its_gradient_with_outer_products_equal_the_default(blobs3d, monkeypatch):
    from jaxgmm._src import products

    def loss(X):
        result = jaxgmm.fit(KEY, X, 3, n_init=2, tol=1e-9, max_iter=200)
        return result.log_likelihood + jnp.sum(result.params.covariances)

    X = jnp.asarray(blobs3d)
    default = jax.value_and_grad(loss)(X)
    monkeypatch.setattr(products, "prefers_outer_products", lambda *args, **kwargs: True)
    calls = _count_outer_features(monkeypatch)
    outer = jax.value_and_grad(loss)(X)
    assert calls  # the fit and its backward pass ran the outer-product path
    np.testing.assert_allclose(outer[0], default[0], rtol=1e-12)
    np.testing.assert_allclose(outer[1], default[1], rtol=1e-8, atol=1e-10)


# --- composition with jit, vmap and grad --------------------------------------------------


def test_jit_with_static_arguments_and_no_recompile(blobs):
    traces = []

    def fit_fn(key, X, tol, reg_covar):
        traces.append(1)
        return jaxgmm.fit(key, X, 3, tol=tol, reg_covar=reg_covar, max_iter=20)

    jitted = jax.jit(fit_fn)
    first = jitted(KEY, blobs, 1e-3, 1e-6)
    second = jitted(KEY, blobs, 1e-5, 1e-4)
    jitted(jax.random.key(5), blobs, 0.0, 0.0)
    assert len(traces) == 1
    eager = jaxgmm.fit(KEY, blobs, 3, max_iter=20)
    np.testing.assert_allclose(first.params.means, eager.params.means, rtol=1e-10)
    assert float(second.params.covariances[0, 0, 0]) != float(first.params.covariances[0, 0, 0])


def test_eager_fit_compiles_once_per_shape(blobs):
    from jaxgmm._src import fitting

    jaxgmm.fit(KEY, blobs, 2, max_iter=5, tol=1e-3, reg_covar=1e-6)
    before = fitting._fit_compiled._cache_size()
    jaxgmm.fit(jax.random.key(9), blobs, 2, max_iter=5, tol=1e-5, reg_covar=1e-3)
    assert fitting._fit_compiled._cache_size() == before


def test_jit_of_whole_fit_with_static_argnames(blobs):
    jitted = jax.jit(jaxgmm.fit, static_argnames=("K", "covariance_type", "max_iter"))
    result = jitted(KEY, blobs, K=3, covariance_type="diag", max_iter=10)
    assert result.params.covariances.shape == (3, 2)


def test_vmap_over_keys_and_over_datasets(blobs):
    keys = jax.random.split(KEY, 3)
    batch = jax.vmap(lambda k: jaxgmm.fit(k, blobs, 3, max_iter=15))(keys)
    assert batch.params.means.shape == (3, 3, 2)
    assert batch.params.covariance_type == "full"
    single = jaxgmm.fit(keys[1], blobs, 3, max_iter=15)
    np.testing.assert_allclose(batch.params.means[1], single.params.means, rtol=1e-8)

    datasets = jnp.stack([blobs, blobs[::-1] * 2.0])
    per_data = jax.vmap(lambda X: jaxgmm.fit(KEY, X, 3, max_iter=15))(datasets)
    assert per_data.log_likelihood.shape == (2,)
    second = jaxgmm.fit(KEY, np.asarray(datasets[1]), 3, max_iter=15)
    np.testing.assert_allclose(per_data.log_likelihood[1], second.log_likelihood, rtol=1e-8)


def test_grad_of_log_likelihood_wrt_params_and_data(fitted, blobs):
    params = fitted["diag"].params
    g = jax.grad(lambda p: jaxgmm.log_likelihood(p, blobs))(params)
    assert isinstance(g, GMM) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
    gx = jax.grad(lambda X: jaxgmm.log_likelihood(params, X))(jnp.asarray(blobs))
    eps = 1e-6
    bumped = blobs.copy()
    bumped[5, 1] += eps
    lowered = blobs.copy()
    lowered[5, 1] -= eps
    fd = (jaxgmm.log_likelihood(params, bumped) - jaxgmm.log_likelihood(params, lowered)) / (
        2 * eps
    )
    np.testing.assert_allclose(gx[5, 1], fd, rtol=1e-6)


# --- dtypes --------------------------------------------------------------------------------


def test_integer_input_becomes_float(blobs):
    X = np.round(blobs * 10).astype(np.int32)
    result = jaxgmm.fit(KEY, X, 2, max_iter=5)
    assert jnp.issubdtype(result.params.means.dtype, jnp.floating)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, word",
    [
        (dict(X=np.array([[0.0, np.nan]] * 5)), ValueError, "X"),
        (dict(X=np.array([[0.0, np.inf]] * 5)), ValueError, "X"),
        (dict(X=np.float64(3.0)), ValueError, "X"),
        (dict(X=np.zeros((4, 2, 2))), ValueError, "X"),
        (dict(X=np.zeros((0, 2))), ValueError, "X"),
        (dict(X=np.array(["a", "b", "c"])), TypeError, "X"),
        (dict(K=0), ValueError, "K"),
        (dict(K=1000), ValueError, "K"),
        (dict(K=2.5), TypeError, "K"),
        (dict(covariance_type="banana"), ValueError, "covariance_type"),
        (dict(init="banana"), ValueError, "init"),
        (dict(reg_covar=-1.0), ValueError, "reg_covar"),
        (dict(tol=-1.0), ValueError, "tol"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(n_init=0), ValueError, "n_init"),
        (dict(sample_weight=-np.ones(30)), ValueError, "sample_weight"),
        (dict(sample_weight=np.full(30, np.nan)), ValueError, "sample_weight"),
        (dict(sample_weight=np.ones(29)), ValueError, "sample_weight"),
        (dict(sample_weight=np.zeros(30)), ValueError, "sample_weight"),
        (dict(init_params="not a gmm"), TypeError, "init_params"),
        (dict(n_init=4, n_candidates=3), ValueError, "n_candidates"),
        (dict(n_candidates=2.5), TypeError, "n_candidates"),
        (dict(n_candidates=4, candidate_iter=0), ValueError, "candidate_iter"),
        (dict(reg_covar=None), TypeError, "reg_covar"),
        (dict(tol="1e-3"), TypeError, "tol"),
        (dict(key=0), TypeError, "key must be a JAX PRNG key"),
        (dict(key=jnp.zeros(3, jnp.uint32)), ValueError, "key must be a single PRNG key"),
        (dict(key=jax.random.split(KEY)), ValueError, "key must be a single PRNG key"),
        (dict(progress=5), TypeError, "progress"),
        (dict(adjoint_tol=-1.0), ValueError, "adjoint_tol"),
        (dict(reg_covar=1e50, X=np.ones((30, 2), np.float32)), ValueError, "reg_covar"),
        (dict(sample_weight=np.array(["a"] * 30)), TypeError, "sample_weight"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, word):
    arguments = dict(key=KEY, X=np.random.default_rng(0).normal(size=(30, 2)), K=2)
    arguments.update(kwargs)
    with pytest.raises(error, match=word):
        jaxgmm.fit(**arguments)


def test_m_step_checks_log_resp():
    X = np.random.default_rng(0).normal(size=(20, 2))
    for log_resp in (np.full((20, 2), np.nan), np.full((20, 2), 100.0)):
        with pytest.raises(ValueError, match="log_resp"):
            jaxgmm.m_step(X, log_resp)
    with pytest.raises(ValueError, match="K >= 1"):
        jaxgmm.m_step(X, np.zeros((20, 0)))
    with pytest.raises(TypeError, match="log_resp"):
        jaxgmm.m_step(X, np.zeros((20, 2), complex))
    zero_resp = np.stack([np.zeros(20), np.full(20, -np.inf)], axis=1)  # log 1, log 0: valid
    assert np.all(np.isfinite(jaxgmm.m_step(X, zero_resp).means))
    with pytest.raises(ValueError, match="log_resp is -inf everywhere"):
        jaxgmm.m_step(X, np.full((20, 2), -np.inf))


def test_screening_needs_random_starts(blobs):
    start = jaxgmm.init_params(KEY, blobs, 3)
    with pytest.raises(ValueError, match="n_candidates"):
        jaxgmm.fit(KEY, blobs, 3, init_params=start, n_candidates=4)


def test_init_params_of_wrong_shape_or_type(blobs):
    good = jaxgmm.init_params(KEY, blobs, 3)
    with pytest.raises(ValueError, match="init_params"):
        jaxgmm.fit(KEY, blobs, 2, init_params=good)
    with pytest.raises(ValueError, match="init_params"):
        jaxgmm.fit(KEY, blobs[:, :1], 3, init_params=good)
    with pytest.raises(ValueError, match="init_params"):
        jaxgmm.fit(KEY, blobs, 3, init_params=good.replace(covariances=good.covariances[0]))
    with pytest.raises(ValueError, match="covariance_type"):
        jaxgmm.fit(KEY, blobs, 3, covariance_type="diag", init_params=good)


def test_params_checked_by_functions(blobs):
    good = jaxgmm.init_params(KEY, blobs, 3)
    with pytest.raises(ValueError, match="params"):
        jaxgmm.log_prob(good, blobs[:, :1])
    with pytest.raises(TypeError, match="params"):
        jaxgmm.log_prob({"weights": 1}, blobs)


@pytest.mark.parametrize(
    "kind, covariances, message",
    [
        ("full", [[[1.0, 2.0], [2.0, 1.0]]] * 2, "positive definite"),  # eigenvalue -1
        ("full", [[[1.0, 0.5], [0.0, 1.0]]] * 2, "symmetric"),
        ("tied", [[1.0, 0.0], [0.0, 0.0]], "positive definite"),
        ("diag", [[1.0, 1.0], [1.0, -1.0]], "positive"),
        ("spherical", [1.0, 0.0], "positive"),
    ],
)
def test_covariances_that_define_no_density_are_rejected(tmp_path, kind, covariances, message):
    params = GMM(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), jnp.asarray(covariances), kind)
    X = jnp.zeros((3, 2))
    for call in (
        lambda: jaxgmm.log_prob(params, X),
        lambda: jaxgmm.predict(params, X),
        lambda: jaxgmm.sample(KEY, params, 3),
        lambda: jaxgmm.save(tmp_path / "bad.npz", params),
    ):
        with pytest.raises(ValueError, match=f"params.covariances must be .*{message}"):
            call()


def test_load_rejects_invalid_parameters_and_foreign_files(tmp_path, fitted):
    params = fitted["full"].params
    marker = dict(format=np.array("jaxgmm.GMM"), version=np.array(1))
    cases = {
        "negative.npz": (dict(covariance_type=np.array("full"), weights=params.weights,
                              means=params.means, covariances=-np.asarray(params.covariances)),
                         "positive definite"),
        "shapes.npz": (dict(covariance_type=np.array("full"), weights=np.ones(4) / 4,
                            means=params.means, covariances=params.covariances),
                       "weights must have shape"),
        "text.npz": (dict(covariance_type=np.array("full"), weights=np.array(["a", "b", "c"]),
                          means=params.means, covariances=params.covariances),
                     "non-float"),
    }  # fmt: skip
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **marker, **arrays)
        with pytest.raises(ValueError, match=f"path .*{name}.*{message}"):
            jaxgmm.load(tmp_path / name)
    np.save(tmp_path / "array.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz archive"):
        jaxgmm.load(tmp_path / "array.npy")
    jaxgmm.save(tmp_path / "good.npz", params)
    raw = bytearray((tmp_path / "good.npz").read_bytes())
    raw[raw.find(b"means.npy") + 150] ^= 0xFF  # inside the means member: a CRC error
    (tmp_path / "flipped.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not a readable jaxgmm model file"):
        jaxgmm.load(tmp_path / "flipped.npz")
    batch = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), params)
    jaxgmm.save(tmp_path / "batch.npz", batch)
    assert jaxgmm.load(tmp_path / "batch.npz").means.shape == (2, 3, 2)


def test_under_jit_bad_values_are_reported_not_raised():
    X = jnp.asarray(np.random.default_rng(0).normal(size=(30, 2))).at[3, 0].set(jnp.nan)
    result = jax.jit(lambda X: jaxgmm.fit(KEY, X, 2, max_iter=10))(X)
    assert not bool(result.converged)
    assert not np.isfinite(float(result.log_likelihood))


def test_under_vmap_negative_weights_are_reported():
    X = jnp.asarray(np.random.default_rng(0).normal(size=(30, 2)))
    weights = jnp.stack(
        [
            jnp.ones(30),
            jnp.ones(30).at[4].set(-1.0),
            jnp.full(30, jnp.nan),
            jnp.ones(30).at[2].set(jnp.inf),
        ]
    )
    result = jax.vmap(lambda w: jaxgmm.fit(KEY, X, 2, max_iter=10, sample_weight=w))(weights)
    np.testing.assert_array_equal(result.converged, [True, False, False, False])
    np.testing.assert_array_equal(np.isfinite(result.log_likelihood), [True, False, False, False])


# --- degenerate data -------------------------------------------------------------------------


def test_failed_start_message_names_the_dtype_limit():
    from jaxgmm._src.fitting import failed_start

    assert "float32 overflow above about 1.8e19: rescale X or use float64" in failed_start(
        np.float32
    )
    assert "float64 overflow above about 1.3e154: rescale X)" in failed_start(np.float64)


def test_evaluation_of_samples_too_far_for_the_dtype_raises():
    """A sample whose squared distance from the mixture overflows float32 has a NaN
    log-density (inf - inf in the quadratic form): the eager functions say so, naming X;
    a far but representable sample gets a finite, very negative log-density."""
    X = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    params = jaxgmm.fit(KEY, X, 2).params
    far = np.full((2, 2), 1e20, np.float32)
    for evaluate in (jaxgmm.log_prob, jaxgmm.predict, jaxgmm.predict_proba, jaxgmm.bic):
        with pytest.raises(ValueError, match="X: the log-density of some samples is"):
            evaluate(params, far)
    assert np.all(np.asarray(jaxgmm.log_prob(params, far / 1e3)) < -1e30)
    # 1-D: the far sample's log-density rounds to -inf, a valid log-density, but its
    # responsibilities are undefined.
    params_1d = jaxgmm.fit(KEY, X[:, 0], 2).params
    assert np.all(np.asarray(jaxgmm.log_prob(params_1d, far[:, 0])) == -np.inf)
    for evaluate in (jaxgmm.e_step, jaxgmm.predict, jaxgmm.predict_proba):
        with pytest.raises(ValueError, match="X: the log-density of some samples is not finite"):
            evaluate(params_1d, far[:, 0])


def test_reg_covar_that_overflows_the_dtype_is_rejected_everywhere():
    X = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    calls = (
        lambda: jaxgmm.init_params(KEY, X, 2, reg_covar=1e50),
        lambda: jaxgmm.online_init(KEY, X, 2, reg_covar=1e50),
        lambda: jaxgmm.fit_online(KEY, X, 2, batch_size=10, reg_covar=1e50),
        lambda: jaxgmm.fit_stream(KEY, X, 2, batch_size=10, reg_covar=1e50),
        lambda: jaxgmm.select(KEY, X, K=[1, 2], reg_covar=1e50),
    )
    for call in calls:
        with pytest.raises(ValueError, match="reg_covar = 1e\\+50 overflows float32"):
            call()
    # A bool is not a number of samples' worth or a variance (True would pass as 1).
    with pytest.raises(TypeError, match="reg_covar must be a real number"):
        jaxgmm.fit(KEY, X, 2, reg_covar=True)
    with pytest.raises(TypeError, match="tol must be a real number"):
        jaxgmm.fit(KEY, X, 2, tol=False)


def test_params_with_list_leaves_are_rejected_by_name():
    gmm = jaxgmm.GMM([0.5, 0.5], np.zeros((2, 1)), np.ones((2, 1, 1)), "full")
    with pytest.raises(TypeError, match="params.weights must be an array"):
        jaxgmm.log_prob(gmm, np.zeros((3, 1)))


def test_eager_fit_that_cannot_start_raises():
    # Identical points and no regularisation: every covariance is singular at the start.
    X = np.ones((40, 2))
    with pytest.raises(ValueError, match="increase reg_covar"):
        jaxgmm.fit(KEY, X, 2, reg_covar=0.0, n_init=2)
    with pytest.raises(ValueError, match="every fit failed"):
        jaxgmm.select(KEY, X, K=[1, 2], covariance_types=("spherical",), reg_covar=0.0)
    # The same fit under jit cannot raise and reports the failure instead.
    result = jax.jit(lambda X: jaxgmm.fit(KEY, X, 2, reg_covar=0.0))(X)
    assert not bool(result.converged) and not np.isfinite(float(result.log_likelihood))


def _assert_finite_mixture(result):
    params = result.params
    for leaf in jax.tree.leaves(params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    np.testing.assert_allclose(float(jnp.sum(params.weights)), 1.0, rtol=1e-5)
    assert np.isfinite(float(result.log_likelihood))


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "name",
    ["identical", "constant_feature", "few_distinct", "scale_1e8", "scale_1e-8"],
)
# Components collapsed onto a few distinct points are narrow enough for the float32 rounding
# warning (about 0.15 nats); that warning is tested on its own.
@pytest.mark.filterwarnings("ignore:float32 rounding:RuntimeWarning")
def test_degenerate_data_gives_finite_answers(kind, dtype, name):
    rng = np.random.default_rng(1)
    base = rng.normal(size=(60, 2))
    X = {
        "identical": np.full((60, 2), 3.0),
        "constant_feature": np.column_stack([base[:, 0], np.full(60, 7.0)]),
        "few_distinct": np.repeat(np.array([[0.0, 1.0], [2.0, 2.0]]), 30, axis=0),
        "scale_1e8": base * 1e8,
        "scale_1e-8": base * 1e-8,
    }[name].astype(dtype)
    result = jaxgmm.fit(KEY, X, 3, covariance_type=kind, max_iter=20)
    _assert_finite_mixture(result)
    assert result.params.means.dtype == dtype


def test_empty_component_rule():
    # Two points far apart, three components: one component must end up (nearly) empty.
    X = np.repeat(np.array([[0.0], [10.0]]), 20, axis=0)
    start = GMM(
        jnp.array([0.4, 0.4, 0.2]), jnp.array([[0.0], [10.0], [1e4]]), jnp.ones((3,)), "spherical"
    )
    result = jaxgmm.fit(KEY, X, 3, covariance_type="spherical", init_params=start, max_iter=5)
    _assert_finite_mixture(result)
    weights = np.asarray(result.params.weights)
    assert weights[2] < 1e-10
    np.testing.assert_allclose(result.params.means[2, 0], 5.0, rtol=1e-6)  # the data mean
    np.testing.assert_allclose(result.params.covariances[2], 1e-6, rtol=1e-6)  # reg_covar


# --- save / load -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_save_load_round_trip(tmp_path, fitted, kind, dtype):
    params = jax.tree.map(lambda x: x.astype(dtype), fitted[kind].params)
    path = tmp_path / "model.jaxgmm"
    jaxgmm.save(path, params)
    loaded = jaxgmm.load(path)
    assert loaded.covariance_type == kind
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_load_errors(tmp_path, fitted):
    with pytest.raises(FileNotFoundError, match="path"):
        jaxgmm.load(tmp_path / "missing.npz")
    path = tmp_path / "model.npz"
    jaxgmm.save(path, fitted["full"].params)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="path"):
        jaxgmm.load(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.arange(3))
    with pytest.raises(ValueError, match="not a jaxgmm model"):
        jaxgmm.load(foreign)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="path"):
        jaxgmm.load(text)


# --- sampling and criteria -------------------------------------------------------------------


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_sample_moments(kind):
    means = jnp.array([[-5.0, 0.0], [5.0, 1.0]])
    covariances = {
        "full": jnp.array([[[1.0, 0.5], [0.5, 2.0]], [[0.5, 0.0], [0.0, 0.5]]]),
        "diag": jnp.array([[1.0, 2.0], [0.5, 0.5]]),
        "spherical": jnp.array([1.0, 0.5]),
        "tied": jnp.array([[1.0, 0.5], [0.5, 2.0]]),
    }[kind]
    params = GMM(jnp.array([0.3, 0.7]), means, covariances, kind)
    n = 40_000
    X, labels = jaxgmm.sample(KEY, params, n)
    assert X.shape == (n, 2) and labels.shape == (n,)
    share = float(jnp.mean(labels == 0))
    assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n)
    first = np.asarray(X[labels == 0])
    np.testing.assert_allclose(first.mean(axis=0), means[0], atol=4 * np.sqrt(2.0 / len(first)))
    full_cov = {
        "full": lambda: covariances[0],
        "tied": lambda: covariances,
        "diag": lambda: jnp.diag(covariances[0]),
        "spherical": lambda: jnp.eye(2) * covariances[0],
    }[kind]()
    np.testing.assert_allclose(np.cov(first.T), full_cov, atol=0.1)


def test_bic_aic_definitions(fitted, blobs):
    params = fitted["full"].params
    ll = float(jaxgmm.log_likelihood(params, blobs))
    p = jaxgmm.n_parameters(params)
    assert p == 3 * 3 + 3 * 2 + 2  # K D (D+1)/2 + K D + K - 1
    np.testing.assert_allclose(float(jaxgmm.bic(params, blobs)), -2 * ll + p * np.log(180))
    np.testing.assert_allclose(float(jaxgmm.aic(params, blobs)), -2 * ll + 2 * p)


def test_constants_captured_by_jit_are_accepted(blobs):
    X = jnp.asarray(blobs)
    params = jaxgmm.init_params(KEY, blobs, 3)
    captured = jax.jit(lambda: jaxgmm.log_prob(params, X))()
    np.testing.assert_allclose(captured, jaxgmm.log_prob(params, blobs), rtol=1e-12)
    bad = X.at[0, 0].set(jnp.inf)
    with pytest.raises(ValueError, match="X"):
        jax.jit(lambda: jaxgmm.log_prob(params, bad))()


def test_progress_with_restarts_is_called_per_restart_with_scalars(blobs):
    calls = []
    result = jaxgmm.fit(
        KEY, blobs, 2, covariance_type="spherical", n_init=3, max_iter=4, tol=0.0,
        progress=lambda n_iter, mean: calls.append((n_iter, mean)),
    )  # fmt: skip
    jax.block_until_ready(result)
    jax.effects_barrier()
    assert all(np.shape(n_iter) == () and np.shape(mean) == () for n_iter, mean in calls)
    assert sorted(int(n_iter) for n_iter, _ in calls) == sorted([1, 2, 3, 4] * 3)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_input_is_computed_in_float32(blobs, dtype):
    # Cholesky factors and likelihood sums need more than 8 to 11 bits of mantissa.
    X = np.asarray(blobs).astype(dtype)
    result = jaxgmm.fit(KEY, X, 3, max_iter=30)
    reference = jaxgmm.fit(KEY, np.asarray(X, np.float32), 3, max_iter=30)
    assert result.params.means.dtype == jnp.float32
    np.testing.assert_array_equal(result.params.means, reference.params.means)
    half = jax.tree.map(lambda leaf: leaf.astype(dtype), result.params)
    assert jaxgmm.log_prob(half, X).dtype == jnp.float32
    assert np.all(np.isfinite(jaxgmm.log_prob(half, X)))
    assert jaxgmm.sample(KEY, half, 5)[0].dtype == jnp.float32


def test_float32_fit_warns_when_rounding_blurs_the_components():
    # Two unit-variance clusters 10,000 apart: the expanded quadratic forms around the data
    # mean lose about eps32 * 5000**2 = 3 nats; float64 keeps them to 1e-8.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (250, 1)), rng.normal(1e4, 1, (250, 1))])
    with pytest.warns(RuntimeWarning, match="float32 rounding"):
        jaxgmm.fit(KEY, X.astype(np.float32), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = jaxgmm.fit(KEY, X, 2)  # float64
        np.testing.assert_allclose(np.sort(np.ravel(fitted.params.covariances)), 1.0, rtol=0.2)
        # Ordinary clusters in float32: no warning.
        jaxgmm.fit(KEY, rng.normal(size=(200, 2)).astype(np.float32), 2)
