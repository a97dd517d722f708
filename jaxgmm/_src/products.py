"""The two products of an EM pass, ``phi @ W`` and ``resp.T @ phi``, and the weighted data
mean, written for the shapes at hand.

XLA on CPU runs a product with a tiny contraction or output (1-D and 2-D data, a few
components), especially batched under ``vmap``, far below its elementwise rate. Below the
sizes here such a product is written as elementwise operations and one reduction per entry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST

# A contraction of at most this many features is written as broadcast multiply-adds.
SMALL_CONTRACTION = 8
# An output of at most this many entries is written as one reduction per entry.
SMALL_OUTPUT = 64


def is_small(n_features: int, n_outputs: int) -> bool:
    """Whether ``(n, n_features) x (n, n_outputs) -> (n_outputs, n_features)`` counts as
    small (both thresholds above)."""
    return n_features <= SMALL_CONTRACTION and n_features * n_outputs <= SMALL_OUTPUT


# Most product columns (components times restarts batched together) for which a GPU pass
# builds all D * D second-order products instead of the D(D+1)/2 of the upper triangle.
# Measured on an H100 (float32, JAX 0.11.2): at 1,000,000 x 64 x 64 the gather that builds
# the upper triangle took 28 of 45 ms per iteration, the broadcast multiply that builds the
# outer products 5.5 of 31.5 ms; at 100,000 x 16 x 16 the outer products were faster for one
# fit (0.37 against 0.45 ms) and slower for 8 and 16 restarts (0.79 against 0.65 ms, 1.30
# against 0.95 ms), whose doubled product work then outweighs the gather.
OUTER_PRODUCT_MAX_COLUMNS = 64


def prefers_outer_products(
    covariance_type: str, n_columns: int, platform: str | None = None
) -> bool:
    """Whether an EM pass of a ``"full"`` or ``"tied"`` fit should build its second-order
    features with ``covariances.outer_features``: on a GPU, for at most
    ``OUTER_PRODUCT_MAX_COLUMNS`` product columns (components times batched restarts).
    ``platform`` defaults to JAX's default backend."""
    platform = platform or jax.default_backend()
    return (
        platform == "gpu"
        and covariance_type in ("full", "tied")
        and n_columns <= OUTER_PRODUCT_MAX_COLUMNS
    )


def times_coefficients(phi, coefficients):
    """``phi @ coefficients``: (n, P) x (P, K) -> (n, K)."""
    width = phi.shape[1]
    if width <= SMALL_CONTRACTION:
        return sum(phi[:, p, None] * coefficients[p] for p in range(width))
    return jnp.matmul(phi, coefficients, precision=HIGHEST)


def column_sums(columns_a, columns_b):
    """``[[sum(a * b) for b in columns_b] for a in columns_a]``, shape (len(a), len(b)): the
    product ``A.T @ B`` of matrices given as lists of their (n,) columns."""
    return jnp.stack([jnp.stack([jnp.sum(a * b) for b in columns_b]) for a in columns_a])


def transposed_product(resp, phi):
    """``resp.T @ phi``: (n, K) x (n, P) -> (K, P)."""
    n_components, width = resp.shape[1], phi.shape[1]
    if is_small(width, n_components):
        resp_t, phi_t = resp.T, phi.T  # rows are contiguous, columns of a batched matrix not
        return column_sums(list(resp_t), list(phi_t))
    return jnp.matmul(resp.T, phi, precision=HIGHEST)


def weighted_mean(X, weights):
    """``sum_n w_n x_n / sum_n w_n``: X (N, D), weights (N,) -> (D,).

    For a few features, one reduction per feature: the sum along the sample axis of a
    batched (vmapped) ``(N, D)`` matrix with a tiny ``D`` runs an order of magnitude slower.
    """
    total = jnp.sum(weights)
    if X.shape[1] <= SMALL_CONTRACTION:
        return jnp.stack([jnp.sum(weights * X[:, d]) for d in range(X.shape[1])]) / total
    return jnp.sum(weights[:, None] * X, axis=0) / total
