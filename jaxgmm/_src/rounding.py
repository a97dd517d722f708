"""How much float32 rounding can move the log-densities of a fitted mixture.

Both EM steps expand the quadratic form around the data mean ``c`` (``covariances``): the
E-step evaluates ``(x - mu)' P (x - mu)`` as ``sum_ij P_ij x_i x_j - 2 mu'P x + mu'P mu`` in
centred coordinates, and the M-step forms covariances as second moments minus ``mu mu'``.
Each term carries a rounding error of about ``eps |P_ij x_i x_j|``, so the log-density of a
component is uncertain by about

    eps * sum_ij |P_ij| s_i s_j        (s_d: the data's standard deviation along feature d)

nats. That is negligible for the usual clusters, but not for a component whose spread is
tiny against the spread of the whole data set: clusters a thousand of their own standard
deviations apart, or nearly singular covariances. In float32 (``eps = 1.2e-7``) the first
costs about 0.1 nats and visibly wrong covariances; float64 has 2e-16.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import products
from jaxgmm._src.model import GMM

# Above this many nats of possible rounding error per log-density, an eager float32 fit warns.
WARN_NATS = 1e-2


def rounding_nats(params: GMM, X, weights) -> jax.Array:
    """``eps * max_k sum_ij |P_k,ij| s_i s_j`` over the components holding at least one
    sample's weight: the rounding error, in nats, that the log-densities of ``params`` can
    carry in the dtype of ``X`` (see the module docstring).

    Parameters
    ----------
    params : GMM
    X : Array, shape (N, D)
    weights : Array, shape (N,)

    Returns
    -------
    Array, shape ()
    """
    center = products.weighted_mean(X, weights)
    spread = jnp.sqrt(products.weighted_mean((X - center) ** 2, weights))  # (D,)
    holds_a_sample = params.weights * jnp.sum(weights) >= jnp.max(weights)
    return _nats(params, spread, holds_a_sample, X.dtype)


def spread_rounding_nats(params: GMM, spread, n_samples) -> jax.Array:
    """``rounding_nats`` for data known by their per-feature standard deviations ``spread``
    (shape (D,)) and number of (unit-weight) samples: streams, whose rows are never in
    memory at once. In the dtype of ``params``."""
    dtype = params.means.dtype
    holds_a_sample = params.weights * n_samples >= 1
    return _nats(params, jnp.asarray(spread, dtype), holds_a_sample, dtype)


def _nats(params: GMM, spread, holds_a_sample, dtype) -> jax.Array:
    kind = params.covariance_type
    covariances = params.covariances
    if kind in ("full", "tied"):
        precision = jnp.abs(jnp.linalg.inv(covariances))
        per_component = jnp.einsum("...ij,i,j->...", precision, spread, spread)
        per_component = jnp.broadcast_to(per_component, params.weights.shape)
    elif kind == "diag":
        per_component = jnp.sum(spread**2 / covariances, axis=-1)
    else:
        per_component = jnp.sum(spread**2) / covariances
    worst = jnp.max(jnp.where(holds_a_sample, per_component, 0.0))
    return jnp.finfo(dtype).eps * worst


FLOAT64_ADVICE = (
    "Fit in float64 (jax.config.update('jax_enable_x64', True), X.astype('float64')) for "
    "accurate parameters."
)


def warn_if_imprecise(nats: float, dtype, stacklevel: int = 3) -> None:
    """Warn (``RuntimeWarning``) when a float32 fit's log-densities can be off by more than
    ``WARN_NATS`` nats (``nats`` from ``rounding_nats``) through rounding. ``stacklevel`` as
    for ``warnings.warn`` (the default names the caller of the caller)."""
    if dtype == jnp.float32 and not nats <= WARN_NATS:  # NaN: a singular covariance
        warnings.warn(
            f"float32 rounding can shift this fit's log-densities by about {nats:.2g} nats "
            "(and its covariances by a similar relative amount): some component is very "
            "narrow compared with the spread of the data (clusters hundreds of their own "
            "standard deviations apart, or a nearly singular covariance). " + FLOAT64_ADVICE,
            RuntimeWarning,
            stacklevel=stacklevel,
        )


_rounding_nats_compiled = jax.jit(rounding_nats)
_spread_rounding_nats_compiled = jax.jit(spread_rounding_nats)


def check_fitted(params: GMM, X, weights, stacklevel: int = 4) -> None:
    """``warn_if_imprecise`` for a mixture fitted outside ``fit`` (the estimator, ``select``):
    one compiled evaluation of ``rounding_nats``, float32 only."""
    if X.dtype == jnp.float32:
        nats = float(_rounding_nats_compiled(params, X, weights))
        warn_if_imprecise(nats, X.dtype, stacklevel)


def check_spread(params: GMM, spread, n_samples: float, stacklevel: int = 4) -> None:
    """``warn_if_imprecise`` for a float32 mixture fitted to streamed data, known by their
    per-feature standard deviations ``spread`` (shape (D,)) and number of samples (compiled
    once per shape of ``params``)."""
    dtype = params.means.dtype
    if dtype == jnp.float32:
        n_samples = np.asarray(n_samples, dtype)  # a float: counts above 2**31 fit
        nats = _spread_rounding_nats_compiled(params, np.asarray(spread, dtype), n_samples)
        warn_if_imprecise(float(nats), dtype, stacklevel)


def sample_spread(rows: np.ndarray) -> np.ndarray:
    """Per-feature standard deviation of ``rows`` (shape (n, D)), in float64, shape (D,)."""
    return np.std(np.asarray(rows, np.float64), axis=0)
