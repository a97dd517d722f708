"""A scikit-learn estimator backed by the functional core: ``GaussianMixture``.

This module imports scikit-learn (an optional extra); ``import jaxgmm`` never does.

Small fits of many differently sized arrays (cross-validation folds, ``check_estimator``) would
spend most of their time compiling, since JAX compiles once per input shape. The estimator
therefore pads the number of samples up to a few size buckets (powers of two, at least 64) with
rows of weight zero, which leave the fit unchanged, so one compiled program serves every sample
count in a bucket; on CPU it also compiles with cheaper code generation
(:mod:`jaxgmm._src.compile_options`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.linalg import solve_triangular
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from jaxgmm._src import covariances as cov
from jaxgmm._src import rounding
from jaxgmm._src.chunking import auto_chunk_size
from jaxgmm._src.compile_options import TunedJit, em_work, profile_for
from jaxgmm._src.em import _centered, check_evidence, weighted_log_densities
from jaxgmm._src.em_loop import em_pass
from jaxgmm._src.fitting import _fit_compiled, failed_start, pass_chunking
from jaxgmm._src.initialization import initialize_centered
from jaxgmm._src.model import COVARIANCE_TYPES, GMM, all_finite_leaves
from jaxgmm._src.online import _state_from_params, online_init, online_update
from jaxgmm._src.sampling import sample as _sample

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, X, **kwargs):
        return estimator._validate_data(X, **kwargs)


__all__ = ["GaussianMixture", "bucket_size"]

# scikit-learn's names for the initialisations -> the core's names.
_INIT_METHODS = {
    "kmeans": "kmeans",
    "k-means++": "kmeans++",
    "random": "random",
    "random_from_data": "random_from_data",
}
# The core's `init` argument when a start is given (unused then, but part of the cache key).
_START_INIT = "kmeans++"
_MIN_BUCKET = 64
_LARGE = 1 << 16  # above this, round up to a multiple of _STEP instead of a power of two
_STEP = 1 << 14


def bucket_size(n_samples: int) -> int:
    """The padded number of rows for ``n_samples`` real rows.

    The next power of two, at least 64, up to ``2**16``; above that the next multiple of
    ``2**14`` (at most a few percent of padding where the run time, not compilation,
    dominates).

    Examples
    --------
    >>> [bucket_size(n) for n in (2, 64, 65, 150, 70_000)]
    [64, 64, 128, 256, 81920]
    """
    n_samples = int(n_samples)
    if n_samples <= _LARGE:
        return max(_MIN_BUCKET, 1 << max(0, (n_samples - 1).bit_length()))
    return -(-n_samples // _STEP) * _STEP


def _pad_rows(X: np.ndarray, n_padded: int) -> tuple[np.ndarray, np.ndarray]:
    """``X`` padded to ``n_padded`` rows with copies of its first row, and the sample weights
    (one for the real rows, zero for the padding).

    Returns
    -------
    X_padded : ndarray, shape (n_padded, D)
    weights : ndarray, shape (n_padded,)
    """
    n_samples = X.shape[0]
    weights = np.zeros(n_padded, X.dtype)
    weights[:n_samples] = 1.0
    if n_padded == n_samples:
        return X, weights
    padding = np.broadcast_to(X[:1], (n_padded - n_samples, X.shape[1]))
    return np.concatenate([X, padding]), weights


def _precision_scope(dtype):
    """Compute in ``dtype``: float64 needs JAX's 64-bit mode, switched on for this scope only."""
    if np.dtype(dtype) == np.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def _width(n_features: int, covariance_type: str) -> int:
    """Columns ``P`` of the core's feature matrix."""
    return cov.n_feature_columns(covariance_type, n_features)


def _chunk_size(n_rows: int, n_features: int, n_components: int, covariance_type: str) -> int:
    return auto_chunk_size(n_rows, max(_width(n_features, covariance_type), n_components))


def _initial_params_core(
    key, X, weights, reg_covar, *, n_components, covariance_type, init, n_init, chunk_size
):
    """Starting mixtures of ``n_init`` restarts (a leading batch axis), made the way the core
    makes them inside ``fit`` (the keys are ``jax.random.split(key, n_init)``)."""
    center = jnp.sum(weights[:, None] * X, axis=0) / jnp.sum(weights)
    xc = X - center

    def one(restart_key):
        params = initialize_centered(
            restart_key, xc, weights, n_components, covariance_type, init, reg_covar, chunk_size
        )
        return cov.shift_means(params, center)

    return jax.vmap(one)(jax.random.split(key, n_init))


_initial_params = TunedJit(
    _initial_params_core, ("n_components", "covariance_type", "init", "n_init", "chunk_size")
)


class _SklearnFit(NamedTuple):
    """A fit with scikit-learn's stopping rule (see ``_fit_sklearn``)."""

    params: GMM
    lower_bound: jax.Array  # shape (): mean log-likelihood at the last E-step
    n_iter: jax.Array  # shape (), int: M-steps
    converged: jax.Array  # shape (), bool


_STATIC = (
    "n_components",
    "covariance_type",
    "init",
    "n_init",
    "max_iter",
    "chunk_size",
    "progress",
    "n_candidates",
)


def _fit_sklearn_core(
    key, X, weights, tol, reg_covar, start, *, n_components, covariance_type, init, n_init,
    max_iter, chunk_size, progress, n_candidates=None,
):  # fmt: skip
    """The core fit, stopped by scikit-learn's rule.

    scikit-learn stops at the first iteration ``n`` whose E-step log-likelihood (of the
    parameters from iteration ``n - 1``) changed by less than ``tol``, and still takes that
    iteration's M-step; the core stops at the first iteration whose M-step changed the
    log-likelihood by less than ``tol``. So: ``max_iter - 1`` core iterations, then one more
    EM step. ``lower_bound`` is the mean log-likelihood of the E-step of that last step (what
    scikit-learn reports and compares across restarts, as the core does).

    Parameters
    ----------
    key : PRNG key
    X : Array, shape (N, D)
    weights : Array, shape (N,)
        Zero for padding rows.
    tol, reg_covar : Array, shape ()
    start : GMM or None
    n_candidates : int or None
        Starts screened by short EM runs (``jaxgmm.fit``'s option of the same name).
    """
    result = _fit_compiled(
        key, X, weights, tol, reg_covar, start, n_components=n_components,
        covariance_type=covariance_type, init=init, n_init=n_init,
        max_iter=max(max_iter - 1, 1), chunk_size=chunk_size, progress=progress,
        n_candidates=n_candidates,
    )  # fmt: skip
    total_weight = jnp.sum(weights)
    lower_bound = result.log_likelihood / total_weight
    if max_iter == 1:  # one M-step: scikit-learn never reports convergence after it
        return _SklearnFit(result.params, lower_bound, result.n_iter, jnp.asarray(False))
    center = jnp.sum(weights[:, None] * X, axis=0) / total_weight
    params_c = cov.shift_means(result.params, -center)
    moments, _ = em_pass(params_c, X - center, weights, chunk_size)
    params = cov.shift_means(cov.params_from_moments(moments, covariance_type, reg_covar), center)
    # Near-singular covariances (reg_covar=0) can make that M-step non-finite: keep the core's
    # last finite parameters then, as the core's loop does.
    finite = all_finite_leaves(params)
    params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, result.params)
    return _SklearnFit(params, lower_bound, result.n_iter + 1, result.converged)


_fit_sklearn = TunedJit(_fit_sklearn_core, _STATIC)


def _fit_from_starts_core(
    keys, X, weights, tol, reg_covar, starts, *, n_components, covariance_type, max_iter,
    chunk_size, progress,
):  # fmt: skip
    """``_fit_sklearn`` from each of a batch of starting mixtures (leading axis), as one
    ``vmap``."""
    run = partial(
        _fit_sklearn_core,
        n_components=n_components,
        covariance_type=covariance_type,
        init=_START_INIT,
        n_init=1,
        max_iter=max_iter,
        chunk_size=chunk_size,
        progress=progress,
    )
    return jax.vmap(run, in_axes=(0, None, None, None, None, 0))(
        keys, X, weights, tol, reg_covar, starts
    )


_fit_from_starts = TunedJit(
    _fit_from_starts_core,
    tuple(a for a in _STATIC if a not in ("init", "n_init", "n_candidates")),
)


def _log_joint_and_norm_core(params: GMM, X):
    """``log pi_k + log N(x_n | k)``, shape (N, K), and its log-sum-exp over k, shape (N,)."""
    params_c, xc = _centered(params, X)
    joint = weighted_log_densities(params_c, xc)
    return joint, jax.nn.logsumexp(joint, axis=1)


_log_joint_and_norm = TunedJit(_log_joint_and_norm_core)

# Online EM for ``partial_fit``: compiled per (bucket, D, K, covariance_type[, init]).
_online_init = TunedJit(online_init, ("K", "covariance_type", "init", "chunk_size"))
_online_update = TunedJit(online_update, ("chunk_size",))


@dataclasses.dataclass(frozen=True)
class _Progress:
    """Prints EM progress from inside the compiled loop (hashable: a static argument)."""

    verbose: int
    interval: int

    def __call__(self, n_iter, mean_log_likelihood):
        n_iter = np.atleast_1d(np.asarray(n_iter))
        values = np.atleast_1d(np.asarray(mean_log_likelihood))
        if int(n_iter.max()) % self.interval:
            return
        if self.verbose >= 2:
            shown = " ".join(f"{v:.5f}" for v in values)
            print(f"  Iteration {int(n_iter.max())}\t mean log-likelihood {shown}")
        else:
            print(f"  Iteration {int(n_iter.max())}")


# --- checks of the constructor arguments and of user-given starting parameters


def _check_int(value, name, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"The '{name}' parameter must be an int; got {value!r}")
    if value < low:
        raise ValueError(f"The '{name}' parameter must be >= {low}; got {value}")


def _check_real(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"The '{name}' parameter must be a real number; got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"The '{name}' parameter must be finite and >= 0; got {value}")


def _as_init_array(value, name, shape, dtype):
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"'{name}' must be numeric; got dtype {array.dtype}")
    array = array.astype(dtype)
    if array.shape != shape:
        raise ValueError(f"'{name}' should have the shape {shape}, but got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"'{name}' contains NaN or infinite values")
    return array


def _check_weights_init(weights, n_components, dtype):
    weights = _as_init_array(weights, "weights_init", (n_components,), dtype)
    if np.any(weights < 0) or np.any(weights > 1):
        raise ValueError(
            f"'weights_init' should be in the range [0, 1]; got min {weights.min():.5f}, "
            f"max {weights.max():.5f}"
        )
    atol = 1e-6 if dtype == np.float32 else 1e-8
    if abs(1.0 - float(np.sum(weights, dtype=np.float64))) > atol:
        raise ValueError(f"'weights_init' should sum to 1; got {float(np.sum(weights)):.8f}")
    return weights


def _covariance_shape(covariance_type, n_components, n_features):
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


def _check_precisions_init(precisions, covariance_type, n_components, n_features, dtype):
    shape = _covariance_shape(covariance_type, n_components, n_features)
    precisions = _as_init_array(precisions, "precisions_init", shape, dtype)
    if covariance_type in ("full", "tied"):
        matrices = precisions.reshape((-1, n_features, n_features))
        symmetric = np.allclose(matrices, np.swapaxes(matrices, -1, -2))
        if not symmetric or np.any(np.linalg.eigvalsh(matrices) <= 0):
            raise ValueError(
                f"'precisions_init' ({covariance_type}) should be symmetric, positive-definite"
            )
    elif np.any(precisions <= 0):
        raise ValueError(f"'precisions_init' ({covariance_type}) should be positive")
    return precisions


def _covariances_from_precisions(precisions, covariance_type):
    if covariance_type in ("full", "tied"):
        covariances = np.linalg.inv(precisions)
        return 0.5 * (covariances + np.swapaxes(covariances, -1, -2))
    return 1.0 / precisions


def _precisions_cholesky(covariances, covariance_type):
    """scikit-learn's ``precisions_cholesky_``: an upper-triangular ``U`` per component with
    ``U U' = S^-1`` (``U = L^-T`` for ``S = L L'``); ``1 / sqrt(S)`` for diag and spherical."""
    if covariance_type not in ("full", "tied"):
        return 1.0 / np.sqrt(covariances)
    matrices = covariances if covariance_type == "full" else covariances[None]
    eye = np.eye(matrices.shape[-1], dtype=matrices.dtype)
    factors = []
    ill_defined = ValueError(
        "Fitting the mixture model failed because some components have ill-defined "
        "covariance. Try to decrease the number of components, increase reg_covar, "
        "or scale the input data."
    )
    for matrix in matrices:
        try:
            lower = np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            raise ill_defined from None
        # A numerically singular matrix can factor into NaNs or a zero pivot.
        if not (np.all(np.isfinite(lower)) and np.all(np.diagonal(lower) > 0)):
            raise ill_defined
        factors.append(solve_triangular(lower, eye, lower=True).T)
    factors = np.stack(factors).astype(covariances.dtype)
    return factors if covariance_type == "full" else factors[0]


def _override(starts: GMM, **arrays) -> GMM:
    """Replace fields of a batch of mixtures by user-given (unbatched) arrays, where given."""
    n_starts = starts.weights.shape[0]
    changes = {
        name: jnp.broadcast_to(jnp.asarray(array), (n_starts,) + np.shape(array))
        for name, array in arrays.items()
        if array is not None
    }
    return starts.replace(**changes)


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM, a drop-in for ``sklearn.mixture.GaussianMixture``.

    Same constructor arguments, fitted attributes and methods, with the same meanings and
    shapes, backed by ``jaxgmm.fit``: restarts run together as one ``vmap`` and the EM loop
    is one compiled ``lax.while_loop``. In addition, ``partial_fit`` fits by online
    (stepwise) EM, one minibatch per call (``jaxgmm.online_init`` / ``online_update``).

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components ``K``.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        EM stops when the mean per-sample log-likelihood changes by less than ``tol``.
    reg_covar : float, default=1e-6
        Non-negative value added to the diagonal of every covariance.
    max_iter : int, default=100
        Maximum number of EM iterations; ``0`` keeps the initial parameters.
    n_init : int, default=1
        Number of initialisations; the fit with the highest log-likelihood is kept.
    n_candidates : int or None, default=None
        Not in scikit-learn. Screen ``n_candidates >= n_init`` starts of ``init_params``
        with 20 EM iterations each (one batch) and run the ``n_init`` best to convergence
        (``jaxgmm.fit``'s start screening); higher likelihoods for more work. ``None``: no
        screening. Cannot be combined with ``weights_init``, ``means_init`` or
        ``precisions_init``; ignored by a warm start.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        Initialisation. ``"kmeans"``: k-means++ seeding then Lloyd iterations;
        ``"k-means++"``: k-means++ seeds; ``"random_from_data"``: random data points;
        ``"random"``: random responsibilities. Seed-based starts assign every sample to its
        nearest seed before the first M-step (scikit-learn gives the seed alone
        responsibility), see ``jaxgmm.init_params``.
    weights_init : array-like, shape (K,), optional
        User-given starting weights (override those of ``init_params``).
    means_init : array-like, shape (K, D), optional
        User-given starting means.
    precisions_init : array-like, optional
        User-given starting precisions (inverse covariances): shape ``(K, D, D)`` for full,
        ``(D, D)`` for tied, ``(K, D)`` for diag, ``(K,)`` for spherical.
    random_state : int, RandomState instance or None, default=None
        Seeds the JAX key of the initialisation (``jax.random.key`` of an integer drawn from
        ``check_random_state(random_state)``) and ``sample``. An int gives reproducible
        fits.
    warm_start : bool, default=False
        When True, a second ``fit`` starts from the parameters of the previous one (and
        ``n_init`` is ignored).
    verbose : int, default=0
        1 prints the initialisation and iteration numbers, 2 also the mean log-likelihood.
    verbose_interval : int, default=10
        Iterations between two printed lines.

    Attributes
    ----------
    weights_ : ndarray, shape (K,)
    means_ : ndarray, shape (K, D)
    covariances_ : ndarray
        ``(K, D, D)`` full, ``(D, D)`` tied, ``(K, D)`` diag, ``(K,)`` spherical.
    precisions_ : ndarray
        Inverses of the covariances, same shapes.
    precisions_cholesky_ : ndarray
        Upper-triangular ``U`` with ``U @ U.T = precision`` (scikit-learn's convention); for
        diag and spherical ``1 / sqrt(covariances_)``.
    converged_ : bool
        True when the kept fit met the ``tol`` criterion within ``max_iter`` iterations;
        always False after ``partial_fit`` (online EM has no convergence test).
    n_iter_ : int
        Number of EM iterations (M-steps) of the kept fit; after ``partial_fit``, the number
        of ``partial_fit`` calls since the online fit began (one M-step each).
    lower_bound_ : float
        After ``fit``: mean per-sample log-likelihood of the training data at the E-step of
        the last iteration, i.e. before its M-step, as in scikit-learn (``-inf`` when
        ``max_iter=0``); the returned parameters score at least this much. After
        ``partial_fit``: mean log-likelihood of its batch under the parameters before its
        M-step (a prequential estimate; for the first call, under the start).
    n_features_in_ : int
    feature_names_in_ : ndarray, shape (n_features_in_,)
        Only when ``X`` had string feature names.

    Notes
    -----
    *Precision.* The estimator computes in the dtype of its input, as scikit-learn does:
    float64 for float64 (and integer) data, float32 for float32 data. Float64 runs under
    ``jax.enable_x64(True)`` scoped to the call, so the estimator works in float64 without
    switching on JAX's global 64-bit mode and never changes it.

    *Stopping rule.* As scikit-learn: iteration ``n`` is an E-step then an M-step, and EM
    stops after the first iteration whose E-step log-likelihood changed by less than ``tol``
    (``jaxgmm.fit`` instead measures the change after the M-step, so for the same
    ``tol`` it stops one iteration earlier). ``n_iter_``, ``converged_`` and
    ``lower_bound_`` therefore mean what they mean in scikit-learn. scikit-learn's
    ``lower_bounds_`` (the per-iteration history) is not provided.

    *Online EM.* ``partial_fit`` takes one stepwise-EM step per call, with step size
    ``rho_t = (t + 2) ** -0.6`` (``jaxgmm.online_update``'s defaults), starting from its
    first batch or, after ``fit``, from the fitted parameters; ``fit`` discards the online
    state. See ``partial_fit``.

    *Compilation.* The number of samples is padded to a size bucket (``bucket_size``)
    with zero-weight rows, which never take part in initialisation or EM, so fits of
    different sizes in a bucket share one compiled program. A program is compiled per
    ``(bucket, D, K, covariance_type, init_params, n_init, n_candidates, max_iter)``; on
    CPU, with per-program options that make XLA's code generation cheaper (see
    ``jaxgmm._src.compile_options``; same arithmetic).

    Examples
    --------
    >>> import numpy as np
    >>> from jaxgmm.sklearn import GaussianMixture
    >>> X = np.array([[1, 2], [1, 4], [1, 0], [10, 2], [10, 4], [10, 0]])
    >>> gm = GaussianMixture(n_components=2, random_state=0).fit(X)
    >>> np.round(gm.means_[np.argsort(gm.means_[:, 0])], 6)
    array([[ 1.,  2.],
           [10.,  2.]])
    >>> gm.predict([[0, 0], [12, 3]]).tolist() == gm.predict([[1, 2], [10, 2]]).tolist()
    True
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        n_candidates=None,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.n_candidates = n_candidates
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval

    # --- fitting

    def _check_parameters(self):
        _check_int(self.n_components, "n_components", 1)
        _check_int(self.max_iter, "max_iter", 0)
        _check_int(self.n_init, "n_init", 1)
        if self.n_candidates is not None:
            _check_int(self.n_candidates, "n_candidates", self.n_init)
        _check_int(self.verbose_interval, "verbose_interval", 1)
        _check_int(self.verbose, "verbose", 0)
        _check_real(self.tol, "tol")
        _check_real(self.reg_covar, "reg_covar")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"The 'covariance_type' parameter must be one of {COVARIANCE_TYPES}; "
                f"got {self.covariance_type!r}"
            )
        if self.init_params not in _INIT_METHODS:
            raise ValueError(
                f"The 'init_params' parameter must be one of {tuple(_INIT_METHODS)}; "
                f"got {self.init_params!r}"
            )
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise TypeError(f"The 'warm_start' parameter must be a bool; got {self.warm_start!r}")

    def _user_start(self, n_features, dtype):
        """The user-given starting arrays, checked (without changing the attributes)."""
        K = self.n_components
        weights = means = covariances = None
        if self.weights_init is not None:
            weights = _check_weights_init(self.weights_init, K, dtype)
        if self.means_init is not None:
            means = _as_init_array(self.means_init, "means_init", (K, n_features), dtype)
        if self.precisions_init is not None:
            precisions = _check_precisions_init(
                self.precisions_init, self.covariance_type, K, n_features, dtype
            )
            covariances = _covariances_from_precisions(precisions, self.covariance_type)
        return weights, means, covariances

    def fit(self, X, y=None):
        """Estimate the parameters with EM (``n_init`` restarts, the best one kept).

        Parameters
        ----------
        X : array-like, shape (N, D)
        y : ignored

        Returns
        -------
        self : GaussianMixture
        """
        self._fit(X)
        return self

    def fit_predict(self, X, y=None):
        """Fit, then return the component of each training sample.

        Parameters
        ----------
        X : array-like, shape (N, D)
        y : ignored

        Returns
        -------
        labels : ndarray, shape (N,)
        """
        X = self._fit(X)
        return self._predict_validated(X)

    def partial_fit(self, X, y=None):
        """One step of online (stepwise) EM on a minibatch.

        The first call on an unfitted estimator initialises from ``X`` with
        ``jaxgmm.online_init``: the start comes from ``init_params`` on ``X`` and
        ``random_state``, with ``weights_init``, ``means_init`` and ``precisions_init``
        substituted where given (all three given: that start), and the parameters are one EM
        iteration from it on ``X``. Every later call is one ``jaxgmm.online_update``: the
        running averages ``s`` of the per-sample sufficient statistics move toward those of
        ``X`` under the current parameters, ``s <- (1 - rho_t) s + rho_t s(X)``, and the
        parameters are their M-step, with step size ``rho_t = (t + t0) ** (-kappa)`` for the
        ``t``-th update, at ``online_update``'s defaults ``kappa = 0.6``, ``t0 = 2`` (not
        settable here). ``reg_covar`` is read at every call.

        After ``fit`` (and ``fit`` after ``partial_fit`` discards the online state), the next
        call continues online from the fitted parameters: the running statistics start as the
        fitted mixture's own expected statistics (whose M-step is that mixture) and the call
        is one update with ``rho_1 = 3 ** -0.6 = 0.52``, so this batch and the fit weigh about
        equally. ``n_init``, ``tol``, ``max_iter``, ``warm_start`` and ``verbose`` are not used.

        Batches should be drawn at random from a stationary distribution (stepwise EM
        assumes it). Rows are padded to the size buckets of ``fit`` in a way that leaves the
        step unchanged, so batches of different sizes in a bucket share a compiled program.
        Later batches are cast to the dtype of the fitted parameters. In float32 a call warns
        (``RuntimeWarning``) when rounding can blur the components, judged with the spread
        of ``X``, as ``fit`` does.

        Parameters
        ----------
        X : array-like, shape (n, D)
            The minibatch; on the first call at least ``n_components`` rows, later calls the
            same ``D`` (and feature names) as the first.
        y : ignored

        Returns
        -------
        self : GaussianMixture
            With the fitted attributes set as by ``fit``, except: ``n_iter_`` = number of
            ``partial_fit`` calls since the online fit began (each one M-step),
            ``lower_bound_`` = mean log-likelihood of ``X`` under the parameters before this
            call's M-step (the first call: under the initial start), ``converged_`` = False
            (online EM has no convergence test).

        Examples
        --------
        >>> import numpy as np
        >>> from jaxgmm.sklearn import GaussianMixture
        >>> rng = np.random.default_rng(0)
        >>> X = np.concatenate([rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2)) + 6])
        >>> rng.shuffle(X)
        >>> gm = GaussianMixture(n_components=2, random_state=0)
        >>> for batch in np.array_split(X, 10):
        ...     gm = gm.partial_fit(batch)
        >>> gm.n_iter_, sorted(np.round(gm.weights_, 1).tolist())
        (10, [0.5, 0.5])
        """
        self._check_parameters()
        fitted = hasattr(self, "converged_")
        X = _validate_data(self, X, dtype=[np.float64, np.float32], reset=not fitted)
        n_samples, n_features = X.shape
        K, covariance_type = self.n_components, self.covariance_type
        if fitted:
            self._check_fitted_shapes(n_features, "call fit, or partial_fit on a new estimator")
            dtype = self.means_.dtype
        else:
            if n_samples < K:
                raise ValueError(
                    "The first partial_fit batch needs n_samples >= n_components but got "
                    f"n_components = {K}, n_samples = {n_samples}"
                )
            dtype = X.dtype
        X = X.astype(dtype, copy=False)
        n_padded = bucket_size(n_samples)
        X_padded, row_weights = _pad_rows(X, n_padded)
        chunk_size = _chunk_size(n_padded, n_features, K, covariance_type)
        profile = profile_for(em_work(n_padded, K, _width(n_features, covariance_type)))
        with _precision_scope(dtype):
            reg_covar = jnp.asarray(self.reg_covar, dtype)
            X_padded = jnp.asarray(X_padded)
            if not fitted:
                state = self._online_start(
                    X_padded, jnp.asarray(row_weights), reg_covar, chunk_size, profile
                )
                n_iter = 1
            else:
                state = getattr(self, "_online_state", None)
                if state is None:  # fitted by fit: continue from its parameters
                    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), self._params())
                    state = _state_from_params(params, reg_covar)
                    n_iter = 1
                else:
                    n_iter = self.n_iter_ + 1
                # online_update scales the step by the mean weight (at most 1); weights of
                # n_padded / n_samples on the real rows keep that mean at 1, so the padded
                # batch takes the step of the unpadded one (its statistics are weighted means).
                weights = jnp.asarray(row_weights * (n_padded / n_samples), dtype)
                state = _online_update(
                    state,
                    X_padded,
                    sample_weight=weights,
                    reg_covar=reg_covar,
                    chunk_size=chunk_size,
                    profile=profile,
                )
            state = jax.tree.map(np.asarray, state)
        if not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params)):
            raise ValueError(failed_start(dtype))
        rounding.check_spread(state.params, rounding.sample_spread(X), n_samples)
        self._set_params(jax.tree.map(lambda a: np.asarray(a, dtype), state.params))
        self._online_state = state
        self.converged_ = False
        self.n_iter_ = n_iter
        self.lower_bound_ = float(state.log_likelihood)
        return self

    def _online_start(self, X, weights, reg_covar, chunk_size, profile):
        """The initial online state from a first (padded) batch: ``online_init`` from the
        ``init_params`` start, with the user-given arrays substituted where given."""
        n_features = X.shape[1]
        dtype = X.dtype
        user_weights, user_means, user_covariances = self._user_start(n_features, dtype)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        key = jax.random.key(seed)
        init = _INIT_METHODS[self.init_params]
        static = dict(
            n_components=self.n_components,
            covariance_type=self.covariance_type,
            chunk_size=chunk_size,
        )
        user = (user_weights, user_means, user_covariances)
        if all(a is not None for a in user):
            guess = GMM(*(jnp.asarray(a) for a in user), self.covariance_type)
        elif any(a is not None for a in user):
            starts = _initial_params(
                key, X, weights, reg_covar, init=init, n_init=1, profile=profile, **static
            )
            starts = _override(
                starts, weights=user_weights, means=user_means, covariances=user_covariances
            )
            guess = jax.tree.map(lambda a: a[0], starts)
        else:
            guess = None
        return _online_init(
            key,
            X,
            self.n_components,
            covariance_type=self.covariance_type,
            init=init if guess is None else _START_INIT,
            reg_covar=reg_covar,
            init_params=guess,
            sample_weight=weights,
            chunk_size=chunk_size,
            profile=profile,
        )

    def _check_fitted_shapes(self, n_features: int, remedy: str) -> None:
        """Raise a ``ValueError`` when the fitted parameters, which a call continues from, do
        not match ``n_components``, ``covariance_type`` and ``X``'s ``n_features``."""
        K, covariance_type = self.n_components, self.covariance_type
        expected = _covariance_shape(covariance_type, K, n_features)
        fitted_type = getattr(self, "_fitted_covariance_type", covariance_type)
        if (
            fitted_type != covariance_type
            or self.means_.shape != (K, n_features)
            or self.covariances_.shape != expected
        ):
            raise ValueError(
                f"n_components = {K}, covariance_type = {covariance_type!r} and X with "
                f"{n_features} features do not match the fitted parameters ({fitted_type!r}, "
                f"means_ {self.means_.shape}, covariances_ {self.covariances_.shape}); {remedy}"
            )

    def _fit(self, X):
        self._check_parameters()
        warm = bool(self.warm_start) and hasattr(self, "converged_")
        # A warm start continues from the fitted parameters: X must keep their features.
        X = _validate_data(
            self, X, dtype=[np.float64, np.float32], ensure_min_samples=2, reset=not warm
        )
        n_samples, n_features = X.shape
        if n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components but got "
                f"n_components = {self.n_components}, n_samples = {n_samples}"
            )
        dtype = X.dtype
        user_start = self._user_start(n_features, dtype)
        if warm:
            self._check_fitted_shapes(n_features, "set warm_start=False to start afresh")
        n_init = 1 if warm else self.n_init
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if self.verbose:
            print(f"Initialization 0..{n_init - 1} (run together)")
        with _precision_scope(dtype):
            params, lower_bound, n_iter, converged = self._run(X, seed, n_init, warm, user_start)
        self._set_params(params)
        self.converged_ = converged
        self.n_iter_ = n_iter
        self.lower_bound_ = lower_bound
        self._online_state = None  # a later partial_fit continues from these parameters
        if self.verbose:
            if self.max_iter > 1 and n_iter % self.verbose_interval == 0:
                print(f"  Iteration {n_iter}")  # the last M-step, after the core's loop
            state = "converged" if converged else "did not converge"
            print(f"Initialization {state}. lower bound {lower_bound:.5f}")
        if not converged and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return X

    def _run(self, X, seed, n_init, warm, user_start):
        """EM on ``X`` padded to its size bucket. Returns the NumPy parameters, lower bound,
        ``n_iter`` and ``converged`` of the kept run.

        Three routes, all through the jitted core: no user start (initialisation and restarts
        inside the core); one fully known start (warm start, or all three ``*_init``
        arrays given; the core from it); partly given starts (the ``init_params``
        starts with the given arrays substituted, one EM run per restart as a ``vmap``).
        """
        n_samples, n_features = X.shape
        dtype = X.dtype
        n_padded = bucket_size(n_samples)
        X_padded, sample_weight = _pad_rows(X, n_padded)
        progress = _Progress(self.verbose, self.verbose_interval) if self.verbose else None
        user_weights, user_means, user_covariances = user_start
        screen = None if warm else self.n_candidates
        static = dict(
            n_components=self.n_components,
            covariance_type=self.covariance_type,
            chunk_size=pass_chunking(
                n_padded,
                n_features,
                self.n_components,
                self.covariance_type,
                batched_fits=max(n_init, screen or 1),
                itemsize=dtype.itemsize,
            ),
        )
        if screen is not None and any(a is not None for a in user_start):
            raise ValueError(
                "n_candidates screens the starts of init_params; it cannot be combined with "
                "weights_init, means_init or precisions_init"
            )
        # Cheaper compilation for small problems (see jaxgmm._src.compile_options).
        width = _width(n_features, self.covariance_type)
        profile = profile_for(em_work(n_padded, self.n_components, width, max(n_init, screen or 1)))
        init = _INIT_METHODS[self.init_params]
        key = jax.random.key(seed)
        X_padded, sample_weight = jnp.asarray(X_padded), jnp.asarray(sample_weight)
        tol, reg_covar = jnp.asarray(self.tol, dtype), jnp.asarray(self.reg_covar, dtype)
        data = (X_padded, sample_weight, tol, reg_covar)

        if warm:
            starts = jax.tree.map(lambda a: jnp.asarray(a, dtype)[None], self._params())
        elif all(a is not None for a in user_start):
            starts = GMM(
                jnp.asarray(user_weights)[None],
                jnp.asarray(user_means)[None],
                jnp.asarray(user_covariances)[None],
                self.covariance_type,
            )
        elif any(a is not None for a in user_start) or self.max_iter == 0:
            starts = _initial_params(
                key,
                X_padded,
                sample_weight,
                reg_covar,
                init=init,
                n_init=n_init,
                profile=profile,
                **static,
            )
            starts = _override(
                starts, weights=user_weights, means=user_means, covariances=user_covariances
            )
        else:
            starts = None

        if self.max_iter == 0:
            params = jax.tree.map(lambda a: np.asarray(a[0], dtype), starts)
            return params, -np.inf, 0, False
        options = dict(max_iter=self.max_iter, progress=progress, profile=profile, **static)
        if starts is None:
            result = _fit_sklearn(
                key, *data, None, init=init, n_init=n_init, n_candidates=screen, **options
            )
        elif starts.weights.shape[0] == 1:
            start = jax.tree.map(lambda a: a[0], starts)
            result = _fit_sklearn(key, *data, start, init=_START_INIT, n_init=1, **options)
        else:
            keys = jax.random.split(key, starts.weights.shape[0])
            batch = _fit_from_starts(keys, *data, starts, **options)
            totals = np.asarray(batch.lower_bound)
            best = int(np.argmax(np.where(np.isfinite(totals), totals, -np.inf)))
            result = jax.tree.map(lambda a: a[best], batch)
        if not np.isfinite(float(result.lower_bound)):
            raise ValueError(failed_start(dtype))
        # The warning names the user's line: _run <- _fit <- fit or fit_predict.
        rounding.check_fitted(result.params, X_padded, sample_weight, stacklevel=6)
        return (
            jax.tree.map(lambda a: np.asarray(a, dtype), result.params),
            float(result.lower_bound),
            int(result.n_iter),
            bool(result.converged),
        )

    def _set_params(self, params: GMM) -> None:
        # The precisions first: if they cannot be formed, the estimator keeps its state.
        chol = _precisions_cholesky(params.covariances, self.covariance_type)
        if self.covariance_type == "full":
            precisions = np.einsum("kij,klj->kil", chol, chol)
        elif self.covariance_type == "tied":
            precisions = chol @ chol.T
        else:
            precisions = chol**2
        self._fitted_covariance_type = self.covariance_type
        self.weights_ = params.weights
        self.means_ = params.means
        self.covariances_ = params.covariances
        self.precisions_cholesky_ = chol
        self.precisions_ = precisions

    def _params(self) -> GMM:
        """The fitted mixture as a ``jaxgmm.GMM`` of NumPy arrays (of the covariance type it
        was fitted with, even after ``set_params(covariance_type=...)``)."""
        fitted_type = getattr(self, "_fitted_covariance_type", self.covariance_type)
        return GMM(self.weights_, self.means_, self.covariances_, fitted_type)

    # --- evaluation

    def _log_joint(self, X, for_responsibilities: bool = False):
        """``(log pi_k + log N(x_n | k), log p(x_n))`` as NumPy arrays for validated ``X``."""
        dtype = np.result_type(X.dtype, self.means_.dtype)
        n_samples = X.shape[0]
        n_padded = bucket_size(n_samples)
        X_padded, _ = _pad_rows(np.asarray(X, dtype), n_padded)
        K, D = self.means_.shape
        profile = profile_for(em_work(n_padded, K, _width(D, self.covariance_type)))
        with _precision_scope(dtype):
            # NumPy arguments: the compiled call moves them in one step.
            params = jax.tree.map(lambda a: np.asarray(a, dtype), self._params())
            joint, norm = _log_joint_and_norm(params, X_padded, profile=profile)
            joint, norm = np.asarray(joint)[:n_samples], np.asarray(norm)[:n_samples]
        check_evidence(norm, dtype, for_responsibilities)
        return joint, norm

    def _validate(self, X):
        check_is_fitted(self)
        return _validate_data(self, X, dtype=[np.float64, np.float32], reset=False)

    def _predict_validated(self, X):
        return np.argmax(self._log_joint(X, for_responsibilities=True)[0], axis=1)

    def predict(self, X):
        """The most probable component of each sample.

        Parameters
        ----------
        X : array-like, shape (N, D)

        Returns
        -------
        labels : ndarray, shape (N,)
        """
        return self._predict_validated(self._validate(X))

    def predict_proba(self, X):
        """Responsibilities: the posterior probability of each component for each sample.

        Parameters
        ----------
        X : array-like, shape (N, D)

        Returns
        -------
        resp : ndarray, shape (N, K)
        """
        joint, norm = self._log_joint(self._validate(X), for_responsibilities=True)
        return np.exp(joint - norm[:, None])

    def score_samples(self, X):
        """Log density of each sample.

        Parameters
        ----------
        X : array-like, shape (N, D)

        Returns
        -------
        log_prob : ndarray, shape (N,)
        """
        return self._log_joint(self._validate(X))[1]

    def score(self, X, y=None):
        """Mean per-sample log-likelihood of ``X``.

        Parameters
        ----------
        X : array-like, shape (N, D)
        y : ignored

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X)))

    def _n_parameters(self) -> int:
        K, D = self.means_.shape
        covariance = {
            "full": K * D * (D + 1) // 2,
            "diag": K * D,
            "spherical": K,
            "tied": D * (D + 1) // 2,
        }[self.covariance_type]
        return int(covariance + K * D + K - 1)

    def bic(self, X):
        """Bayesian information criterion ``-2 log L + p log N`` on ``X``; lower is better.

        Parameters
        ----------
        X : array-like, shape (N, D)

        Returns
        -------
        float
        """
        n_samples = np.shape(X)[0]
        return -2 * self.score(X) * n_samples + self._n_parameters() * math.log(n_samples)

    def aic(self, X):
        """Akaike information criterion ``-2 log L + 2 p`` on ``X``; lower is better.

        Parameters
        ----------
        X : array-like, shape (N, D)

        Returns
        -------
        float
        """
        return -2 * self.score(X) * np.shape(X)[0] + 2 * self._n_parameters()

    def sample(self, n_samples=1):
        """Draw samples from the fitted mixture (grouped by component, as scikit-learn).

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : ndarray, shape (n_samples, D), float64
        y : ndarray, shape (n_samples,), int
            The component of each sample, in increasing order.
        """
        check_is_fitted(self)
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
            raise TypeError(f"n_samples must be an int; got {n_samples!r}")
        if n_samples < 1:
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples}. The sampling requires at least "
                "one sample."
            )
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        dtype = self.means_.dtype
        with _precision_scope(dtype):
            X, labels = _sample(jax.random.key(seed), self._params(), int(n_samples))
            X, labels = np.asarray(X, np.float64), np.asarray(labels, np.int64)
        order = np.argsort(labels, kind="stable")
        return X[order], labels[order]
