"""Online (stepwise) EM for single-pass streams: ``online_init`` / ``online_update`` over a
state pytree, and the convenience driver ``fit_online``.

Stepwise EM (Sato & Ishii 2000; Cappé & Moulines 2009; Liang & Klein 2009) keeps a running
average ``s`` of the per-sample sufficient statistics ``E[gamma_k(x) phi(x)]`` and, after every
minibatch ``B_t``, moves it toward the minibatch average and takes an M-step::

    s_t     = (1 - rho_t) s_{t-1} + rho_t * mean_{x in B_t} gamma(x; theta_{t-1}) phi(x)
    theta_t = M(s_t),        rho_t = (t + t0) ** (-kappa),   kappa in (0.5, 1].
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import covariances as cov
from jaxgmm._src import products, rounding, validation
from jaxgmm._src.chunking import fit_chunk_size
from jaxgmm._src.em_loop import em_pass
from jaxgmm._src.fitting import failed_start
from jaxgmm._src.initialization import initialize_centered
from jaxgmm._src.model import GMM, FitResult, all_finite_leaves
from jaxgmm._src.streaming import StreamSource, as_rows, compute_dtype, fixed_batches, stream_pass


class OnlineState(NamedTuple):
    """State of online EM (a pytree; ``K`` components, ``D`` features, ``P`` statistics).

    Attributes
    ----------
    params : GMM
        The current mixture, in data coordinates: the M-step of ``statistics``.
    statistics : Array, shape (K, P)
        Running average of the per-sample sufficient statistics ``gamma_k(x) phi(x - center)``
        (second moments, first moments, responsibility), ``P = M + D + 1`` as in ``fit``.
    center : Array, shape (D,)
        Fixed centring point (the mean of the initial batch), which keeps float32 accurate.
    step : Array, shape (), int
        Number of updates taken.
    log_likelihood : Array, shape ()
        Mean per-sample log-likelihood of the last batch under the parameters *before* its
        update (a held-out, "prequential" estimate); for the initial state, that of the
        initial batch under the initial guess.
    """

    params: GMM
    statistics: jax.Array
    center: jax.Array
    step: jax.Array
    log_likelihood: jax.Array


def _chunk_size(n_rows: int, n_features: int, K: int, covariance_type: str, chunk_size):
    if chunk_size is not None:
        return validation.check_positive_int(chunk_size, "chunk_size")
    return fit_chunk_size(n_rows, n_features, K, covariance_type)


def _batch_statistics(params_c: GMM, xc, weights, chunk_size: int):
    """Weighted mean over the batch of ``gamma(x) phi(x)`` and the mean log-likelihood."""
    moments, total = em_pass(params_c, xc, weights, chunk_size)
    weight = jnp.sum(weights)
    safe = jnp.where(weight > 0, weight, 1.0)
    return moments / safe, total / safe


def _check_step_size(kappa, t0) -> None:
    if validation.is_concrete(kappa) and jnp.ndim(kappa) == 0:
        value = float(np.asarray(kappa))
        if not 0.5 < value <= 1.0:
            raise ValueError(f"kappa must be in (0.5, 1]; got {value}")
    if validation.is_concrete(t0) and jnp.ndim(t0) == 0:
        value = float(np.asarray(t0))
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"t0 must be finite and >= 0; got {value}")


def online_init(
    key,
    X,
    K: int,
    *,
    covariance_type: str = "full",
    init: str = "kmeans++",
    reg_covar=1e-6,
    init_params: GMM | None = None,
    sample_weight=None,
    chunk_size: int | None = None,
) -> OnlineState:
    """Initial state of online EM from a first batch of data.

    The initial guess comes from ``init`` on ``X`` (or is ``init_params``); the statistics are
    those of ``X`` under that guess (an E-step), and the state's parameters their M-step, so
    the state starts one batch EM iteration past the guess. ``X`` is centred on its mean,
    which becomes the state's fixed ``center``.

    Parameters
    ----------
    key : PRNG key
    X : Array, shape (n, D)
        The initial batch, e.g. the first few thousand rows of the stream.
    K : int
        Number of components (static).
    covariance_type : {"full", "diag", "spherical", "tied"}
    init : {"kmeans++", "kmeans", "random", "random_from_data"}
        Ignored when ``init_params`` is given.
    reg_covar : float
        Non-negative value added to the diagonal of every covariance.
    init_params : GMM, optional
        Initial guess in data coordinates.
    sample_weight : Array, shape (n,), optional
        Non-negative weights; zero-weight rows (padding) are ignored.
    chunk_size : int, optional
        Rows per chunk of the per-sample intermediates (static).

    Returns
    -------
    OnlineState
        With ``step = 0``.

    Raises
    ------
    ValueError
        In an eager call whose initial state is not finite (as ``fit``: singular covariances
        or values too large for the dtype); under ``jit`` its NaNs report the failure.

    Examples
    --------
    >>> import jax
    >>> from jaxgmm import online_init
    >>> X = jax.random.normal(jax.random.key(0), (500, 2))
    >>> state = online_init(jax.random.key(1), X, 3)
    >>> state.statistics.shape, int(state.step)
    ((3, 6), 0)
    """
    validation.check_key(key)
    X = validation.as_data(X, "X")
    n_rows, n_features = X.shape
    K = validation.check_n_components(K, n_rows)
    validation.check_covariance_type(covariance_type)
    validation.check_init(init)
    validation.check_reg_covar(reg_covar, X.dtype)
    weights = validation.as_sample_weight(sample_weight, X)
    dtype = X.dtype
    reg_covar = jnp.asarray(reg_covar, dtype)
    chunk_size = _chunk_size(n_rows, n_features, K, covariance_type, chunk_size)
    center = products.weighted_mean(X, weights)
    xc = jnp.where(weights[:, None] > 0, X - center, 0.0)
    if init_params is None:
        guess = initialize_centered(
            key, xc, weights, K, covariance_type, init, reg_covar, chunk_size
        )
    else:
        guess = validation.check_init_params(init_params, n_features, K, covariance_type, dtype)
        guess = cov.shift_means(guess, -center)
    statistics, mean_ll = _batch_statistics(guess, xc, weights, chunk_size)
    params_c = cov.params_from_moments(statistics, covariance_type, reg_covar)
    state = OnlineState(
        params=cov.shift_means(params_c, center),
        statistics=statistics,
        center=center,
        step=jnp.zeros((), jnp.int32),
        log_likelihood=mean_ll,
    )
    if validation.is_concrete(mean_ll):  # an eager call (under jit, NaNs report the failure)
        _check_started(state)
    return state


def _check_started(state: OnlineState) -> None:
    """Raise the failed-start error when an initial state is not finite."""
    leaves = [state.log_likelihood, *jax.tree.leaves(state.params)]
    if not all(validation.all_finite(leaf) for leaf in leaves):
        raise ValueError(failed_start(state.statistics.dtype))


def _state_from_params(params: GMM, reg_covar) -> OnlineState:
    """An online state that continues from a fitted mixture (the estimator's ``partial_fit``
    after ``fit``), in the dtype of ``params.weights``.

    ``statistics`` are the mixture's own expected sufficient statistics,
    ``pi_k E_k[phi(x - center)]``, with ``reg_covar`` taken off the covariances (the M-step
    adds it back), so that their M-step returns ``params`` (up to the ``10 eps`` floor of the
    counts); ``center`` is the mixture mean; ``step = 0``; ``log_likelihood`` is NaN (no
    batch has been seen).
    """
    covariance_type = params.covariance_type
    dtype = validation.compute_dtype(jnp.result_type(params.weights))
    weights = jnp.asarray(params.weights, dtype)
    means = jnp.asarray(params.means, dtype)
    covariances = jnp.asarray(params.covariances, dtype)
    reg_covar = jnp.asarray(reg_covar, dtype)
    n_components, n_features = means.shape
    center = jnp.sum(weights[:, None] * means, axis=0)
    mc = means - center
    if covariance_type in ("full", "tied"):  # tied: one (D, D) matrix, broadcast over k
        base = covariances - reg_covar * jnp.eye(n_features, dtype=dtype)
        second = base + mc[:, :, None] * mc[:, None, :]
        i, j = np.triu_indices(n_features)  # the layout of ``covariances.features``
        quad = second[:, i, j]
    elif covariance_type == "diag":
        quad = covariances - reg_covar + mc * mc
    else:
        quad = (covariances - reg_covar)[:, None] + mc * mc
    ones = jnp.ones((n_components, 1), dtype)
    statistics = weights[:, None] * jnp.concatenate([quad, mc, ones], axis=1)
    return OnlineState(
        params=GMM(weights, means, covariances, covariance_type),
        statistics=statistics,
        center=center,
        step=jnp.zeros((), jnp.int32),
        log_likelihood=jnp.asarray(jnp.nan, dtype),
    )


def online_update(
    state: OnlineState,
    X,
    *,
    sample_weight=None,
    kappa=0.6,
    t0=2.0,
    reg_covar=1e-6,
    chunk_size: int | None = None,
) -> OnlineState:
    """One stepwise-EM update from a minibatch.

    ``rho = (step + 1 + t0) ** (-kappa)``, scaled by ``min(1, mean(sample_weight))``;
    ``statistics <- (1 - rho) statistics + rho * batch statistics`` (E-step at the current
    parameters), then ``params`` is their M-step. A batch whose log-likelihood or new
    parameters are not finite leaves ``params`` and ``statistics`` unchanged (its
    ``log_likelihood`` is still recorded, so the caller can stop).

    Pure and jittable: ``jax.jit(online_update, static_argnames="chunk_size")`` compiles once
    per batch shape; ``kappa``, ``t0``, ``reg_covar`` and the weights are traced.

    Parameters
    ----------
    state : OnlineState
    X : Array, shape (n, D)
        A minibatch; with a fixed ``n`` (pad the last batch with zero-weight rows), nothing
        recompiles.
    sample_weight : Array, shape (n,), optional
        Non-negative weights (default ones). Zero-weight rows are ignored; the step size is
        scaled by the mean weight (at most 1), so a padded batch moves the statistics in
        proportion to its real rows.
    kappa : float
        Decay exponent of the step size, in (0.5, 1] (Robbins-Monro conditions).
        Smaller forgets the start faster; 1 averages all batches equally when ``t0 = 0``.
    t0 : float
        Non-negative offset of the step count; larger damps the first steps.
    reg_covar : float
        Non-negative value added to the diagonal of every covariance.
    chunk_size : int, optional
        Rows per chunk of the per-sample intermediates (static).

    Returns
    -------
    OnlineState
        With ``step`` increased by one.

    Notes
    -----
    With ``kappa = 1`` and ``t0 = 0`` the first update has ``rho = 1`` and is exactly one
    batch EM iteration on ``X`` from ``state.params``; stationary streams in random order are
    needed for convergence toward the batch maximum-likelihood solution.

    Examples
    --------
    >>> import jax
    >>> from jaxgmm import online_init, online_update
    >>> keys = jax.random.split(jax.random.key(0), 4)
    >>> state = online_init(keys[0], jax.random.normal(keys[1], (256, 2)), 2)
    >>> update = jax.jit(online_update)
    >>> for k in keys[2:]:
    ...     state = update(state, jax.random.normal(k, (128, 2)))
    >>> int(state.step), state.params.means.shape
    (2, (2, 2))
    """
    if not isinstance(state, OnlineState):
        raise TypeError(
            f"state must be a jaxgmm.OnlineState (from online_init); got {type(state).__name__}"
        )
    params = state.params
    if not isinstance(params, GMM):
        raise TypeError(f"state.params must be a jaxgmm.GMM; got {type(params).__name__}")
    X = validation.as_data(X, "X")
    n_rows, n_features = X.shape
    if n_features != params.n_features:
        raise ValueError(
            f"X has D = {n_features} features but the state has D = {params.n_features}"
        )
    _check_step_size(kappa, t0)
    dtype = state.statistics.dtype
    validation.check_reg_covar(reg_covar, dtype)
    X = X.astype(dtype)
    weights = validation.as_sample_weight(sample_weight, X)
    covariance_type = params.covariance_type
    chunk_size = _chunk_size(n_rows, n_features, params.n_components, covariance_type, chunk_size)

    params_c = cov.shift_means(params, -state.center)
    xc = jnp.where(weights[:, None] > 0, X - state.center, 0.0)
    batch, mean_ll = _batch_statistics(params_c, xc, weights, chunk_size)
    step = state.step + 1
    rho = (step.astype(dtype) + jnp.asarray(t0, dtype)) ** (-jnp.asarray(kappa, dtype))
    rho = rho * jnp.minimum(jnp.mean(weights), 1.0)
    statistics = (1.0 - rho) * state.statistics + rho * batch
    new_params = cov.params_from_moments(statistics, covariance_type, jnp.asarray(reg_covar, dtype))
    new_params = cov.shift_means(new_params, state.center)
    finite = jnp.isfinite(mean_ll) & all_finite_leaves(new_params)
    keep = functools.partial(jnp.where, finite)
    return OnlineState(
        params=jax.tree.map(keep, new_params, params),
        statistics=keep(statistics, state.statistics),
        center=state.center,
        step=step,
        log_likelihood=mean_ll,
    )


@functools.cache
def _compiled():
    """``(online_init, online_update)`` under ``jax.jit``, made once (a function, so that the
    doctests of the wrapped functions are not collected twice)."""
    init = jax.jit(online_init, static_argnames=("K", "covariance_type", "init", "chunk_size"))
    update = jax.jit(online_update, static_argnames=("chunk_size",))
    return init, update


def fit_online(
    key,
    source,
    K: int,
    *,
    batch_size: int,
    covariance_type: str = "full",
    init: str = "kmeans++",
    kappa=0.6,
    t0=2.0,
    reg_covar=1e-6,
    init_params: GMM | None = None,
    init_size: int | None = None,
    n_epochs: int = 1,
    final_pass: bool = True,
    chunk_size: int | None = None,
    progress: Callable | None = None,
    verbose: bool = False,
) -> FitResult:
    """Fit a Gaussian mixture by online (stepwise) EM, reading the data once.

    The first ``init_size`` rows initialise (``online_init``); then every
    ``(batch_size, D)`` minibatch of the stream, those rows included, is one
    ``online_update`` (compiled once; the last batch is padded with zero-weight rows).

    Parameters
    ----------
    key : PRNG key
    source : array-like of shape (N, D) or (N,), callable, or iterator
        An array (a ``numpy.memmap`` included), a zero-argument callable returning a fresh
        iterator of ``(n, D)`` chunks, or an iterator of chunks (read once; then
        ``final_pass`` is skipped and ``n_epochs`` must be 1). The rows should come in random
        order (stepwise EM assumes a stationary stream).
    K : int
        Number of components.
    batch_size : int
        Rows per update. Larger batches give less noisy steps; a few hundred to a few
        thousand rows suit most problems.
    covariance_type : {"full", "diag", "spherical", "tied"}
    init : {"kmeans++", "kmeans", "random", "random_from_data"}
        Applied to the first ``init_size`` rows; ignored when ``init_params`` is given.
    kappa, t0 : float
        Step size ``rho_t = (t + t0) ** (-kappa)``, ``kappa`` in (0.5, 1], ``t0 >= 0``.
    reg_covar : float
        Non-negative value added to the diagonal of every covariance.
    init_params : GMM, optional
        Initial guess.
    init_size : int, optional
        Rows used to initialise; default ``max(batch_size, 10_000, 100 * K)`` (at most all).
    n_epochs : int
        Passes over the data (1 for a true single-pass stream).
    final_pass : bool
        Read the source once more to compute the exact total log-likelihood at the returned
        parameters (needs a re-iterable source). Otherwise ``log_likelihood`` is the sum of the
        prequential batch log-likelihoods (each under the parameters before that batch's
        update), an estimate that trails the final parameters.
    chunk_size : int, optional
        Rows per chunk of the per-sample intermediates inside a batch.
    progress : callable, optional
        Called as ``progress(n_updates, batch_mean_log_likelihood)`` after every update.
    verbose : bool
        Print one line per epoch to stderr.

    Returns
    -------
    FitResult
        ``params``; ``log_likelihood`` (total, see ``final_pass``); ``n_iter`` = number of
        updates; ``history``, shape (n_iter,) = the prequential mean log-likelihood of each
        batch; ``converged`` = every update was finite (online EM has no stopping test: it
        runs to the end of the stream; a non-finite batch stops it with ``converged=False``
        and keeps the last finite parameters); ``all_log_likelihoods``, shape (1,).

    Raises
    ------
    ValueError
        When the initial state is not finite (as ``fit``).

    Notes
    -----
    The loop over batches is a Python loop (the data arrive from outside JAX); each update is
    one compiled call. A float32 fit warns (``RuntimeWarning``) when rounding can blur its
    components, as ``fit`` does, with the spread of the data taken from the initialisation
    rows. For a state-level API under your own loop or ``lax.scan``, use
    ``online_init`` and ``online_update``.

    Examples
    --------
    >>> import numpy as np, jax
    >>> from jaxgmm import fit_online
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)) + 6.0])
    >>> rng.shuffle(X)
    >>> result = fit_online(jax.random.key(0), X, 2, batch_size=200, init_size=400)
    >>> sorted(round(float(w), 1) for w in result.params.weights)
    [0.5, 0.5]
    """
    validation.check_key(key)
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    K = validation.check_n_components(K, sys.maxsize)
    validation.check_covariance_type(covariance_type)
    validation.check_init(init)
    validation.check_reg_covar(reg_covar)
    _check_step_size(kappa, t0)
    n_epochs = validation.check_positive_int(n_epochs, "n_epochs")
    validation.check_progress(progress)
    if init_size is None:
        init_size = max(batch_size, 10_000, 100 * K)
    else:
        init_size = validation.check_positive_int(init_size, "init_size")
    stream = StreamSource(source, allow_once=True)
    if not stream.reiterable:
        if n_epochs > 1:
            raise ValueError("n_epochs > 1 needs a re-iterable source (array-like or callable)")
        final_pass = False

    # Peek at the first chunk for D and the dtype, then chain it back.
    chunks = stream.chunks(batch_size)
    first = None
    for chunk in chunks:
        first = as_rows(chunk, None, stream.name)
        if first.shape[0]:
            break
    if first is None or first.shape[0] == 0:
        raise ValueError(f"{stream.name} is empty: it yielded no rows")
    n_features = first.shape[1]
    dtype = compute_dtype(first.dtype)
    validation.check_reg_covar(reg_covar, dtype)
    chunk_size = _chunk_size(batch_size, n_features, K, covariance_type, chunk_size)

    def epoch_batches(epoch):
        if epoch == 0:
            replay = _ReplaySource(stream.name, first, chunks)
            return fixed_batches(replay, batch_size, n_features, dtype)
        return fixed_batches(stream, batch_size, n_features, dtype)

    batches = epoch_batches(0)
    held = []  # batches read for the initialisation, replayed as updates
    held_rows = 0
    for batch, n_valid in batches:
        held.append((batch, n_valid))
        held_rows += n_valid
        if held_rows >= init_size:
            break
    first_rows = np.concatenate([b[:n] for b, n in held])[:init_size]
    if not np.all(np.isfinite(first_rows)):
        raise ValueError(f"{stream.name} contains NaN or infinite values")
    if init_params is not None:
        validation.check_params(init_params, n_features, "init_params", K=K)
    init_jit, update_jit = _compiled()
    state = init_jit(
        key,
        jnp.asarray(first_rows),
        K,
        covariance_type=covariance_type,
        init=init,
        reg_covar=jnp.asarray(reg_covar, dtype),
        init_params=init_params,
        chunk_size=_chunk_size(first_rows.shape[0], n_features, K, covariance_type, None),
    )
    _check_started(state)

    full_weights = jnp.ones((batch_size,), dtype)
    kappa = jnp.asarray(kappa, dtype)
    t0 = jnp.asarray(t0, dtype)
    reg = jnp.asarray(reg_covar, dtype)
    history = []
    totals = []
    finite = True
    for epoch in range(n_epochs):
        start = time.perf_counter()
        source_batches = _chain(held, batches) if epoch == 0 else epoch_batches(epoch)
        pending = None
        for batch, n_valid in source_batches:
            if not np.all(np.isfinite(batch[:n_valid])):
                raise ValueError(f"{stream.name} contains NaN or infinite values")
            if n_valid == batch_size:
                weights = full_weights
            else:
                weights = jnp.asarray(np.arange(batch_size) < n_valid, dtype)
            state = update_jit(
                state,
                jnp.asarray(batch),
                sample_weight=weights,
                kappa=kappa,
                t0=t0,
                reg_covar=reg,
                chunk_size=chunk_size,
            )
            if pending is not None:  # keep at most two batches in flight
                pending_ll, pending_n = pending
                value = float(pending_ll)
                history.append(value)
                totals.append(value * pending_n)
                if progress is not None:
                    progress(len(history), value)
                if not np.isfinite(value):
                    finite = False
                    break
            pending = (state.log_likelihood, n_valid)
        if pending is not None and finite:
            value = float(pending[0])
            history.append(value)
            totals.append(value * pending[1])
            if progress is not None:
                progress(len(history), value)
            finite = bool(np.isfinite(value))
        if verbose:
            seconds = time.perf_counter() - start
            print(
                f"fit_online epoch {epoch + 1}: {len(history)} updates, last batch mean "
                f"log-likelihood {history[-1]:.6g} ({seconds:.2f} s)",
                file=sys.stderr,
            )
        if not finite:
            break
    del held

    params = state.params
    # The rows read for the initialisation stand for the stream's spread.
    rounding.check_spread(params, rounding.sample_spread(first_rows), first_rows.shape[0])
    if final_pass and finite:
        params_c = cov.shift_means(params, -state.center)
        _, total, _ = stream_pass(
            stream, params_c, state.center, batch_size, n_features, chunk_size
        )
    else:
        total = jnp.asarray(sum(totals), dtype)
    return FitResult(
        params=params,
        log_likelihood=total,
        n_iter=jnp.asarray(len(history)),
        converged=jnp.asarray(finite),
        history=jnp.asarray(np.asarray(history, dtype)),
        all_log_likelihoods=jnp.asarray(total)[None],
    )


def _chain(held, rest):
    yield from held
    yield from rest


class _ReplaySource:
    """A one-shot source that yields an already-read first chunk, then the rest."""

    def __init__(self, name, first, rest):
        self.name = name
        self._first = first
        self._rest = rest

    def chunks(self, rows_per_chunk):
        yield self._first
        yield from self._rest
