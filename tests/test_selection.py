"""``jaxgmm.select``: padded (masked) components reproduce unpadded fits, the table's criteria
against direct computations, and the choices on iris, wine and Old Faithful against
scikit-learn with many restarts (and R's mclust when it is installed)."""

import math
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

import jaxgmm
from jaxgmm._src.compile_options import TunedJit
from jaxgmm._src.fitting import _fit_core
from jaxgmm._src.selection import count_parameters
from jaxgmm._src.selection_plot import plot_bic_curve

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import mclust_reference  # noqa: E402  (a helper beside this file, not a test module)

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
KEY = jax.random.key(0)


# Compiled programs are shared: every selection here has the shapes and static options of one
# of the data-set selections (K = 1..4, n_init = 10), the table tests use Old Faithful's.
DATASET_K = range(1, 5)
N_INIT = 10
TOL = 1e-4


@pytest.fixture(scope="module")
def datasets():
    return mclust_reference.classic_datasets()


@pytest.fixture(scope="module")
def selections(datasets):
    return {
        name: jaxgmm.select(KEY, X, DATASET_K, n_init=N_INIT, tol=TOL)
        for name, X in datasets.items()
    }


@pytest.fixture(scope="module")
def selection(selections):
    return selections["faithful"]


@pytest.fixture(scope="module")
def faithful(datasets):
    return datasets["faithful"]


# --- padding: a K-component fit inside a larger, masked one


def pad(params, K_max):
    """``params`` with ``K_max - K`` extra components of weight exactly zero."""
    K, D = params.means.shape
    extra = K_max - K
    weights = jnp.concatenate([params.weights, jnp.zeros(extra)])
    means = jnp.concatenate([params.means, jnp.full((extra, D), 7.0)])
    covariances = params.covariances
    if params.covariance_type == "full":
        covariances = jnp.concatenate([covariances, jnp.broadcast_to(jnp.eye(D), (extra, D, D))])
    elif params.covariance_type == "diag":
        covariances = jnp.concatenate([covariances, jnp.ones((extra, D))])
    elif params.covariance_type == "spherical":
        covariances = jnp.concatenate([covariances, jnp.ones(extra)])
    return jaxgmm.GMM(weights, means, covariances, params.covariance_type)


# The jitted core, compiled cheaply (same arithmetic; see jaxgmm._src.compile_options).
_fit_cheap = TunedJit(
    _fit_core,
    ("n_components", "covariance_type", "init", "n_init", "max_iter", "chunk_size", "progress"),
)


def run(X, start, n_components, n_active=None):
    return _fit_cheap(
        jax.random.key(0), X, jnp.ones(len(X)), jnp.asarray(1e-8), jnp.asarray(1e-6), start,
        n_components=n_components, covariance_type=start.covariance_type, init="kmeans++",
        n_init=1, max_iter=60, chunk_size=len(X), progress=None, n_active=n_active,
        profile="cheap",
    )  # fmt: skip


def numpy_start(X, K, kind, seed):
    """A valid starting mixture drawn with NumPy."""
    rng = np.random.default_rng(seed)
    D = X.shape[1]
    weights = rng.dirichlet(np.full(K, 5.0))
    means = X[rng.choice(len(X), K, replace=False)]
    variance = np.var(X, axis=0)
    covariances = {
        "full": np.stack([np.diag(variance * s) for s in rng.uniform(0.3, 1.0, K)]),
        "tied": np.diag(variance),
        "diag": variance * rng.uniform(0.3, 1.0, (K, D)),
        "spherical": variance.mean() * rng.uniform(0.3, 1.0, K),
    }[kind]
    return jaxgmm.GMM(jnp.asarray(weights), jnp.asarray(means), jnp.asarray(covariances), kind)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_padded_fits_equal_unpadded_fits(blobs, kind):
    """K = 1 and K = 3 fitted together (vmap over n_active) as 4-component mixtures with
    masked padding: K = 3 follows the unpadded fit from the same start (same parameters,
    log-likelihood and iteration count, to 1e-10), K = 1 lands on the closed form."""
    X = jnp.asarray(blobs)
    starts = [numpy_start(blobs, k, kind, seed=k) for k in (1, 3)]
    padded_starts = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[pad(s, 4) for s in starts])
    batch = jax.vmap(lambda start, k: run(X, start, 4, k))(padded_starts, jnp.array([1, 3]))
    one, three = (jax.tree.map(lambda leaf, i=i: leaf[i], batch) for i in (0, 1))

    plain = run(X, starts[1], 3)
    assert int(three.n_iter) == int(plain.n_iter) > 5
    np.testing.assert_allclose(three.log_likelihood, plain.log_likelihood, rtol=1e-12)
    np.testing.assert_array_equal(three.params.weights[3:], 0.0)
    np.testing.assert_allclose(three.params.weights[:3], plain.params.weights, rtol=1e-10)
    np.testing.assert_allclose(three.params.means[:3], plain.params.means, rtol=1e-10)
    covariances = three.params.covariances
    covariances = covariances if kind == "tied" else covariances[:3]
    np.testing.assert_allclose(covariances, plain.params.covariances, rtol=1e-10)

    # K = 1: weight one, the data mean and the (regularised) data covariance of its kind.
    np.testing.assert_array_equal(one.params.weights, [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(one.params.means[0], blobs.mean(0), rtol=1e-10)
    full = np.cov(blobs.T, bias=True) + 1e-6 * np.eye(2)
    expected = {
        "full": full,
        "tied": full,
        "diag": np.diag(full),
        "spherical": np.diag(full).mean(),
    }[kind]
    covariance = one.params.covariances if kind == "tied" else one.params.covariances[0]
    np.testing.assert_allclose(covariance, expected, rtol=1e-10)
    single = jaxgmm.GMM(np.ones(1), blobs.mean(0)[None], expected[None], kind)
    if kind == "tied":
        single = single.replace(covariances=expected)
    np.testing.assert_allclose(one.log_likelihood, jaxgmm.log_likelihood(single, blobs), rtol=1e-12)


# --- the table


def direct_log_resp(params, X):
    """Log responsibilities computed with SciPy's densities (independent of jaxgmm)."""
    kind = params.covariance_type
    K, D = params.means.shape
    log_joint = np.empty((len(X), K))
    for k in range(K):
        if kind == "full":
            cov = params.covariances[k]
        elif kind == "tied":
            cov = params.covariances
        elif kind == "diag":
            cov = np.diag(params.covariances[k])
        else:
            cov = params.covariances[k] * np.eye(D)
        mvn = multivariate_normal(np.asarray(params.means[k]), np.asarray(cov))
        log_joint[:, k] = np.log(params.weights[k]) + mvn.logpdf(X)
    norm = logsumexp(log_joint, axis=1)
    return log_joint - norm[:, None], norm


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_criteria_against_direct_computation(selection, faithful, kind):
    n = len(faithful)
    t = selection.covariance_types.index(kind)
    for j, k in enumerate(selection.K):
        params = jax.tree.map(np.asarray, selection.params_for(int(k), kind))
        assert params.weights.shape == (k,) and params.covariance_type == kind
        log_resp, log_norm = direct_log_resp(params, faithful)
        log_likelihood = log_norm.sum()
        p = jaxgmm.n_parameters(params)
        assert selection.n_parameters[t, j] == p == count_parameters(int(k), 2, kind)
        bic = -2 * log_likelihood + p * math.log(n)
        entropy = -np.sum(np.exp(log_resp) * log_resp)
        np.testing.assert_allclose(selection.log_likelihood[t, j], log_likelihood, rtol=1e-10)
        np.testing.assert_allclose(selection.bic[t, j], bic, rtol=1e-10)
        np.testing.assert_allclose(selection.bic[t, j], jaxgmm.bic(params, faithful), rtol=1e-10)
        np.testing.assert_allclose(selection.aic[t, j], jaxgmm.aic(params, faithful), rtol=1e-10)
        # ICL = BIC - 2 sum_n sum_k gamma_nk log gamma_nk
        np.testing.assert_allclose(selection.icl[t, j], bic + 2 * entropy, rtol=1e-10)
        assert selection.icl[t, j] >= selection.bic[t, j] - 1e-9


def test_best_cell_and_fields(selection):
    assert selection.criterion == "bic"
    assert selection.K.tolist() == list(DATASET_K)
    assert selection.covariance_types == COVARIANCE_TYPES
    for name in ("log_likelihood", "n_parameters", "bic", "aic", "icl", "converged", "n_iter"):
        assert getattr(selection, name).shape == (4, len(DATASET_K))
    t, j = selection.best_index
    assert selection.bic[t, j] == selection.bic[~selection.collapsed].min()
    assert (selection.covariance_type, selection.n_components) == (
        COVARIANCE_TYPES[t],
        int(selection.K[j]),
    )
    assert selection.params.weights.shape == (selection.n_components,)
    np.testing.assert_allclose(float(jnp.sum(selection.params.weights)), 1.0, rtol=1e-12)
    assert np.all(selection.converged)
    # K = 1 has one closed-form answer for every covariance type
    np.testing.assert_allclose(
        selection.log_likelihood[0, 0], selection.log_likelihood[3, 0], rtol=1e-12
    )


def test_other_criteria_choose_from_their_column(faithful, selection):
    options = dict(n_init=N_INIT, tol=TOL)
    by_aic = jaxgmm.select(KEY, faithful, DATASET_K, criterion="aic", **options)
    by_icl = jaxgmm.select(KEY, faithful, DATASET_K, criterion="icl", **options)
    np.testing.assert_allclose(by_aic.log_likelihood, selection.log_likelihood)
    assert by_aic.aic[by_aic.best_index] == by_aic.aic.min()
    assert by_icl.icl[by_icl.best_index] == by_icl.icl.min()


def test_format_table(selection):
    text = selection.format_table()
    lines = text.splitlines()
    assert len(lines) == 2 + 4 * len(DATASET_K)
    assert lines[0].split()[:4] == ["cov", "K", "log-likelihood", "params"]
    starred = [line for line in lines if line.startswith("*")]
    assert len(starred) == 1
    assert f"{selection.covariance_type}" in starred[0]
    assert len({len(line) for line in lines[:2]}) == 1
    assert str(selection).startswith("best by BIC (lower is better)")
    assert selection.format_table() in str(selection)


def test_plot_bic_curve(selection, tmp_path):
    import matplotlib.image

    path = plot_bic_curve(selection, tmp_path / "bic.png")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with pytest.raises(ValueError, match="criterion"):
        plot_bic_curve(selection, tmp_path / "x.png", criterion="mdl")


def test_collapsed_component_is_flagged_and_not_chosen():
    """Points on repeated values let a component's covariance shrink to reg_covar; such a
    cell is marked and skipped, whatever its BIC. (Old Faithful's shape: shared program.)"""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(242, 2)), np.tile([[4.0, 4.0]], (30, 1))])
    result = jaxgmm.select(KEY, X, DATASET_K, covariance_types=("diag",), n_init=N_INIT, tol=TOL)
    assert not result.collapsed[0, 0] and result.collapsed[0, 1:].all()
    assert result.bic[0, 1] < result.bic[0, 0]  # the spike would win
    assert result.n_components == 1
    assert "collapsed" in result.format_table()


@pytest.mark.parametrize("kind", ["full", "diag", "spherical", "tied"])
def test_collapse_test_does_not_depend_on_the_features_scales(kind):
    """The same mixture, with features rescaled by 1e4 and 1e-2 (data and covariances
    alike), is collapsed or not regardless of the scales."""
    from jaxgmm._src.selection import collapse_test, has_collapsed_component

    rng = np.random.default_rng(0)
    reg = 1e-6
    X = rng.normal(size=(400, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])  # correlated features
    excess = {  # the component covariances less reg_covar: spread, and flat in one direction
        "full": (np.cov(X.T, bias=True)[None], np.array([[[1.0, 1.0], [1.0, 1.0]]])),
        "tied": (np.cov(X.T, bias=True), np.array([[1.0, 1.0], [1.0, 1.0]])),
        "diag": (np.var(X, axis=0)[None], np.array([[1.0, 0.0]])),
        "spherical": (np.array([1.0]), np.array([0.0])),
    }[kind]
    for scales in (np.ones(2), np.array([1e4, 1e-2])):
        if kind == "spherical":  # one variance for every feature: only a common scale
            scales = np.full(2, scales[0])
        for spread, collapsed in zip(excess, (False, True)):
            if kind in ("full", "tied"):
                covariances = scales[:, None] * spread * scales + reg * np.eye(2)
            elif kind == "diag":
                covariances = spread * scales**2 + reg
            else:
                covariances = spread * scales[0] ** 2 + reg
            n = covariances.shape[0] if kind != "tied" else 1
            params = jaxgmm.GMM(np.ones(n) / n, np.zeros((n, 2)), covariances, kind)
            test = collapse_test(X * scales)
            assert has_collapsed_component(params, reg, test) == collapsed, (scales, spread)


def test_errors(blobs):
    # All raise before any compilation.
    with pytest.raises(ValueError, match="criterion"):
        jaxgmm.select(KEY, blobs, K=[1], criterion="mdl")
    with pytest.raises(ValueError, match="K"):
        jaxgmm.select(KEY, blobs[:4], K=[2, 5])
    with pytest.raises(ValueError, match="covariance_type"):
        jaxgmm.select(KEY, blobs, K=[1], covariance_types=("full", "banana"))
    with pytest.raises(TypeError, match="sample_weigth"):
        jaxgmm.select(KEY, blobs, K=[1], sample_weigth=None)
    with pytest.raises(ValueError, match="K"):
        jaxgmm.select(KEY, blobs, K=[])


# --- classic data sets: the choice careful EM with restarts makes


def sklearn_table(X, covariance_types, n_init=20):
    """scikit-learn's log-likelihood for every cell, best of ``n_init`` restarts."""
    table = np.empty((len(covariance_types), len(DATASET_K)))
    # One thread: scikit-learn's k-means and BLAS thread pools crawl on a busy 2-core machine.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for t, kind in enumerate(covariance_types):
            for j, k in enumerate(DATASET_K):
                model = GaussianMixture(
                    k, covariance_type=kind, n_init=n_init, tol=TOL, random_state=0
                )
                table[t, j] = model.fit(X).score(X) * len(X)
    return table


@pytest.mark.parametrize("name", ["iris", "wine", "faithful"])
def test_choice_matches_sklearn_with_many_restarts(datasets, selections, name):
    """Every cell reaches at least scikit-learn's best-of-20 log-likelihood (up to the
    stopping tolerance) where the model is identifiable (fewer parameters than samples) and
    not collapsed, and the choice is the best BIC known from both."""
    X = datasets[name]
    ours = selections[name]
    reference = sklearn_table(X, ours.covariance_types)
    slack = 10 * TOL * len(X)
    comparable = (ours.n_parameters < len(X)) & ~ours.collapsed
    shortfall = np.where(comparable, reference - ours.log_likelihood, -np.inf)
    assert shortfall.max() < slack, (name, shortfall)
    best_known = np.maximum(ours.log_likelihood, reference)
    bic = -2 * best_known + ours.n_parameters * math.log(len(X))
    t, j = np.unravel_index(np.argmin(np.where(comparable, bic, np.inf)), bic.shape)
    assert (ours.covariance_type, ours.n_components) == (ours.covariance_types[t], j + 1)


@pytest.mark.skipif(not mclust_reference.available(), reason="needs Rscript with mclust")
@pytest.mark.parametrize("name", ["iris", "wine", "faithful"])
def test_against_mclust(datasets, selections, name):
    """mclust (VVV/VVI/VII/EEE, BIC of the opposite sign) picks the same model, or one we
    beat by its own criterion (its single hierarchical start can miss the best optimum)."""
    X = datasets[name]
    ours = selections[name]
    reference = mclust_reference.mclust_bic(X, DATASET_K, ours.covariance_types)
    t, j = np.unravel_index(np.nanargmin(reference), reference.shape)
    our_best = ours.bic[ours.best_index]
    same = (ours.covariance_types[t], j + 1) == (ours.covariance_type, ours.n_components)
    assert same or our_best < reference[t, j]
    assert our_best <= reference[t, j] + 2 * TOL * len(X)


def test_select_benchmark_runs_and_reports(blobs):
    """The sweep-against-loops benchmark at a tiny size: every timing present, the ratios are
    the quotients of the timings, and the sweep and the scikit-learn loop choose from the
    same cells (speed itself is not asserted)."""
    from jaxgmm._src.benchmark import format_select_bench, run_select_benchmark

    bench = run_select_benchmark(
        n_samples=len(blobs), n_features=2, K=range(1, 3), covariance_types=("diag",),
        sklearn_threads=1,
    )  # fmt: skip
    assert bench.K == [1, 2] and bench.covariance_types == ["diag"]
    for seconds in (bench.select_cold_s, bench.select_warm_s, bench.jaxgmm_loop_cold_s,
                    bench.jaxgmm_loop_warm_s, bench.sklearn_loop_s):  # fmt: skip
        assert seconds > 0
    assert bench.sklearn_ratio_warm == pytest.approx(bench.sklearn_loop_s / bench.select_warm_s)
    assert bench.jaxgmm_ratio_cold == pytest.approx(bench.jaxgmm_loop_cold_s / bench.select_cold_s)
    assert bench.select_choice.startswith("diag K=") and bench.sklearn_choice.startswith("diag")
    text = format_select_bench(bench)
    assert "select over K = 1..2 x 1 covariance types" in text
    assert "speed-up over scikit-learn" in text and "(1 thread(s))" in text


def test_float32_select_warns_when_rounding_blurs_the_chosen_fit():
    # Two unit-variance 1-D clusters 10,000 apart (see test_api): select's chosen cell gets
    # the same float32 rounding check as an eager fit, and the warning names this line.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, 250), rng.normal(1e4, 1, 250)]).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="float32 rounding") as record:
        jaxgmm.select(KEY, X, [2], covariance_types=("spherical",), n_init=1)
    assert record[0].filename == __file__
