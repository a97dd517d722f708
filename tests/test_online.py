"""Online (stepwise) EM: exact relations to batch EM, one compile for a fixed batch shape,
padding, non-finite batches, and convergence near the batch solution on a stationary stream."""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgmm

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
KEY = jax.random.key(0)


def assert_params_close(a, b, rtol=1e-10, atol=1e-10):
    for field in ("weights", "means", "covariances"):
        np.testing.assert_allclose(
            np.asarray(getattr(a, field)),
            np.asarray(getattr(b, field)),
            rtol=rtol,
            atol=atol,
            err_msg=field,
        )


@pytest.mark.parametrize("kind", COVARIANCE_TYPES)
def test_init_and_a_full_step_are_batch_em_iterations(blobs, kind):
    first, second = blobs[::2], blobs[1::2]
    guess = jaxgmm.init_params(jax.random.key(1), first, 3, covariance_type=kind)
    state = jaxgmm.online_init(KEY, first, 3, covariance_type=kind, init_params=guess)
    assert int(state.step) == 0 and state.params.covariance_type == kind
    # the initial state is one EM iteration from the guess on the initial batch
    one_step = jaxgmm.fit(KEY, first, 3, covariance_type=kind, init_params=guess, max_iter=1)
    assert_params_close(state.params, one_step.params)
    # with rho = (1 + t0) ** -kappa = 1, an update is one EM iteration on the new batch
    updated = jaxgmm.online_update(state, second, kappa=1.0, t0=0.0)
    expected = jaxgmm.fit(
        KEY, second, 3, covariance_type=kind, init_params=state.params, max_iter=1, tol=0.0
    )
    assert int(updated.step) == 1
    assert_params_close(updated.params, expected.params)
    np.testing.assert_allclose(
        float(updated.log_likelihood) * second.shape[0],
        float(jaxgmm.log_likelihood(state.params, second)),
        rtol=1e-10,
    )


def test_jitted_update_compiles_once_and_ignores_padding(blobs):
    state = jaxgmm.online_init(KEY, blobs, 3)
    traces = []

    def counted(state, X, w):
        traces.append(None)
        return jaxgmm.online_update(state, X, sample_weight=w, kappa=0.7, t0=1.0)

    update = jax.jit(counted)
    n, pad = 50, 14
    rng = np.random.default_rng(0)
    for _ in range(4):
        batch = blobs[rng.permutation(blobs.shape[0])[:n]]
        padded = np.concatenate([batch, rng.normal(size=(pad, 2)) * 100.0])
        weights = np.r_[np.ones(n), np.zeros(pad)]
        new = update(state, padded, weights)
        # padding rows count for nothing; the step shrinks by the fraction of real rows, as
        # for the unpadded batch weighted uniformly by that fraction
        uniform = jaxgmm.online_update(
            state, batch, sample_weight=np.full(n, n / (n + pad)), kappa=0.7, t0=1.0
        )
        assert_params_close(new.params, uniform.params)
        assert jax.tree.structure(new) == jax.tree.structure(state)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
            assert a.shape == b.shape and a.dtype == b.dtype
        state = new
    assert len(traces) == 1
    assert int(state.step) == 4


def test_non_finite_batch_keeps_the_parameters(blobs):
    state = jaxgmm.online_init(KEY, blobs, 3)
    bad = blobs[:64].copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jaxgmm.online_update(state, bad)  # eager: rejected at the boundary
    new = jax.jit(jaxgmm.online_update)(state, bad)  # under jit: reported, params kept
    assert not np.isfinite(float(new.log_likelihood))
    assert_params_close(new.params, state.params, rtol=0, atol=0)
    np.testing.assert_array_equal(new.statistics, state.statistics)


@pytest.fixture(scope="module")
def stream():
    """20,000 samples of a stationary 3-component mixture in random order."""
    truth = jaxgmm.GMM(
        jnp.array([0.5, 0.3, 0.2]),
        jnp.array([[0.0, 0.0], [5.0, 1.0], [1.0, 6.0]]),
        jnp.array([[[1.0, 0.3], [0.3, 0.5]], [[0.6, 0.0], [0.0, 1.5]], [[1.0, -0.4], [-0.4, 1.0]]]),
        "full",
    )
    X, _ = jaxgmm.sample(jax.random.key(7), truth, 20_000)
    return np.asarray(X)


def matched_distance(a, b):
    """Largest mean distance under the best permutation of components."""
    return min(np.abs(a[list(p)] - b).max() for p in itertools.permutations(range(a.shape[0])))


def test_single_pass_converges_near_the_batch_solution(stream):
    batch = jaxgmm.fit(KEY, stream, 3, tol=1e-6, max_iter=200)
    online = jaxgmm.fit_online(KEY, stream, 3, batch_size=400, init_size=2000)
    n = stream.shape[0]
    assert int(online.n_iter) == n // 400 and bool(online.converged)
    assert online.history.shape == (n // 400,)
    # log_likelihood is exact at the returned parameters (final_pass)
    np.testing.assert_allclose(
        float(online.log_likelihood),
        float(jaxgmm.log_likelihood(online.params, stream)),
        rtol=1e-10,
    )
    per_sample_gap = (float(batch.log_likelihood) - float(online.log_likelihood)) / n
    assert -1e-9 < per_sample_gap < 2e-3
    distance = matched_distance(np.asarray(online.params.means), np.asarray(batch.params.means))
    assert distance < 0.05
    # the prequential batch log-likelihoods end near the batch optimum
    assert abs(np.mean(online.history[-10:]) - float(batch.log_likelihood) / n) < 0.05


def test_one_shot_iterator_and_progress(stream):
    calls = []
    chunks = iter(np.array_split(stream[:6000], 7))  # read once; ragged chunks
    result = jaxgmm.fit_online(
        KEY,
        chunks,
        3,
        batch_size=400,
        init_size=2000,
        progress=lambda n, ll: calls.append((n, ll)),
    )
    assert int(result.n_iter) == 15 and len(calls) == 15
    np.testing.assert_allclose([c[1] for c in calls], result.history, rtol=1e-12)
    # no second pass over a one-shot iterator: the total is the prequential one
    np.testing.assert_allclose(
        float(result.log_likelihood), float(np.sum(result.history)) * 400, rtol=1e-10
    )


def test_float32_online_fit_warns_when_rounding_blurs_the_components():
    # Two unit-variance clusters 10,000 apart (see test_api): the rows read for the
    # initialisation give the spread of the stream.
    rng = np.random.default_rng(0)
    X = rng.permutation(np.concatenate([rng.normal(0, 1, 500), rng.normal(1e4, 1, 500)]))
    with pytest.warns(RuntimeWarning, match="float32 rounding") as record:
        jaxgmm.fit_online(KEY, X.astype(np.float32), 2, batch_size=250, init_size=500)
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ordinary clusters: no warning
        ordinary = np.concatenate([rng.normal(size=(500, 2)), rng.normal(size=(500, 2)) + 5])
        ordinary = rng.permutation(ordinary).astype(np.float32)
        jaxgmm.fit_online(KEY, ordinary, 2, batch_size=250, init_size=500)


def test_errors_name_the_argument(blobs):
    state = jaxgmm.online_init(KEY, blobs, 3)
    with pytest.raises(ValueError, match="kappa"):
        jaxgmm.online_update(state, blobs, kappa=0.5)
    with pytest.raises(ValueError, match="kappa"):
        jaxgmm.online_update(state, blobs, kappa=1.5)
    with pytest.raises(ValueError, match="t0"):
        jaxgmm.online_update(state, blobs, t0=-1.0)
    with pytest.raises(ValueError, match="D = 3"):
        jaxgmm.online_update(state, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="sample_weight"):
        jaxgmm.online_update(state, blobs, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="sample_weight"):
        jaxgmm.online_update(state, blobs, sample_weight=-np.ones(len(blobs)))
    with pytest.raises(TypeError, match="OnlineState"):
        jaxgmm.online_update(state.params, blobs)
    late_nan = np.array(blobs).copy()
    late_nan[-1, 0] = np.nan  # past the rows that initialise
    with pytest.raises(ValueError, match="NaN"):
        jaxgmm.fit_online(KEY, late_nan, 3, batch_size=16, init_size=32)
    with pytest.raises(ValueError, match="n_epochs"):
        jaxgmm.fit_online(KEY, iter([blobs]), 3, batch_size=64, n_epochs=2)
    with pytest.raises(ValueError, match="empty"):
        jaxgmm.fit_online(KEY, lambda: iter([]), 3, batch_size=64)
    with pytest.raises(ValueError, match="exceeds"):
        jaxgmm.online_init(KEY, blobs[:2], 3)
    with pytest.raises(TypeError, match="progress"):
        jaxgmm.fit_online(KEY, blobs, 3, batch_size=64, progress=3)
    # Identical rows and no regularisation: the start is singular, as in fit.
    with pytest.raises(ValueError, match="increase reg_covar"):
        jaxgmm.online_init(KEY, np.ones((20, 2)), 2, reg_covar=0.0)
    with pytest.raises(ValueError, match="increase reg_covar"):
        jaxgmm.fit_online(KEY, np.ones((20, 2)), 2, batch_size=8, reg_covar=0.0)
