"""Gradients through ``fit``: implicit differentiation at the EM fixed point.

EM stops at a fixed point ``theta* = T(theta*; X, w)`` of one EM iteration ``T``. For a loss
that depends on ``theta*`` (and on the log-likelihood at ``theta*``), the implicit function
theorem gives the gradient with respect to the data without differentiating the loop:

    v = (I - dT/dtheta)^-T  g          (the adjoint system)
    dL/dX = v' dT/dX (+ the direct dependence of the log-likelihood on X)

``dT/dtheta`` is the EM rate matrix: its spectral radius is the fraction of missing
information, below one at a strict local maximum, so the Neumann series
``v = g + J' g + J'^2 g + ...`` converges (at the speed EM itself converged). Each term costs
one vector-Jacobian product of one EM iteration.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp

from jaxgmm._src import covariances as cov
from jaxgmm._src import products
from jaxgmm._src.chunking import Chunking
from jaxgmm._src.em_loop import em_pass
from jaxgmm._src.model import GMM


def em_step(params: GMM, X, weights, reg_covar, chunk_size: int | Chunking) -> GMM:
    """One EM iteration ``T(params; X, w)``: E-step at ``params``, then the M-step.

    Parameters
    ----------
    params : GMM
    X : Array, shape (N, D)
    weights : Array, shape (N,)
    reg_covar : Array, shape ()
    chunk_size : int

    Returns
    -------
    GMM
        Differentiable with respect to every argument.
    """
    center = products.weighted_mean(X, weights)
    moments, _ = em_pass(cov.shift_means(params, -center), X - center, weights, chunk_size)
    new = cov.params_from_moments(moments, params.covariance_type, reg_covar)
    return cov.shift_means(new, center)


def total_log_likelihood(params: GMM, X, weights, chunk_size: int | Chunking):
    """``sum_n w_n log p(x_n)``, shape (); differentiable."""
    center = products.weighted_mean(X, weights)
    _, total = em_pass(cov.shift_means(params, -center), X - center, weights, chunk_size)
    return total


def _tree_norm(tree):
    return jnp.sqrt(sum(jnp.sum(leaf * leaf) for leaf in jax.tree.leaves(tree)))


def _iterate_to_fixed_point(update, start, tol, max_iter: int, size=None):
    """``x <- update(x)`` from ``start`` until a step changes ``x`` by at most ``tol`` relative
    to ``size(x)`` (default: the norm of ``x``), or ``max_iter`` steps; returns
    ``(x, settled)``, ``settled`` (bool) whether the last step was within ``tol`` (or not
    finite)."""
    size = _tree_norm if size is None else size

    def keep_going(state):
        _, change, count = state
        return (count < max_iter) & (change > tol)

    def step(state):
        current, _, count = state
        new = update(current)
        change = _tree_norm(jax.tree.map(jnp.subtract, new, current))
        return new, change / jnp.maximum(size(new), jnp.finfo(tol.dtype).tiny), count + 1

    start_state = (start, jnp.asarray(jnp.inf, tol.dtype), 0)
    x, change, _ = jax.lax.while_loop(keep_going, step, start_state)
    # A non-finite step (a fit that failed: NaN parameters) is not a slow fixed point; its
    # gradient is NaN, which says so itself.
    return x, (change <= tol) | ~jnp.isfinite(change)


def solve_adjoint(vjp_theta, rhs, tol, max_iter: int):
    """Solve ``v = rhs + J' v`` by the Neumann series, stopping when the update is below
    ``tol`` relative to ``|v|`` or after ``max_iter`` terms.

    Parameters
    ----------
    vjp_theta : callable
        ``u -> J' u`` (a vector-Jacobian product of one EM iteration).
    rhs : pytree
    tol : Array, shape ()
    max_iter : int

    Returns
    -------
    v : pytree
    settled : Array, shape (), bool
        Whether the last term was within ``tol``.
    """
    return _iterate_to_fixed_point(
        lambda v: jax.tree.map(jnp.add, rhs, vjp_theta(v)), rhs, tol, max_iter
    )


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def attach_implicit_gradients(
    chunk_size, max_iter, params, log_likelihood, X, weights, reg_covar, tol
):
    """Identity on ``(params, log_likelihood)``; its VJP is the implicit-function gradient
    of the EM fixed point with respect to ``X``, ``weights`` and ``reg_covar``."""
    return params, log_likelihood


def _attach_fwd(chunk_size, max_iter, params, log_likelihood, X, weights, reg_covar, tol):
    out = (params, log_likelihood)
    return out, (params, X, weights, reg_covar, tol)


def polish_fixed_point(
    params: GMM, X, weights, reg_covar, chunk_size: int | Chunking, tol, max_iter: int
):
    """EM iterations from ``params`` until one changes the parameters by less than ``tol``
    relative to their size, or ``max_iter`` iterations: the fixed point that a fit stopped by
    its own ``tol`` (a test on the log-likelihood) may be short of. The size is taken with the
    means relative to the data mean, so that translating the data changes nothing. Returns
    ``(params, settled)`` as ``_iterate_to_fixed_point``."""
    center = jax.lax.stop_gradient(products.weighted_mean(X, weights))
    return _iterate_to_fixed_point(
        lambda p: em_step(p, X, weights, reg_covar, chunk_size),
        params,
        tol,
        max_iter,
        size=lambda p: _tree_norm(cov.shift_means(p, -center)),
    )


def _warn_if_unsettled(polished, solved, max_iter: int) -> None:
    """Host side of the backward pass: warn when the polishing or the adjoint series stopped
    at its cap (``polished``, ``solved``: bool scalars, already reduced over any ``vmap``)."""
    if not (polished and solved):
        part = "EM" if not polished else "the adjoint series"
        warnings.warn(
            f"the implicit gradient of fit may be inaccurate: {part} had not settled within "
            f"adjoint_tol after adjoint_max_iter = {max_iter} iterations. EM converges slowly "
            "near this fit (components that overlap heavily, or more components than the "
            "data support): raise adjoint_max_iter, or fit fewer components.",
            RuntimeWarning,
            stacklevel=1,  # called back from the compiled backward pass: no user frame
        )


def _report_unsettled(polished, solved, max_iter: int):
    """One host callback with ``_warn_if_unsettled``; under ``vmap`` the flags are first
    reduced over the batch (``jnp.all``), so a batch of G fits calls back once, not G times.
    Returns ``polished & solved``."""

    @jax.custom_batching.custom_vmap
    def report(polished, solved):
        jax.debug.callback(partial(_warn_if_unsettled, max_iter=max_iter), polished, solved)
        return polished & solved

    @report.def_vmap
    def report_batched(axis_size, in_batched, polished, solved):
        del axis_size, in_batched
        return report(jnp.all(polished), jnp.all(solved)), False

    return report(polished, solved)


def _attach_bwd(chunk_size, max_iter, residuals, cotangents):
    params, X, weights, reg_covar, tol = residuals
    g_params, g_ll = cotangents
    # The implicit function theorem holds at the fixed point; the default stopping rule
    # (a change of the mean log-likelihood below 1e-3) can leave a slowly converging fit
    # visibly short of it, so the gradient is taken at the polished fixed point.
    params, polished = polish_fixed_point(params, X, weights, reg_covar, chunk_size, tol, max_iter)
    _, ll_vjp = jax.vjp(
        lambda p, x, w: total_log_likelihood(p, x, w, chunk_size), params, X, weights
    )
    ll_params, ll_X, ll_w = ll_vjp(g_ll)
    # At the (polished) fixed point the log-likelihood's derivative in the parameters is zero
    # for reg_covar=0 and of the order of reg_covar otherwise; it is kept, so the gradient
    # is that of the regularised fixed point.
    rhs = jax.tree.map(jnp.add, g_params, ll_params)
    _, step_vjp = jax.vjp(lambda p: em_step(p, X, weights, reg_covar, chunk_size), params)
    v, solved = solve_adjoint(lambda u: step_vjp(u)[0], rhs, tol, max_iter)
    _report_unsettled(polished, solved, max_iter)
    _, data_vjp = jax.vjp(
        lambda x, w, r: em_step(params, x, w, r, chunk_size), X, weights, reg_covar
    )
    g_X, g_w, g_reg = data_vjp(v)
    zeros = jax.tree.map(jnp.zeros_like, params)
    return (zeros, jnp.zeros_like(g_ll), g_X + ll_X, g_w + ll_w, g_reg, jnp.zeros_like(tol))


attach_implicit_gradients.defvjp(_attach_fwd, _attach_bwd)
