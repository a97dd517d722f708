"""Per-covariance-type algebra, behind a small dispatch on the type string.

Every covariance type is expressed through one feature map of the (centred) data,

    phi(x) = [quad(x), x, 1]        shape (P,) with P = M + D + 1,

where ``quad(x)`` holds the second-order monomials the type needs: all ``x_i x_j`` with
``i <= j`` for ``"full"`` and ``"tied"`` (``M = D(D+1)/2``), the squares ``x_d**2`` for ``"diag"``
and ``"spherical"`` (``M = D``). Then

* the E-step log-densities of all components are one product ``phi(X) @ W`` with ``W`` of shape
  ``(P, K)`` built from the parameters (``log_density_coefficients``), because
  ``log N(x | mu, S) = -1/2 x'Px + mu'Px - 1/2 mu'P mu + 1/2 log|P| - D/2 log(2 pi)``, ``P = S^-1``;
* the M-step sufficient statistics are one product ``R.T @ phi(X)`` of shape ``(K, P)``
  (weighted responsibilities ``R``), holding the second moments, first moments and counts
  (``params_from_moments``).

This never materialises an ``(N, K, D)`` array. Callers centre the data first (subtracting the
data mean), which keeps the uncentred second moments well conditioned in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src.model import GMM

HIGHEST = jax.lax.Precision.HIGHEST


def _is_pair_type(covariance_type: str) -> bool:
    return covariance_type in ("full", "tied")


def n_quadratic_features(covariance_type: str, n_features: int) -> int:
    """Number ``M`` of second-order features for a covariance type and ``D`` features."""
    if _is_pair_type(covariance_type):
        return n_features * (n_features + 1) // 2
    return n_features


def n_feature_columns(covariance_type: str, n_features: int, outer_products: bool = False) -> int:
    """Number ``P = M + D + 1`` of columns of ``features`` (with ``outer_products``, of the
    per-sample features of a pass that uses ``outer_features``: ``M = D * D`` for the pair
    types)."""
    if outer_products and _is_pair_type(covariance_type):
        return n_features * n_features + n_features + 1
    return n_quadratic_features(covariance_type, n_features) + n_features + 1


def features(xc: jax.Array, covariance_type: str) -> jax.Array:
    """Feature map ``phi`` of centred data.

    Parameters
    ----------
    xc : Array, shape (n, D)
    covariance_type : str

    Returns
    -------
    Array, shape (n, P)
        ``[quad(xc), xc, 1]`` with ``P = M + D + 1``.
    """
    if _is_pair_type(covariance_type):
        i, j = np.triu_indices(xc.shape[-1])
        quad = xc[:, i] * xc[:, j]
    else:
        quad = xc * xc
    ones = jnp.ones((xc.shape[0], 1), xc.dtype)
    return jnp.concatenate([quad, xc, ones], axis=1)


def outer_features(xc: jax.Array) -> jax.Array:
    """All ``D * D`` second-order products of centred data, ``x x'`` flattened row by row.

    The upper-triangle block of ``features`` holds half of them, but on a GPU its gather
    runs far below memory bandwidth, while this is one broadcast multiply. Paired with
    ``outer_quadratic_coefficients`` on the E-step side and ``upper_from_outer`` on the
    M-step side it gives the same sums as ``features``.

    Parameters
    ----------
    xc : Array, shape (n, D)

    Returns
    -------
    Array, shape (n, D * D)
    """
    return (xc[:, :, None] * xc[:, None, :]).reshape(xc.shape[0], -1)


def _outer_to_upper(n_features: int):
    """For each entry ``(i, j)`` of a flattened ``(D, D)`` matrix: the position of
    ``(min(i, j), max(i, j))`` in the upper-triangle order of ``features``, shape (D * D,)."""
    position = np.zeros((n_features, n_features), dtype=np.int32)
    position[np.triu_indices(n_features)] = np.arange(n_features * (n_features + 1) // 2)
    return np.maximum(position, position.T).reshape(-1)


def outer_quadratic_coefficients(quad: jax.Array, n_features: int) -> jax.Array:
    """Coefficients on ``outer_features`` equivalent to ``quad`` on the upper triangle.

    Parameters
    ----------
    quad : Array, shape (M, K)
        The second-order rows of ``log_density_coefficients`` (upper-triangle order, an
        off-diagonal pair counted once with twice its precision entry).
    n_features : int

    Returns
    -------
    Array, shape (D * D, K)
        An off-diagonal coefficient split evenly between ``(i, j)`` and ``(j, i)``.
    """
    i, j = np.indices((n_features, n_features)).reshape(2, -1)
    half = np.where(i == j, 1.0, 0.5).astype(quad.dtype)
    return quad[_outer_to_upper(n_features)] * half[:, None]


def upper_from_outer(second: jax.Array, n_features: int) -> jax.Array:
    """Second moments over ``outer_features`` (K, D * D) in the upper-triangle order of
    ``features`` (K, M): the entries ``(i, j)`` with ``i <= j``."""
    i, j = np.triu_indices(n_features)
    return second[:, i * n_features + j]


def feature_columns(xc: jax.Array, covariance_type: str) -> list:
    """The columns of ``features(xc, covariance_type)`` as a list of ``P`` vectors of shape
    (n,), each computed directly from ``xc`` (for few features: no (n, P) matrix is built,
    whose columns a batched program would copy out one by one)."""
    columns = [xc[:, d] for d in range(xc.shape[-1])]
    if _is_pair_type(covariance_type):
        i, j = np.triu_indices(xc.shape[-1])
        quad = [columns[a] * columns[b] for a, b in zip(i, j)]
    else:
        quad = [column * column for column in columns]
    return quad + columns + [jnp.ones_like(columns[0])]


# --- precision terms: (quadratic coefficients (K, M), precision @ mean (K, D), log|P|/2 (K,))


def _precision_full(covariances, means):
    if means.shape[-1] == 1:  # one feature: no factorisation needed
        variances = covariances[:, 0, 0]
        return -0.5 / variances[:, None], means / variances[:, None], -0.5 * jnp.log(variances)
    chol = jnp.linalg.cholesky(covariances)  # (K, D, D), S = L L'
    eye = jnp.broadcast_to(jnp.eye(means.shape[-1], dtype=means.dtype), chol.shape)
    chol_inv = jax.scipy.linalg.solve_triangular(chol, eye, lower=True)  # L^-1
    precision = jnp.einsum("kji,kjl->kil", chol_inv, chol_inv, precision=HIGHEST)
    half_log_det = -jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    i, j = np.triu_indices(means.shape[-1])
    # x'Px = sum_i P_ii x_i^2 + 2 sum_{i<j} P_ij x_i x_j
    quad = -0.5 * precision[:, i, j] * np.where(i == j, 1.0, 2.0).astype(means.dtype)
    linear = jnp.einsum("kij,kj->ki", precision, means, precision=HIGHEST)
    return quad, linear, half_log_det


def _precision_tied(covariances, means):
    n_components = means.shape[0]
    tiled = jnp.broadcast_to(covariances, (n_components,) + covariances.shape)
    return _precision_full(tiled, means)


def _precision_diag(covariances, means):
    precision = 1.0 / covariances  # (K, D)
    half_log_det = -0.5 * jnp.sum(jnp.log(covariances), axis=-1)
    return -0.5 * precision, precision * means, half_log_det


def _precision_spherical(covariances, means):
    n_features = means.shape[-1]
    precision = 1.0 / covariances  # (K,)
    quad = jnp.broadcast_to(-0.5 * precision[:, None], means.shape)
    half_log_det = -0.5 * n_features * jnp.log(covariances)
    return quad, precision[:, None] * means, half_log_det


_PRECISION = {
    "full": _precision_full,
    "tied": _precision_tied,
    "diag": _precision_diag,
    "spherical": _precision_spherical,
}


def log_density_coefficients(params: GMM) -> jax.Array:
    """Matrix ``W`` such that ``features(xc) @ W`` is ``log pi_k + log N(xc | mu_k, S_k)``.

    Parameters
    ----------
    params : GMM
        A mixture in the same (centred) coordinates as the data.

    Returns
    -------
    Array, shape (P, K)
    """
    quad, linear, half_log_det = _PRECISION[params.covariance_type](
        params.covariances, params.means
    )
    n_features = params.means.shape[-1]
    bias = (
        jnp.log(params.weights)
        + half_log_det
        - 0.5 * jnp.sum(linear * params.means, axis=-1)
        - 0.5 * n_features * math.log(2.0 * math.pi)
    )
    return jnp.concatenate([quad, linear, bias[:, None]], axis=1).T


# --- covariances from moments: second moments (K, M), counts (K,), means (K, D) -> covariances


def unpack_symmetric(packed, n_features):
    i, j = np.triu_indices(n_features)
    out = jnp.zeros(packed.shape[:-1] + (n_features, n_features), packed.dtype)
    return out.at[..., i, j].set(packed).at[..., j, i].set(packed)


def _repair_full(raw, reg_covar):
    """Add ``reg_covar`` to the diagonal; a matrix that is still not numerically positive
    definite (its Cholesky factor is not finite) is replaced by its clamped diagonal."""
    eye = jnp.eye(raw.shape[-1], dtype=raw.dtype)
    covariances = raw + reg_covar * eye
    if raw.shape[-1] == 1:
        ok = covariances[..., 0, 0] > 0
    else:
        ok = jnp.all(jnp.isfinite(jnp.linalg.cholesky(covariances)), axis=(-2, -1))
    diagonal = jnp.maximum(jnp.diagonal(raw, axis1=-2, axis2=-1), 0.0) + reg_covar
    fallback = diagonal[..., :, None] * eye
    return jnp.where(ok[..., None, None], covariances, fallback)


def _covariances_full(second, counts, means, reg_covar):
    n_features = means.shape[-1]
    raw = unpack_symmetric(second, n_features) / counts[:, None, None]
    raw = raw - means[:, :, None] * means[:, None, :]
    return _repair_full(raw, reg_covar)


def _covariances_tied(second, counts, means, reg_covar):
    n_features = means.shape[-1]
    total = unpack_symmetric(jnp.sum(second, axis=0), n_features)
    between = jnp.einsum("k,ki,kj->ij", counts, means, means, precision=HIGHEST)
    return _repair_full((total - between) / jnp.sum(counts), reg_covar)


def _covariances_diag(second, counts, means, reg_covar):
    raw = second / counts[:, None] - means * means
    return jnp.maximum(raw, 0.0) + reg_covar


def _covariances_spherical(second, counts, means, reg_covar):
    return jnp.mean(_covariances_diag(second, counts, means, reg_covar), axis=-1)


_COVARIANCES = {
    "full": _covariances_full,
    "tied": _covariances_tied,
    "diag": _covariances_diag,
    "spherical": _covariances_spherical,
}


def params_from_moments(
    moments: jax.Array, covariance_type: str, reg_covar, active: jax.Array | None = None
) -> GMM:
    """The M-step: a mixture from the weighted sufficient statistics.

    Parameters
    ----------
    moments : Array, shape (K, P)
        ``R.T @ features(xc)``: per component the weighted second moments, first moments and
        the count ``N_k`` (last column).
    covariance_type : str
    reg_covar : float or Array, shape ()
        Added to the diagonal of every covariance.
    active : Array, shape (K,), bool, optional
        Components that take part; the others (padding) get weight exactly zero, so they
        drop out of every later E-step.

    Returns
    -------
    GMM
        In the coordinates of the data the moments were taken from.

    Notes
    -----
    As in scikit-learn, ``N_k`` is increased by ``10 * eps`` so that an empty component keeps
    a finite mean (zero in centred coordinates, i.e. the data mean), covariance
    ``reg_covar * I`` and a weight of order ``eps``.
    """
    n_components, width = moments.shape
    dtype = moments.dtype
    n_quad = width - 1 - n_features_from_width(width, covariance_type)
    counts = moments[:, -1] + 10 * jnp.finfo(dtype).eps
    means = moments[:, n_quad:-1] / counts[:, None]
    covariances = _COVARIANCES[covariance_type](
        moments[:, :n_quad], counts, means, jnp.asarray(reg_covar, dtype)
    )
    if active is not None:
        counts = jnp.where(active, counts, 0.0)
    weights = counts / jnp.sum(counts)
    return GMM(weights, means, covariances, covariance_type)


def n_features_from_width(width: int, covariance_type: str) -> int:
    """Invert ``P = M(D) + D + 1`` for ``D``."""
    rest = width - 1
    if _is_pair_type(covariance_type):
        # D(D+1)/2 + D = rest  ->  D^2 + 3D - 2 rest = 0
        return int(round((-3 + math.sqrt(9 + 8 * rest)) / 2))
    return rest // 2


def shift_means(params: GMM, offset: jax.Array) -> GMM:
    """Translate all component means by ``offset`` (shape (D,))."""
    return params.replace(means=params.means + offset)
