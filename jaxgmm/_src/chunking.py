"""Sums over samples computed chunk by chunk, so that per-sample features larger than ``X``
never exist for all samples at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxgmm._src.covariances import n_feature_columns

# Target number of elements of the widest per-chunk intermediate (features or responsibilities):
# a few MB on the CPU, where chunks that fit in cache are fastest; far more on an accelerator,
# where every chunk is a separate round of kernel launches and small products leave it idle.
_CHUNK_ELEMENTS = {"cpu": 1 << 20}
_ACCELERATOR_CHUNK_ELEMENTS = 1 << 26
_ROW_MULTIPLE = 256


def auto_chunk_size(n_samples: int, width: int, platform: str | None = None) -> int:
    """Rows per chunk so that an ``(rows, width)`` intermediate stays near a budget of
    elements: 2**20 on the CPU (a few MB, cache friendly), 2**26 on a GPU or TPU. A multiple
    of 256 rows, at least 256, at most ``n_samples``. ``platform`` defaults to JAX's default
    backend.

    The multiple matters: XLA's CPU products over an odd number of rows run about a third
    slower (measured at 31,775 against 31,744 rows of 33 features)."""
    platform = platform or jax.default_backend()
    budget = _CHUNK_ELEMENTS.get(platform, _ACCELERATOR_CHUNK_ELEMENTS)
    rows = max(_ROW_MULTIPLE, budget // max(width, 1) // _ROW_MULTIPLE * _ROW_MULTIPLE)
    return max(1, min(n_samples, rows))


def fit_chunk_size(n_samples: int, n_features: int, n_components: int, covariance_type: str) -> int:
    """``auto_chunk_size`` for one mixture's pass over ``(n_samples, n_features)`` data: its
    widest per-chunk intermediate is the features of ``covariance_type`` or the ``(rows, K)``
    responsibilities."""
    width = n_feature_columns(covariance_type, n_features)
    return auto_chunk_size(n_samples, max(width, n_components))


class Chunking(NamedTuple):
    """How a pass runs over the samples: ``shards`` equal blocks (one per device when the
    data are sharded along samples), each summed in chunks of ``size`` rows; with
    ``outer_products``, the E-step pass of a ``"full"`` or ``"tied"`` fit builds its
    second-order features as all ``D * D`` products (``covariances.outer_features``)."""

    size: int
    shards: int = 1
    outer_products: bool = False


def is_sharded(chunk_size) -> bool:
    """Whether ``chunk_size`` (an int or a ``Chunking``) splits the samples over devices."""
    return isinstance(chunk_size, Chunking) and chunk_size.shards > 1


def uses_outer_products(chunk_size) -> bool:
    """Whether ``chunk_size`` (an int or a ``Chunking``) asks for outer-product features."""
    return isinstance(chunk_size, Chunking) and chunk_size.outer_products


def sample_shards(X) -> int:
    """Number of blocks the sample axis of a concrete ``jax.Array`` is sharded into (1 when
    it is not sharded, or not concrete)."""
    sharding = getattr(X, "sharding", None)
    if sharding is None or isinstance(X, jax.core.Tracer) or X.ndim == 0:
        return 1
    rows = sharding.shard_shape(X.shape)[0]
    return max(1, X.shape[0] // rows) if X.shape[0] % rows == 0 else 1


def chunked_sum(fn: Callable, rows: tuple, chunk_size):
    """``sum(fn(*chunk) for chunk in chunks of rows)`` as one ``lax.scan`` plus a tail.

    Parameters
    ----------
    fn : callable
        Maps arrays with a leading axis of ``n <= chunk_size`` rows to a pytree of arrays
        whose shapes do not depend on ``n``.
    rows : tuple of Array, each with leading axis N
    chunk_size : int or Chunking
        Static number of rows per chunk; a ``Chunking`` with ``shards > 1`` first splits
        the rows into that many equal blocks (which stay on their devices when the data are
        sharded along samples), sums each block in chunks and adds the blocks.

    Returns
    -------
    pytree
        The sum of ``fn`` over all chunks (full chunks in a scan, the remainder once).
    """
    n_samples = rows[0].shape[0]
    if isinstance(chunk_size, Chunking):
        shards = chunk_size.shards
        if shards > 1 and n_samples % shards == 0:
            blocks = tuple(r.reshape((shards, n_samples // shards) + r.shape[1:]) for r in rows)
            per_block = jax.vmap(lambda *b: chunked_sum(fn, b, chunk_size.size))(*blocks)
            return jax.tree.map(lambda t: jnp.sum(t, axis=0), per_block)
        chunk_size = chunk_size.size
    chunk_size = max(1, min(chunk_size, n_samples))
    n_full, tail = divmod(n_samples, chunk_size)
    if n_full == 1 and tail == 0:
        return fn(*rows)

    def take(start, size):
        return tuple(jax.lax.dynamic_slice_in_dim(r, start, size, axis=0) for r in rows)

    total = None
    if n_full > 0:
        first = fn(*take(0, chunk_size))

        def body(acc, index):
            part = fn(*take(index * chunk_size, chunk_size))
            return jax.tree.map(jnp.add, acc, part), None

        total, _ = jax.lax.scan(body, first, jnp.arange(1, n_full))
    if tail:
        part = fn(*tuple(r[n_full * chunk_size :] for r in rows))
        total = part if total is None else jax.tree.map(jnp.add, total, part)
    return total
