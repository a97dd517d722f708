"""``fit_stream``: exact EM over data that does not fit in memory.

The data are read from a *source* (an array-like such as a ``numpy.memmap``, or a zero-argument
callable returning a fresh iterator of ``(n, D)`` chunks) once per EM iteration. Each pass re-cuts
the chunks into fixed ``(batch_size, D)`` batches (the last one padded with zero-weight rows) and
adds their sufficient statistics with one compiled update, so a pass never recompiles.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import covariances as cov
from jaxgmm._src import rounding, validation
from jaxgmm._src.chunking import fit_chunk_size
from jaxgmm._src.em_loop import em_pass
from jaxgmm._src.fitting import failed_start
from jaxgmm._src.initialization import initialize_centered
from jaxgmm._src.model import GMM, FitResult

# --- sources: array-likes and callables returning fresh iterators of (n, D) chunks


class StreamSource:
    """A uniform view of a stream source: ``chunks()`` yields ``(n, D)`` numpy arrays.

    ``reiterable`` is False for a plain iterator or generator, which can be read once.
    """

    def __init__(self, source, name: str = "source", allow_once: bool = False):
        self.name = name
        self.n_rows = None
        self._array = None
        self._factory = None
        self._once = None
        if isinstance(source, GMM):
            raise TypeError(f"{name} must be an array-like or a callable; got a GMM")
        if isinstance(source, (np.ndarray, jax.Array)) or (
            hasattr(source, "shape") and hasattr(source, "__getitem__") and hasattr(source, "dtype")
        ):
            if len(source.shape) not in (1, 2):
                raise ValueError(
                    f"{name} must be 1-D (N,) or 2-D (N, D); got shape {tuple(source.shape)}"
                )
            self._array = source
            self.n_rows = int(source.shape[0])
        elif callable(source):
            self._factory = source
        elif isinstance(source, (list, tuple)) and _as_array_or_none(source) is not None:
            self._array = _as_array_or_none(source)
            self.n_rows = self._array.shape[0]
        elif isinstance(source, Iterator):
            if not allow_once:
                raise TypeError(
                    f"{name} is an iterator, which can be read only once, but EM reads the data "
                    "once per iteration: pass a zero-argument callable returning a fresh "
                    "iterator (e.g. lambda: read_chunks(path)) or an array-like"
                )
            self._once = source
        elif isinstance(source, (list, tuple)):
            chunks = source
            self._factory = lambda: iter(chunks)
        else:
            raise TypeError(
                f"{name} must be an array-like (a numpy.memmap included) or a zero-argument "
                f"callable returning an iterator of (n, D) chunks; got {type(source).__name__}"
            )

    @property
    def reiterable(self) -> bool:
        return self._once is None

    def chunks(self, rows_per_chunk: int) -> Iterator[np.ndarray]:
        if self._array is not None:
            array = self._array
            for start in range(0, self.n_rows, rows_per_chunk):
                yield np.asarray(array[start : start + rows_per_chunk])
            return
        if self._once is not None:
            iterator, self._once = self._once, iter(())
        else:
            iterator = self._factory()
            if not isinstance(iterator, Iterator):
                try:
                    iterator = iter(iterator)
                except TypeError:
                    raise TypeError(
                        f"{self.name}() must return an iterator of (n, D) chunks; got "
                        f"{type(iterator).__name__}"
                    ) from None
        yield from (np.asarray(chunk) for chunk in iterator)


def _as_array_or_none(values):
    """A list of rows or numbers as a 1-D or 2-D numeric array; None for a list of chunks."""
    try:
        array = np.asarray(values)
    except ValueError:  # ragged: a list of chunks of different lengths
        return None
    if array.ndim in (1, 2) and array.dtype != object:
        return array
    return None


def compute_dtype(dtype) -> np.dtype:
    """The float dtype JAX computes in for data of ``dtype`` (``validation.compute_dtype``:
    integers -> default float, float16 and bfloat16 -> float32)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "O" or not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_):
        raise TypeError(f"source must be numeric, got dtype {dtype}")
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"source must be real, got dtype {dtype}")
    return np.dtype(jax.dtypes.canonicalize_dtype(validation.compute_dtype(dtype)))


def as_rows(chunk: np.ndarray, n_features: int | None, name: str) -> np.ndarray:
    if chunk.ndim == 1:
        chunk = chunk[:, None]
    if chunk.ndim != 2:
        raise ValueError(f"{name} yielded a chunk of shape {chunk.shape}; chunks must be (n, D)")
    if n_features is not None and chunk.shape[1] != n_features:
        raise ValueError(
            f"{name} yielded a chunk with D = {chunk.shape[1]} features; earlier chunks had "
            f"D = {n_features}"
        )
    return chunk


def fixed_batches(
    source: StreamSource, batch_size: int, n_features: int, dtype
) -> Iterator[tuple[np.ndarray, int]]:
    """Re-cut a source into ``(batch_size, D)`` arrays of ``dtype``.

    Yields ``(batch, n_valid)``: the first ``n_valid`` rows are data, the rest (only in the
    last batch) are zeros, to be given weight zero. A batch is a fresh array or a view of
    the source's rows (never a buffer that is reused).
    """
    buffer = np.empty((batch_size, n_features), dtype)
    filled = 0
    for chunk in source.chunks(batch_size):
        chunk = as_rows(chunk, n_features, source.name)
        start = 0
        n = chunk.shape[0]
        if filled == 0 and n == batch_size:  # the common case for array sources: no copy here
            yield np.asarray(chunk, dtype=dtype), batch_size
            continue
        while start < n:
            take = min(batch_size - filled, n - start)
            buffer[filled : filled + take] = chunk[start : start + take]
            filled += take
            start += take
            if filled == batch_size:
                yield buffer, batch_size
                buffer = np.empty((batch_size, n_features), dtype)
                filled = 0
    if filled:
        buffer[filled:] = 0
        yield buffer, filled


# --- the first pass: size, mean, a finite check and a uniform reservoir sample


def default_sample_size(n_components: int) -> int:
    """Rows in the initialisation sample: ``max(10_000, 100 * K)``."""
    return max(10_000, 100 * n_components)


def scan_source(source: StreamSource, sample_size: int, rng: np.random.Generator, rows: int):
    """One pass over the source.

    Returns
    -------
    n_rows : int
    n_features : int
    dtype : numpy dtype
        The computation dtype.
    mean : ndarray, shape (D,), float64
    spread : ndarray, shape (D,), float64
        The per-feature standard deviation (sums taken around the first row, which keeps
        them accurate for data far from the origin).
    sample : ndarray, shape (min(sample_size, n_rows), D)
        A uniform random sample without replacement (bottom-k of uniform random keys), in the
        order the rows arrived.
    """
    n_rows = 0
    n_features = None
    dtype = None
    total = None
    squares = None
    shift = None
    sample = None
    sample_keys = np.empty((0,))
    sample_order = np.empty((0,), np.int64)
    for chunk in source.chunks(rows):
        chunk = as_rows(chunk, n_features, source.name)
        if dtype is None:
            dtype = compute_dtype(chunk.dtype)
            n_features = chunk.shape[1]
            if n_features == 0:
                raise ValueError(f"{source.name} has D = 0 features")
            total = np.zeros((n_features,), np.float64)
            squares = np.zeros((n_features,), np.float64)
            sample = np.empty((0, n_features), dtype)
        n = chunk.shape[0]
        if n == 0:
            continue
        chunk64 = chunk.astype(np.float64, copy=False)
        if not np.all(np.isfinite(chunk64)):
            raise ValueError(f"{source.name} contains NaN or infinite values")
        if shift is None:
            shift = chunk64[0].copy()
        shifted = chunk64 - shift
        total += shifted.sum(axis=0)
        squares += np.einsum("nd,nd->d", shifted, shifted)
        if sample_size > 0:
            keys = rng.random(n)
            keep = np.arange(n)
            if sample.shape[0] >= sample_size:
                keep = np.flatnonzero(keys < sample_keys.max())
            if keep.size:
                sample = np.concatenate([sample, np.asarray(chunk[keep], dtype)])
                sample_keys = np.concatenate([sample_keys, keys[keep]])
                sample_order = np.concatenate([sample_order, n_rows + keep])
                if sample.shape[0] > sample_size:
                    best = np.argpartition(sample_keys, sample_size - 1)[:sample_size]
                    best = best[np.argsort(sample_order[best])]
                    sample, sample_keys, sample_order = (
                        sample[best],
                        sample_keys[best],
                        sample_order[best],
                    )
        n_rows += n
    if n_rows == 0:
        raise ValueError(f"{source.name} is empty: it yielded no rows")
    mean_shifted = total / n_rows
    spread = np.sqrt(np.maximum(squares / n_rows - mean_shifted**2, 0.0))
    return n_rows, n_features, dtype, shift + mean_shifted, spread, sample


def numpy_rng(key) -> np.random.Generator:
    """A numpy ``Generator`` seeded from a JAX PRNG key."""
    seed = np.asarray(jax.random.bits(key, (4,), jnp.uint32))
    return np.random.default_rng([int(s) for s in seed])


# --- compiled pieces, shared by every pass (fixed shapes: no recompiles)


def _batch_weights(n_valid, batch_size: int, dtype):
    return (jnp.arange(batch_size) < n_valid).astype(dtype)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def stream_update(params_c: GMM, center, moments, total, x, n_valid, chunk_size: int):
    """Add one batch's statistics: ``em_pass`` on ``x - center`` with the rows past
    ``n_valid`` weighted zero. Returns the new ``(moments (K, P), total log-likelihood)``."""
    w = _batch_weights(n_valid, x.shape[0], x.dtype)
    xc = jnp.where(w[:, None] > 0, x - center, 0.0)
    batch_moments, batch_total = em_pass(params_c, xc, w, chunk_size)
    return moments + batch_moments, total + batch_total


_m_step = jax.jit(cov.params_from_moments, static_argnames=("covariance_type",))

_initialize = jax.jit(
    initialize_centered,
    static_argnames=("n_components", "covariance_type", "method", "chunk_size"),
)


def stream_pass(source: StreamSource, params_c: GMM, center, batch_size, n_features, chunk_size):
    """One pass over the source: ``(moments (K, P), total log-likelihood, rows read)`` at
    ``params_c``.

    At most two batches are in flight: the host reads batch ``i + 1`` while batch ``i``
    is computed, and memory stays bounded by a few batches.
    """
    dtype = params_c.means.dtype
    width = params_c.means.shape[-1]
    n_quad = cov.n_quadratic_features(params_c.covariance_type, width)
    moments = jnp.zeros((params_c.means.shape[0], n_quad + width + 1), dtype)
    total = jnp.zeros((), dtype)
    previous = None
    rows = 0
    for batch, n_valid in fixed_batches(source, batch_size, n_features, dtype):
        moments, total = stream_update(
            params_c, center, moments, total, jnp.asarray(batch), n_valid, chunk_size
        )
        rows += n_valid
        if previous is not None:
            previous.block_until_ready()
        previous = total
    return moments, total, rows


def fit_stream(
    key,
    source,
    K: int,
    *,
    batch_size: int,
    covariance_type: str = "full",
    init: str = "kmeans++",
    max_iter: int = 100,
    tol=1e-3,
    reg_covar=1e-6,
    init_params: GMM | None = None,
    sample_size: int | None = None,
    chunk_size: int | None = None,
    progress: Callable | None = None,
    verbose: bool = False,
) -> FitResult:
    """Fit a Gaussian mixture by exact EM over data read from a source, pass by pass.

    The result is that of ``jaxgmm.fit`` on the concatenated data (to floating-point
    rounding) while only a few ``(batch_size, D)`` batches are in memory at a time: every
    EM iteration is one pass over the source, summing the sufficient statistics batch by batch
    with one compiled update (fixed batch shape, the last batch padded with zero-weight rows,
    so nothing recompiles between batches or passes).

    Parameters
    ----------
    key : PRNG key
        Seeds the initialisation sample and the initialisation method.
    source : array-like of shape (N, D) or (N,), or callable
        An array (a ``numpy.memmap`` from ``numpy.load(path, mmap_mode="r")`` included, read
        ``batch_size`` rows at a time), or a zero-argument callable returning a fresh iterator
        of ``(n, D)`` chunks (any ``n``; re-cut into batches here). It is read ``max_iter + 2``
        times at most, and must yield the same rows in every pass.
    K : int
        Number of components.
    batch_size : int
        Rows per compiled update; memory is a few batches of ``(batch_size, D)`` plus the
        per-chunk intermediates of ``chunk_size`` rows.
    covariance_type : {"full", "diag", "spherical", "tied"}
    init : {"kmeans++", "kmeans", "random", "random_from_data"}
        Applied to the initialisation sample; ignored when ``init_params`` is given.
    max_iter : int
        Maximum number of EM iterations (M-steps), at least 1.
    tol : float
        Stop when the mean per-sample log-likelihood changes by less than ``tol``; ``tol=0``
        runs exactly ``max_iter`` iterations.
    reg_covar : float
        Non-negative value added to the diagonal of every covariance.
    init_params : GMM, optional
        Starting parameters; then no sample is drawn.
    sample_size : int, optional
        Rows of the uniform random sample (drawn in the first pass by reservoir sampling) that
        ``init`` runs on; default ``max(10_000, 100 * K)``, at most ``N``.
    chunk_size : int, optional
        Rows per chunk of the per-sample intermediates inside one batch; chosen from the
        shapes when omitted.
    progress : callable, optional
        Called as ``progress(n_iter, mean_log_likelihood)`` after every iteration (Python int
        and float).
    verbose : bool
        Print one line per pass (time, rows per second, mean log-likelihood) to stderr.

    Returns
    -------
    FitResult
        As from ``jaxgmm.fit``: ``params``, ``log_likelihood`` (total, at ``params``),
        ``n_iter``, ``converged``, ``history`` (shape (max_iter,), NaN past ``n_iter``) and
        ``all_log_likelihoods`` (shape (1,)).

    Notes
    -----
    The first pass counts the rows, computes the data mean and per-feature standard deviation
    (in float64), checks that every value is finite and draws the initialisation sample; the
    data are centred on that mean inside the compiled update, as ``jaxgmm.fit`` centres them.
    Then, as in ``fit``, the first EM pass is an E-step at the initial parameters and each
    later pass an E-step at the parameters of the last M-step, so ``max_iter`` iterations read
    the source ``max_iter + 2`` times.

    As in an eager ``fit``, a start whose log-likelihood is not finite raises ``ValueError``,
    and a float32 fit warns (``RuntimeWarning``) when rounding can blur its components
    (estimated from the standard deviations of the first pass).

    The EM loop is a Python loop over passes, not a ``lax.while_loop``: the data live outside
    JAX and are read between compiled steps, so ``fit_stream`` cannot run under ``jit`` or
    ``vmap`` (use ``jaxgmm.fit`` for that), and it has no ``n_init``.

    Examples
    --------
    >>> import numpy as np, jax
    >>> from jaxgmm import fit_stream
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 6.0])
    >>> rng.shuffle(X)
    >>> chunks = lambda: (X[i : i + 100] for i in range(0, len(X), 100))
    >>> result = fit_stream(jax.random.key(0), chunks, 2, batch_size=128)
    >>> sorted(round(float(w), 1) for w in result.params.weights)
    [0.5, 0.5]
    """
    validation.check_key(key)
    batch_size = validation.check_positive_int(batch_size, "batch_size")
    validation.check_covariance_type(covariance_type)
    validation.check_init(init)
    max_iter = validation.check_positive_int(max_iter, "max_iter")
    validation.check_tol(tol)
    validation.check_reg_covar(reg_covar)
    K = validation.check_n_components(K, sys.maxsize)  # type and sign; N is checked below
    validation.check_progress(progress)
    if sample_size is None:
        sample_size = default_sample_size(int(K))
    else:
        sample_size = validation.check_positive_int(sample_size, "sample_size")
    stream = StreamSource(source)
    key_sample, key_init = jax.random.split(key)

    start = time.perf_counter()
    n_rows, n_features, dtype, mean, spread, sample = scan_source(
        stream, 0 if init_params is not None else sample_size, numpy_rng(key_sample), batch_size
    )
    validation.check_reg_covar(reg_covar, dtype)
    K = validation.check_n_components(K, n_rows)
    if verbose:
        _report(f"scan: N={n_rows:,} D={n_features}", n_rows, time.perf_counter() - start)
    center = jnp.asarray(mean, dtype)
    reg = jnp.asarray(reg_covar, dtype)
    if chunk_size is None:
        chunk_size = fit_chunk_size(batch_size, n_features, K, covariance_type)
    else:
        chunk_size = validation.check_positive_int(chunk_size, "chunk_size")

    if init_params is not None:
        start_params = validation.check_init_params(
            init_params, n_features, K, covariance_type, dtype
        )
        params = cov.shift_means(start_params, -center)
    else:
        if sample.shape[0] < K:
            raise ValueError(f"sample_size = {sample.shape[0]} is smaller than K = {K}")
        xs = jnp.asarray(sample - np.asarray(center), dtype)
        params = _initialize(
            key_init,
            xs,
            jnp.ones((xs.shape[0],), dtype),
            n_components=K,
            covariance_type=covariance_type,
            method=init,
            reg_covar=reg,
        )

    def one_pass(params_c, label):
        t = time.perf_counter()
        moments, total, rows = stream_pass(
            stream, params_c, center, batch_size, n_features, chunk_size
        )
        if rows != n_rows:
            raise ValueError(
                f"{stream.name} gave {rows} rows in this pass but {n_rows} in the first: "
                "exact EM needs the same rows on every pass"
            )
        mean_ll = total / float(n_rows)  # a Python int above 2**31 overflows int32
        if verbose:
            _report(f"{label}: mean log-likelihood {float(mean_ll):.6g}", n_rows, None, t)
        return moments, mean_ll

    moments, mean_ll = one_pass(params, "E-step at the start")
    if not bool(jnp.isfinite(mean_ll)):
        raise ValueError(failed_start(dtype))
    history = np.full((max_iter,), np.nan, dtype)
    n_iter = 0
    converged = False
    stopped = False
    while not stopped and n_iter < max_iter:
        new_params = _m_step(moments, covariance_type=covariance_type, reg_covar=reg)
        new_moments, new_mean = one_pass(new_params, f"iteration {n_iter + 1}")
        finite = bool(jnp.isfinite(new_mean))
        converged = finite and bool(jnp.abs(new_mean - mean_ll) < tol)
        if finite:
            history[n_iter] = float(new_mean)
            params, moments, mean_ll = new_params, new_moments, new_mean
            n_iter += 1
        if progress is not None:
            progress(n_iter, float(new_mean))
        stopped = converged or not finite

    rounding.check_spread(params, spread, float(n_rows))
    total = mean_ll * float(n_rows)
    return FitResult(
        params=cov.shift_means(params, center),
        log_likelihood=total,
        n_iter=jnp.asarray(n_iter),
        converged=jnp.asarray(converged),
        history=jnp.asarray(history),
        all_log_likelihoods=total[None],
    )


def _report(message: str, n_rows: int, seconds: float | None, start: float | None = None):
    if seconds is None:
        seconds = time.perf_counter() - start
    rate = n_rows / max(seconds, 1e-12)
    print(f"fit_stream {message} ({seconds:.2f} s, {rate:,.0f} rows/s)", file=sys.stderr)
