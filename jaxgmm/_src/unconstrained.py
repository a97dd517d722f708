"""An unconstrained parameterisation of a mixture, for gradient-based optimisation.

A ``GMM`` lives on a constrained set: the weights on the simplex, the covariances positive
definite. ``UnconstrainedGMM`` holds the same mixture as free real arrays, so that any
optimiser (optax, or a plain gradient step) can move every entry anywhere:

==============  ======================  ==================================================
type            ``cov_unconstrained``   maps back to
==============  ======================  ==================================================
``"full"``      ``(K, D, D)``           ``S_k = L_k L_k'``, ``L_k`` lower triangular with
                                        ``exp`` of the diagonal (upper triangle ignored)
``"tied"``      ``(D, D)``              likewise, one matrix for all components
``"diag"``      ``(K, D)``              ``S_k = diag(exp(v_k))`` (log-variances)
``"spherical"`` ``(K,)``                ``s_k = exp(v_k)`` (log-variances)
==============  ======================  ==================================================

and ``weights = softmax(log_weights)``, ``means`` unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxgmm._src import validation
from jaxgmm._src.model import GMM

HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class UnconstrainedGMM:
    """A mixture as unconstrained real arrays (a pytree; ``covariance_type`` is static).

    Attributes
    ----------
    log_weights : Array, shape (K,)
        Unnormalised log mixing proportions: ``weights = softmax(log_weights)``.
        ``to_unconstrained`` returns ``log(weights)``.
    means : Array, shape (K, D)
        Component means, unchanged.
    cov_unconstrained : Array
        ``"full"``: shape ``(K, D, D)``, the lower-triangular Cholesky factor ``L_k`` of each
        covariance with the log of its diagonal on the diagonal; entries above the diagonal
        are ignored (their gradient is zero). ``"tied"``: shape ``(D, D)``, likewise.
        ``"diag"``: shape ``(K, D)``, log-variances. ``"spherical"``: shape ``(K,)``,
        log-variances.
    covariance_type : str
        ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``. Static pytree metadata.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxgmm import GMM, to_unconstrained
    >>> gmm = GMM(jnp.array([0.25, 0.75]), jnp.zeros((2, 1)), jnp.array([1.0, 4.0]), "spherical")
    >>> u = to_unconstrained(gmm)
    >>> [round(float(v), 4) for v in u.cov_unconstrained]
    [0.0, 1.3863]
    """

    log_weights: jax.Array
    means: jax.Array
    cov_unconstrained: jax.Array
    covariance_type: str = dataclasses.field(default="full", metadata=dict(static=True))

    def replace(self, **changes) -> UnconstrainedGMM:
        """Return a copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    UnconstrainedGMM,
    data_fields=["log_weights", "means", "cov_unconstrained"],
    meta_fields=["covariance_type"],
)


# --- one pair of maps per covariance type


def _log_cholesky(covariances):
    """``(..., D, D)`` SPD -> lower-triangular Cholesky factor with a log diagonal."""
    chol = jnp.linalg.cholesky(covariances)
    eye = jnp.eye(covariances.shape[-1], dtype=bool)
    log_diagonal = jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1))[..., None, :]
    return jnp.where(eye, log_diagonal, jnp.tril(chol, -1))


def _from_log_cholesky(raw):
    """Inverse of ``_log_cholesky``: ``L L'`` with ``L = tril(raw, -1) + diag(exp(.))``."""
    eye = jnp.eye(raw.shape[-1], dtype=bool)
    log_diagonal = jnp.diagonal(raw, axis1=-2, axis2=-1)[..., None, :]
    chol = jnp.where(eye, jnp.exp(log_diagonal), jnp.tril(raw, -1))
    product = jnp.matmul(chol, jnp.swapaxes(chol, -1, -2), precision=HIGHEST)
    return 0.5 * (product + jnp.swapaxes(product, -1, -2))


_TO = {
    "full": _log_cholesky,
    "tied": _log_cholesky,
    "diag": jnp.log,
    "spherical": jnp.log,
}

_FROM = {
    "full": _from_log_cholesky,
    "tied": _from_log_cholesky,
    "diag": jnp.exp,
    "spherical": jnp.exp,
}


def _add_to_diagonal(covariances, covariance_type: str, value):
    if covariance_type in ("full", "tied"):
        return covariances + value * jnp.eye(covariances.shape[-1], dtype=covariances.dtype)
    return covariances + value


def _weight_floor(dtype):
    """Smallest weight kept by ``to_unconstrained``: ``sqrt(tiny)``, far enough from the
    subnormal range that neither the softmax nor ``1/w`` in a gradient flushes or overflows."""
    return float(jnp.finfo(dtype).tiny) ** 0.5


def to_unconstrained(params: GMM) -> UnconstrainedGMM:
    """Map a mixture to unconstrained arrays; the inverse of ``from_unconstrained``.

    Parameters
    ----------
    params : GMM
        One mixture: weights ``(K,)``, means ``(K, D)``, positive definite covariances.

    Returns
    -------
    UnconstrainedGMM
        ``log_weights = log(weights)``, ``means`` unchanged, and the covariances as log
        Cholesky factors (``"full"``, ``"tied"``) or log-variances (``"diag"``,
        ``"spherical"``), in the dtype of ``params.means``.

    Notes
    -----
    ``from_unconstrained(to_unconstrained(params))`` reproduces ``params`` to floating-point
    rounding (relative error of order ``eps`` times the condition number of the covariances).
    A weight of zero (a padding component) becomes ``log(sqrt(tiny))``, with ``tiny`` the
    smallest normal number of the dtype (about -354 in float64, -44 in float32), rather than
    ``-inf``: it maps back to a weight of about ``1e-154`` (float64) or ``1e-19`` (float32),
    zero for every practical purpose, and keeps gradients finite.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxgmm import GMM, from_unconstrained, to_unconstrained
    >>> gmm = GMM(jnp.array([0.5, 0.5]), jnp.array([[0.0, 0.0], [3.0, 1.0]]),
    ...           jnp.array([[2.0, 0.5], [0.5, 1.0]]), "tied")
    >>> u = to_unconstrained(gmm)
    >>> u.cov_unconstrained.shape
    (2, 2)
    >>> bool(jnp.allclose(from_unconstrained(u).covariances, gmm.covariances))
    True
    """
    validation.check_params(params, None, "params")
    dtype = validation.compute_dtype(jnp.asarray(params.means).dtype)
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), params)
    kind = params.covariance_type
    return UnconstrainedGMM(
        log_weights=jnp.log(jnp.maximum(params.weights, _weight_floor(dtype))),
        means=params.means,
        cov_unconstrained=_TO[kind](params.covariances),
        covariance_type=kind,
    )


def _check_unconstrained(u) -> None:
    if not isinstance(u, UnconstrainedGMM):
        raise TypeError(f"u must be a jaxgmm.UnconstrainedGMM; got {type(u).__name__}")
    validation.check_covariance_type(u.covariance_type)
    means_shape = jnp.shape(u.means)
    if len(means_shape) != 2:
        raise ValueError(f"u.means must have shape (K, D); got {means_shape}")
    k, d = means_shape
    if jnp.shape(u.log_weights) != (k,):
        raise ValueError(f"u.log_weights must have shape ({k},); got {jnp.shape(u.log_weights)}")
    expected = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[
        u.covariance_type
    ]
    if jnp.shape(u.cov_unconstrained) != expected:
        raise ValueError(
            f"u.cov_unconstrained for covariance_type={u.covariance_type!r} must have shape "
            f"{expected}; got {jnp.shape(u.cov_unconstrained)}"
        )


def from_unconstrained(u: UnconstrainedGMM, *, reg_covar=0.0) -> GMM:
    """Map unconstrained arrays back to a mixture.

    ``weights = softmax(log_weights)``; ``"full"``/``"tied"``: ``S = L L'`` with
    ``L = tril(c, -1) + diag(exp(diag(c)))`` for ``c = cov_unconstrained``;
    ``"diag"``/``"spherical"``: ``exp(cov_unconstrained)``; then ``reg_covar`` is added to
    the diagonal of every covariance. Differentiable everywhere, so
    ``jax.grad(lambda u, X: jaxgmm.log_likelihood(from_unconstrained(u), X))`` is defined
    for any finite ``u`` whose log-variances (the diagonal entries, for ``"full"`` and
    ``"tied"`` half the log-variance scale) stay below the dtype's overflow of ``exp``
    (about 88 in float32, 709 in float64).

    Parameters
    ----------
    u : UnconstrainedGMM
        Leaves of shapes ``(K,)``, ``(K, D)`` and the covariance shape of its type (see
        ``UnconstrainedGMM``); any real values.
    reg_covar : float or Array, shape ()
        Non-negative, added to the covariance diagonal after the map (default 0, which makes
        the map the exact inverse of ``to_unconstrained``). A positive value keeps the
        covariances away from singular however far an optimiser drives ``u``.

    Returns
    -------
    GMM
        Weights ``(K,)``, means ``(K, D)``, covariances of the type's shape.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from jaxgmm import UnconstrainedGMM, from_unconstrained, log_likelihood
    >>> u = UnconstrainedGMM(jnp.zeros(2), jnp.array([[-1.0], [1.0]]), jnp.zeros((2, 1, 1)))
    >>> from_unconstrained(u).weights.tolist()
    [0.5, 0.5]
    >>> X = jnp.array([[-1.0], [0.5], [2.0]])
    >>> grad = jax.jit(jax.grad(lambda u, X: log_likelihood(from_unconstrained(u), X)))
    >>> grad(u, X).cov_unconstrained.shape
    (2, 1, 1)
    """
    _check_unconstrained(u)
    validation.check_reg_covar(reg_covar)
    kind = u.covariance_type
    dtype = validation.compute_dtype(jnp.asarray(u.means).dtype)
    means = jnp.asarray(u.means, dtype)
    covariances = _FROM[kind](jnp.asarray(u.cov_unconstrained, dtype))
    covariances = _add_to_diagonal(covariances, kind, jnp.asarray(reg_covar, dtype))
    return GMM(
        weights=jax.nn.softmax(jnp.asarray(u.log_weights, dtype)),
        means=means,
        covariances=covariances,
        covariance_type=kind,
    )
