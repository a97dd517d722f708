"""Starting points for EM: k-means++ seeding, k-means (Lloyd), random responsibilities and
random data points. All jittable; the key is the only source of randomness."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxgmm._src import covariances as cov
from jaxgmm._src import products, validation
from jaxgmm._src.chunking import chunked_sum, fit_chunk_size, is_sharded
from jaxgmm._src.em import weighted_moments
from jaxgmm._src.model import GMM

HIGHEST = jax.lax.Precision.HIGHEST
_LLOYD_MAX_ITER = 100
# k-means++ seeding for at most this many components is unrolled instead of a fori_loop.
_UNROLLED_SEEDS = 8


def _squared_distances(xc: jax.Array, centers: jax.Array) -> jax.Array:
    """``||x_n - c_k||^2``, shape (N, K), clamped at zero."""
    if xc.shape[1] <= products.SMALL_CONTRACTION:  # elementwise: exact and fast for small D
        return sum(jnp.square(xc[:, d, None] - centers[:, d]) for d in range(xc.shape[1]))
    cross = jnp.matmul(xc, centers.T, precision=HIGHEST)
    d2 = jnp.sum(xc * xc, axis=1)[:, None] - 2.0 * cross + jnp.sum(centers * centers, axis=1)
    return jnp.maximum(d2, 0.0)


def _rows(xc: jax.Array, index: jax.Array, *, gather: bool = False) -> jax.Array:
    """``xc[index]``, shape index.shape + (D,): a gather when ``gather``, else a masked sum
    over samples.

    Unlike a gather, a sum over the sample axis stays local when ``xc`` is sharded along
    samples (each device adds its rows, then a small all-reduce), so ``xc`` is never gathered.
    """
    if gather:
        return xc[index]
    hits = jnp.arange(xc.shape[0]) == jnp.asarray(index)[..., None]  # (..., N)
    if xc.shape[1] <= products.SMALL_CONTRACTION:
        columns = [jnp.sum(jnp.where(hits, xc[:, d], 0.0), axis=-1) for d in range(xc.shape[1])]
        return jnp.stack(columns, axis=-1)
    return jnp.einsum("...n,nd->...d", hits.astype(xc.dtype), xc, precision=HIGHEST)


def _weighted_choice_mass(weights, scores):
    """Unnormalised probabilities ``weights * scores``; falls back to ``weights`` when every
    score is zero (all points already coincide with a center)."""
    mass = weights * scores
    return jnp.where(jnp.sum(mass) > 0, mass, weights)


# Rows per block of the two-level inverse-CDF sampling below: small blocks for small data
# (batched under vmap, the within-block work dominates), larger ones for large data (the
# block totals dominate). Measured on 1,000 x 500 and 1,000,000 samples.
_SAMPLING_BLOCK = 64
_SMALL_DATA_BLOCK = 16
_SMALL_DATA = 4096
# Largest (targets x blocks) comparison matrix for which the search compares all pairs.
_COMPARE_ALL_MAX = 1 << 16


def _sample_proportional(key, mass, n: int) -> jax.Array:
    """``n`` indices drawn with replacement with probabilities proportional to ``mass``
    (shape (N,), non-negative, positive sum), shape (n,).

    Inverse-CDF sampling in two levels: the samples are split into blocks (of 16 samples up
    to 4,096 samples, else of 64), a block is drawn by the cumulative sum of the block totals,
    then a sample within it by the cumulative sum of its masses. One pass over ``mass`` (the
    block totals) replaces a cumulative sum over all of it, which XLA runs as several passes;
    ``jax.random.categorical`` would draw ``n * N`` Gumbel variates. An index of zero mass is
    never returned.
    """
    n_samples = mass.shape[0]
    size = min(_SMALL_DATA_BLOCK if n_samples <= _SMALL_DATA else _SAMPLING_BLOCK, n_samples)
    n_full, tail = divmod(n_samples, size)
    # Block totals without padding ``mass`` (a copy): the full blocks, then the short tail.
    # Small blocks add their strided columns elementwise (a batched reduction along a
    # 16-sample axis is slow); large data reduce each block.
    if n_samples <= _SMALL_DATA:
        totals = [sum(mass[j : n_full * size : size] for j in range(size))]
    else:
        totals = [jnp.sum(mass[: n_full * size].reshape(n_full, size), axis=1)]
    if tail:
        totals.append(jnp.sum(mass[n_full * size :])[None])
    block_mass = jnp.concatenate(totals)
    n_blocks = block_mass.shape[0]
    upper = jnp.cumsum(block_mass)
    targets = jax.random.uniform(key, (n,), mass.dtype) * upper[-1]
    # Rounding can put a target at the very top, or in a block's empty tail: fall back to the
    # last block with mass, and to the last sample with mass in the block.
    last_block = jnp.max(jnp.where(block_mass > 0, jnp.arange(n_blocks), 0))
    # A binary search is a loop of tiny steps; for few blocks, counting the block ends at or
    # below each target (the same index) is one elementwise pass.
    method = "compare_all" if n * n_blocks <= _COMPARE_ALL_MAX else "scan"
    block = jnp.minimum(jnp.searchsorted(upper, targets, side="right", method=method), last_block)
    remainder = jnp.maximum(targets - (upper[block] - block_mass[block]), 0.0)
    # Each chosen block's masses through a window of `size` samples that ends inside
    # ``mass``; for the tail block the window starts earlier, and the samples before the block
    # count with mass zero.
    start = jnp.minimum(block * size, n_samples - size)
    offsets = jnp.arange(size)
    rows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(mass, s, size))(start)  # (n, size)
    rows = jnp.where(start[:, None] + offsets >= (block * size)[:, None], rows, 0.0)
    last_in_row = jnp.max(jnp.where(rows > 0, offsets, 0), axis=1)
    within = jnp.sum(jnp.cumsum(rows, axis=1) <= remainder[:, None], axis=1)
    return start + jnp.minimum(within, last_in_row)


def _distance_columns(xc, centers) -> list:
    """``||x_n - c_k||^2`` as one (N,) vector per center: elementwise for small D (a batched
    (N, K) matrix with a tiny K is slow to reduce along N), else the columns of the product
    form."""
    if xc.shape[1] <= products.SMALL_CONTRACTION:
        return [
            sum(jnp.square(xc[:, d] - centers[k, d]) for d in range(xc.shape[1]))
            for k in range(centers.shape[0])
        ]
    matrix = _squared_distances(xc, centers)
    return [matrix[:, k] for k in range(centers.shape[0])]


def _pick(vectors, index) -> jax.Array:
    """``vectors[index]`` for a traced scalar ``index``, as a chain of selects (a dynamic
    slice of a batched stack is slow under ``vmap``)."""
    picked = vectors[0]
    for j in range(1, len(vectors)):
        picked = jnp.where(index == j, vectors[j], picked)
    return picked


def kmeans_plusplus(key, xc, weights, n_components: int, *, gather_rows: bool = False) -> jax.Array:
    """Greedy k-means++ seeding (``2 + floor(log K)`` candidates per step).

    Parameters
    ----------
    key : PRNG key
    xc : Array, shape (N, D)
    weights : Array, shape (N,)
        Sample weights; a zero-weight sample is never chosen.
    n_components : int
    gather_rows : bool
        Read the chosen rows by a gather (fast for small, unsharded data) instead of a masked
        sum over samples, which keeps data sharded along samples local.

    Returns
    -------
    Array, shape (K, D)
        The seeds, rows of ``xc``.
    """
    n_trials = 2 + int(math.log(n_components))
    key, first_key = jax.random.split(key)
    first = _sample_proportional(first_key, weights, 1)[0]
    first_row = _rows(xc, first, gather=gather_rows)
    centers = jnp.zeros((n_components, xc.shape[1]), xc.dtype).at[0].set(first_row)
    closest = _squared_distances(xc, first_row[None])[:, 0]

    def add_center(i, carry):
        centers, closest, key = carry
        key, trial_key = jax.random.split(key)
        mass = _weighted_choice_mass(weights, closest)
        candidates = _sample_proportional(trial_key, mass, n_trials)
        candidate_rows = _rows(xc, candidates, gather=gather_rows)
        # One (N,) vector per candidate: the closest squared distance if it were added.
        trial_closest = [
            jnp.minimum(closest, distances) for distances in _distance_columns(xc, candidate_rows)
        ]
        potential = jnp.stack([jnp.sum(weights * trial) for trial in trial_closest])
        best = jnp.argmin(potential)
        centers = centers.at[i].set(candidate_rows[best])
        return centers, _pick(trial_closest, best), key

    carry = (centers, closest, key)
    if n_components <= _UNROLLED_SEEDS:  # a short loop runs faster written out
        for i in range(1, n_components):
            carry = add_center(i, carry)
    else:
        carry = jax.lax.fori_loop(1, n_components, add_center, carry)
    centers, _, _ = carry
    return centers


def lloyd(xc, weights, centers, max_iter: int = _LLOYD_MAX_ITER, active=None) -> jax.Array:
    """Weighted Lloyd iterations in a ``lax.while_loop`` until no label changes.

    An empty cluster keeps its previous center.

    Parameters
    ----------
    xc : Array, shape (N, D)
    weights : Array, shape (N,)
    centers : Array, shape (K, D)
        Starting centers.
    active : Array, shape (K,), bool, optional
        Centers that may receive samples (the others are padding).

    Returns
    -------
    Array, shape (K, D)
    """
    n_components = centers.shape[0]

    def assign(c):
        return _nearest(xc, c, active)

    def step(state):
        centers, labels, it, _ = state
        onehot = jax.nn.one_hot(labels, n_components, dtype=xc.dtype) * weights[:, None]
        counts = jnp.sum(onehot, axis=0)
        sums = jnp.matmul(onehot.T, xc, precision=HIGHEST)
        safe = jnp.where(counts > 0, counts, 1.0)[:, None]
        centers = jnp.where(counts[:, None] > 0, sums / safe, centers)
        new_labels = assign(centers)
        return centers, new_labels, it + 1, jnp.any(new_labels != labels)

    def keep_going(state):
        _, _, it, changed = state
        return changed & (it < max_iter)

    state = (centers, assign(centers), jnp.asarray(0), jnp.asarray(True))
    centers, _, _, _ = jax.lax.while_loop(keep_going, step, state)
    return centers


def _nearest(xc, centers, active=None):
    distances = _squared_distances(xc, centers)
    if active is not None:
        distances = jnp.where(active, distances, jnp.inf)
    return jnp.argmin(distances, axis=1)


def hard_responsibilities(xc, centers, active=None):
    """One-hot responsibilities, shape (N, K): each sample to its nearest (active) center."""
    labels = _nearest(xc, centers, active)
    return jax.nn.one_hot(labels, centers.shape[0], dtype=xc.dtype)


def initial_centers(
    key, xc, weights, n_components: int, method: str, active=None, seeds=None, gather_rows=False
) -> jax.Array:
    """Centers, shape (K, D), of the methods that assign every sample to its nearest center:
    ``"kmeans++"`` (the k-means++ seeds), ``"kmeans"`` (k-means++ seeding, then Lloyd) and
    ``"random_from_data"`` (K distinct samples drawn at random). ``seeds`` (shape (K, D)),
    when given, replace the k-means++ seeding of the first two. ``gather_rows``: see
    ``kmeans_plusplus``."""
    if method == "random_from_data":
        index = jax.random.choice(
            key, xc.shape[0], (n_components,), replace=False, p=weights / jnp.sum(weights)
        )
        return _rows(xc, index, gather=gather_rows)
    if seeds is None:
        centers = kmeans_plusplus(key, xc, weights, n_components, gather_rows=gather_rows)
    else:
        centers = seeds
    if method == "kmeans":
        centers = lloyd(xc, weights, centers, active=active)
    return centers


def initial_responsibilities(
    key, xc, weights, n_components: int, method: str, active=None, seeds=None, gather_rows=False
) -> jax.Array:
    """Responsibilities, shape (N, K), from which the first M-step builds the start.

    ``"random"``: uniform random rows, normalised; the other methods: each sample to its
    nearest of ``initial_centers``. Components outside ``active`` (shape (K,), bool) receive
    no responsibility.
    """
    if method == "random":
        resp = jax.random.uniform(key, (xc.shape[0], n_components), dtype=xc.dtype)
        if active is not None:
            resp = resp * active
        return resp / jnp.sum(resp, axis=1, keepdims=True)
    centers = initial_centers(key, xc, weights, n_components, method, active, seeds, gather_rows)
    return hard_responsibilities(xc, centers, active)


def _nearest_center_moments(xc, weights, centers, covariance_type, chunk_size, active=None):
    """``weighted_moments`` of the one-hot responsibilities of the nearest centers, for a few
    features and components: one (n,) indicator vector per component instead of an (n, K)
    one-hot matrix, whose columns a batched (vmapped) reduction reads slowly."""
    n_components = centers.shape[0]

    def moments(x, w):
        distances = jnp.stack(_distance_columns(x, centers))  # (K, n)
        if active is not None:
            distances = jnp.where(active[:, None], distances, jnp.inf)
        labels = jnp.argmin(distances, axis=0)
        indicators = [jnp.where(labels == k, w, 0.0) for k in range(n_components)]
        return products.column_sums(indicators, cov.feature_columns(x, covariance_type))

    return chunked_sum(moments, (xc, weights), chunk_size)


def initialize_centered(
    key,
    xc,
    weights,
    n_components,
    covariance_type,
    method,
    reg_covar,
    chunk_size=None,
    active=None,
    seeds=None,
) -> GMM:
    """Initial mixture for centred data: responsibilities from ``method`` (from ``seeds``
    when given, see ``initial_responsibilities``), then an M-step."""
    width = cov.n_feature_columns(covariance_type, xc.shape[1])
    if chunk_size is None:
        chunk_size = fit_chunk_size(*xc.shape, n_components, covariance_type)
    # Small data read the chosen rows by a gather, unless known to be sharded (inside an
    # outer jit sharding is invisible, but at most 4,096 rows are cheap to gather anyway).
    gather_rows = not is_sharded(chunk_size) and xc.shape[0] <= _SMALL_DATA
    choice = (key, xc, weights, n_components, method, active, seeds, gather_rows)
    if method != "random" and products.is_small(width, n_components):
        centers = initial_centers(*choice)
        moments = _nearest_center_moments(xc, weights, centers, covariance_type, chunk_size, active)
    else:
        resp = initial_responsibilities(*choice)
        moments = weighted_moments(xc, weights, resp, covariance_type, chunk_size)
    return cov.params_from_moments(moments, covariance_type, reg_covar, active)


def init_params(
    key, X, K, *, covariance_type: str = "full", method: str = "kmeans++", reg_covar=1e-6
) -> GMM:
    """Initial parameters for EM.

    Parameters
    ----------
    key : PRNG key
    X : Array, shape (N, D) or (N,)
    K : int
        Number of components (static).
    covariance_type : {"full", "diag", "spherical", "tied"}
    method : {"kmeans++", "kmeans", "random", "random_from_data"}
        How to form the first responsibilities (see Notes).
    reg_covar : float
        Added to the diagonal of the covariances.

    Returns
    -------
    GMM

    Notes
    -----
    The seed-based methods assign every sample to its nearest seed and take one M-step, so
    the starting covariances describe the seed's Voronoi cell. (scikit-learn gives the seed
    points alone responsibility for ``"k-means++"`` and ``"random_from_data"``, which starts
    every covariance at ``reg_covar * I``.)

    Examples
    --------
    >>> import jax
    >>> from jaxgmm import init_params
    >>> X = jax.random.normal(jax.random.key(0), (100, 2))
    >>> init_params(jax.random.key(1), X, 3).means.shape
    (3, 2)
    """
    validation.check_key(key)
    X = validation.as_data(X, "X")
    K = validation.check_n_components(K, X.shape[0])
    validation.check_covariance_type(covariance_type)
    if method not in validation.INIT_METHODS:
        raise ValueError(f"method must be one of {validation.INIT_METHODS}; got {method!r}")
    validation.check_reg_covar(reg_covar, X.dtype)
    weights = jnp.ones((X.shape[0],), X.dtype)
    center = jnp.mean(X, axis=0)
    params = initialize_centered(
        key, X - center, weights, K, covariance_type, method, jnp.asarray(reg_covar, X.dtype)
    )
    return cov.shift_means(params, center)
