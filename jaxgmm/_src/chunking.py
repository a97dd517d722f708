"""Sums over samples computed chunk by chunk, so that per-sample features larger than ``X``
never exist for all samples at once."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Target number of elements of the widest per-chunk intermediate (features or responsibilities).
_CHUNK_ELEMENTS = 1 << 20


def auto_chunk_size(n_samples: int, width: int) -> int:
    """Rows per chunk so that an ``(rows, width)`` intermediate stays near 2**20 elements
    (a few MB, cache friendly), at least 256 rows, at most ``n_samples``."""
    rows = max(256, _CHUNK_ELEMENTS // max(width, 1))
    return max(1, min(n_samples, rows))


def chunked_sum(fn: Callable, rows: tuple, chunk_size: int):
    """``sum(fn(*chunk) for chunk in chunks of rows)`` as one ``lax.scan`` plus a tail.

    Parameters
    ----------
    fn : callable
        Maps arrays with a leading axis of ``n <= chunk_size`` rows to a pytree of arrays
        whose shapes do not depend on ``n``.
    rows : tuple of Array, each with leading axis N
    chunk_size : int
        Static number of rows per chunk.

    Returns
    -------
    pytree
        The sum of ``fn`` over all chunks (full chunks in a scan, the remainder once).
    """
    n_samples = rows[0].shape[0]
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
