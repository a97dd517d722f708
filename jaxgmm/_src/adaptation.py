"""MAP adaptation of a mixture to new data: the background-model recipe of speaker
verification (a universal background model adapted to each speaker's few seconds of speech).

The prior of each component is its background (UBM) parameters worth ``relevance`` samples.
Adaptation adds those pseudo-samples to the component's statistics from an E-step on the new
data and takes the M-step, so that a component that sees ``n_k`` samples moves from its prior
by ``alpha_k = n_k / (n_k + relevance)``:

- ``mu_k = alpha_k E_k[x] + (1 - alpha_k) mu0_k``
- ``S_k = alpha_k E_k[x x'] + (1 - alpha_k) (S0_k + mu0_k mu0_k') - mu_k mu_k'``
- ``pi_k`` proportional to ``alpha_k n_k / N + (1 - alpha_k) pi0_k``

where ``E_k`` averages over the new samples weighted by their responsibilities.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import covariances as cov
from jaxgmm._src import em, products, validation
from jaxgmm._src.chunking import fit_chunk_size
from jaxgmm._src.em_loop import em_pass
from jaxgmm._src.fitting import failed_start
from jaxgmm._src.model import GMM

ADAPTABLE = ("weights", "means", "covariances")


def expected_features(params: GMM) -> jax.Array:
    """``E[features(x)]`` under each component, shape (K, P): the statistics one sample
    drawn from component ``k`` contributes on average, in the layout of ``features``."""
    means = params.means
    n_components, n_features = means.shape
    kind = params.covariance_type
    if kind in ("full", "tied"):
        covariances = jnp.broadcast_to(params.covariances, (n_components, n_features, n_features))
        second = covariances + means[:, :, None] * means[:, None, :]
        i, j = np.triu_indices(n_features)
        quad = second[:, i, j]
    elif kind == "diag":
        quad = params.covariances + means * means
    else:
        quad = params.covariances[:, None] + means * means
    ones = jnp.ones((n_components, 1), means.dtype)
    return jnp.concatenate([quad, means, ones], axis=1)


@functools.partial(jax.jit, static_argnames=("adapt", "n_iter", "chunk_size"))
def _adapt_compiled(prior: GMM, X, weights, relevance, *, adapt, n_iter, chunk_size):
    center = products.weighted_mean(X, weights)
    xc = X - center
    prior_c = cov.shift_means(prior, -center)
    pseudo_statistics = relevance * expected_features(prior_c)

    def step(_, state):
        current, _ = state
        moments, total = em_pass(current, xc, weights, chunk_size)
        # The pseudo-samples are already in the prior's covariances: no reg_covar again.
        combined = cov.params_from_moments(moments + pseudo_statistics, prior.covariance_type, 0.0)
        counts = moments[:, -1]
        alpha = counts / (counts + relevance)
        mixed = alpha * counts / jnp.sum(counts) + (1 - alpha) * prior_c.weights
        adapted = GMM(
            mixed / jnp.sum(mixed) if "weights" in adapt else prior_c.weights,
            combined.means if "means" in adapt else prior_c.means,
            combined.covariances if "covariances" in adapt else prior_c.covariances,
            prior.covariance_type,
        )
        return adapted, total

    adapted, total = jax.lax.fori_loop(0, n_iter, step, (prior_c, jnp.zeros((), X.dtype)))
    adapted = cov.shift_means(adapted, center)
    if "means" not in adapt:  # exactly the prior's, not shifted there and back
        adapted = adapted.replace(means=prior.means)
    return adapted, total


def map_adapt(
    params: GMM,
    X,
    *,
    relevance=16.0,
    adapt=("means",),
    n_iter: int = 1,
    sample_weight=None,
    chunk_size: int | None = None,
) -> GMM:
    """Adapt a fitted mixture (a background model) to new data by maximum a posteriori EM.

    Every component keeps its parameters as a prior worth ``relevance`` samples: one that is
    responsible for ``n_k`` of the new samples moves towards their statistics by
    ``alpha_k = n_k / (n_k + relevance)``, and one that sees none stays where it was. This is
    the adaptation of a universal background model to a speaker (Reynolds, Quatieri and
    Dunn, 2000), who adapt only the means with ``relevance=16``.

    Parameters
    ----------
    params : GMM
        The background mixture (the prior), fitted to plenty of data.
    X : Array, shape (N, D) or (N,) for D = 1
        The new data, in the dtype of the result.
    relevance : float
        Positive: how many samples' worth of evidence the prior carries per component.
        Small values follow the new data; large ones keep the prior.
    adapt : str or sequence of str
        Which of ``"weights"``, ``"means"`` and ``"covariances"`` to adapt; the others stay
        the prior's.
    n_iter : int
        MAP-EM iterations (static). Each takes an E-step at the current mixture and combines
        its statistics with the same prior; one (the default, as Reynolds et al.) is usual.
    sample_weight : Array, shape (N,), optional
        Non-negative weights of the new samples.
    chunk_size : int, optional
        Rows per block of the per-sample work (static); chosen from the shapes when None.

    Returns
    -------
    GMM
        The adapted mixture, of the same covariance type and shapes as ``params``.

    Notes
    -----
    The M-step adds no ``reg_covar``: adapted covariances mix the new data's second moments
    with the prior's, which already carry the background fit's regularisation. ``map_adapt``
    is a pure function: ``jax.jit`` it (with ``adapt``, ``n_iter`` and ``chunk_size``
    static) or ``jax.vmap`` it over speakers with the same background model.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, jaxgmm
    >>> groups = jnp.repeat(jnp.array([-4.0, 4.0]), 100)  # a background of two groups
    >>> X = (groups + jnp.tile(jnp.linspace(-1.0, 1.0, 100), 2))[:, None]
    >>> ubm = jaxgmm.fit(jax.random.key(0), X, 2).params
    >>> speaker = jnp.full((16, 1), 5.0)  # 16 samples by the component at 4
    >>> adapted = jaxgmm.map_adapt(ubm, speaker, relevance=16.0)
    >>> (jnp.round(adapted.means - ubm.means, 3)[jnp.argsort(ubm.means[:, 0]), 0] + 0.0).tolist()
    [0.0, 0.5]
    """
    params, X = em._prepare(params, X)
    adapt = _check_adapt(adapt)
    _check_relevance(relevance)
    n_iter = validation.check_positive_int(n_iter, "n_iter")
    weights = validation.as_sample_weight(sample_weight, X)
    if chunk_size is None:
        chunk_size = fit_chunk_size(*X.shape, params.n_components, params.covariance_type)
    else:
        chunk_size = validation.check_positive_int(chunk_size, "chunk_size")
    relevance = jnp.asarray(relevance, X.dtype)
    adapted, total = _adapt_compiled(
        params, X, weights, relevance, adapt=adapt, n_iter=n_iter, chunk_size=chunk_size
    )
    if validation.is_concrete(total):
        with jax.ensure_compile_time_eval():
            finite = bool(jnp.isfinite(total)) and all(
                bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(adapted)
            )
        if not finite:
            raise ValueError(f"X: {failed_start(X.dtype)}")
    return adapted


def _check_adapt(adapt) -> tuple[str, ...]:
    names = (adapt,) if isinstance(adapt, str) else tuple(adapt)
    unknown = [name for name in names if name not in ADAPTABLE]
    if unknown or not names or not all(isinstance(name, str) for name in names):
        raise ValueError(f"adapt must name one or more of {ADAPTABLE}; got {adapt!r}")
    return tuple(name for name in ADAPTABLE if name in names)


def _check_relevance(relevance) -> None:
    value = validation.check_non_negative_scalar(relevance, "relevance")
    if value is not None and value <= 0:
        raise ValueError(f"relevance must be > 0; got {value}")
