"""Checks at the eager boundary.

Shape and type checks always run (shapes are static under ``jit``); checks that need values
(NaN, signs) run only when the value is concrete, i.e. not a tracer inside ``jit``/``vmap``.
Every message names the offending argument.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src.model import COVARIANCE_TYPES, GMM

INIT_METHODS = ("kmeans++", "kmeans", "random", "random_from_data")


def is_concrete(x) -> bool:
    """True when ``x`` holds values now (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def compute_dtype(dtype):
    """The dtype jaxgmm computes in for data or parameters of ``dtype``: float32 and float64
    as they are; floats narrower than 32 bits (float16, bfloat16), whose rounding is too
    coarse for likelihoods and Cholesky factors, in float32; anything else in JAX's default
    float dtype."""
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(dtype) if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)
    return jnp.dtype(jnp.result_type(float))


def as_data(X, name: str = "X") -> jax.Array:
    """``X`` as a floating array of shape (N, D); a 1-D array is one feature (D = 1).

    Integer and boolean input becomes JAX's default float dtype; float32 and float64 keep
    their dtype; float16 and bfloat16 become float32 (``compute_dtype``).
    """
    if isinstance(X, GMM):
        raise TypeError(f"{name} must be an array of samples, got a GMM")
    if not isinstance(X, (jax.Array, np.ndarray)):
        try:
            X = np.asarray(X)
        except Exception as error:  # ragged lists and the like
            raise TypeError(f"{name} must be array-like of numbers: {error}") from None
    if X.dtype == object or not (
        jnp.issubdtype(X.dtype, jnp.number) or jnp.issubdtype(X.dtype, jnp.bool_)
    ):
        raise TypeError(f"{name} must be numeric, got dtype {X.dtype}")
    if jnp.issubdtype(X.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {X.dtype}")
    if jnp.dtype(X.dtype) != compute_dtype(X.dtype):
        X = jnp.asarray(X, dtype=compute_dtype(X.dtype))
    X = jnp.asarray(X)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"{name} must be 1-D (N,) or 2-D (N, D); got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {X.shape}")
    if is_concrete(X) and not all_finite(X):
        raise ValueError(f"{name} contains NaN or infinite values")
    return X


def all_finite(x) -> bool:
    """``all(isfinite(x))`` for a concrete array, evaluated now even inside a trace (a
    constant captured by a jitted function is concrete but would otherwise be staged)."""
    with jax.ensure_compile_time_eval():
        return bool(jnp.all(jnp.isfinite(x)))


def overflow_note(dtype) -> str:
    """Where squares of ``dtype`` overflow, and what to do, e.g. ``"squares of float32
    overflow above about 1.8e19: rescale X or use float64"``."""
    dtype = jnp.dtype(dtype)
    limit = f"{float(np.sqrt(jnp.finfo(dtype).max)):.1e}".replace("e+", "e")
    remedy = "rescale X or use float64" if dtype == jnp.float32 else "rescale X"
    return f"squares of {dtype.name} overflow above about {limit}: {remedy}"


def check_covariance_type(covariance_type) -> None:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}; got {covariance_type!r}"
        )


def check_init(init) -> None:
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}; got {init!r}")


def check_n_components(K, n_samples: int, name: str = "K") -> int:
    if isinstance(K, bool) or not isinstance(K, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be a Python int (it fixes array shapes); got {K!r}")
    K = int(K)
    if K < 1:
        raise ValueError(f"{name} must be >= 1; got {K}")
    if K > n_samples:
        raise ValueError(f"{name} = {K} exceeds the number of samples N = {n_samples}")
    return K


@functools.cache
def _legacy_key_shape(impl: str) -> tuple[int, ...]:
    """The shape of a legacy ``uint32`` key of the PRNG implementation ``impl``."""
    del impl  # the cache key: the default implementation in force
    with jax.ensure_compile_time_eval():
        return tuple(jax.random.key_data(jax.random.key(0)).shape)


def check_key(key, name: str = "key") -> None:
    """A JAX PRNG key: a typed key array (``jax.random.key``) or a legacy ``uint32`` key
    (``jax.random.PRNGKey``); a plain integer seed gets an error that says how to make one."""
    if isinstance(key, numbers.Number) or key is None:
        raise TypeError(f"{name} must be a JAX PRNG key such as jax.random.key(0); got {key!r}")
    dtype = getattr(key, "dtype", None)
    typed = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    legacy = dtype == jnp.uint32 and jnp.ndim(key) >= 1
    if not (typed or legacy):
        raise TypeError(
            f"{name} must be a JAX PRNG key such as jax.random.key(0); got {type(key).__name__}"
            + (f" of dtype {dtype}" if dtype is not None else "")
        )
    # One key: shape () when typed, (n,) of uint32 words for the default implementation
    # when legacy (a batch of keys goes through jax.vmap).
    words = _legacy_key_shape(jax.config.jax_default_prng_impl)
    if jnp.shape(key) != (() if typed else words):
        raise ValueError(
            f"{name} must be a single PRNG key (shape {() if typed else words}); got shape "
            f"{jnp.shape(key)}. For several keys, use jax.vmap over them"
        )


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int; got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1; got {value}")
    return int(value)


def check_candidates(n_candidates, candidate_iter, n_init: int, init_params):
    """Validate the start-screening options of ``fit``; returns them as ints
    (``n_candidates`` stays ``None`` when not given)."""
    candidate_iter = check_positive_int(candidate_iter, "candidate_iter")
    if n_candidates is None:
        return None, candidate_iter
    n_candidates = check_positive_int(n_candidates, "n_candidates")
    if n_candidates < n_init:
        raise ValueError(f"n_candidates must be >= n_init ({n_init}); got {n_candidates}")
    if init_params is not None:
        raise ValueError("n_candidates screens random starts; it cannot be used with init_params")
    return n_candidates, candidate_iter


def check_non_negative_scalar(value, name: str) -> float | None:
    """Check a finite, non-negative real scalar; returns its value when concrete."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    if isinstance(value, numbers.Real):
        v = float(value)
    else:
        is_array = isinstance(value, (jax.Array, np.ndarray, np.generic))
        if not is_array or not jnp.issubdtype(value.dtype, jnp.number):
            raise TypeError(f"{name} must be a real number; got {value!r}")
        if jnp.issubdtype(value.dtype, jnp.complexfloating):
            raise TypeError(f"{name} must be real; got dtype {value.dtype}")
        if jnp.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar; got shape {jnp.shape(value)}")
        if not is_concrete(value):
            return None
        v = float(np.asarray(value))
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0; got {v}")
    return v


def check_non_negative_in_dtype(value, name: str, dtype=None) -> float | None:
    """``check_non_negative_scalar``; with ``dtype``, the value must also be representable in
    it. Returns the value when concrete."""
    value = check_non_negative_scalar(value, name)
    if dtype is not None and value is not None and value > float(jnp.finfo(dtype).max):
        raise ValueError(f"{name} = {value:g} overflows {jnp.dtype(dtype).name}")
    return value


def check_reg_covar(reg_covar, dtype=None) -> None:
    """A finite, non-negative ``reg_covar``; with ``dtype``, also representable in it."""
    check_non_negative_in_dtype(reg_covar, "reg_covar", dtype)


def check_tol(tol, name: str = "tol") -> None:
    check_non_negative_scalar(tol, name)


def check_progress(progress) -> None:
    """``progress`` is None or a callable (called as ``progress(iteration, value)``)."""
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be a callable or None; got {progress!r}")


def as_sample_weight(sample_weight, X: jax.Array) -> jax.Array:
    """Sample weights as shape (N,) in the dtype of ``X`` (ones when ``None``)."""
    n_samples = X.shape[0]
    if sample_weight is None:
        return jnp.ones((n_samples,), X.dtype)
    weights = sample_weight if isinstance(sample_weight, jax.Array) else np.asarray(sample_weight)
    if weights.dtype == object or not (
        jnp.issubdtype(weights.dtype, jnp.number) or weights.dtype == jnp.bool_
    ):
        raise TypeError(f"sample_weight must be numeric; got dtype {weights.dtype}")
    if jnp.issubdtype(weights.dtype, jnp.complexfloating):
        raise TypeError(f"sample_weight must be real; got dtype {weights.dtype}")
    weights = jnp.asarray(weights)
    weights = weights.astype(X.dtype)
    if weights.shape != (n_samples,):
        raise ValueError(
            f"sample_weight must have shape (N,) = ({n_samples},); got {weights.shape}"
        )
    if is_concrete(weights):
        with jax.ensure_compile_time_eval():
            finite = bool(jnp.all(jnp.isfinite(weights)))
            negative = bool(jnp.any(weights < 0))
            positive_sum = bool(jnp.sum(weights) > 0)
        if not finite:
            raise ValueError("sample_weight contains NaN or infinite values")
        if negative:
            raise ValueError("sample_weight must be non-negative")
        if not positive_sum:
            raise ValueError("sample_weight must have a positive sum")
    return weights


def _expected_covariance_shape(covariance_type: str, K: int, D: int) -> tuple:
    return {
        "full": (K, D, D),
        "diag": (K, D),
        "spherical": (K,),
        "tied": (D, D),
    }[covariance_type]


def check_params(params, n_features: int | None, name: str = "params", K: int | None = None):
    """Check a single (unbatched) mixture: type, covariance type, shapes, values when concrete."""
    if not isinstance(params, GMM):
        raise TypeError(f"{name} must be a jaxgmm.GMM; got {type(params).__name__}")
    check_covariance_type(params.covariance_type)
    for field in ("weights", "means", "covariances"):
        leaf = getattr(params, field)
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
            raise TypeError(
                f"{name}.{field} must be an array (jax.numpy or NumPy); got {type(leaf).__name__}"
            )
    means_shape = jnp.shape(params.means)
    if len(means_shape) != 2:
        raise ValueError(f"{name}.means must have shape (K, D); got {means_shape}")
    k, d = means_shape
    if n_features is not None and d != n_features:
        raise ValueError(f"{name}.means has D = {d} features but X has D = {n_features}")
    if K is not None and k != K:
        raise ValueError(f"{name} has {k} components but K = {K}")
    if jnp.shape(params.weights) != (k,):
        raise ValueError(f"{name}.weights must have shape ({k},); got {jnp.shape(params.weights)}")
    expected = _expected_covariance_shape(params.covariance_type, k, d)
    if jnp.shape(params.covariances) != expected:
        raise ValueError(
            f"{name}.covariances for covariance_type={params.covariance_type!r} must have shape "
            f"{expected}; got {jnp.shape(params.covariances)}"
        )
    leaves = (params.weights, params.means, params.covariances)
    if all(is_concrete(leaf) for leaf in leaves):
        weights = np.asarray(params.weights, dtype=np.float64)
        if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves):
            raise ValueError(f"{name} contains NaN or infinite values")
        weights_dtype = jnp.result_type(params.weights)
        # Weights stored in float16 or bfloat16 sum to one only to their own rounding.
        floating = jnp.issubdtype(weights_dtype, jnp.floating)
        rounding = 2 * float(jnp.finfo(weights_dtype).eps) if floating else 0.0
        if np.any(weights < 0) or abs(weights.sum() - 1.0) > max(1e-4, rounding):
            raise ValueError(f"{name}.weights must be non-negative and sum to 1")
        check_covariance_values(np.asarray(params.covariances), params.covariance_type, name)


# Matrices are factored on the host (checking positive definiteness) only up to this many
# floating-point operations, K D^3 / 3: beyond it (K = 32 at D = 256 takes tens of
# milliseconds) the check would cost more than the evaluation it guards.
_HOST_FACTOR_FLOPS = 1 << 24


def check_covariance_values(covariances: np.ndarray, covariance_type: str, name: str) -> None:
    """Finite covariances (any leading batch axes) that define a density: positive variances
    (``"diag"``, ``"spherical"``), symmetric positive definite matrices (``"full"``,
    ``"tied"``; symmetric to 1e-5 of the largest diagonal entry, factored in their own dtype
    as the device will factor them). Matrices too large to check cheaply
    (``_HOST_FACTOR_FLOPS``) are checked for finiteness only (by ``check_params``)."""
    values = np.asarray(covariances)
    if covariance_type in ("diag", "spherical"):
        if not np.all(values > 0):
            raise ValueError(f"{name}.covariances must be positive (variances)")
        return
    if values.size * values.shape[-1] > 3 * _HOST_FACTOR_FLOPS:
        return
    dtype = compute_dtype(values.dtype)
    values = values.astype(dtype if dtype in (np.float32, np.float64) else np.float64)
    scale = np.max(np.abs(np.diagonal(values, axis1=-2, axis2=-1)), initial=0.0)
    if np.max(np.abs(values - np.swapaxes(values, -1, -2)), initial=0.0) > 1e-5 * scale:
        raise ValueError(f"{name}.covariances must be symmetric matrices")
    try:
        np.linalg.cholesky(values)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name}.covariances must be positive definite matrices") from None


def check_init_params(init_params: GMM, n_features: int, K: int, covariance_type: str, dtype):
    """``init_params`` checked against the fit's ``K``, ``D`` and ``covariance_type``, its
    leaves cast to ``dtype``; a clear ``ValueError`` naming ``init_params`` otherwise."""
    check_params(init_params, n_features, "init_params", K=K)
    if init_params.covariance_type != covariance_type:
        raise ValueError(
            f"init_params has covariance_type={init_params.covariance_type!r} but "
            f"covariance_type={covariance_type!r}"
        )
    return jax.tree.map(lambda leaf: jnp.asarray(leaf, dtype), init_params)
