"""fit_stream: exact EM over chunks equals the in-memory fit (callable and memmap sources),
with fit's n_iter / converged / history semantics, no recompiles and clear errors."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm
from jaxgmm._src import streaming

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
KEY = jax.random.key(0)
BATCH = 64  # 240 rows: three full batches and one padded one


@pytest.fixture(scope="module")
def data(blobs3d):
    return blobs3d


def chunked(X, rows=50):
    """A callable source whose chunks do not line up with the batches."""
    return lambda: (X[i : i + rows] for i in range(0, X.shape[0], rows))


def assert_same_fit(a, b, rtol=1e-10, atol=1e-10):
    for field in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            np.asarray(getattr(b.params, field)),
            np.asarray(getattr(a.params, field)),
            rtol=rtol,
            atol=atol,
            err_msg=field,
        )
    np.testing.assert_allclose(float(b.log_likelihood), float(a.log_likelihood), rtol=rtol)
    np.testing.assert_allclose(np.asarray(b.history), np.asarray(a.history), rtol=rtol)
    assert int(b.n_iter) == int(a.n_iter)
    assert bool(b.converged) == bool(a.converged)


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_matches_fit_with_callable_source(data, kind):
    start = jaxgmm.init_params(jax.random.key(1), data, 3, covariance_type=kind)
    options = dict(covariance_type=kind, init_params=start, max_iter=5, tol=0.0)
    expected = jaxgmm.fit(KEY, data, 3, **options)
    result = jaxgmm.fit_stream(KEY, chunked(data), 3, batch_size=BATCH, **options)
    assert int(result.n_iter) == 5 and not bool(result.converged)
    assert result.params.covariance_type == kind
    assert_same_fit(expected, result)


def test_matches_fit_with_memmap(data, tmp_path):
    path = tmp_path / "data.npy"
    np.save(path, data)
    source = np.load(path, mmap_mode="r")
    assert isinstance(source, np.memmap)
    start = jaxgmm.init_params(jax.random.key(1), data, 3)
    options = dict(init_params=start, max_iter=5, tol=0.0)
    expected = jaxgmm.fit(KEY, data, 3, **options)
    assert_same_fit(expected, jaxgmm.fit_stream(KEY, source, 3, batch_size=BATCH, **options))


def test_matches_fit_on_one_feature(data):
    x = data[:, 0]  # a 1-D source is one feature, as in fit
    start = jaxgmm.init_params(jax.random.key(1), x, 2, covariance_type="diag")
    options = dict(covariance_type="diag", init_params=start, max_iter=3, tol=0.0)
    expected = jaxgmm.fit(KEY, x, 2, **options)
    result = jaxgmm.fit_stream(KEY, x, 2, batch_size=BATCH, **options)
    assert result.params.means.shape == (2, 1)
    assert_same_fit(expected, result)


def test_float32_matches_fit(data):
    X = data.astype(np.float32)
    start = jaxgmm.init_params(jax.random.key(1), X, 3, covariance_type="diag")
    options = dict(covariance_type="diag", init_params=start, max_iter=4, tol=0.0)
    expected = jaxgmm.fit(KEY, X, 3, **options)
    result = jaxgmm.fit_stream(KEY, X, 3, batch_size=BATCH, **options)
    assert result.params.means.dtype == jnp.float32
    assert result.log_likelihood.dtype == jnp.float32
    assert_same_fit(expected, result, rtol=2e-4, atol=2e-4)


def test_convergence_semantics_as_in_fit(data):
    calls = []
    result = jaxgmm.fit_stream(
        KEY,
        chunked(data),
        3,
        batch_size=BATCH,
        max_iter=50,
        tol=1e-3,
        progress=lambda n, ll: calls.append((n, ll)),
    )
    n = int(result.n_iter)
    assert bool(result.converged) and 1 <= n < 50
    assert result.history.shape == (50,)
    assert np.all(np.isfinite(result.history[:n])) and np.all(np.isnan(result.history[n:]))
    assert [c[0] for c in calls] == list(range(1, n + 1))
    np.testing.assert_allclose([c[1] for c in calls], result.history[:n], rtol=1e-12)
    assert abs(result.history[n - 1] - result.history[n - 2]) < 1e-3
    # log_likelihood is at the returned parameters
    np.testing.assert_allclose(
        float(result.log_likelihood),
        float(jaxgmm.log_likelihood(result.params, data)),
        rtol=1e-10,
    )
    # EM never decreases the log-likelihood
    assert np.all(np.diff(result.history[:n]) >= -1e-10)


def test_one_compiled_update_for_every_pass(data):
    start = jaxgmm.init_params(jax.random.key(1), data, 3)
    options = dict(init_params=start, tol=0.0)
    jaxgmm.fit_stream(KEY, chunked(data), 3, batch_size=BATCH, max_iter=1, **options)
    before = streaming.stream_update._cache_size()
    jaxgmm.fit_stream(KEY, chunked(data, 37), 3, batch_size=BATCH, max_iter=3, **options)
    jaxgmm.fit_stream(KEY, data, 3, batch_size=BATCH, max_iter=2, **options)
    assert streaming.stream_update._cache_size() == before


def test_verbose_reports_every_pass(data, capsys):
    jaxgmm.fit_stream(KEY, data, 3, batch_size=BATCH, max_iter=2, tol=0.0, verbose=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4  # the scan, the first E-step, two iterations
    assert all("rows/s" in line for line in lines)


def test_reservoir_sample_is_uniform_without_replacement():
    n = 20_000
    X = np.arange(n, dtype=np.float64)[:, None]
    source = streaming.StreamSource(lambda: (X[i : i + 999] for i in range(0, n, 999)))
    rows, dim, dtype, mean, spread, sample = streaming.scan_source(
        source, 2000, np.random.default_rng(0), 512
    )
    assert (rows, dim, dtype) == (n, 1, np.float64)
    np.testing.assert_allclose(mean, [(n - 1) / 2], rtol=1e-14)
    np.testing.assert_allclose(spread, [np.sqrt((n**2 - 1) / 12)], rtol=1e-12)  # 0..n-1
    values = sample[:, 0]
    assert values.shape == (2000,) and np.unique(values).size == 2000
    assert np.all(np.diff(values) > 0)  # kept in stream order
    # uniform: the sample mean of the indices is within 5 standard errors of (n - 1) / 2
    assert abs(values.mean() - (n - 1) / 2) < 5 * n / np.sqrt(12 * 2000)
    # a sample larger than the data is all of it
    *_, everything = streaming.scan_source(source, 10 * n, np.random.default_rng(0), 512)
    np.testing.assert_array_equal(everything[:, 0], X[:, 0])


def _clusters_far_apart(rng):
    """Two unit-variance 1-D clusters 10,000 apart, shuffled (float64)."""
    X = np.concatenate([rng.normal(0, 1, 250), rng.normal(1e4, 1, 250)])
    return rng.permutation(X)


def test_float32_stream_warns_when_rounding_blurs_the_components():
    # As for fit: about eps32 * 5000**2 = 3 nats of rounding in the log-densities. The scan
    # pass measures the spread that the estimate needs.
    rng = np.random.default_rng(0)
    X = _clusters_far_apart(rng)
    with pytest.warns(RuntimeWarning, match="float32 rounding") as record:
        jaxgmm.fit_stream(KEY, X.astype(np.float32), 2, batch_size=128)
    assert record[0].filename == __file__  # names the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jaxgmm.fit_stream(KEY, rng.normal(size=(300, 2)).astype(np.float32), 2, batch_size=128)


def test_stream_that_cannot_start_raises():
    # Identical rows, no regularisation: singular covariances at the start (fit raises too).
    with pytest.raises(ValueError, match="increase reg_covar"):
        jaxgmm.fit_stream(KEY, np.ones((64, 2)), 2, batch_size=32, reg_covar=0.0)


def test_errors_name_the_argument(data):
    def fit(source, **kw):
        return jaxgmm.fit_stream(KEY, source, 3, batch_size=kw.pop("batch_size", BATCH), **kw)

    with pytest.raises(TypeError, match="callable"):
        fit(iter([data]))  # a one-shot iterator cannot be read once per iteration
    with pytest.raises(TypeError, match="source"):
        fit(3)
    bad = data.copy()
    bad[200, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(bad)
    with pytest.raises(ValueError, match="D = 2"):
        fit(lambda: iter([data, data[:, :2]]))
    with pytest.raises(ValueError, match="empty"):
        fit(lambda: iter([]))
    passes = []

    def shrinking():  # the whole data on the first two passes (scan, start), then half
        passes.append(None)
        return iter([data if len(passes) <= 2 else data[: len(data) // 2]])

    with pytest.raises(ValueError, match="same rows on every pass"):
        fit(shrinking)
    with pytest.raises(ValueError, match="exceeds"):
        jaxgmm.fit_stream(KEY, data[:2], 3, batch_size=BATCH)
    with pytest.raises(ValueError, match="batch_size"):
        fit(data, batch_size=0)
    with pytest.raises(TypeError, match="K"):
        jaxgmm.fit_stream(KEY, data, 2.5, batch_size=BATCH)
    with pytest.raises(ValueError, match="tol"):
        fit(data, tol=-1.0)
    start = jaxgmm.init_params(jax.random.key(1), data, 3, covariance_type="diag")
    with pytest.raises(ValueError, match="covariance_type"):
        fit(data, init_params=start)
