"""Information criteria with scikit-learn's conventions (lower is better)."""

from __future__ import annotations

import math

import jax.numpy as jnp

from jaxgmm._src import validation
from jaxgmm._src.em import log_likelihood
from jaxgmm._src.model import GMM


def n_parameters(params: GMM) -> int:
    """Number of free parameters, from the shapes alone.

    ``(K - 1)`` weights, ``K * D`` means and the covariance parameters: ``K D (D + 1) / 2``
    (full), ``K D`` (diag), ``K`` (spherical), ``D (D + 1) / 2`` (tied).

    Returns
    -------
    int
    """
    if not isinstance(params, GMM):
        raise TypeError(f"params must be a jaxgmm.GMM; got {type(params).__name__}")
    validation.check_covariance_type(params.covariance_type)
    K, D = params.means.shape[-2:]
    covariance = {
        "full": K * D * (D + 1) // 2,
        "diag": K * D,
        "spherical": K,
        "tied": D * (D + 1) // 2,
    }[params.covariance_type]
    return int(covariance + K * D + K - 1)


def bic(params: GMM, X) -> jnp.ndarray:
    """Bayesian information criterion ``-2 log L + p log N``, shape (). Lower is better.

    (R's mclust reports the same quantity with the opposite sign, higher is better.)
    """
    X = validation.as_data(X, "X")
    return -2.0 * log_likelihood(params, X) + n_parameters(params) * math.log(X.shape[0])


def aic(params: GMM, X) -> jnp.ndarray:
    """Akaike information criterion ``-2 log L + 2 p``, shape (). Lower is better."""
    return -2.0 * log_likelihood(params, X) + 2.0 * n_parameters(params)
