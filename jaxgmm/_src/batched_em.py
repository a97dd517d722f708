"""EM under ``vmap`` over data sets, with each fit stopping on its own.

``jax.vmap`` of a ``while_loop`` runs the body for the whole batch until the last member has
finished, so a batch of fits costs as many batched iterations as its slowest fit needs. On
the CPU, where that work is paid in full, ``run_em_batchable`` batches differently: after each
iteration it gathers the fits still running into the smallest of a few fixed batch sizes
(all, a quarter, a sixteenth, ...), runs one iteration on those alone and scatters them back.
Every fit takes exactly the iterations it would take alone.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxgmm._src.chunking import is_sharded
from jaxgmm._src.em_loop import em_iteration, em_outputs, em_running, em_start, run_em

# Batch sizes shrink by this factor, down to a batch of at most _SMALLEST_SLOTS fits.
_SHRINK = 4
_SMALLEST_SLOTS = 16


def slot_sizes(batch: int) -> tuple[int, ...]:
    """Decreasing batch sizes ``(batch, ceil(batch / 4), ...)``, the last at most 16."""
    sizes = [batch]
    while sizes[-1] > _SMALLEST_SLOTS:
        sizes.append(math.ceil(sizes[-1] / _SHRINK))
    return tuple(sizes)


def run_em_batchable(
    params0, xc, weights, tol, reg_covar, max_iter, chunk_size, progress=None, active=None
):
    """``run_em`` with the same arguments, whose ``vmap`` over data sets (``xc`` batched) lets
    every fit stop on its own on the CPU.

    Under a ``vmap`` with unbatched data (restarts sharing one data set) or on an accelerator
    it is the plain ``vmap`` of ``run_em``: restarts share one wide product, and on a GPU one
    iteration of the whole batch costs little more than one of a few fits. With ``progress``
    (one callback per iteration) or data sharded over devices it is ``run_em`` itself.
    """
    if progress is not None or is_sharded(chunk_size):
        return run_em(params0, xc, weights, tol, reg_covar, max_iter, chunk_size, progress, active)
    plain = functools.partial(run_em, max_iter=max_iter, chunk_size=chunk_size)

    @jax.custom_batching.custom_vmap
    def loop(params0, xc, weights, tol, reg_covar, active):
        return plain(params0, xc, weights, tol, reg_covar, active=active)

    @loop.def_vmap
    def loop_batched(batch, in_batched, params0, xc, weights, tol, reg_covar, active):
        args = (params0, xc, weights, tol, reg_covar, active)
        sizes = slot_sizes(batch)
        if not in_batched[1] or len(sizes) == 1 or jax.default_backend() != "cpu":
            axes = [jax.tree.map(lambda b: 0 if b else None, flag) for flag in in_batched]
            outputs = jax.vmap(
                lambda *a: plain(*a[:5], active=a[5]), in_axes=tuple(axes)
            )(*args)  # fmt: skip
            return outputs, jax.tree.map(lambda _: True, outputs)
        params0 = jax.tree.map(
            lambda a, b: a if b else jnp.broadcast_to(a, (batch,) + jnp.shape(a)),
            params0,
            in_batched[0],
        )
        # Data shared by every fit (unit weights, one tol) stay unbatched: no (batch, N)
        # copies to read in every pass.
        data_axes = tuple(jax.tree.map(lambda b: 0 if b else None, flag) for flag in in_batched[1:])
        outputs = _compacted(
            params0, *args[1:], data_axes=data_axes, sizes=sizes, max_iter=max_iter,
            chunk_size=chunk_size,
        )  # fmt: skip
        return outputs, jax.tree.map(lambda _: True, outputs)

    return loop(params0, xc, weights, tol, reg_covar, active)


def _compacted(
    params0, xc, weights, tol, reg_covar, active, *, data_axes, sizes, max_iter, chunk_size
):
    """The EM loops of a batch of fits (``params0`` with a leading batch axis, the data
    ``(xc, weights, tol, reg_covar, active)`` batched along the axes ``data_axes``: 0 or
    None per leaf), each iteration run on the smallest slot size in ``sizes`` that holds the
    fits still running."""
    batch = sizes[0]
    data = (xc, weights, tol, reg_covar, active)
    state = jax.vmap(
        lambda p, x, w: em_start(p, x, w, max_iter, chunk_size), in_axes=(0, *data_axes[:2])
    )(params0, xc, weights)

    def iterate(state, data):
        return jax.vmap(
            lambda s, x, w, t, r, a: em_iteration(s, x, w, t, r, chunk_size, a),
            in_axes=(0, *data_axes),
        )(state, *data)

    def take(rows, data):
        return tuple(
            jax.tree.map(lambda a, axis: a if axis is None else a[rows], part, axes)
            for part, axes in zip(data, data_axes)
        )

    def running(state):
        return jax.vmap(lambda s: em_running(s, max_iter))(state)

    def whole_batch(state):
        new = iterate(state, data)
        keep = running(state)
        return jax.tree.map(
            lambda n, o: jnp.where(keep.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, state
        )

    def slots(size, state):
        # The first `size` running fits; unused slots point past the end, and their
        # results are dropped by the scatter.
        index = jnp.nonzero(running(state), size=size, fill_value=batch)[0]
        rows = jnp.minimum(index, batch - 1)
        new = iterate(jax.tree.map(lambda a: a[rows], state), take(rows, data))
        return jax.tree.map(lambda a, n: a.at[index].set(n, mode="drop"), state, new)

    branches = [whole_batch] + [functools.partial(slots, size) for size in sizes[1:]]
    thresholds = jnp.asarray(sizes[1:])

    def step(state):
        count = jnp.sum(running(state))
        return jax.lax.switch(jnp.sum(count <= thresholds), branches, state)

    state = jax.lax.while_loop(lambda s: jnp.any(running(s)), step, state)
    return jax.vmap(em_outputs, in_axes=(0, data_axes[1]))(state, weights)
