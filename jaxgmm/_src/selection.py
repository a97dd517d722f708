"""``select``: every (K, covariance type) fitted in one compiled sweep per covariance type,
scored by BIC, AIC and ICL."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import covariances as cov
from jaxgmm._src import products, rounding, validation
from jaxgmm._src.chunking import chunked_sum, fit_chunk_size
from jaxgmm._src.compile_options import TunedJit, em_work, profile_for
from jaxgmm._src.fitting import _fit_compiled, failed_start
from jaxgmm._src.initialization import initialize_centered, kmeans_plusplus
from jaxgmm._src.model import COVARIANCE_TYPES, GMM

HIGHEST = jax.lax.Precision.HIGHEST
CRITERIA = ("bic", "aic", "icl")
DEFAULT_N_INIT = 5
_FIT_OPTIONS = ("init", "max_iter", "tol", "reg_covar", "chunk_size")


def count_parameters(K: int, D: int, covariance_type: str) -> int:
    """Free parameters of a ``K``-component mixture in ``D`` dimensions (as
    ``jaxgmm.n_parameters``): ``K - 1`` weights, ``K D`` means and the covariances."""
    covariance = {
        "full": K * D * (D + 1) // 2,
        "diag": K * D,
        "spherical": K,
        "tied": D * (D + 1) // 2,
    }[covariance_type]
    return int(covariance + K * D + K - 1)


def responsibility_entropy(params: GMM, X, weights, chunk_size: int):
    """``-sum_n w_n sum_k gamma_nk log gamma_nk``, shape (), with ``0 log 0 = 0`` (components
    of weight zero, i.e. padding, contribute nothing).

    The data are centred on their weighted mean, which does not depend on ``params``: under
    a ``vmap`` over mixtures the features are built once and the products are one wide
    product.

    Parameters
    ----------
    params : GMM
    X : Array, shape (N, D)
    weights : Array, shape (N,)
    chunk_size : int
    """
    center = products.weighted_mean(X, weights)
    coefficients = cov.log_density_coefficients(cov.shift_means(params, -center))

    def on_chunk(x, w):
        joint = jnp.matmul(cov.features(x, params.covariance_type), coefficients, precision=HIGHEST)
        log_resp = joint - jnp.max(joint, axis=1, keepdims=True)
        unnormalised = jnp.exp(log_resp)
        total = jnp.sum(unnormalised, axis=1, keepdims=True)
        log_resp = log_resp - jnp.log(total)
        terms = jnp.where(unnormalised > 0, unnormalised * log_resp, 0.0) / total
        return -jnp.sum(jnp.where(w > 0, w * jnp.sum(terms, axis=1), 0.0))

    return chunked_sum(on_chunk, (X - center, weights), chunk_size)


def _sweep(
    key, X, weights, tol, reg_covar, n_active, *, n_components, covariance_type, init, n_init,
    max_iter, chunk_size,
):  # fmt: skip
    """Fit one mixture per entry of ``n_active`` in one program: each has ``n_components``
    components of which the first ``n_active[i]`` take part (the rest are padding of weight
    exactly zero), with ``n_init`` restarts each, the best kept.

    With the seed-based starts (``"kmeans++"``, ``"kmeans"``) restart ``r`` of every fit
    starts from the same k-means++ seeding of ``n_components`` seeds, of which a fit with
    ``K`` components uses the first ``K`` (a k-means++ seeding of K seeds, as a loop of fits
    with one random state gives): one seeding per restart instead of one per fit. All
    ``B * n_init`` fits are then one ``vmap`` of the jitted core (one level of batching,
    which compiles faster than restarts nested inside the batch over ``n_active``).

    Parameters
    ----------
    key : PRNG key
    X : Array, shape (N, D)
    weights : Array, shape (N,)
    tol, reg_covar : Array, shape ()
    n_active : Array, shape (B,), int
        Number of real components of each fit, at most ``n_components``.

    Returns
    -------
    result : FitResult
        With a leading axis of length ``B`` on every leaf (the best restart of each fit;
        ``all_log_likelihoods`` has shape (B, n_init)); ``params`` have ``n_components``
        components, the padding ones with weight zero.
    entropy : Array, shape (B,)
        ``responsibility_entropy`` of each fit.
    """
    n_fits = n_active.shape[0]
    center = products.weighted_mean(X, weights)
    xc = X - center
    seed_key, cell_key = jax.random.split(key)
    if init in ("kmeans++", "kmeans"):
        seeds = jax.vmap(lambda k: kmeans_plusplus(k, xc, weights, n_components))(
            jax.random.split(seed_key, n_init)
        )  # (n_init, n_components, D)
    else:
        seeds = jnp.zeros((n_init, n_components, X.shape[1]), X.dtype)
    cell_keys = jax.random.split(cell_key, n_fits * n_init)
    restart_seeds = jnp.tile(seeds, (n_fits, 1, 1))  # fit-major: fit i, restart r at i*n_init+r
    restart_active = jnp.repeat(n_active, n_init)

    def start(cell_key, centers, k):
        seeds = centers if init in ("kmeans++", "kmeans") else None
        params = initialize_centered(
            cell_key, xc, weights, n_components, covariance_type, init, reg_covar, chunk_size,
            jnp.arange(n_components) < k, seeds,
        )  # fmt: skip
        return cov.shift_means(params, center)

    def one(cell_key, centers, k):
        return _fit_compiled(
            cell_key,
            X,
            weights,
            tol,
            reg_covar,
            start(cell_key, centers, k),
            n_components=n_components,
            covariance_type=covariance_type,
            init=init,
            n_init=1,
            max_iter=max_iter,
            chunk_size=chunk_size,
            progress=None,
            n_active=k,
        )

    runs = jax.vmap(one)(cell_keys, restart_seeds, restart_active)
    totals = runs.log_likelihood.reshape(n_fits, n_init)
    best = jnp.argmax(jnp.where(jnp.isfinite(totals), totals, -jnp.inf), axis=1)
    chosen = jnp.arange(n_fits) * n_init + best
    result = jax.tree.map(lambda leaf: leaf[chosen], runs)
    result = dataclasses.replace(result, all_log_likelihoods=totals)
    entropy = jax.vmap(lambda params: responsibility_entropy(params, X, weights, chunk_size))(
        result.params
    )
    return result, entropy


sweep = TunedJit(
    _sweep, ("n_components", "covariance_type", "init", "n_init", "max_iter", "chunk_size")
)
sweep.__doc__ = _sweep.__doc__


@dataclasses.dataclass(frozen=True)
class Selection:
    """What ``select`` returns: the chosen mixture and a table over all cells.

    Table arrays have shape ``(T, L)``: one row per covariance type (``covariance_types``),
    one column per number of components (``K``). All criteria follow scikit-learn's sign
    convention, **lower is better**: ``BIC = -2 log L + p log N``, ``AIC = -2 log L + 2 p``,
    ``ICL = BIC + 2 E`` with ``E = -sum_n sum_k gamma_nk log gamma_nk`` the entropy of the
    responsibilities. (R's mclust reports ``BIC`` with the opposite sign, higher is better.)

    Attributes
    ----------
    params : GMM
        The best mixture, with exactly ``n_components`` components.
    n_components : int
        Its ``K``.
    covariance_type : str
        Its covariance type.
    criterion : str
        ``"bic"``, ``"aic"`` or ``"icl"``: what "best" means.
    n_samples : int
    K : ndarray, shape (L,)
        The numbers of components tried, increasing.
    covariance_types : tuple of str, length T
    log_likelihood : ndarray, shape (T, L)
        Total log-likelihood of the data at each fitted mixture.
    n_parameters : ndarray, shape (T, L), int
    bic, aic, icl : ndarray, shape (T, L)
    converged : ndarray, shape (T, L), bool
    collapsed : ndarray, shape (T, L), bool
        Cells with a collapsed component (see ``select``), left out of the choice.
    n_iter : ndarray, shape (T, L), int
    all_params : dict of str to GMM
        Per covariance type, the fitted mixtures of all ``K`` as one batch of NumPy arrays
        (leading axis ``L``) padded to ``max(K)`` components; padding components have weight
        zero. Use
        ``params_for`` for one of them at its real size.
    """

    params: GMM
    n_components: int
    covariance_type: str
    criterion: str
    n_samples: int
    K: np.ndarray
    covariance_types: tuple
    log_likelihood: np.ndarray
    n_parameters: np.ndarray
    bic: np.ndarray
    aic: np.ndarray
    icl: np.ndarray
    converged: np.ndarray
    collapsed: np.ndarray
    n_iter: np.ndarray
    all_params: dict = dataclasses.field(repr=False)

    @property
    def scores(self) -> np.ndarray:
        """The table of the selection criterion, shape (T, L)."""
        return getattr(self, self.criterion)

    @property
    def best_index(self) -> tuple[int, int]:
        """``(type index, K index)`` of the best cell."""
        return (
            self.covariance_types.index(self.covariance_type),
            int(np.flatnonzero(self.K == self.n_components)[0]),
        )

    def params_for(self, K: int, covariance_type: str) -> GMM:
        """The fitted mixture of one cell, sliced to its ``K`` components."""
        if covariance_type not in self.covariance_types:
            raise ValueError(
                f"covariance_type {covariance_type!r} was not fitted; "
                f"fitted: {self.covariance_types}"
            )
        where = np.flatnonzero(self.K == K)
        if where.size == 0:
            raise ValueError(f"K = {K} was not fitted; fitted: {self.K.tolist()}")
        batch = self.all_params[covariance_type]
        return jax.tree.map(jnp.asarray, _slice_cell(batch, int(where[0]), int(K)))

    def format_table(self) -> str:
        """An aligned text table, one row per cell, the best marked with ``*`` and cells with a
        collapsed component noted (see the example of ``select``)."""
        header = ("", "cov", "K", "log-likelihood", "params", "BIC", "AIC", "ICL", "converged")
        notes = bool(np.any(self.collapsed))
        if notes:
            header += ("note",)
        best = self.best_index
        rows = []
        for t, kind in enumerate(self.covariance_types):
            for j, k in enumerate(self.K):
                row = (
                    "*" if (t, j) == best else "",
                    kind,
                    str(int(k)),
                    f"{self.log_likelihood[t, j]:.3f}",
                    str(int(self.n_parameters[t, j])),
                    f"{self.bic[t, j]:.3f}",
                    f"{self.aic[t, j]:.3f}",
                    f"{self.icl[t, j]:.3f}",
                    "yes" if self.converged[t, j] else "no",
                )
                if notes:
                    row += ("collapsed" if self.collapsed[t, j] else "",)
                rows.append(row)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        left = (0, 1, 9)  # marker, type and note

        def line(cells):
            return "  ".join(
                c.ljust(w) if i in left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths))
            ).rstrip()

        out = [line(header), line(tuple("-" * w for w in widths))]
        out.extend(line(r) for r in rows)
        return "\n".join(out)

    def summary(self) -> str:
        """One line: the chosen cell and its score."""
        score = float(self.scores[self.best_index])
        return (
            f"best by {self.criterion.upper()} (lower is better): K = {self.n_components}, "
            f"covariance_type = {self.covariance_type!r}, {self.criterion.upper()} = {score:.3f}"
        )

    def __str__(self) -> str:
        return self.summary() + "\n" + self.format_table()


def _slice_cell(batch: GMM, index: int, K: int) -> GMM:
    """Cell ``index`` of a (NumPy) batch of padded mixtures, cut to its ``K`` components."""
    cell = jax.tree.map(lambda leaf: leaf[index], batch)
    covariances = cell.covariances if cell.covariance_type == "tied" else cell.covariances[:K]
    return GMM(cell.weights[:K], cell.means[:K], covariances, cell.covariance_type)


class CollapseTest(NamedTuple):
    """What ``has_collapsed_component`` compares a fitted mixture with (float64)."""

    feature_variances: np.ndarray  # (D,): the data's, zero variances replaced by one
    whitening: np.ndarray  # (D, D): the data covariance's inverse square root
    tolerance: float  # sqrt(eps) of the data's dtype


def collapse_test(X) -> CollapseTest:
    """The reference for ``has_collapsed_component`` of mixtures fitted to ``X`` (N, D)."""
    covariance = np.asarray(jnp.cov(X, rowvar=False, bias=True), np.float64).reshape(
        X.shape[1], X.shape[1]
    )
    variances = np.diag(covariance)
    values, vectors = np.linalg.eigh(covariance)
    # Directions in which the data themselves have no spread are not a component's doing.
    values = np.maximum(values, 1e-12 * max(values.max(), np.finfo(np.float64).tiny))
    whitening = (vectors / np.sqrt(values)) @ vectors.T
    return CollapseTest(
        np.where(variances > 0, variances, 1.0),
        whitening,
        math.sqrt(float(jnp.finfo(X.dtype).eps)),
    )


def has_collapsed_component(params: GMM, reg_covar, test: CollapseTest) -> bool:
    """True when some component's covariance, less ``reg_covar`` and measured against the
    data's covariance, has an eigenvalue at most ``test.tolerance``: the component sits on a
    lower-dimensional set than the data (repeated values, fewer points than dimensions) or
    is empty, and its density is set by ``reg_covar``. Measured in the data's own units
    (their covariance for full and tied components, their variance per feature for diag,
    its mean for spherical), the test does not depend on the features' scales or
    correlations."""
    covariances = np.asarray(params.covariances, np.float64)
    reg = float(reg_covar)
    kind = params.covariance_type
    if kind in ("full", "tied"):
        whitening = test.whitening
        excess = covariances - reg * np.eye(len(whitening))
        smallest = np.linalg.eigvalsh(whitening @ excess @ whitening).min()
    elif kind == "diag":
        smallest = ((covariances - reg) / test.feature_variances).min()
    else:  # one variance per component, for every feature
        smallest = ((covariances - reg) / test.feature_variances.mean()).min()
    return bool(smallest <= test.tolerance)


def _check_K(K, n_samples: int) -> np.ndarray:
    if isinstance(K, (int, np.integer)):
        K = [K]
    if not isinstance(K, Iterable):
        raise TypeError(f"K must be an int or an iterable of ints; got {K!r}")
    values = [validation.check_n_components(k, n_samples, "K") for k in K]
    if not values:
        raise ValueError("K is empty")
    return np.unique(np.asarray(values, dtype=np.int64))


def _check_covariance_types(covariance_types) -> tuple:
    if isinstance(covariance_types, str):
        covariance_types = (covariance_types,)
    covariance_types = tuple(covariance_types)
    if not covariance_types:
        raise ValueError("covariance_types is empty")
    for kind in covariance_types:
        validation.check_covariance_type(kind)
    if len(set(covariance_types)) != len(covariance_types):
        raise ValueError(f"covariance_types has duplicates: {covariance_types}")
    return covariance_types


def select(
    key,
    X,
    K=range(1, 11),
    *,
    covariance_types=COVARIANCE_TYPES,
    criterion: str = "bic",
    n_init: int = DEFAULT_N_INIT,
    **fit_options,
) -> Selection:
    """Fit every (K, covariance type) and pick the best by an information criterion.

    Per covariance type, all values of ``K`` are fitted in one compiled program: every fit
    has ``max(K)`` components of which the first ``K`` take part, the others are padding of
    weight exactly zero (excluded from the E- and M-steps), so a ``vmap`` over ``K`` and the
    restarts runs them together. A padded fit follows the same EM path as an unpadded fit from
    the same start.

    Parameters
    ----------
    key : PRNG key
    X : Array, shape (N, D) or (N,)
        Data; its float dtype sets the computation dtype.
    K : int or iterable of int, default ``range(1, 11)``
        Numbers of components to try (each ``1 <= K <= N``).
    covariance_types : sequence of str, default all four
        Among ``"full"``, ``"diag"``, ``"spherical"``, ``"tied"``.
    criterion : {"bic", "aic", "icl"}
        What picks the best cell (lowest value wins).
    n_init : int, default 5
        Restarts per cell (the best log-likelihood is kept). Model selection compares
        log-likelihoods across cells, so a fit stuck in a poor local optimum can change the
        choice; five k-means++ restarts make that rare at a cost that, being a ``vmap``,
        grows less than linearly on an accelerator.
    **fit_options
        ``init`` (default ``"kmeans++"``), ``max_iter`` (100), ``tol`` (1e-3),
        ``reg_covar`` (1e-6), ``chunk_size``: as in ``jaxgmm.fit``.

    Returns
    -------
    Selection
        The best mixture, its ``K`` and type, and the table of log-likelihood, number of
        parameters, BIC, AIC and ICL of every cell (see ``Selection``).

    Notes
    -----
    ``BIC = -2 log L + p log N``, ``AIC = -2 log L + 2 p`` and
    ``ICL = BIC - 2 sum_n sum_k gamma_nk log gamma_nk`` (the BIC plus twice the entropy of
    the responsibilities at the fitted mixture: a penalty for overlapping components). Lower is
    better, as in scikit-learn; R's mclust reports BIC and ICL with the opposite sign (and its
    ICL uses hard MAP labels instead of the entropy).

    The likelihood of a Gaussian mixture is unbounded: a component can sit on a set of
    repeated values (data recorded to a few digits, like the Old Faithful waiting times) or
    on fewer points than dimensions, where only ``reg_covar`` keeps its covariance
    invertible, and the log-likelihood then grows like ``log(1 / reg_covar)`` per point.
    Such fits are marked ``collapsed`` (some eigenvalue of a covariance less ``reg_covar``,
    measured against the data's covariance, is at most ``sqrt(eps)``, or a component is
    empty)
    and are not chosen unless every cell is collapsed, as mclust reports singular
    covariances as missing values.

    Examples
    --------
    >>> import jax, numpy as np
    >>> from jaxgmm import select
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(size=(150, 2)), rng.normal(size=(150, 2)) + 6.0])
    >>> best = select(jax.random.key(0), X, K=range(1, 4), covariance_types=("spherical",))
    >>> best.n_components, best.params.weights.shape
    (2, (2,))
    >>> print(best)  # doctest: +ELLIPSIS
    best by BIC (lower is better): K = 2, covariance_type = 'spherical', BIC = ...
       cov        K  log-likelihood  params  ...
    -  ---------  -  --------------  ------  ...
       spherical  1  ...
    *  spherical  2  ...
       spherical  3  ...
    """
    validation.check_key(key)
    X = validation.as_data(X, "X")
    n_samples, n_features = X.shape
    Ks = _check_K(K, n_samples)
    covariance_types = _check_covariance_types(covariance_types)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    n_init = validation.check_positive_int(n_init, "n_init")
    unknown = set(fit_options) - set(_FIT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown fit option(s) {sorted(unknown)}; accepted: {_FIT_OPTIONS}")
    init = fit_options.get("init", "kmeans++")
    validation.check_init(init)
    max_iter = validation.check_positive_int(fit_options.get("max_iter", 100), "max_iter")
    tol = fit_options.get("tol", 1e-3)
    reg_covar = fit_options.get("reg_covar", 1e-6)
    validation.check_tol(tol)
    validation.check_reg_covar(reg_covar, X.dtype)
    chunk_size = fit_options.get("chunk_size")
    if chunk_size is not None:
        chunk_size = validation.check_positive_int(chunk_size, "chunk_size")

    dtype = X.dtype
    weights = jnp.ones((n_samples,), dtype)
    K_max = int(Ks[-1])
    batch = len(Ks) * n_init
    n_active = jnp.asarray(Ks, jnp.int32)
    tables = {name: np.zeros((len(covariance_types), len(Ks))) for name in ("ll", "ent")}
    converged = np.zeros((len(covariance_types), len(Ks)), bool)
    collapsed = np.zeros((len(covariance_types), len(Ks)), bool)
    reference = collapse_test(X)
    n_iter = np.zeros((len(covariance_types), len(Ks)), np.int64)
    all_params = {}
    pending = {}
    for t, kind in enumerate(covariance_types):
        width = cov.n_feature_columns(kind, n_features)
        if chunk_size is None:
            # As for one fit: the batch multiplies the memory of the per-chunk intermediates,
            # but smaller chunks cost more in compilation and in the loop than they save.
            rows = fit_chunk_size(n_samples, n_features, K_max, kind)
        else:
            rows = chunk_size
        # Dispatch every type before reading any result: JAX runs one program while Python
        # traces and compiles the next.
        pending[kind] = sweep(
            jax.random.fold_in(key, t),
            X,
            weights,
            jnp.asarray(tol, dtype),
            jnp.asarray(reg_covar, dtype),
            n_active,
            n_components=K_max,
            covariance_type=kind,
            init=init,
            n_init=n_init,
            max_iter=max_iter,
            chunk_size=rows,
            profile=profile_for(em_work(n_samples, K_max, width, batch)),
        )
    for t, kind in enumerate(covariance_types):
        result, entropy = pending[kind]
        all_params[kind] = jax.tree.map(np.asarray, result.params)
        tables["ll"][t] = np.asarray(result.log_likelihood, np.float64)
        tables["ent"][t] = np.asarray(entropy, np.float64)
        converged[t] = np.asarray(result.converged)
        collapsed[t] = [
            has_collapsed_component(_slice_cell(all_params[kind], j, int(k)), reg_covar, reference)
            for j, k in enumerate(Ks)
        ]
        n_iter[t] = np.asarray(result.n_iter)

    n_parameters = np.array(
        [[count_parameters(int(k), n_features, kind) for k in Ks] for kind in covariance_types]
    )
    log_likelihood = tables["ll"]
    bic = -2.0 * log_likelihood + n_parameters * math.log(n_samples)
    aic = -2.0 * log_likelihood + 2.0 * n_parameters
    icl = bic + 2.0 * tables["ent"]
    scores = {"bic": bic, "aic": aic, "icl": icl}[criterion]
    if not np.isfinite(scores).any():
        raise ValueError(f"every fit failed; {failed_start(dtype)}")
    eligible = np.isfinite(scores) & ~collapsed
    if not eligible.any():
        eligible = np.isfinite(scores)
    t_best, j_best = np.unravel_index(
        int(np.argmin(np.where(eligible, scores, np.inf))), scores.shape
    )
    best_kind = covariance_types[t_best]
    best_K = int(Ks[j_best])
    best_params = jax.tree.map(jnp.asarray, _slice_cell(all_params[best_kind], int(j_best), best_K))
    rounding.check_fitted(best_params, X, weights)
    return Selection(
        params=best_params,
        n_components=best_K,
        covariance_type=best_kind,
        criterion=criterion,
        n_samples=n_samples,
        K=Ks,
        covariance_types=covariance_types,
        log_likelihood=log_likelihood,
        n_parameters=n_parameters,
        bic=bic,
        aic=aic,
        icl=icl,
        converged=converged,
        collapsed=collapsed,
        n_iter=n_iter,
        all_params=all_params,
    )
