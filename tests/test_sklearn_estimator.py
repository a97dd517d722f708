"""``jaxgmm.sklearn.GaussianMixture``: scikit-learn's documented behaviour of GaussianMixture,
``check_estimator``, Pipeline / GridSearchCV, padding to size buckets, and parity with
scikit-learn's own estimator from the same starting parameters."""

import itertools
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import mixture
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning, SkipTestWarning
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from threadpoolctl import threadpool_limits

import jaxgmm
from jaxgmm._src.compile_options import TunedJit, profile_for
from jaxgmm._src.initialization import initialize_centered
from jaxgmm._src.online import _state_from_params
from jaxgmm.sklearn import (
    _START_INIT,
    GaussianMixture,
    _fit_sklearn,
    _online_update,
    bucket_size,
)

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
K = 3
# Tests share compiled programs: the same K, bucket (blobs: 180 rows -> 256) and static options
# wherever the point of the test allows. A fit from a given start runs START_ITER iterations.
START_ITER = 3


def covariance_shape(kind, k, d):
    return {"full": (k, d, d), "diag": (k, d), "spherical": (k,), "tied": (d, d)}[kind]


def start_arrays(X, kind, seed=0):
    """Valid user-given weights, means and precisions, drawn with NumPy."""
    rng = np.random.default_rng(seed)
    n, d = X.shape
    weights = rng.dirichlet(np.full(K, 5.0))
    means = X[rng.choice(n, K, replace=False)] + rng.normal(scale=0.3, size=(K, d))
    base = np.cov(X.T, bias=True)
    if kind == "full":
        covariances = np.stack([s * base for s in rng.uniform(0.3, 1.0, K)])
        precisions = np.linalg.inv(covariances)
    elif kind == "tied":
        precisions = np.linalg.inv(0.5 * base)
    elif kind == "diag":
        precisions = 1.0 / (np.diag(base) * rng.uniform(0.3, 1.0, size=(K, d)))
    else:
        precisions = 1.0 / (np.mean(np.diag(base)) * rng.uniform(0.3, 1.0, size=K))
    return weights, means, precisions


@pytest.fixture(scope="module")
def fitted(blobs):
    return {
        kind: GaussianMixture(K, covariance_type=kind, random_state=0).fit(blobs)
        for kind in COVARIANCE_TYPES
    }


def test_import_jaxgmm_leaves_sklearn_and_x64_alone():
    """``import jaxgmm`` does not import scikit-learn; float64 input is fitted in float64
    without switching on JAX's global 64-bit mode."""
    code = textwrap.dedent(
        """
        import sys
        import jaxgmm
        assert "sklearn" not in sys.modules, "import jaxgmm imported sklearn"
        import jax, numpy as np
        from jaxgmm.sklearn import GaussianMixture
        X = np.random.default_rng(0).normal(size=(40, 2))
        gm = GaussianMixture(2, random_state=0).fit(X)
        assert gm.means_.dtype == np.float64, gm.means_.dtype
        assert gm.score_samples(X).dtype == np.float64
        assert not jax.config.jax_enable_x64
        assert jax.numpy.ones(1).dtype == np.float32
        """
    )
    env = {"JAX_ENABLE_X64": "0", "JAX_PLATFORMS": "cpu", "PATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_bucket_sizes():
    assert [bucket_size(n) for n in (1, 2, 63, 64, 65, 128, 129)] == [64, 64, 64, 64, 128, 128, 256]
    for n in (1, 70, 5000, 65536, 65537, 10**6 + 3):
        assert bucket_size(n) >= n
    assert bucket_size(10**6 + 3) < 1.02 * (10**6 + 3)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_fitted_attributes(fitted, blobs, kind):
    gm = fitted[kind]
    n, d = blobs.shape
    cov_shape = covariance_shape(kind, K, d)
    assert gm.weights_.shape == (K,)
    assert gm.means_.shape == (K, d)
    assert gm.covariances_.shape == cov_shape
    assert gm.precisions_.shape == cov_shape
    assert gm.precisions_cholesky_.shape == cov_shape
    assert gm.n_features_in_ == d
    assert gm.converged_ is True
    assert isinstance(gm.n_iter_, int) and 1 <= gm.n_iter_ <= gm.max_iter
    np.testing.assert_allclose(gm.weights_.sum(), 1.0, rtol=1e-12)
    # lower_bound_ is the mean log-likelihood before the last M-step (scikit-learn's meaning),
    # within tol of the converged score.
    assert gm.lower_bound_ <= gm.score(blobs) + 1e-12
    assert gm.score(blobs) - gm.lower_bound_ < gm.tol
    # Precisions invert the covariances; precisions_cholesky_ U satisfies U U' = precision and
    # is upper triangular (scikit-learn's convention).
    if kind in ("full", "tied"):
        covs = gm.covariances_.reshape(-1, d, d)
        chols = gm.precisions_cholesky_.reshape(-1, d, d)
        precs = gm.precisions_.reshape(-1, d, d)
        for c, u, p in zip(covs, chols, precs):
            np.testing.assert_allclose(p, np.linalg.inv(c), rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(u @ u.T, p, rtol=1e-8, atol=1e-10)
            np.testing.assert_array_equal(np.tril(u, -1), 0.0)
    else:
        np.testing.assert_allclose(gm.precisions_, 1.0 / gm.covariances_, rtol=1e-12)
        np.testing.assert_allclose(gm.precisions_cholesky_**2, gm.precisions_, rtol=1e-12)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_methods_match_sklearn_at_same_parameters(fitted, blobs, kind):
    """score_samples, predict_proba, predict, score, bic and aic equal scikit-learn's own
    estimator given our fitted parameters (an independent implementation)."""
    gm = fitted[kind]
    ref = mixture.GaussianMixture(K, covariance_type=kind)
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        setattr(ref, name, getattr(gm, name))
    ref.converged_, ref.n_iter_, ref.n_features_in_ = True, gm.n_iter_, gm.n_features_in_
    ref.lower_bound_ = gm.lower_bound_
    X = blobs + 0.25
    np.testing.assert_allclose(gm.score_samples(X), ref.score_samples(X), rtol=1e-10)
    np.testing.assert_allclose(gm.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    np.testing.assert_array_equal(gm.predict(X), ref.predict(X))
    np.testing.assert_allclose(gm.score(X), ref.score(X), rtol=1e-10)
    np.testing.assert_allclose(gm.bic(X), ref.bic(X), rtol=1e-10)
    np.testing.assert_allclose(gm.aic(X), ref.aic(X), rtol=1e-10)
    params = jaxgmm.GMM(gm.weights_, gm.means_, gm.covariances_, kind)
    np.testing.assert_allclose(gm.bic(X), float(jaxgmm.bic(params, X)), rtol=1e-10)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_parity_with_sklearn_from_given_start(blobs, kind):
    """From the same user-given weights/means/precisions, a few EM iterations (tol=0) give
    scikit-learn's parameters."""
    weights, means, precisions = start_arrays(blobs, kind)
    options = dict(
        covariance_type=kind,
        tol=0.0,
        max_iter=START_ITER,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = GaussianMixture(K, **options).fit(blobs)
        ref = mixture.GaussianMixture(K, **options).fit(blobs)
    assert ours.n_iter_ == ref.n_iter_ == START_ITER
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-9)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-7, atol=1e-9)


def test_stopping_rule_matches_sklearn(fitted, blobs):
    """tol means what it means in scikit-learn: from the same start, the same number of
    iterations, convergence flag and lower bound."""
    gm = fitted["full"]
    options = dict(
        tol=1e-4,
        max_iter=START_ITER,
        weights_init=gm.weights_,
        means_init=gm.means_ + 0.05,
        precisions_init=gm.precisions_,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for tol in (1e-4, 1e-2):
            ours = GaussianMixture(K, **{**options, "tol": tol}).fit(blobs)
            ref = mixture.GaussianMixture(K, **{**options, "tol": tol}).fit(blobs)
            assert (ours.n_iter_, ours.converged_) == (ref.n_iter_, ref.converged_)
            np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-9)
            np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-8)


def test_max_iter_zero_keeps_user_start(blobs):
    weights, means, precisions = start_arrays(blobs, "full")
    gm = GaussianMixture(
        K, max_iter=0, weights_init=weights, means_init=means, precisions_init=precisions
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # no warning for max_iter=0
        gm.fit(blobs)
    np.testing.assert_allclose(gm.weights_, weights, rtol=1e-12)
    np.testing.assert_allclose(gm.means_, means, rtol=1e-12)
    np.testing.assert_allclose(gm.precisions_, precisions, rtol=1e-9)
    assert gm.n_iter_ == 0 and gm.converged_ is False and gm.lower_bound_ == -np.inf


@pytest.mark.parametrize("given", ["weights", "means", "precisions"])
def test_partial_user_start_overrides_init(blobs, given):
    """One user-given array replaces that part of the init_params start (max_iter=0 shows the
    start itself); the constructor arguments are left untouched."""
    weights, means, precisions = start_arrays(blobs, "diag")
    arrays = {"weights": weights, "means": means, "precisions": precisions}
    value = arrays[given].tolist()
    gm = GaussianMixture(K, covariance_type="diag", max_iter=0, random_state=0)
    gm.set_params(**{f"{given}_init": value})
    gm.fit(blobs)
    assert getattr(gm, f"{given}_init") is value
    np.testing.assert_allclose(getattr(gm, f"{given}_"), arrays[given], rtol=1e-9)
    if given == "means":  # and EM runs from it (tol=0: START_ITER iterations)
        with pytest.warns(ConvergenceWarning):
            gm.set_params(max_iter=START_ITER, tol=0.0).fit(blobs)
        assert gm.n_iter_ == START_ITER and np.isfinite(gm.lower_bound_)


def test_user_start_errors(blobs):
    weights, means, precisions = start_arrays(blobs, "full")
    bad = {
        "weights_init": [weights[:2], weights * 2, -weights],
        "means_init": [means[:, :1]],
        "precisions_init": [precisions[:2], -precisions, precisions + np.triu(np.ones(2), 1)],
    }
    for name, values in bad.items():
        for value in values:
            with pytest.raises(ValueError, match=name):
                GaussianMixture(K, **{name: value}).fit(blobs)


@pytest.mark.parametrize(
    "params, error",
    [
        (dict(n_components=0), ValueError),
        (dict(n_components=2.5), TypeError),
        (dict(covariance_type="banana"), ValueError),
        (dict(init_params="kmeans+"), ValueError),
        (dict(tol=-1.0), ValueError),
        (dict(reg_covar=-1e-6), ValueError),
        (dict(n_init=0), ValueError),
        (dict(max_iter=-1), ValueError),
    ],
)
def test_bad_constructor_arguments_raise_at_fit(blobs, params, error):
    with pytest.raises(error, match=next(iter(params))):
        GaussianMixture(**params).fit(blobs)


def test_n_components_checked_against_true_sample_count():
    """Padding to a bucket of 64 rows must not let K exceed the real number of samples."""
    X = np.random.default_rng(0).normal(size=(5, 2))
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        GaussianMixture(6).fit(X)


@pytest.mark.parametrize("init", INIT_PARAMS)
def test_every_init_option(blobs, init):
    gm = GaussianMixture(K, init_params=init, random_state=0).fit(blobs)
    assert gm.converged_ and np.isfinite(gm.lower_bound_)
    assert np.all(gm.weights_ > 0.05)
    labels = gm.fit_predict(blobs)
    np.testing.assert_array_equal(labels, gm.predict(blobs))


def run_from_start(X, start, weights=None):
    """The estimator's jitted fit from a start (same static arguments), without padding."""
    X = jnp.asarray(X)
    weights = jnp.ones(len(X)) if weights is None else jnp.asarray(weights)
    return _fit_sklearn(
        jax.random.key(0), X, weights, jnp.asarray(0.0), jnp.asarray(1e-6), start,
        n_components=K, covariance_type="full", init=_START_INIT, n_init=1,
        max_iter=START_ITER, chunk_size=len(X), progress=None, profile=profile_for(len(X)),
    )  # fmt: skip


def test_zero_weight_rows_leave_fit_unchanged(blobs):
    """What padding relies on: rows of weight zero (here far-away junk) change nothing from the
    same start, to 1e-10; and the estimator (180 rows padded to 256) equals the core run on
    the 180 rows alone."""
    weights, means, precisions = start_arrays(blobs, "full")
    start = jaxgmm.GMM(weights, means, np.linalg.inv(precisions), "full")
    plain = run_from_start(blobs, start)
    junk = np.full((256 - len(blobs), 2), 1e3)
    padded = run_from_start(
        np.concatenate([blobs, junk]), start, np.r_[np.ones(len(blobs)), np.zeros(len(junk))]
    )
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(padded.params)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(plain.lower_bound, padded.lower_bound, rtol=1e-12)
    with pytest.warns(ConvergenceWarning):
        gm = GaussianMixture(
            K,
            tol=0.0,
            max_iter=START_ITER,
            weights_init=weights,
            means_init=means,
            precisions_init=precisions,
        ).fit(blobs)
    np.testing.assert_allclose(gm.means_, plain.params.means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gm.covariances_, plain.params.covariances, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gm.lower_bound_, plain.lower_bound, rtol=1e-12)


_init_compiled = TunedJit(initialize_centered, ("n_components", "covariance_type", "method"))


@pytest.mark.parametrize("init", ("kmeans", "kmeans++", "random", "random_from_data"))
def test_initialisation_ignores_zero_weight_rows(blobs, init):
    """No initialisation picks (or is pulled by) a padding row: put the padding far away and
    check every starting mean stays within the real data."""
    X = np.concatenate([blobs, np.full((76, 2), 1e6)])
    weights = np.r_[np.ones(len(blobs)), np.zeros(76)]
    for seed in range(3):
        params = _init_compiled(
            jax.random.key(seed), jnp.asarray(X), jnp.asarray(weights), n_components=5,
            covariance_type="full", method=init, reg_covar=1e-6, profile="cheap",
        )  # fmt: skip
        means = np.asarray(params.means)
        assert np.all(means >= blobs.min(0) - 1e-9) and np.all(means <= blobs.max(0) + 1e-9)


def test_sample_counts_in_a_bucket_share_one_compiled_fit(blobs):
    before = _fit_sklearn._cache_size()
    for n in (130, 150, 180):
        GaussianMixture(K, random_state=0).fit(blobs[:n])
    assert _fit_sklearn._cache_size() - before <= 1


def test_screened_starts_match_jaxgmm_fit(blobs):
    # Same key, same candidates (zero-weight padding rows never take part), same M-steps:
    # the estimator's screened fit equals jaxgmm.fit's. Unscreened, n_init=1 starts from the
    # key itself rather than from the best of the split keys, so the two would differ.
    seed = int(np.random.RandomState(5).randint(np.iinfo(np.int32).max))
    options = dict(n_init=1, max_iter=START_ITER, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm = GaussianMixture(
            K, init_params="k-means++", n_candidates=6, random_state=5, **options
        ).fit(blobs)
    reference = jaxgmm.fit(
        jax.random.key(seed), jnp.asarray(blobs), K, init="kmeans++", n_candidates=6, **options
    )
    np.testing.assert_allclose(gm.means_, reference.params.means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gm.weights_, reference.params.weights, rtol=1e-8)
    with pytest.raises(ValueError, match="n_candidates"):
        GaussianMixture(K, n_init=3, n_candidates=2).fit(blobs)
    with pytest.raises(ValueError, match="n_candidates"):
        GaussianMixture(K, n_candidates=4, means_init=gm.means_).fit(blobs)


def test_random_state_reproducible(blobs):
    a = GaussianMixture(K, init_params="random", random_state=3).fit(blobs)
    b = GaussianMixture(K, init_params="random", random_state=3).fit(blobs)
    np.testing.assert_array_equal(a.means_, b.means_)
    rng = np.random.RandomState(7)
    c = GaussianMixture(K, init_params="random", random_state=rng, max_iter=START_ITER, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        first, second = c.fit(blobs).means_.copy(), c.fit(blobs).means_.copy()
    assert not np.allclose(first, second)  # a RandomState instance is consumed


def test_fit_predict_equals_fit_then_predict(blobs):
    a = GaussianMixture(K, random_state=1, tol=1e-6)
    labels = a.fit_predict(blobs)
    assert a.converged_
    b = GaussianMixture(K, random_state=1, tol=1e-6).fit(blobs)
    np.testing.assert_array_equal(labels, b.predict(blobs))


def test_warm_start_continues_the_last_fit(blobs):
    """A warm-started fit runs EM from the previous parameters: the same as a fit given them
    as weights_init / means_init / precisions_init; n_init is ignored."""
    options = dict(tol=0.0, max_iter=START_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm = GaussianMixture(
            K, warm_start=True, init_params="random", random_state=0, **options
        ).fit(blobs)
        bound, previous = warm.lower_bound_, (warm.weights_, warm.means_, warm.precisions_)
        warm.set_params(n_init=5).fit(blobs)
        given = GaussianMixture(
            K, weights_init=previous[0], means_init=previous[1], precisions_init=previous[2],
            **options,
        ).fit(blobs)  # fmt: skip
    assert warm.lower_bound_ >= bound
    np.testing.assert_allclose(warm.means_, given.means_, rtol=1e-10)
    np.testing.assert_allclose(warm.covariances_, given.covariances_, rtol=1e-10)
    np.testing.assert_allclose(warm.lower_bound_, given.lower_bound_, rtol=1e-12)


def test_convergence_warning_and_verbose(blobs, capsys):
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        gm = GaussianMixture(
            K,
            init_params="random",
            max_iter=START_ITER,
            tol=0.0,
            random_state=0,
            verbose=2,
            verbose_interval=1,
        ).fit(blobs)
    assert gm.converged_ is False and gm.n_iter_ == START_ITER
    out = capsys.readouterr().out
    assert "Initialization" in out and f"Iteration {START_ITER}" in out


@pytest.mark.parametrize("kind", ("full", "spherical"))
def test_sample(fitted, kind):
    gm = fitted[kind]
    X, y = gm.sample(500)
    assert X.shape == (500, 2) and y.shape == (500,)
    assert X.dtype == np.float64 and np.issubdtype(y.dtype, np.integer)
    assert np.all(np.diff(y) >= 0)  # grouped by component, as scikit-learn
    assert set(np.unique(y)) <= set(range(K))
    for k in np.unique(y):  # samples of a component sit near its mean
        assert np.linalg.norm(X[y == k].mean(0) - gm.means_[k]) < 1.0
    with pytest.raises(ValueError, match="n_samples"):
        gm.sample(0)


def test_float32_input_is_fitted_in_float32(blobs):
    gm = GaussianMixture(K, random_state=0).fit(blobs.astype(np.float32))
    assert gm.means_.dtype == np.float32 and gm.covariances_.dtype == np.float32
    assert gm.score_samples(blobs.astype(np.float32)).dtype == np.float32


def test_fit_that_cannot_start_says_so():
    # Identical samples, no regularisation: singular covariances from the first E-step.
    with pytest.raises(ValueError, match="increase reg_covar"):
        GaussianMixture(2, reg_covar=0.0, random_state=0).fit(np.ones((30, 2)))
    with pytest.raises(ValueError, match="increase reg_covar"):
        GaussianMixture(2, reg_covar=0.0, random_state=0).partial_fit(np.ones((30, 2)))


def test_singular_covariances_give_finite_parameters_or_a_clear_error():
    from jaxgmm.sklearn import _precisions_cholesky

    # A rank-one matrix factors with a zero pivot: no precisions.
    with pytest.raises(ValueError, match="ill-defined covariance"):
        _precisions_cholesky(np.ones((1, 2, 2)), "full")
    # Two distinct points per component and no regularisation: the covariances approach
    # rank one. The estimator must end finite (its last M-step falls back to the core's last
    # finite parameters) or say why not; never NaN parameters reported as converged.
    two_points = np.repeat([[0.0, 0.0], [1.0, 1.0]], 5, axis=0)
    gm = GaussianMixture(2, reg_covar=0.0, random_state=0)
    try:
        gm.fit(two_points)
    except ValueError as error:
        assert "ill-defined covariance" in str(error) and not hasattr(gm, "means_")
    else:
        fitted = (gm.weights_, gm.means_, gm.covariances_, gm.precisions_cholesky_)
        assert all(np.all(np.isfinite(a)) for a in fitted) and np.isfinite(gm.lower_bound_)


def test_final_m_step_that_is_not_finite_keeps_the_core_parameters(blobs, monkeypatch):
    # The estimator ends with one M-step after the core's loop (scikit-learn's stopping
    # rule). When that step is not finite, the core's last parameters are kept.
    import jaxgmm.sklearn as estimator_module
    from jaxgmm._src.fitting import _fit_compiled

    X = jnp.asarray(blobs)
    args = (jax.random.key(0), X, jnp.ones(X.shape[0]), jnp.asarray(1e-3), jnp.asarray(1e-6), None)
    static = dict(n_components=K, covariance_type="full", init="kmeans++", n_init=1)
    options = dict(chunk_size=256, progress=None, n_candidates=None)
    core = _fit_compiled(*args, max_iter=START_ITER - 1, **static, **options)
    finished = estimator_module._fit_sklearn_core(*args, max_iter=START_ITER, **static, **options)
    # Unpatched, the last M-step moves the parameters (so the comparison below can fail).
    assert not np.allclose(finished.params.means, core.params.means, rtol=0, atol=1e-12)

    real_pass = estimator_module.em_pass

    def nan_pass(*pass_args):
        moments, total = real_pass(*pass_args)
        return jnp.full_like(moments, jnp.nan), total

    monkeypatch.setattr(estimator_module, "em_pass", nan_pass)
    kept = estimator_module._fit_sklearn_core(*args, max_iter=START_ITER, **static, **options)
    for new, old in zip(jax.tree.leaves(kept.params), jax.tree.leaves(core.params)):
        np.testing.assert_array_equal(new, old)
    assert kept.n_iter == core.n_iter + 1 and kept.lower_bound == finished.lower_bound


def test_warm_start_checks_the_fitted_parameters(blobs):
    gm = GaussianMixture(K, warm_start=True, random_state=0).fit(blobs)
    with pytest.raises(ValueError, match="X has 1 features, but GaussianMixture is expecting 2"):
        gm.fit(blobs[:, :1])
    with pytest.raises(ValueError, match="covariance_type = 'diag'"):
        gm.set_params(covariance_type="diag").fit(blobs)
    with pytest.raises(ValueError, match=f"n_components = {K + 1}"):
        gm.set_params(covariance_type="full", n_components=K + 1).fit(blobs)
    gm.set_params(n_components=K).fit(blobs)  # matching again: continues
    assert gm.n_features_in_ == 2  # the rejected call did not reset it
    # Evaluation keeps the covariance type the parameters were fitted with.
    labels = gm.predict(blobs)
    np.testing.assert_array_equal(gm.set_params(covariance_type="diag").predict(blobs), labels)


def test_evaluating_samples_too_far_for_the_dtype_raises(blobs):
    gm = GaussianMixture(K, random_state=0).fit(blobs)
    with pytest.raises(ValueError, match="X: the log-density of some samples is NaN"):
        gm.score(np.full((2, 2), 1e200))
    with pytest.raises(ValueError, match="X: the log-density of some samples is"):
        gm.predict(np.full((2, 2), 1e200))
    # diag: the far sample's log-density is -inf, a valid score but no responsibilities.
    diag = GaussianMixture(K, covariance_type="diag", random_state=0).fit(blobs)
    assert np.all(diag.score_samples(np.full((2, 2), 1e200)) == -np.inf)
    with pytest.raises(ValueError, match="X: the log-density of some samples is not finite"):
        diag.predict_proba(np.full((2, 2), 1e200))


def test_float32_fit_warns_when_rounding_blurs_the_components():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (250, 1)), rng.normal(1e4, 1, (250, 1))])
    with pytest.warns(RuntimeWarning, match="float32 rounding") as record:
        GaussianMixture(2, random_state=0).fit(X.astype(np.float32))
    assert record[0].filename == __file__  # names the caller's line
    rng.shuffle(X)
    with pytest.warns(RuntimeWarning, match="float32 rounding") as record:
        GaussianMixture(2, random_state=0).partial_fit(X.astype(np.float32))
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ordinary clusters: no warning
        ordinary = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 5])
        GaussianMixture(2, random_state=0).partial_fit(ordinary.astype(np.float32))


def test_pipeline_and_grid_search(blobs):
    pipe = make_pipeline(StandardScaler(), GaussianMixture(random_state=0))
    folds = KFold(4, shuffle=True, random_state=0)  # blobs are sorted by cluster
    search = GridSearchCV(pipe, {"gaussianmixture__n_components": [1, K]}, cv=folds)
    search.fit(blobs)
    assert search.best_params_["gaussianmixture__n_components"] == K
    assert np.isfinite(search.score(blobs))
    assert search.predict(blobs).shape == (len(blobs),)


def test_iris_score_at_least_sklearns():
    X = load_iris().data
    ours = GaussianMixture(3, n_init=10, random_state=0).fit(X).score(X)
    with threadpool_limits(1):  # scikit-learn's thread pools crawl on a busy 2-core machine
        ref = mixture.GaussianMixture(3, n_init=10, random_state=0).fit(X).score(X)
    assert ours >= ref - 1e-6


def test_check_estimator():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", SkipTestWarning)  # array-API checks need SCIPY_ARRAY_API
        check_estimator(GaussianMixture())


def test_feature_names_in(blobs):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(blobs, columns=["a", "b"])
    gm = GaussianMixture(K, random_state=0).fit(frame)
    assert gm.feature_names_in_.tolist() == ["a", "b"]
    np.testing.assert_array_equal(gm.predict(frame), gm.predict(blobs))
    with pytest.raises(ValueError, match="feature names"):
        gm.predict(frame.rename(columns={"a": "c"}))


# --- partial_fit: online (stepwise) EM


def stationary_stream(n=4000, seed=0):
    """``n`` samples of a well-separated 3-component 2-D mixture, in random order."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    covariances = np.array(
        [[[1.0, 0.3], [0.3, 0.5]], [[0.6, 0.0], [0.0, 1.5]], [[1.0, -0.4], [-0.4, 1.0]]]
    )
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    factors = np.linalg.cholesky(covariances)[labels]
    noise = np.einsum("nij,nj->ni", factors, rng.normal(size=(n, 2)))
    return centers[labels] + noise


def matched_distance(a, b):
    """Largest coordinate difference of the means under the best matching of components."""
    return min(np.abs(a[list(p)] - b).max() for p in itertools.permutations(range(len(a))))


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_partial_fit_sets_the_fitted_attributes(blobs, kind):
    gm = GaussianMixture(K, covariance_type=kind, random_state=0).partial_fit(blobs[::2])
    d = blobs.shape[1]
    cov_shape = covariance_shape(kind, K, d)
    assert gm.weights_.shape == (K,) and gm.means_.shape == (K, d)
    assert gm.covariances_.shape == gm.precisions_.shape == cov_shape
    assert gm.precisions_cholesky_.shape == cov_shape
    assert gm.n_features_in_ == d and not hasattr(gm, "feature_names_in_")
    assert gm.n_iter_ == 1 and gm.converged_ is False
    assert isinstance(gm.lower_bound_, float) and np.isfinite(gm.lower_bound_)
    assert gm.means_.dtype == np.float64
    np.testing.assert_allclose(gm.weights_.sum(), 1.0, rtol=1e-12)
    # the same derived attributes as fit sets
    ref = GaussianMixture(K, covariance_type=kind)
    ref._set_params(jaxgmm.GMM(gm.weights_, gm.means_, gm.covariances_, kind))
    for name in ("precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(gm, name), getattr(ref, name), rtol=1e-12)
    assert gm.predict(blobs).shape == (len(blobs),)
    assert np.isfinite(gm.score(blobs))
    assert gm.sample(5)[0].shape == (5, d)
    # the next call is an update: the counter moves, lower_bound_ is the score of the batch
    # under the parameters before it (prequential)
    before = gm.score(blobs[1::2])
    gm.partial_fit(blobs[1::2])
    assert gm.n_iter_ == 2 and gm.converged_ is False
    np.testing.assert_allclose(gm.lower_bound_, before, rtol=1e-10)


def test_partial_fit_approaches_the_batch_em_solution():
    """One pass of partial_fit over 4,000 stationary samples in 20 batches of 180 and 220 rows
    ends near fit's solution on all of them.

    Tolerances: the final statistics weight batch ``t`` by ``rho_t prod_{s>t} (1 - rho_s)``,
    an effective sample size of about 2,100 rows of the 4,000 (20 batches, kappa = 0.6,
    t0 = 2). The expected score deficit is then about ``p/2 (1/2100 - 1/4000) = 0.002`` nats
    per sample (p = 17 parameters; measured 0.0011 to 0.0022 over six data seeds, 0.0013
    here), checked < 0.006; the standard error of a mean coordinate relative to fit's is at
    most about ``1.22 / sqrt(0.2) * sqrt(1/2100 - 1/4000) = 0.042`` (smallest weight 0.2,
    largest standard deviation 1.22), checked < 0.12 (measured 0.031 to 0.073, 0.034 here).
    After the first batch alone the score is 0.025 to 0.066 nats lower (0.046 here) and the
    means 0.12 to 0.25 off, so skipped or mis-sized updates fail.
    """
    X = stationary_stream()
    batch = GaussianMixture(K, tol=1e-8, max_iter=500, random_state=0).fit(X)
    gm = GaussianMixture(K, random_state=0)
    before = _online_update._cache_size()
    for rows in np.split(X, np.cumsum([180, 220] * 10)[:-1]):
        gm.partial_fit(rows)
        if gm.n_iter_ == 1:
            first_gap = batch.score(X) - gm.score(X)
    assert gm.n_iter_ == 20 and gm.converged_ is False
    assert _online_update._cache_size() - before <= 1  # sizes 180..220 share the 256 bucket
    gap = batch.score(X) - gm.score(X)
    distance = matched_distance(gm.means_, batch.means_)
    assert first_gap > 0.02  # the first batch alone is far off (what the updates must fix)
    assert -1e-9 < gap < 0.006, gap
    assert distance < 0.12, distance
    # the prequential mean log-likelihood of the last batch is near fit's score
    assert abs(gm.lower_bound_ - batch.score(X)) < 0.3  # one batch: sd about 0.075


def test_partial_fit_from_a_user_start_is_em_then_online_update(blobs):
    """With weights_init, means_init and precisions_init, the first call is one EM iteration
    from them on its batch (scikit-learn's own estimator with max_iter=1), and the second is
    ``jaxgmm.online_update`` at its defaults on the unpadded batch: the estimator's padding
    (180 and 90 rows padded to 256 and 128) changes nothing."""
    weights, means, precisions = start_arrays(blobs, "full")
    first, second = blobs[::2][:90].copy(), blobs[1::2]
    rng = np.random.default_rng(1)
    first = np.concatenate([first, blobs[rng.choice(len(blobs), 90)]])  # 180 rows
    options = dict(weights_init=weights, means_init=means, precisions_init=precisions)
    gm = GaussianMixture(K, **options).partial_fit(first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one_step = mixture.GaussianMixture(K, max_iter=1, **options).fit(first)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(gm, name), getattr(one_step, name), rtol=1e-8)
    np.testing.assert_allclose(gm.lower_bound_, one_step.lower_bound_, rtol=1e-10)

    start = jaxgmm.GMM(weights, means, np.linalg.inv(precisions), "full")
    state = jaxgmm.online_init(jax.random.key(0), first, K, init_params=start)
    expected = jaxgmm.online_update(state, second)
    gm.partial_fit(second)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            getattr(gm, f"{name}_"), getattr(expected.params, name), rtol=1e-10, atol=1e-12
        )
    np.testing.assert_allclose(gm.lower_bound_, float(expected.log_likelihood), rtol=1e-10)


def test_partial_fit_honours_a_partial_user_start(blobs):
    """means_init alone fixes the order of the components (the rest from init_params)."""
    centers = np.stack([blobs[i * 60 : (i + 1) * 60].mean(0) for i in range(K)])
    for order in ([0, 1, 2], [2, 0, 1]):
        gm = GaussianMixture(K, means_init=centers[order], random_state=0).partial_fit(blobs)
        np.testing.assert_allclose(gm.means_, centers[order], atol=0.5)


def test_fit_discards_the_online_state_and_partial_fit_continues_from_fit(blobs):
    X = stationary_stream(n=1000, seed=1)
    gm = GaussianMixture(K, random_state=0).partial_fit(X[:300]).partial_fit(X[300:600])
    gm.fit(X)
    fresh = GaussianMixture(K, random_state=0).fit(X)
    for name in ("weights_", "means_", "covariances_", "lower_bound_", "n_iter_", "converged_"):
        np.testing.assert_array_equal(getattr(gm, name), getattr(fresh, name))
    # Continue from the fitted parameters: the running statistics start as the fitted
    # mixture's expected statistics, one update with rho = 3 ** -0.6. Reference in uncentred
    # coordinates from the fitted responsibilities on the batch.
    batch = X[600:800]
    resp = gm.predict_proba(batch)
    score = gm.score(batch)
    pi, mu, sigma, reg = gm.weights_, gm.means_, gm.covariances_, gm.reg_covar
    rho = 3.0**-0.6
    second = sigma - reg * np.eye(2) + mu[:, :, None] * mu[:, None, :]
    weights = (1 - rho) * pi + rho * resp.mean(0)
    means = ((1 - rho) * pi[:, None] * mu + rho * resp.T @ batch / len(batch)) / weights[:, None]
    second_new = (1 - rho) * pi[:, None, None] * second + rho * np.einsum(
        "nk,ni,nj->kij", resp, batch, batch
    ) / len(batch)
    outer = means[:, :, None] * means[:, None, :]
    covariances = second_new / weights[:, None, None] - outer + reg * np.eye(2)
    gm.partial_fit(batch)
    np.testing.assert_allclose(gm.weights_, weights, rtol=1e-10)
    np.testing.assert_allclose(gm.means_, means, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gm.covariances_, covariances, rtol=1e-8, atol=1e-10)
    assert gm.n_iter_ == 1 and gm.converged_ is False
    np.testing.assert_allclose(gm.lower_bound_, score, rtol=1e-10)
    gm.partial_fit(X[800:])  # and on from there
    assert gm.n_iter_ == 2


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_state_from_fitted_params_round_trips(fitted, kind):
    """The statistics partial_fit starts from after fit have the fitted mixture as M-step."""
    gm = fitted[kind]
    state = _state_from_params(gm._params(), gm.reg_covar)
    params = jaxgmm._src.covariances.params_from_moments(state.statistics, kind, gm.reg_covar)
    np.testing.assert_allclose(params.weights, gm.weights_, rtol=1e-12)
    np.testing.assert_allclose(params.means + state.center, gm.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(params.covariances, gm.covariances_, rtol=1e-10)


def test_partial_fit_errors(blobs):
    gm = GaussianMixture(K, random_state=0)
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        gm.partial_fit(blobs[:2])
    assert not hasattr(gm, "means_")
    gm.partial_fit(blobs)
    with pytest.raises(ValueError, match="X has 1 features, but GaussianMixture is expecting 2"):
        gm.partial_fit(blobs[:, :1])
    gm.fit(blobs)
    with pytest.raises(ValueError, match="X has 3 features"):
        gm.partial_fit(np.c_[blobs, blobs[:, :1]])
    with pytest.raises(ValueError, match="n_components = 2"):
        gm.set_params(n_components=2).partial_fit(blobs)
    with pytest.raises(ValueError, match="precisions_init"):
        GaussianMixture(K, precisions_init=-np.ones(K), covariance_type="spherical").partial_fit(
            blobs
        )


def test_partial_fit_ignores_y_and_follows_random_state(blobs):
    X = blobs[np.random.default_rng(0).permutation(len(blobs))]
    batches = (X[:100], X[100:])

    def run(seed, y=None):
        gm = GaussianMixture(K, init_params="random_from_data", random_state=seed)
        for b in batches:
            gm.partial_fit(b, None if y is None else y[: len(b)])
        return gm

    a, b = run(0), run(0)
    with_y = run(0, y=np.arange(len(X)) % 2)
    other = run(1)
    for name in ("weights_", "means_", "covariances_", "lower_bound_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(getattr(a, name), getattr(with_y, name))
    assert not np.allclose(np.sort(a.means_, 0), np.sort(other.means_, 0))


def test_partial_fit_float32(blobs):
    gm32 = GaussianMixture(K, random_state=0).partial_fit(blobs.astype(np.float32))
    gm32.partial_fit(blobs)  # later batches take the dtype of the first
    assert gm32.means_.dtype == gm32.covariances_.dtype == np.float32


def test_partial_fit_feature_names(blobs):
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(blobs, columns=["a", "b"])
    gm = GaussianMixture(K, random_state=0).partial_fit(frame)
    assert gm.feature_names_in_.tolist() == ["a", "b"]
    gm.partial_fit(frame)
    with pytest.raises(ValueError, match="feature names"):
        gm.partial_fit(frame.rename(columns={"a": "c"}))
