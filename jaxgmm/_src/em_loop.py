"""The EM loop of one fit: the fused E-step / M-statistics pass over the data, one iteration,
and the loop (``lax.while_loop``, or ``lax.scan`` when it must be reverse-differentiable)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgmm._src import covariances as cov
from jaxgmm._src import products
from jaxgmm._src.chunking import Chunking, chunked_sum, uses_outer_products
from jaxgmm._src.model import GMM


def shifted_exponentials(joint, axis: int):
    """``exp(joint - peak)`` with ``peak`` the maximum over the components' ``axis``, their
    sum over that axis (kept as an axis of length 1) and the log-sum-exp (axis removed); one
    exponential per entry serves the responsibilities and the log-likelihood."""
    peak = jax.lax.stop_gradient(jnp.max(joint, axis=axis, keepdims=True))
    unnormalised = jnp.exp(joint - peak)
    total = jnp.sum(unnormalised, axis=axis, keepdims=True)
    return unnormalised, total, jnp.squeeze(peak + jnp.log(total), axis)


def _responsibilities(joint, w):
    """Weighted responsibilities ``w_n gamma_nk`` (n, K) and ``sum_n w_n log p(x_n)`` from
    the joint log-densities ``joint`` (n, K)."""
    unnormalised, total, per_sample = shifted_exponentials(joint, axis=1)
    resp = unnormalised * (w[:, None] / total)
    return resp, jnp.sum(jnp.where(w > 0, w * per_sample, 0.0))


def em_pass(params_c: GMM, xc, weights, chunk_size: int | Chunking):
    """One fused pass over the data: E-step at ``params_c`` and the M-step statistics.

    Parameters
    ----------
    params_c : GMM
        Parameters in centred coordinates.
    xc : Array, shape (N, D)
        Centred data.
    weights : Array, shape (N,)
    chunk_size : int or Chunking
        Rows per chunk; a ``Chunking`` may also split the rows over devices or ask for
        outer-product features (``chunking.Chunking``).

    Returns
    -------
    moments : Array, shape (K, P)
        ``(gamma * w).T @ features(xc)``, the input of the next M-step.
    total_log_likelihood : Array, shape ()
        ``sum_n w_n log p(x_n)`` at ``params_c``.
    """
    coefficients = cov.log_density_coefficients(params_c)
    covariance_type = params_c.covariance_type
    n_components = coefficients.shape[1]

    def on_chunk_small(x, w):
        # With a handful of features and components, every per-sample quantity is kept as
        # its own (n,) vector: elementwise loops over long contiguous vectors and one reduction
        # per statistic, instead of operations along a tiny minor axis.
        columns = cov.feature_columns(x, covariance_type)
        joint = [
            sum(coefficients[p, k] * column for p, column in enumerate(columns))
            for k in range(n_components)
        ]
        peak = jax.lax.stop_gradient(functools.reduce(jnp.maximum, joint))
        unnormalised = [jnp.exp(j - peak) for j in joint]
        total = sum(unnormalised)
        scale = w / total
        # The responsibilities are u_k * scale: scale whichever side needs fewer new (n,)
        # vectors, the K responsibilities or the feature columns (the last one is ones).
        if len(columns) - 1 <= n_components:
            moments = products.column_sums(unnormalised, [scale * c for c in columns])
        else:
            moments = products.column_sums([u * scale for u in unnormalised], columns)
        per_sample = peak + jnp.log(total)
        return moments, jnp.sum(jnp.where(w > 0, w * per_sample, 0.0))

    def on_chunk(x, w):
        phi = cov.features(x, covariance_type)
        resp, total = _responsibilities(products.times_coefficients(phi, coefficients), w)
        return products.transposed_product(resp, phi), total

    if products.is_small(coefficients.shape[0], n_components):
        return chunked_sum(on_chunk_small, (xc, weights), chunk_size)
    if not (uses_outer_products(chunk_size) and covariance_type in ("full", "tied")):
        return chunked_sum(on_chunk, (xc, weights), chunk_size)

    # Outer-product features (a GPU layout, see ``products.prefers_outer_products``): the
    # three blocks of ``features`` as separate products, so that no (n, P) concatenation
    # is built either, and the second moments folded back to the upper triangle per pass.
    n_features = xc.shape[1]
    n_quad = coefficients.shape[0] - n_features - 1
    quad_coefficients = cov.outer_quadratic_coefficients(coefficients[:n_quad], n_features)
    linear_coefficients, bias = coefficients[n_quad:-1], coefficients[-1]

    def on_chunk_outer(x, w):
        outer = cov.outer_features(x)
        joint = (
            products.times_coefficients(outer, quad_coefficients)
            + products.times_coefficients(x, linear_coefficients)
            + bias
        )
        resp, total = _responsibilities(joint, w)
        sums = (
            products.transposed_product(resp, outer),
            products.transposed_product(resp, x),
            jnp.sum(resp, axis=0),
        )
        return sums, total

    (second, first, counts), total = chunked_sum(on_chunk_outer, (xc, weights), chunk_size)
    second = cov.upper_from_outer(second, n_features)
    return jnp.concatenate([second, first, counts[:, None]], axis=1), total


def _mean_pass(params, xc, weights, total_weight, chunk_size):
    """``em_pass`` with the log-likelihood as a weighted mean per sample."""
    moments, total = em_pass(params, xc, weights, chunk_size)
    return moments, total / total_weight


def _select(flag, new, old):
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), new, old)


class EMState(NamedTuple):
    """The state of the EM loop of one fit (centred coordinates)."""

    params: GMM
    moments: jax.Array  # (K, P): statistics of the last E-step, at ``params``
    mean: jax.Array  # (): mean log-likelihood per sample at ``params``
    n_iter: jax.Array  # (), int: M-steps taken
    converged: jax.Array  # (), bool
    stopped: jax.Array  # (), bool: converged, or a non-finite log-likelihood
    history: jax.Array  # (max_iter,): mean log-likelihood after each M-step, NaN after


def em_start(params0: GMM, xc, weights, max_iter: int, chunk_size: int | Chunking) -> EMState:
    """The state before the first M-step: one E-step at ``params0``."""
    moments0, mean0 = _mean_pass(params0, xc, weights, jnp.sum(weights), chunk_size)
    return start_state(params0, moments0, mean0, max_iter)


def start_state(params0: GMM, moments0, mean0, max_iter: int) -> EMState:
    """The state before the first M-step, from the E-step at ``params0`` (``moments0`` (K, P),
    ``mean0`` the mean log-likelihood per sample)."""
    return EMState(
        params=params0,
        moments=moments0,
        mean=mean0,
        n_iter=jnp.asarray(0),
        converged=jnp.asarray(False),
        stopped=~jnp.isfinite(mean0),
        history=jnp.full((max_iter,), jnp.nan, mean0.dtype),
    )


def em_running(state: EMState, max_iter: int) -> jax.Array:
    """Whether the loop takes another iteration from ``state``."""
    return (~state.stopped) & (state.n_iter < max_iter)


def em_iteration(
    state: EMState,
    xc,
    weights,
    tol,
    reg_covar,
    chunk_size: int | Chunking,
    active=None,
    progress=None,
) -> EMState:
    """One M-step then one E-step (``m_step``, ``em_pass``, then ``advance``)."""
    new_params = m_step(state, reg_covar, active)
    new_moments, new_mean = _mean_pass(new_params, xc, weights, jnp.sum(weights), chunk_size)
    return advance(state, new_params, new_moments, new_mean, tol, progress)


def m_step(state: EMState, reg_covar, active=None) -> GMM:
    """The parameters that maximise ``Q`` given the statistics of the last E-step."""
    return cov.params_from_moments(state.moments, state.params.covariance_type, reg_covar, active)


def advance(state: EMState, new_params: GMM, new_moments, new_mean, tol, progress=None) -> EMState:
    """The state after the M-step to ``new_params`` and the E-step there (``new_moments``,
    ``new_mean``): a non-finite log-likelihood keeps the previous parameters and stops the
    loop; a change below ``tol`` stops it as converged."""
    finite = jnp.isfinite(new_mean)
    converged = finite & (jnp.abs(new_mean - state.mean) < tol)
    n_iter = state.n_iter + finite.astype(state.n_iter.dtype)
    if progress is not None:
        jax.debug.callback(progress, n_iter, new_mean)
    return EMState(
        params=_select(finite, new_params, state.params),
        moments=jnp.where(finite, new_moments, state.moments),
        mean=jnp.where(finite, new_mean, state.mean),
        n_iter=n_iter,
        converged=converged,
        stopped=converged | ~finite,
        history=jnp.where(finite, state.history.at[state.n_iter].set(new_mean), state.history),
    )


def run_em(
    params0: GMM,
    xc,
    weights,
    tol,
    reg_covar,
    max_iter: int,
    chunk_size: int | Chunking,
    progress=None,
    active=None,
):
    """EM from ``params0`` (centred coordinates) until the mean log-likelihood changes by
    less than ``tol`` or ``max_iter`` M-steps; a non-finite log-likelihood stops the loop and
    keeps the last finite parameters. ``progress``, when given, is called from the loop with
    ``(n_iter, mean_log_likelihood)`` after every iteration (``jax.debug.callback``).
    ``active`` (shape (K,), bool) marks the components that take part; the others are
    padding with weight zero (used to fit several K in one compiled program).

    Returns
    -------
    params, total_log_likelihood, n_iter, converged, history
    """
    state = jax.lax.while_loop(
        lambda state: em_running(state, max_iter),
        lambda state: em_iteration(
            state, xc, weights, tol, reg_covar, chunk_size, active, progress
        ),
        em_start(params0, xc, weights, max_iter, chunk_size),
    )
    return em_outputs(state, weights)


def em_outputs(state: EMState, weights):
    """``(params, total_log_likelihood, n_iter, converged, history)`` of a finished loop."""
    total = state.mean * jnp.sum(weights)
    return state.params, total, state.n_iter, state.converged, state.history


def run_em_unrolled(
    params0: GMM,
    xc,
    weights,
    tol,
    reg_covar,
    max_iter: int,
    chunk_size: int | Chunking,
    progress=None,
    active=None,
):
    """Exactly ``max_iter`` EM iterations in a ``lax.scan`` (reverse-differentiable, each
    iteration rematerialised in the backward pass); same outputs as ``run_em``."""
    total_weight = jnp.sum(weights)
    covariance_type = params0.covariance_type

    def evaluate(params):
        return _mean_pass(params, xc, weights, total_weight, chunk_size)

    @jax.checkpoint
    def iteration(carry, index):
        params, moments, mean = carry
        new_params = cov.params_from_moments(moments, covariance_type, reg_covar, active)
        new_moments, new_mean = evaluate(new_params)
        if progress is not None:
            jax.debug.callback(progress, index + 1, new_mean)
        return (new_params, new_moments, new_mean), (new_mean, jnp.abs(new_mean - mean) < tol)

    moments0, mean0 = evaluate(params0)
    (params, _, mean), (history, small_change) = jax.lax.scan(
        iteration, (params0, moments0, mean0), jnp.arange(max_iter)
    )
    converged = small_change[-1] & jnp.isfinite(mean)
    return params, mean * total_weight, jnp.asarray(max_iter), converged, history
