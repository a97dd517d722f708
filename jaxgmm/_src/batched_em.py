"""EM under ``vmap``: over data sets, each fit stopping on its own; over fits of shared data,
one pass for the batch.

``jax.vmap`` of a ``while_loop`` runs the body for the whole batch until the last member has
finished, so a batch of fits costs as many batched iterations as its slowest fit needs. On
the CPU, where that work is paid in full, ``run_em_batchable`` batches data sets differently:
after each iteration it gathers the fits still running into the smallest of a few fixed batch
sizes (all, a quarter, a sixteenth, ...), runs one iteration on those alone and scatters them
back. Every fit takes exactly the iterations it would take alone.

Fits of the same data (restarts, screening candidates, cells of a model selection) share
the features of every pass; on the CPU their E-steps run as one ``wide_pass.wide_em_pass``
with the M-steps and the stopping rule per fit.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxgmm._src.chunking import is_sharded
from jaxgmm._src.em_loop import (
    advance,
    em_iteration,
    em_outputs,
    em_running,
    em_start,
    m_step,
    run_em,
    start_state,
)
from jaxgmm._src.wide_pass import prefers_wide_pass, wide_em_pass

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
    """``run_em`` with the same arguments, whose ``vmap`` on the CPU lets every fit of a batch
    of data sets (``xc`` batched) stop on its own, and runs a batch of fits of the same data
    and weights (restarts) with one ``wide_em_pass`` per iteration.

    Otherwise, and on an accelerator, it is the plain ``vmap`` of ``run_em``: on a GPU one
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
        n_components = params0.weights.shape[-1]
        # Restarts and candidates share the data and the weights (their centre is shared).
        wide = not (in_batched[1] or in_batched[2]) and prefers_wide_pass(
            params0.covariance_type, xc.shape[-1], n_components, chunk_size
        )
        compact = in_batched[1] and len(sizes) > 1 and jax.default_backend() == "cpu"
        if not (wide or compact):
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
        if wide:
            outputs = _shared_data(
                params0, *args[1:], data_axes=data_axes, max_iter=max_iter,
                chunk_size=chunk_size,
            )  # fmt: skip
        else:
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
        return _running(state, max_iter)

    def whole_batch(state):
        return _where_running(running(state), iterate(state, data), state)

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


def _running(state, max_iter: int) -> jax.Array:
    """Which fits of a batched ``EMState`` take another iteration, shape (B,)."""
    return jax.vmap(lambda s: em_running(s, max_iter))(state)


def _where_running(keep, new, old):
    """The batched state ``new`` for the fits where ``keep`` (shape (B,)), else ``old``."""
    return jax.tree.map(
        lambda n, o: jnp.where(keep.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old
    )


def _shared_data(params0, xc, weights, tol, reg_covar, active, *, data_axes, max_iter, chunk_size):
    """The EM loops of a batch of fits of the same data ``xc`` (restarts, candidates): every
    iteration is the batch's M-steps then one ``wide_em_pass`` for all of them. Fits that
    have stopped keep their state while the others run (as under a plain ``vmap``).

    ``params0`` has a leading batch axis; ``(xc, weights, tol, reg_covar, active)`` are
    batched along ``data_axes`` (``xc`` and ``weights`` never)."""
    _, _, tol_axis, reg_axis, active_axis = data_axes
    total_weight = jnp.sum(weights)

    def evaluate(params):
        moments, totals = wide_em_pass(params, xc, weights, chunk_size)
        return moments, totals / total_weight

    def step(state):
        new_params = jax.vmap(m_step, in_axes=(0, reg_axis, active_axis))(state, reg_covar, active)
        moments, means = evaluate(new_params)
        new = jax.vmap(advance, in_axes=(0, 0, 0, 0, tol_axis))(
            state, new_params, moments, means, tol
        )
        return _where_running(_running(state, max_iter), new, state)

    state = jax.vmap(lambda p, m, mean: start_state(p, m, mean, max_iter))(
        params0, *evaluate(params0)
    )
    state = jax.lax.while_loop(lambda s: jnp.any(_running(s, max_iter)), step, state)
    return jax.vmap(em_outputs, in_axes=(0, None))(state, weights)
