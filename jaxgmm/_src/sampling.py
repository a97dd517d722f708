"""Drawing samples from a mixture."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import validation
from jaxgmm._src.model import GMM


def _scale_factors(params: GMM) -> jax.Array:
    """A factor ``A_k`` with ``A_k A_k' = S_k`` per component, shape (K, D, D) or (K, D)."""
    K, D = params.means.shape
    kind = params.covariance_type
    if kind == "full":
        return jnp.linalg.cholesky(params.covariances)
    if kind == "tied":
        return jnp.broadcast_to(jnp.linalg.cholesky(params.covariances), (K, D, D))
    if kind == "diag":
        return jnp.sqrt(params.covariances)
    return jnp.broadcast_to(jnp.sqrt(params.covariances)[:, None], (K, D))


def sample(key, params: GMM, n: int) -> tuple[jax.Array, jax.Array]:
    """Draw ``n`` samples from the mixture.

    Parameters
    ----------
    key : PRNG key
    params : GMM
    n : int
        Number of samples (static).

    Returns
    -------
    X : Array, shape (n, D)
        In the dtype of ``params`` (float32 for float16 or bfloat16 parameters).
    labels : Array, shape (n,), int
        The component each sample was drawn from.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from jaxgmm import GMM, sample
    >>> gmm = GMM(jnp.array([0.3, 0.7]), jnp.array([[-2.0], [2.0]]), jnp.ones((2,)), "spherical")
    >>> X, labels = sample(jax.random.key(0), gmm, 5)
    >>> X.shape, labels.shape
    ((5, 1), (5,))
    """
    validation.check_key(key)
    validation.check_params(params, None, "params")
    n = validation.check_positive_int(n, "n")
    dtype = validation.compute_dtype(jnp.result_type(params.means))

    def cast(leaf):  # NumPy stays NumPy: the compiled call moves it in one step
        return jnp.asarray(leaf, dtype) if isinstance(leaf, jax.Array) else np.asarray(leaf, dtype)

    return _draw(key, jax.tree.map(cast, params), n)


@functools.partial(jax.jit, static_argnames="n")
def _draw(key, params: GMM, n: int) -> tuple[jax.Array, jax.Array]:
    """``sample`` after validation, compiled once per mixture shape and ``n`` (one dispatch
    instead of one per operation)."""
    label_key, noise_key = jax.random.split(key)
    labels = jax.random.categorical(label_key, jnp.log(params.weights), shape=(n,))
    noise = jax.random.normal(noise_key, (n, params.means.shape[1]), params.means.dtype)
    factors = _scale_factors(params)[labels]
    if factors.ndim == 3:
        offsets = jnp.einsum("nij,nj->ni", factors, noise, precision=jax.lax.Precision.HIGHEST)
    else:
        offsets = factors * noise
    return params.means[labels] + offsets, labels
