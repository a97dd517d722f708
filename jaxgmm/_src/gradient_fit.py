"""``fit_gradient``: a mixture fitted by (minibatch) gradient ascent with any optax optimiser."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from jaxgmm._src import products, validation
from jaxgmm._src.em import log_prob
from jaxgmm._src.fitting import failed_start
from jaxgmm._src.initialization import initialize_centered
from jaxgmm._src.model import GMM, FitResult, all_finite_leaves
from jaxgmm._src.unconstrained import UnconstrainedGMM, from_unconstrained, to_unconstrained

DEFAULT_LEARNING_RATE = 0.05
DEFAULT_FINAL_FRACTION = 0.01


@functools.lru_cache(maxsize=64)
def default_optimizer(n_steps: int) -> optax.GradientTransformation:
    """Adam with a cosine learning-rate decay from 0.05 to 0.0005 over ``n_steps``.

    Cached, so that repeated fits with the same ``n_steps`` reuse one compiled program.
    """
    schedule = optax.cosine_decay_schedule(
        DEFAULT_LEARNING_RATE, n_steps, alpha=DEFAULT_FINAL_FRACTION
    )
    return optax.adam(schedule)


def _standardising_frame(X, weights):
    """The weighted data mean ``(D,)`` and one overall scale ``()``: the root mean squared
    distance to the mean per feature (1 when all samples coincide)."""
    total = jnp.sum(weights)
    center = products.weighted_mean(X, weights)
    spread = jnp.sum(weights[:, None] * (X - center) ** 2) / (total * X.shape[1])
    scale = jnp.where(spread > 0, jnp.sqrt(spread), 1.0)
    return center, scale


def _to_data_coordinates(u: UnconstrainedGMM, center, scale, reg_covar) -> GMM:
    """The mixture in data coordinates from unconstrained parameters of standardised data,
    with ``reg_covar`` added to the covariance diagonal (in data units)."""
    params = from_unconstrained(u)
    covariances = params.covariances * scale**2
    if params.covariance_type in ("full", "tied"):
        eye = jnp.eye(params.means.shape[-1], dtype=covariances.dtype)
        covariances = covariances + reg_covar * eye
    else:
        covariances = covariances + reg_covar
    return params.replace(means=center + scale * params.means, covariances=covariances)


def _without_reg(covariances, covariance_type: str, reg_covar):
    """``covariances`` minus ``reg_covar`` on the diagonal where that stays positive definite
    (so that mapping back, which adds ``reg_covar``, returns the start exactly); unchanged
    where it would not."""
    if covariance_type in ("full", "tied"):
        eye = jnp.eye(covariances.shape[-1], dtype=covariances.dtype)
        reduced = covariances - reg_covar * eye
        chol = jnp.linalg.cholesky(reduced)
        diagonal = jnp.diagonal(chol, axis1=-2, axis2=-1)
        ok = jnp.all(jnp.isfinite(chol), axis=(-2, -1)) & jnp.all(diagonal > 0, axis=-1)
        return jnp.where(ok[..., None, None], reduced, covariances)
    reduced = covariances - reg_covar
    return jnp.where(reduced > 0, reduced, covariances)


def _weighted_mean_log_prob(u, X, weights, center, scale, reg_covar):
    params = _to_data_coordinates(u, center, scale, reg_covar)
    per_sample = log_prob(params, X)
    return jnp.sum(jnp.where(weights > 0, weights * per_sample, 0.0)) / jnp.sum(weights)


def _fit_gradient_core(
    key,
    X,
    weights,
    reg_covar,
    tol,
    start,
    *,
    n_components,
    covariance_type,
    init,
    n_steps,
    batch_size,
    optimizer,
):
    dtype = X.dtype
    init_key, batch_key = jax.random.split(key)
    center, scale = _standardising_frame(X, weights)
    if start is None:
        start = initialize_centered(
            init_key, X - center, weights, n_components, covariance_type, init, reg_covar
        )
        start = start.replace(means=start.means + center)
    u0 = to_unconstrained(
        start.replace(
            means=(start.means - center) / scale,
            covariances=_without_reg(start.covariances, covariance_type, reg_covar) / scale**2,
        )
    )

    def objective(u, xb, wb):
        return -_weighted_mean_log_prob(u, xb, wb, center, scale, reg_covar)

    value_and_grad = jax.value_and_grad(objective)

    if batch_size is not None:
        # Minibatches drawn with replacement, each sample with probability w_n / sum(w):
        # the plain minibatch mean is then an unbiased estimate of the weighted mean.
        cdf = jnp.cumsum(weights) / jnp.sum(weights)
        batch_weights = jnp.ones((batch_size,), dtype)

    def largest_entry(grads):
        return jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in jax.tree.leaves(grads)]))

    def step(carry, inputs):
        index, step_key = inputs
        u, opt_state, n_applied, last_good = carry
        if batch_size is None:
            xb, wb = X, weights
        else:
            draws = jax.random.uniform(step_key, (batch_size,), dtype)
            rows = jnp.minimum(jnp.searchsorted(cdf, draws, side="right"), X.shape[0] - 1)
            xb, wb = X[rows], batch_weights
        loss, grads = value_and_grad(u, xb, wb)
        # The latest parameters whose objective was finite, and the updates that led there.
        evaluated = jnp.isfinite(loss) & all_finite_leaves(grads)
        last_good = jax.tree.map(lambda a, b: jnp.where(evaluated, a, b), (u, n_applied), last_good)
        if isinstance(optimizer, optax.GradientTransformationExtraArgs):
            # Line-search optimisers (e.g. optax.lbfgs) need the objective itself.
            updates, new_state = optimizer.update(
                grads,
                opt_state,
                u,
                value=loss,
                grad=grads,
                value_fn=lambda v: objective(v, xb, wb),
            )
        else:
            updates, new_state = optimizer.update(grads, opt_state, u)
        new_u = optax.apply_updates(u, updates)
        # A step is taken only if everything stays finite, in the optimiser's coordinates and
        # mapped back to the data's (a runaway step size can overflow only there).
        mapped = _to_data_coordinates(new_u, center, scale, reg_covar)
        ok = evaluated & all_finite_leaves(new_u) & all_finite_leaves(mapped) & (index < n_steps)
        u = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_u, u)
        opt_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, opt_state)
        n_applied = n_applied + ok.astype(n_applied.dtype)
        return (u, opt_state, n_applied, last_good), (-loss, largest_entry(grads))

    carry0 = (u0, optimizer.init(u0), jnp.asarray(0), (u0, jnp.asarray(0)))
    # Full batch: one more pass than updates; the last one only evaluates the objective and
    # its gradient at the returned parameters (one copy of the gradient code, not two).
    n_passes = n_steps + 1 if batch_size is None else n_steps
    inputs = (jnp.arange(n_passes), jax.random.split(batch_key, n_passes))
    (u, _, n_applied, last_good), (history, gradient_sizes) = jax.lax.scan(step, carry0, inputs)
    if batch_size is None:
        mean, gradient_norm, history = history[-1], gradient_sizes[-1], history[:-1]
    else:
        final_loss, final_grads = value_and_grad(u, X, weights)
        mean, gradient_norm = -final_loss, largest_entry(final_grads)

    def evaluate_last_good(_):
        loss, grads = value_and_grad(last_good[0], X, weights)
        return last_good[0], -loss, largest_entry(grads), last_good[1]

    # A step can leave finite parameters at which the objective is not (a variance that
    # underflows to zero): fall back to the last parameters whose objective was finite.
    reached = jnp.isfinite(mean) & jnp.isfinite(gradient_norm)
    u, mean, gradient_norm, n_applied = jax.lax.cond(
        reached, lambda _: (u, mean, gradient_norm, n_applied), evaluate_last_good, None
    )
    params = _to_data_coordinates(u, center, scale, reg_covar)
    # Only a start whose objective is not finite leaves no finite result: report it as a
    # failed fit.
    finite = all_finite_leaves(params) & jnp.isfinite(mean)
    converged = reached & (gradient_norm <= tol) & finite
    total = jnp.where(finite, mean * jnp.sum(weights), jnp.nan)
    return FitResult(
        params=params,
        log_likelihood=total,
        n_iter=n_applied,
        converged=converged,
        history=history.astype(dtype),
        all_log_likelihoods=total[None],
    )


_fit_gradient_compiled = jax.jit(
    _fit_gradient_core,
    static_argnames=(
        "n_components",
        "covariance_type",
        "init",
        "n_steps",
        "batch_size",
        "optimizer",
    ),
)


def fit_gradient(
    key,
    X,
    K: int,
    *,
    covariance_type: str = "full",
    optimizer: optax.GradientTransformation | None = None,
    n_steps: int = 1000,
    batch_size: int | None = None,
    init: str = "kmeans++",
    init_params: GMM | None = None,
    reg_covar=1e-6,
    sample_weight=None,
    tol=1e-3,
) -> FitResult:
    """Fit a Gaussian mixture by gradient ascent on the mean log-likelihood, with optax.

    The mixture is optimised in the unconstrained parameterisation of
    ``jaxgmm.to_unconstrained`` (log-weights through a softmax, log-Cholesky factors or
    log-variances), for data standardised internally to mean zero and unit overall scale, so
    that one learning rate suits data of any scale. All ``n_steps`` steps run in one
    ``lax.scan``; every step evaluates the gradient of the mean per-sample log-likelihood on
    the whole data set (``batch_size=None``) or on a minibatch, and applies one optimiser
    update.

    Parameters
    ----------
    key : PRNG key
        Seeds the initialisation and the minibatches.
    X : Array, shape (N, D) or (N,)
        Data; its float dtype sets the computation dtype.
    K : int
        Number of components (static).
    covariance_type : {"full", "diag", "spherical", "tied"}
    optimizer : optax.GradientTransformation, optional
        Any optax optimiser; it minimises the negative mean log-likelihood. Default:
        ``optax.adam`` with a cosine decay of the learning rate from 0.05 to 0.0005 over
        ``n_steps`` (in standardised units). Line-search optimisers such as
        ``optax.lbfgs()`` receive the objective too (use them with full batches). Static (a
        jit static argument): create it once and pass the same object again to reuse the
        compiled program.
    n_steps : int
        Number of optimiser steps (static).
    batch_size : int, optional
        Minibatch size (static). ``None`` uses all samples at every step. Minibatches are
        drawn with replacement, sample ``n`` with probability proportional to its weight.
    init : {"kmeans++", "kmeans", "random", "random_from_data"}
        Initialisation (as ``jaxgmm.init_params``, with the sample weights), ignored when
        ``init_params`` is given.
    init_params : GMM, optional
        Starting mixture (same ``covariance_type``, ``K`` and ``D``).
    reg_covar : float
        Non-negative, added to the covariance diagonal (in data units) after the map from
        the unconstrained parameters, so a covariance never collapses. Traced.
    sample_weight : Array, shape (N,), optional
        Non-negative sample weights; the objective is ``sum_n w_n log p(x_n) / sum_n w_n``.
    tol : float
        Convergence threshold on the largest absolute entry of the full-data gradient at the
        returned parameters (see ``converged``). Traced.

    Returns
    -------
    FitResult
        ``params``: the mixture after the last step taken. ``log_likelihood``: total (weighted)
        log-likelihood of all of ``X`` at ``params``. ``history``, shape ``(n_steps,)``: the
        objective each step's gradient was taken of, i.e. the mean per-sample
        log-likelihood at the parameters *before* that step's update -- of the whole data
        set when ``batch_size`` is None, of that step's minibatch otherwise (a noisy
        estimate). ``n_iter``: updates applied (a step whose objective, gradient, update or
        resulting mixture is not finite is skipped, and a diverging optimiser ends at the
        last parameters whose objective was finite). ``converged``: the final log-likelihood
        is finite and the gradient of the full-data mean log-likelihood with respect to the
        (standardised) unconstrained parameters is at most ``tol`` in every entry, i.e. the
        result is a stationary point to that tolerance. ``all_log_likelihoods``:
        ``log_likelihood`` with shape ``(1,)``.

    Raises
    ------
    ValueError
        In an eager call whose starting parameters have a non-finite log-likelihood (as
        ``fit``); under ``jit`` the result then has a NaN log-likelihood instead.

    Notes
    -----
    Prefer ``jaxgmm.fit`` (EM) for fitting a mixture on its own: each EM iteration is a
    closed-form maximisation, the log-likelihood never decreases, and there is no learning
    rate. Gradient fitting pays off when the mixture is one part of a larger model trained
    jointly, when the data arrive as minibatches, or when the parameters carry extra
    structure or penalties that have no closed-form M-step.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from jaxgmm import fit_gradient
    >>> X = jnp.concatenate([jax.random.normal(jax.random.key(0), (200, 2)),
    ...                      jax.random.normal(jax.random.key(1), (200, 2)) + 6.0])
    >>> result = fit_gradient(jax.random.key(2), X, 2, n_steps=300)
    >>> sorted(round(float(w), 1) for w in result.params.weights)
    [0.5, 0.5]
    >>> result.history.shape, bool(result.converged)
    ((300,), True)

    Any optax optimiser, full batch or minibatches:
    ``fit_gradient(key, X, 2, optimizer=optax.sgd(0.1), batch_size=64)``.
    """
    validation.check_key(key)
    X = validation.as_data(X, "X")
    n_samples, n_features = X.shape
    K = validation.check_n_components(K, n_samples)
    validation.check_covariance_type(covariance_type)
    validation.check_init(init)
    n_steps = validation.check_positive_int(n_steps, "n_steps")
    if batch_size is not None:
        batch_size = validation.check_positive_int(batch_size, "batch_size")
    if optimizer is None:
        optimizer = default_optimizer(n_steps)
    elif not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}"
        )
    validation.check_reg_covar(reg_covar, X.dtype)
    validation.check_tol(tol)
    weights = validation.as_sample_weight(sample_weight, X)
    if init_params is not None:
        init_params = validation.check_init_params(
            init_params, n_features, K, covariance_type, X.dtype
        )
    result = _fit_gradient_compiled(
        key,
        X,
        weights,
        jnp.asarray(reg_covar, X.dtype),
        jnp.asarray(tol, X.dtype),
        init_params,
        n_components=K,
        covariance_type=covariance_type,
        init=init,
        n_steps=n_steps,
        batch_size=batch_size,
        optimizer=optimizer,
    )
    # Steps that would leave the parameters non-finite are not taken, so an eager fit can end
    # non-finite only if it started so. Under jit the NaN log-likelihood reports it.
    if validation.is_concrete(result.log_likelihood) and not validation.all_finite(
        result.log_likelihood
    ):
        raise ValueError(failed_start(X.dtype))
    return result
