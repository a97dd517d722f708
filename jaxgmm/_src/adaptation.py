"""MAP adaptation of a mixture to new data: the background-model recipe of speaker
verification (a universal background model adapted to each speaker's few seconds of speech).

The prior of each component is its background (UBM) parameters worth ``relevance`` samples.
An E-step of the current mixture on the new data gives component ``k`` a share ``n_k`` of
them, with mean ``E_k[x]`` and scatter ``C_k`` about that mean. With
``alpha_k = n_k / (n_k + relevance)`` and ``d_k = E_k[x] - mu0_k``:

- ``mu_k = mu0_k + alpha_k d_k``
- ``S_k = alpha_k C_k + (1 - alpha_k) S0_k + alpha_k (1 - alpha_k) d_k d_k'`` (with the means
  kept at ``mu0_k``: ``alpha_k (C_k + d_k d_k') + (1 - alpha_k) S0_k``)
- ``pi_k`` proportional to ``alpha_k n_k / N + (1 - alpha_k) pi0_k``

The covariance is Reynolds, Quatieri and Dunn's ``alpha E_k[x x'] + (1 - alpha) (S0 + mu0
mu0') - mu mu'`` rearranged so that a component that sees no data keeps ``S0`` to rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxgmm._src import covariances as cov
from jaxgmm._src import em, products, validation
from jaxgmm._src.chunking import fit_chunk_size
from jaxgmm._src.em_loop import em_pass
from jaxgmm._src.model import GMM, all_finite_leaves

ADAPTABLE = ("weights", "means", "covariances")


def _statistics(moments, covariance_type: str):
    """Per component: the share ``n`` (K,) of the samples, their mean ``E`` (K, D) and their
    scatter about it ``C`` ((K, D, D) for full and tied, (K, D) otherwise), from the
    moments ``R.T @ features(xc)`` (K, P)."""
    width = moments.shape[1]
    counts = moments[:, -1]
    safe = jnp.where(counts > 0, counts, 1.0)  # no samples: n E = 0 and n C = 0 anyway
    n_quad = width - 1 - cov.n_features_from_width(width, covariance_type)
    mean = moments[:, n_quad:-1] / safe[:, None]
    if covariance_type in ("full", "tied"):
        second = cov.unpack_symmetric(moments[:, :n_quad], mean.shape[1]) / safe[:, None, None]
        scatter = second - mean[:, :, None] * mean[:, None, :]
    else:
        scatter = moments[:, :n_quad] / safe[:, None] - mean * mean
    return counts, mean, scatter


def _adapted_covariances(prior_c: GMM, counts, shift, scatter, relevance, means_adapted):
    """The MAP covariances (see the module's docstring) from the statistics of ``_statistics``
    and ``shift = E - mu0`` (K, D)."""
    kind = prior_c.covariance_type
    alpha = counts / (counts + relevance)
    spread = alpha * (1 - alpha) if means_adapted else alpha
    if kind in ("full", "tied"):
        prior = jnp.broadcast_to(prior_c.covariances, scatter.shape)
        outer = shift[:, :, None] * shift[:, None, :]
        a = alpha[:, None, None]
        per_component = a * scatter + (1 - a) * prior + spread[:, None, None] * outer
        if kind == "full":
            return per_component
        # Tied: the pooled scatter of all components and their pseudo-samples.
        total = counts + relevance
        return jnp.einsum("k,kij->ij", total, per_component) / jnp.sum(total)
    prior = prior_c.covariances if kind == "diag" else prior_c.covariances[:, None]
    a = alpha[:, None]
    per_feature = a * scatter + (1 - a) * prior + spread[:, None] * shift * shift
    return per_feature if kind == "diag" else jnp.mean(per_feature, axis=1)


@functools.partial(jax.jit, static_argnames=("adapt", "n_iter", "chunk_size"))
def _adapt_compiled(prior: GMM, X, weights, relevance, *, adapt, n_iter, chunk_size):
    center = products.weighted_mean(X, weights)
    xc = X - center
    prior_c = cov.shift_means(prior, -center)

    def step(_, state):
        current, _ = state
        moments, total = em_pass(current, xc, weights, chunk_size)
        counts, mean, scatter = _statistics(moments, prior.covariance_type)
        shift = mean - prior_c.means
        alpha = counts / (counts + relevance)
        mixed = alpha * counts / jnp.sum(counts) + (1 - alpha) * prior_c.weights
        adapted = GMM(
            mixed / jnp.sum(mixed) if "weights" in adapt else prior_c.weights,
            prior_c.means + alpha[:, None] * shift if "means" in adapt else prior_c.means,
            _adapted_covariances(prior_c, counts, shift, scatter, relevance, "means" in adapt)
            if "covariances" in adapt
            else prior_c.covariances,
            prior.covariance_type,
        )
        return adapted, total

    adapted, total = jax.lax.fori_loop(0, n_iter, step, (prior_c, jnp.zeros((), X.dtype)))
    adapted = cov.shift_means(adapted, center)
    if "means" not in adapt:  # exactly the prior's, not shifted there and back
        adapted = adapted.replace(means=prior.means)
    # Traced arguments could not be checked: invalid ones give NaN, not a plausible answer.
    valid = (relevance > 0) & jnp.all((weights >= 0) & jnp.isfinite(weights))
    return jax.tree.map(lambda leaf: jnp.where(valid, leaf, jnp.nan), adapted), total


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
    ``alpha_k = n_k / (n_k + relevance)``, and one that sees none keeps its mean and
    covariance (the formulas are in the module's docstring and the docs' page on background
    models). This is the adaptation of a universal background model to a speaker (Reynolds,
    Quatieri and Dunn, 2000), who adapt only the means with ``relevance=16``.

    Parameters
    ----------
    params : GMM
        The background mixture (the prior), fitted to plenty of data.
    X : Array, shape (N, D) or (N,) for D = 1
        The new data, in the dtype of the result.
    relevance : float or Array, shape ()
        Positive: how many samples' worth of evidence the prior carries per component (for
        ``"tied"`` covariances, ``K * relevance`` for the shared one). Small values follow the
        new data; large ones keep the prior. Traced under ``jit``.
    adapt : str or sequence of str
        Which of ``"weights"``, ``"means"`` and ``"covariances"`` to adapt; the others stay
        the prior's. Covariances adapted without the means are scattered about the prior's
        means.
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
    No ``reg_covar`` is added: adapted covariances mix the new data's scatter with the
    prior's, which already carry the background fit's regularisation. ``map_adapt`` is a
    pure function: ``jax.jit`` it (with ``adapt``, ``n_iter`` and ``chunk_size`` static) or
    ``jax.vmap`` it over speakers with the same background model. Under ``jit`` a relevance
    that is not positive, or a negative or non-finite sample weight, gives NaN parameters.

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
    n_iter = validation.check_positive_int(n_iter, "n_iter")
    weights = validation.as_sample_weight(sample_weight, X)
    if chunk_size is None:
        chunk_size = fit_chunk_size(*X.shape, params.n_components, params.covariance_type)
    else:
        chunk_size = validation.check_positive_int(chunk_size, "chunk_size")
    relevance = _check_relevance(relevance, X.dtype)
    adapted, total = _adapt_compiled(
        params, X, weights, relevance, adapt=adapt, n_iter=n_iter, chunk_size=chunk_size
    )
    if validation.is_concrete(total):
        with jax.ensure_compile_time_eval():
            finite = bool(all_finite_leaves((total, adapted)))
        if not finite:
            raise ValueError(
                "X: the log-likelihood of X under params is not finite, so the samples cannot "
                f"be shared among the components ({validation.overflow_note(X.dtype)})"
            )
    return adapted


def _check_adapt(adapt) -> tuple[str, ...]:
    if isinstance(adapt, str):
        names = (adapt,)
    elif isinstance(adapt, (tuple, list)):
        names = tuple(adapt)
    else:
        raise TypeError(f"adapt must be a str or a sequence of str; got {adapt!r}")
    unknown = [name for name in names if name not in ADAPTABLE]
    if unknown or not names:
        raise ValueError(f"adapt must name one or more of {ADAPTABLE}; got {adapt!r}")
    return tuple(name for name in ADAPTABLE if name in names)


def _check_relevance(relevance, dtype) -> jax.Array:
    """``relevance`` as a scalar of ``dtype``: a positive real number that ``dtype`` holds."""
    value = validation.check_non_negative_in_dtype(relevance, "relevance", dtype)
    if value == 0:
        raise ValueError("relevance must be > 0; got 0")
    return jnp.asarray(relevance, dtype)
