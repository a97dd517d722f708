"""The E-step, the M-step and the densities: pure functions of ``(params, X)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import covariances as cov
from jaxgmm._src import products, validation
from jaxgmm._src.chunking import chunked_sum, fit_chunk_size
from jaxgmm._src.model import GMM

HIGHEST = jax.lax.Precision.HIGHEST


def mixture_center(params: GMM) -> jax.Array:
    """The mixture mean ``sum_k pi_k mu_k``, shape (D,): the point the E-step centres on."""
    return jnp.einsum("k,kd->d", params.weights, params.means, precision=HIGHEST)


def weighted_log_densities(params_c: GMM, xc: jax.Array) -> jax.Array:
    """``log pi_k + log N(x_n | mu_k, S_k)`` for centred data and centred parameters.

    Parameters
    ----------
    params_c : GMM
    xc : Array, shape (N, D)

    Returns
    -------
    Array, shape (N, K)
    """
    coefficients = cov.log_density_coefficients(params_c)
    phi = cov.features(xc, params_c.covariance_type)
    return jnp.matmul(phi, coefficients, precision=HIGHEST)


def _centered(params: GMM, X: jax.Array):
    center = jax.lax.stop_gradient(mixture_center(params))
    return cov.shift_means(params, -center), X - center


def _prepare(params: GMM, X) -> tuple[GMM, jax.Array]:
    X = validation.as_data(X, "X")
    validation.check_params(params, X.shape[1], "params")
    dtype = X.dtype
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), params)
    return params, X


@jax.jit
def _log_joint_and_evidence(params: GMM, X) -> tuple[jax.Array, jax.Array]:
    """Compiled once per shape: ``(log pi_k N(x_n | k), log p(x_n))``, shapes (N, K), (N,)."""
    params_c, xc = _centered(params, X)
    joint = weighted_log_densities(params_c, xc)
    return joint, jax.nn.logsumexp(joint, axis=1)


def _log_joint(params: GMM, X, *, for_responsibilities: bool = False):
    """Validate at the eager boundary, then run the compiled core; an eager call checks the
    log-densities (``check_evidence``)."""
    params, X = _prepare(params, X)
    joint, evidence = _log_joint_and_evidence(params, X)
    if validation.is_concrete(evidence):
        check_evidence(evidence, X.dtype, for_responsibilities)
    return joint, evidence


def check_evidence(evidence, dtype, for_responsibilities: bool = False) -> None:
    """Raise a ``ValueError`` naming ``X`` when the log-densities ``log p(x_n)`` (shape (N,))
    of finite data under finite parameters could not be computed in ``dtype``.

    A NaN means the expanded quadratic form overflowed (inf - inf). ``-inf`` is the correct
    rounding of a log-density below the dtype's range, so it is an error only for
    responsibilities (``for_responsibilities``), which it leaves undefined (NaN).
    """
    with jax.ensure_compile_time_eval():
        bad = jnp.isnan(evidence)
        if for_responsibilities:
            bad = bad | (evidence == -jnp.inf)
        failed = bool(jnp.any(bad))
    if failed:
        what = "not finite" if for_responsibilities else "NaN"
        raise ValueError(
            f"X: the log-density of some samples is {what}: the distances between them and "
            f"the mixture's components overflow the dtype ({validation.overflow_note(dtype)})"
        )


def log_prob(params: GMM, X) -> jax.Array:
    """Log density of each sample under the mixture.

    Parameters
    ----------
    params : GMM
    X : Array, shape (N, D) or (N,) for D = 1

    Returns
    -------
    Array, shape (N,)
        ``log sum_k pi_k N(x_n | mu_k, S_k)``, in the dtype of ``X`` (integers become float).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxgmm import GMM, log_prob
    >>> gmm = GMM(jnp.array([1.0]), jnp.zeros((1, 1)), jnp.ones((1,)), "spherical")
    >>> round(float(log_prob(gmm, jnp.zeros((1, 1)))[0]), 4)
    -0.9189
    """
    return _log_joint(params, X)[1]


def log_likelihood(params: GMM, X) -> jax.Array:
    """Total log-likelihood ``sum_n log p(x_n)``, shape ()."""
    return jnp.sum(log_prob(params, X))


def e_step(params: GMM, X) -> tuple[jax.Array, jax.Array]:
    """Expectation step: log responsibilities and the mean log-likelihood.

    ``log gamma_nk = log pi_k + log N(x_n | mu_k, S_k) - log sum_j pi_j N(x_n | mu_j, S_j)``,
    computed in the log domain.

    Parameters
    ----------
    params : GMM
    X : Array, shape (N, D)

    Returns
    -------
    log_resp : Array, shape (N, K)
    mean_log_likelihood : Array, shape ()
        ``(1/N) sum_n log p(x_n)``.
    """
    joint, per_sample = _log_joint(params, X, for_responsibilities=True)
    return joint - per_sample[:, None], jnp.mean(per_sample)


def predict_proba(params: GMM, X) -> jax.Array:
    """Responsibilities ``gamma_nk``, shape (N, K); rows sum to one."""
    return jnp.exp(e_step(params, X)[0])


def predict(params: GMM, X) -> jax.Array:
    """Most responsible component of each sample, shape (N,), int."""
    return jnp.argmax(_log_joint(params, X, for_responsibilities=True)[0], axis=1)


def weighted_moments(xc, weights, resp, covariance_type: str, chunk_size: int | None = None):
    """``(resp * weights).T @ features(xc)``, shape (K, P), summed chunk by chunk.

    Parameters
    ----------
    xc : Array, shape (N, D)
        Centred data.
    weights : Array, shape (N,)
        Sample weights.
    resp : Array, shape (N, K)
        Responsibilities (rows need not be normalised).
    covariance_type : str
    chunk_size : int, optional
        Rows per chunk; chosen from the shapes by default.
    """
    if chunk_size is None:
        chunk_size = fit_chunk_size(*xc.shape, resp.shape[1], covariance_type)

    def moments(x, w, r):
        phi = cov.features(x, covariance_type)
        return products.transposed_product(r * w[:, None], phi)

    return chunked_sum(moments, (xc, weights, resp), chunk_size)


def m_step(
    X, log_resp, *, covariance_type: str = "full", reg_covar=1e-6, sample_weight=None
) -> GMM:
    """Maximisation step: the mixture that maximises Q given responsibilities.

    ``N_k = sum_n w_n gamma_nk``, ``pi_k = N_k / sum_j N_j``,
    ``mu_k = sum_n w_n gamma_nk x_n / N_k``,
    ``S_k = sum_n w_n gamma_nk (x_n - mu_k)(x_n - mu_k)' / N_k + reg_covar * I``
    (``diag`` keeps the diagonal, ``spherical`` its mean, ``tied`` pools over components).

    Parameters
    ----------
    X : Array, shape (N, D)
    log_resp : Array, shape (N, K)
        Log responsibilities, e.g. from ``e_step``.
    covariance_type : {"full", "diag", "spherical", "tied"}
    reg_covar : float
        Non-negative, added to the diagonal of the covariances.
    sample_weight : Array, shape (N,), optional
        Non-negative weights of the samples (default: all ones).

    Returns
    -------
    GMM
    """
    X = validation.as_data(X, "X")
    validation.check_covariance_type(covariance_type)
    validation.check_reg_covar(reg_covar, X.dtype)
    log_resp = log_resp if isinstance(log_resp, jax.Array) else np.asarray(log_resp)
    if not jnp.issubdtype(log_resp.dtype, jnp.floating):
        raise TypeError(f"log_resp must be a real float array; got dtype {log_resp.dtype}")
    log_resp = jnp.asarray(log_resp, X.dtype)
    if log_resp.ndim != 2 or log_resp.shape[0] != X.shape[0] or log_resp.shape[1] == 0:
        raise ValueError(
            f"log_resp must have shape (N, K) with N = {X.shape[0]} and K >= 1; "
            f"got {log_resp.shape}"
        )
    if validation.is_concrete(log_resp):
        with jax.ensure_compile_time_eval():
            bad = bool(jnp.any(jnp.isnan(log_resp) | (log_resp > 1e-3)))
            empty = not bool(jnp.any(log_resp > -jnp.inf))
        if bad:  # log responsibilities are at most log(1) = 0 (-inf for zero is fine)
            raise ValueError("log_resp must hold log responsibilities: no NaN, none above 0")
        if empty:
            raise ValueError("log_resp is -inf everywhere: no sample is assigned to a component")
    weights = validation.as_sample_weight(sample_weight, X)
    center = products.weighted_mean(X, weights)
    moments = weighted_moments(X - center, weights, jnp.exp(log_resp), covariance_type)
    params = cov.params_from_moments(moments, covariance_type, reg_covar)
    return cov.shift_means(params, center)
