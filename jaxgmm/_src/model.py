"""The parameter pytree ``GMM``, the result pytree ``FitResult``, and ``all_finite_leaves``."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")


@dataclasses.dataclass(frozen=True)
class GMM:
    """Parameters of one Gaussian mixture (or a batch of them, with a leading axis).

    Attributes
    ----------
    weights : Array, shape (K,)
        Mixing proportions, non-negative, summing to one.
    means : Array, shape (K, D)
        Component means.
    covariances : Array
        Shape ``(K, D, D)`` for ``"full"``, ``(K, D)`` for ``"diag"``, ``(K,)`` for
        ``"spherical"`` and ``(D, D)`` for ``"tied"``, as scikit-learn's ``covariances_``.
    covariance_type : str
        ``"full"``, ``"diag"``, ``"spherical"`` or ``"tied"``. Static pytree metadata, not a leaf.

    Notes
    -----
    The constructor does not validate: JAX rebuilds pytrees with placeholder leaves under
    ``vmap`` and ``tree.map``. Functions that take a ``GMM`` check it at their eager boundary.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from jaxgmm import GMM
    >>> gmm = GMM(jnp.array([0.5, 0.5]), jnp.array([[0.0], [3.0]]), jnp.ones((2, 1, 1)), "full")
    >>> gmm.n_components, gmm.n_features
    (2, 1)
    """

    weights: jax.Array
    means: jax.Array
    covariances: jax.Array
    covariance_type: str = dataclasses.field(default="full", metadata=dict(static=True))

    @property
    def n_components(self) -> int:
        """Number of components ``K`` (the last-but-one axis of ``means``)."""
        return self.means.shape[-2]

    @property
    def n_features(self) -> int:
        """Number of features ``D`` (the last axis of ``means``)."""
        return self.means.shape[-1]

    @property
    def dtype(self):
        """Floating dtype of the parameters (that of ``means``)."""
        return self.means.dtype

    def replace(self, **changes) -> GMM:
        """Return a copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    GMM, data_fields=["weights", "means", "covariances"], meta_fields=["covariance_type"]
)


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What ``jaxgmm.fit`` returns.

    Attributes
    ----------
    params : GMM
        The fitted mixture (the best restart when ``n_init > 1``).
    log_likelihood : Array, shape ()
        Total log-likelihood of the data (weighted by ``sample_weight``) at ``params``.
    n_iter : Array, shape (), int
        Number of M-steps taken.
    converged : Array, shape (), bool
        True when the change of the mean per-sample log-likelihood fell below ``tol``.
        A non-finite log-likelihood stops the loop with ``converged=False``.
    history : Array, shape (max_iter,)
        Mean per-sample log-likelihood after each iteration; NaN past ``n_iter``.
    all_log_likelihoods : Array, shape (n_init,)
        Final total log-likelihood of every restart (shape ``(1,)`` when ``n_init == 1``).
    """

    params: GMM
    log_likelihood: jax.Array
    n_iter: jax.Array
    converged: jax.Array
    history: jax.Array
    all_log_likelihoods: jax.Array


jax.tree_util.register_dataclass(
    FitResult,
    data_fields=[
        "params",
        "log_likelihood",
        "n_iter",
        "converged",
        "history",
        "all_log_likelihoods",
    ],
    meta_fields=[],
)


def all_finite_leaves(tree) -> jax.Array:
    """Whether every entry of every leaf of ``tree`` is finite, a traced bool of shape ()."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))
