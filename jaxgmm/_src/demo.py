"""``jaxgmm demo``: the package's main job on data bundled with scikit-learn (no download),
written as a Markdown report with PNG figures.

Parts: clustering the 8x8 digits (PCA in JAX, against k-means and scikit-learn's
GaussianMixture), colour segmentation of two sample photographs with K chosen by BIC, a 1-D
density and 2-D ellipses with the log-likelihood over EM iterations.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src import plotting
from jaxgmm._src.criteria import n_parameters
from jaxgmm._src.em import m_step, predict
from jaxgmm._src.fitting import fit
from jaxgmm._src.model import GMM
from jaxgmm._src.sampling import sample
from jaxgmm._src.segmentation import bic_sweep, segment_image

_EXTRAS = {"sklearn": "scikit-learn", "matplotlib": "matplotlib", "PIL": "pillow"}


# Compiled once per shape (called eagerly, these run op by op, each op compiled on first use).
_predict = jax.jit(predict)
_m_step = jax.jit(m_step, static_argnames="covariance_type")


def missing_extras() -> list[str]:
    """Names of the packages of the ``examples`` extra that are not installed."""
    return [name for module, name in _EXTRAS.items() if importlib.util.find_spec(module) is None]


@functools.partial(jax.jit, static_argnames="n_components")
def pca(X, n_components: int):
    """Principal component analysis by the SVD of the centred data.

    Parameters
    ----------
    X : Array, shape (N, F)
    n_components : int
        ``d``, the number of components kept (static).

    Returns
    -------
    scores : Array, shape (N, d)
        Coordinates of the samples on the components, ``(X - mean) @ components.T``.
    components : Array, shape (d, F)
        Orthonormal rows, by decreasing variance.
    mean : Array, shape (F,)
    explained : Array, shape (d,)
        Fraction of the total variance along each component.
    """
    mean = jnp.mean(X, axis=0)
    u, s, vt = jnp.linalg.svd(X - mean, full_matrices=False)
    # Fix the sign of each component (its largest loading positive) for reproducible output.
    signs = jnp.sign(vt[jnp.arange(vt.shape[0]), jnp.argmax(jnp.abs(vt), axis=1)])
    u, vt = u * signs, vt * signs[:, None]
    scores = u[:, :n_components] * s[:n_components]
    explained = s[:n_components] ** 2 / jnp.sum(s**2)
    return scores, vt[:n_components], mean, explained


def match_clusters(y_true, y_pred):
    """Accuracy after the best one-to-one matching of clusters to classes (Hungarian method).

    Parameters
    ----------
    y_true : array, shape (N,), int
        Classes ``0..C-1``.
    y_pred : array, shape (N,), int
        Clusters ``0..K-1``.

    Returns
    -------
    accuracy : float
    mapping : numpy.ndarray, shape (K,)
        The class matched to each cluster (-1 for a cluster left unmatched when K > C).
    contingency : numpy.ndarray, shape (C, K)
        Counts of (class, cluster) pairs.
    """
    from scipy.optimize import linear_sum_assignment

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n_classes = int(y_true.max()) + 1
    n_clusters = int(y_pred.max()) + 1
    contingency = np.zeros((n_classes, n_clusters), dtype=np.int64)
    np.add.at(contingency, (y_true, y_pred), 1)
    classes, clusters = linear_sum_assignment(-contingency)
    mapping = np.full(n_clusters, -1)
    mapping[clusters] = classes
    accuracy = contingency[classes, clusters].sum() / y_true.size
    return float(accuracy), mapping, contingency


def _table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_sd(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


# ---------------------------------------------------------------------------------------------


def _seed_span(seeds) -> str:
    """``"seeds 0 to 19"``, or ``"seed 0"`` for one."""
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"seeds {seeds[0]} to {seeds[-1]}"


def digits_part(out_dir: str, *, quick: bool, seed: int, log: Callable) -> str:
    """Cluster the 8x8 digits; returns the Markdown section."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    n_dims, K = (10, 10) if quick else (30, 10)
    n_init = 2 if quick else 10
    # Ten screened candidates per restart: of the settings tried (50 to 400 candidates, 5 to
    # 20 iterations), 100 x 20 and 200 x 10 reached the highest mean log-likelihood.
    n_candidates = 10 * n_init
    # Twenty seeds: which local maximum the restarts reach is a matter of chance, and the
    # ARI of five seeds moves by several hundredths with it. The first five are reported too.
    seeds = list(range(seed, seed + (1 if quick else 20)))
    first = seeds[:5]
    images, y = load_digits(return_X_y=True)
    scores, components, mean, explained = pca(jnp.asarray(images, jnp.float64), n_dims)
    Z = np.asarray(scores)
    log(
        f"digits: {images.shape[0]} images, PCA to {n_dims} dimensions "
        f"({float(jnp.sum(explained)):.1%} of the variance); seeds {seeds}"
    )

    screened = f"jaxgmm, {n_candidates} screened starts"
    methods = ("jaxgmm", screened, "scikit-learn GaussianMixture", "k-means (scikit-learn)")
    runs = {name: [] for name in methods}

    def record(name, labels, seconds, mean_log_likelihood=None):
        accuracy, mapping, contingency = match_clusters(y, labels)
        runs[name].append(
            dict(
                ari=adjusted_rand_score(y, labels),
                nmi=normalized_mutual_info_score(y, labels),
                accuracy=accuracy,
                seconds=seconds,
                mean_ll=mean_log_likelihood,
                mapping=mapping,
                contingency=contingency,
            )
        )

    fitted = []
    for s in seeds:
        start = time.perf_counter()
        result = fit(jax.random.key(s), Z, K, covariance_type="full", init="kmeans", n_init=n_init)
        labels = np.asarray(_predict(result.params, Z))
        seconds = time.perf_counter() - start
        record("jaxgmm", labels, seconds, float(result.log_likelihood) / Z.shape[0])
        start = time.perf_counter()
        result = fit(
            jax.random.key(s), Z, K, covariance_type="full", init="kmeans", n_init=n_init,
            n_candidates=n_candidates,
        )  # fmt: skip
        labels = np.asarray(_predict(result.params, Z))
        seconds = time.perf_counter() - start
        record(screened, labels, seconds, float(result.log_likelihood) / Z.shape[0])
        fitted.append(result.params)
        # scikit-learn with one BLAS thread: its threaded BLAS only slows these small
        # matrices down (by a large factor on a busy 2-core machine).
        with threadpool_limits(limits=1, user_api="blas"):
            start = time.perf_counter()
            gm = GaussianMixture(K, covariance_type="full", n_init=n_init, random_state=s)
            labels = gm.fit(Z).predict(Z)
            record(
                "scikit-learn GaussianMixture",
                labels,
                time.perf_counter() - start,
                float(gm.score(Z)),
            )
            start = time.perf_counter()
            labels = KMeans(K, n_init=n_init, random_state=s).fit_predict(Z)
            record("k-means (scikit-learn)", labels, time.perf_counter() - start)
        log(
            f"digits: seed {s}: ARI jaxgmm {runs['jaxgmm'][-1]['ari']:.3f}, "
            f"screened {runs[screened][-1]['ari']:.3f}, "
            f"scikit-learn GaussianMixture {runs[methods[2]][-1]['ari']:.3f}, "
            f"k-means {runs[methods[3]][-1]['ari']:.3f}"
        )

    same_start = _same_start_check(Z, y, K, seeds[0])

    rows = []
    for name in methods:
        r = runs[name]
        mean_ll = "" if r[0]["mean_ll"] is None else _mean_sd([x["mean_ll"] for x in r])
        times = [x["seconds"] for x in r]
        if name.startswith("jaxgmm") and len(times) > 1:
            timing = f"{times[0]:.2f} first (compiling), {np.median(times[1:]):.2f} after"
        else:
            timing = f"{np.median(times):.2f}"
        rows.append(
            (
                name,
                f"{np.mean([x['ari'] for x in r[: len(first)]]):.3f}",
                _mean_sd([x["ari"] for x in r]),
                _mean_sd([x["nmi"] for x in r]),
                _mean_sd([x["accuracy"] for x in r]),
                mean_ll,
                timing,
            )
        )
    summary = _table(
        [
            "method",
            f"ARI, seeds {first[0]}-{first[-1]}" if len(first) > 1 else "ARI, first seed",
            "ARI",
            "NMI",
            "accuracy (matched)",
            "mean log-likelihood",
            "seconds per fit",
        ],
        rows,
    )
    per_seed = _table(
        ["seed"] + list(methods),
        [(s, *(f"{runs[name][i]['ari']:.3f}" for name in methods)) for i, s in enumerate(first)],
    )

    # Figures from the jaxgmm fit with the highest log-likelihood (an unsupervised choice, as
    # between restarts): means mapped back to pixels, and the confusion matrix.
    chosen = int(np.argmax([x["mean_ll"] for x in runs[screened]]))
    best, params = runs[screened][chosen], fitted[chosen]
    mapping = best["mapping"]
    order = np.argsort(np.where(mapping >= 0, mapping, K + np.arange(K)), kind="stable")
    pixel_means = np.asarray(params.means) @ np.asarray(components) + np.asarray(mean)
    pictures = np.clip(pixel_means, 0, 16).reshape(K, 8, 8)[order]
    weights = np.asarray(params.weights)[order]
    titles = [f"comp. {k} → digit {mapping[k]}\nweight {w:.3f}" for k, w in zip(order, weights)]
    plotting.plot_image_grid(
        os.path.join(out_dir, "digits-means.png"),
        pictures,
        titles,
        title=f"jaxgmm component means (K = {K}), mapped back from "
        f"{n_dims} PCA dimensions to 8×8 pixels",
    )
    contingency = best["contingency"][:, order]
    plotting.plot_confusion(
        os.path.join(out_dir, "digits-confusion.png"),
        contingency,
        title=f"jaxgmm, seed {seeds[chosen]}: accuracy {best['accuracy']:.3f}",
        xlabel="component (→ matched digit)",
        ylabel="true digit",
        xticklabels=[f"{k}→{mapping[k]}" for k in order],
    )

    def mean_of(name, field, n=None):
        return np.mean([x[field] for x in runs[name][:n]])

    return f"""## Clustering handwritten digits

scikit-learn's 8×8 digits ({images.shape[0]} images, 64 pixels each), reduced to {n_dims}
dimensions by PCA done in JAX (SVD of the centred data; {float(jnp.sum(explained)):.1%} of the
variance kept), clustered into K = {K} groups with full covariances and {n_init} restarts,
initialised by k-means (scikit-learn's default; `init="kmeans"` in jaxgmm). The same settings
for scikit-learn's `GaussianMixture` and `KMeans`; {_seed_span(seeds)}. A second
jaxgmm row screens its starts (`n_candidates={n_candidates}`): it draws {n_candidates} k-means
starts, runs 20 EM iterations from each in one batch, and runs the {n_init} best to convergence.
The clusterings are compared with the true digits by the adjusted Rand index (ARI), normalised
mutual information (NMI) and the accuracy after matching clusters to digits one-to-one
(Hungarian method). Mean ± standard deviation over the seeds, and the mean ARI of the first
five:

{summary}

Mean ARI over {_seed_span(first)}: jaxgmm {mean_of("jaxgmm", "ari", 5):.3f}, with
screened starts {mean_of(screened, "ari", 5):.3f}, scikit-learn GaussianMixture
{mean_of(methods[2], "ari", 5):.3f}. Over {_seed_span(seeds)}: {mean_of("jaxgmm", "ari"):.3f},
{mean_of(screened, "ari"):.3f} and {mean_of(methods[2], "ari"):.3f}; mean log-likelihood per
sample {mean_of("jaxgmm", "mean_ll"):.4f}, {mean_of(screened, "mean_ll"):.4f} and
{mean_of(methods[2], "mean_ll"):.4f}. Per seed (ARI), the first five:

{per_seed}

The mean log-likelihood per sample is that of the best restart, at the returned parameters.
scikit-learn ran with one BLAS thread (threadpoolctl); jaxgmm's first fits include compilation.
With the same settings, jaxgmm and scikit-learn run the same algorithm, and their ARIs differ
by which local maxima their random k-means starts lead to (the two libraries draw them
differently): five seeds can put either ahead by several hundredths. Screening the starts finds
higher maxima of the likelihood; these are not always the partitions closest to the digits
(the ARI is not what EM maximises), but on average they are. Started from the same k-means
clustering (scikit-learn's own
start for seed {seeds[0]}, one restart), the two can be compared directly (scikit-learn's
convergence test trails by one M-step, so it may take one more iteration):

{same_start}

The figures below show the screened jaxgmm fit with the highest log-likelihood among the
seeds (seed {seeds[chosen]}; chosen without looking at the labels): the component means mapped back
through the PCA to 8×8 pixels, and the digits against the components.

![component means](digits-means.png)

![confusion matrix](digits-confusion.png)
"""


def _same_start_check(Z, y, K: int, seed: int) -> str:
    """jaxgmm and scikit-learn from the same start: the k-means clustering scikit-learn's
    ``GaussianMixture(random_state=seed)`` starts from, turned into parameters by one M-step."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        # What GaussianMixture(init_params="kmeans") runs first with this random_state.
        start_labels = KMeans(K, n_init=1, random_state=np.random.RandomState(seed)).fit(Z).labels_
        sk = GaussianMixture(K, covariance_type="full", n_init=1, random_state=seed).fit(Z)
    log_resp = np.where(np.eye(K, dtype=bool)[start_labels], 0.0, -np.inf)
    start = _m_step(Z, log_resp, covariance_type="full")
    result = fit(jax.random.key(seed), Z, K, covariance_type="full", init_params=start)
    labels = np.asarray(_predict(result.params, Z))
    rows = [
        (
            "jaxgmm",
            f"{float(result.log_likelihood) / Z.shape[0]:.4f}",
            f"{adjusted_rand_score(y, labels):.3f}",
            int(result.n_iter),
        ),
        (
            "scikit-learn GaussianMixture",
            f"{float(sk.score(Z)):.4f}",
            f"{adjusted_rand_score(y, sk.predict(Z)):.3f}",
            int(sk.n_iter_),
        ),
    ]
    return _table(["from the same start", "mean log-likelihood", "ARI", "EM iterations"], rows)


def segmentation_part(out_dir: str, *, quick: bool, seed: int, log: Callable) -> str:
    """Colour segmentation of two sample photographs; returns the Markdown section."""
    from sklearn.datasets import load_sample_image

    k_values = [2, 3] if quick else list(range(2, 9))
    curves, rows, figures = {}, [], []
    for name in ("china.jpg", "flower.jpg"):
        image = load_sample_image(name)
        if quick:
            image = image[::8, ::8]
        height, width = image.shape[:2]
        start = time.perf_counter()
        result = segment_image(
            jax.random.key(seed),
            image,
            k_values=k_values,
            selection_pixels=None if quick else 20000,
        )
        seconds = time.perf_counter() - start
        stem = name.split(".")[0]
        figure = f"segment-{stem}.png"
        plotting.plot_segmentation(
            os.path.join(out_dir, figure),
            image,
            result.segmented,
            result.uncertainty,
            n_components=result.n_components,
            title=f"{name}: {width}×{height} pixels, K = {result.n_components} chosen by BIC",
        )
        curves[name] = result.bic_by_k
        figures.append(f"![{name}]({figure})")
        rows.append(
            (
                name,
                f"{width}×{height}",
                result.n_components,
                f"{float(np.mean(result.uncertainty)):.3f}",
                int(result.fit_result.n_iter),
                f"{seconds:.1f}",
            )
        )
        log(f"segmentation: {name}: K = {result.n_components} ({seconds:.1f} s)")
    plotting.plot_bic(
        os.path.join(out_dir, "segment-bic.png"),
        curves,
        title="BIC of the colour mixture against K",
    )
    table = _table(
        [
            "image",
            "pixels",
            "K (BIC)",
            "mean uncertainty",
            "EM iterations",
            "seconds (all K, incl. compilation)",
        ],
        rows,
    )
    selection = "every pixel" if quick else "20000 randomly chosen pixels"
    newline = "\n\n"
    return f"""## Colour segmentation

Each pixel of scikit-learn's two sample photographs is a point in RGB space (values in [0, 1]);
one Gaussian mixture (full covariances, float32) is fitted to all pixels and each pixel is
painted with the mean colour of its most responsible component. K is chosen from
{k_values[0]}..{k_values[-1]} by BIC, scored on {selection} (a loop of `jaxgmm.fit` and
`jaxgmm.bic`); the chosen K is then fitted on every pixel. The right panel shows each pixel's
uncertainty, 1 − its largest responsibility: bright along colour boundaries.

{table}

{newline.join(figures)}

![BIC against K](segment-bic.png)

Photographs are not mixtures of Gaussians, so BIC keeps improving with K for a long time; its
flattening shows where extra segments stop buying much likelihood.
"""


def density_part(out_dir: str, *, quick: bool, seed: int, log: Callable) -> str:
    """A 1-D mixture: histogram, fitted density, weighted components; the Markdown section."""
    truth = GMM(
        weights=jnp.array([0.45, 0.35, 0.20]),
        means=jnp.array([[-2.0], [1.0], [4.0]]),
        covariances=jnp.array([[[0.49]], [[1.0]], [[0.25]]]),
        covariance_type="full",
    )
    n = 500 if quick else 2000
    sample_key, fit_key = jax.random.split(jax.random.key(seed))
    X, _ = sample(sample_key, truth, n)
    k_values = range(2, 4) if quick else range(1, 6)
    bics, results = bic_sweep(fit_key, X, k_values)
    K = min(bics, key=bics.get)
    params = results[K].params
    order = np.argsort(np.asarray(params.means)[:, 0])
    weights = np.asarray(params.weights)[order]
    means = np.asarray(params.means)[order, 0]
    variances = np.asarray(params.covariances)[order, 0, 0]
    plotting.plot_density_1d(
        os.path.join(out_dir, "density-1d.png"),
        np.asarray(X),
        weights,
        means,
        variances,
        truth=(truth.weights, truth.means[:, 0], truth.covariances[:, 0, 0]),
        title=f"{n} samples from a 3-component mixture; fitted K = {K} (chosen by BIC)",
    )
    log(f"1-D density: K = {K} chosen by BIC")
    bic_row = ", ".join(f"K={k}: {v:.1f}" for k, v in sorted(bics.items()))
    rows = [
        (f"{k + 1}", f"{w:.3f}", f"{m:.3f}", f"{np.sqrt(v):.3f}")
        for k, (w, m, v) in enumerate(zip(weights, means, variances))
    ]
    truth_rows = [
        (f"{k + 1}", f"{w:.3f}", f"{m:.3f}", f"{np.sqrt(v):.3f}")
        for k, (w, m, v) in enumerate(zip([0.45, 0.35, 0.20], [-2.0, 1.0, 4.0], [0.49, 1.0, 0.25]))
    ]
    return f"""## A 1-D density

{n} samples drawn with `jaxgmm.sample` from a known three-component mixture (dotted line);
K = {k_values[0]}..{k_values[-1]} fitted and scored by BIC; K = {K} has the lowest BIC. Dashed
lines are the weighted components π_k N(x | μ_k, σ_k²), the solid line their sum.

BIC: {bic_row}.

![1-D density](density-1d.png)

Fitted components:

{_table(["component", "weight π", "mean μ", "sd σ"], rows)}

True components:

{_table(["component", "weight π", "mean μ", "sd σ"], truth_rows)}
"""


def ellipses_part(out_dir: str, *, quick: bool, seed: int, log: Callable) -> str:
    """2-D fits with 2-sigma ellipses and the log-likelihood over iterations."""
    from sklearn.datasets import load_iris
    from sklearn.metrics import adjusted_rand_score

    iris = load_iris()
    X = np.asarray(iris.data[:, 2:4], dtype=np.float64)  # petal length and width (cm)
    species = iris.target
    key = jax.random.key(seed)
    one = fit(key, X, 1)
    three = fit(key, X, 3, n_init=1 if quick else 5)
    panels = []
    for name, result in (("K = 1", one), ("K = 3", three)):
        p = result.params
        labels = np.asarray(_predict(p, X))
        mean_ll = float(result.log_likelihood) / X.shape[0]
        panels.append(
            (
                f"{name}: mean log-likelihood {mean_ll:.3f}",
                labels,
                p.weights,
                p.means,
                p.covariances,
                p.covariance_type,
            )
        )
    plotting.plot_ellipses(
        os.path.join(out_dir, "ellipses-2d.png"),
        X,
        panels,
        xlabel="petal length (cm)",
        ylabel="petal width (cm)",
        title="Iris petals: full-covariance mixtures, ellipses at Mahalanobis distance 2 (2σ)",
    )
    ari = adjusted_rand_score(species, np.asarray(_predict(three.params, X)))

    # The log-likelihood over iterations, from random starts run to max_iter (tol = 0).
    histories, labels, worst_drop = [], [], 0.0
    n_curves = 2 if quick else 4
    for i in range(n_curves):
        result = fit(jax.random.key(seed + 100 + i), X, 3, init="random", tol=0.0, max_iter=60)
        history = np.asarray(result.history)
        histories.append(history)
        labels.append(f"random start {i + 1}: final {history[-1]:.3f}")
        steps = np.diff(history[np.isfinite(history)])
        worst_drop = max(worst_drop, float(-steps.min()) if steps.size else 0.0)
    plotting.plot_history(
        os.path.join(out_dir, "loglik-history.png"),
        histories,
        labels,
        title="Iris petals, K = 3: mean log-likelihood after each EM iteration",
    )
    verdict = (
        "never decreases"
        if worst_drop <= 0
        else f"never decreases by more than {worst_drop:.1e} (rounding)"
    )
    log(f"2-D ellipses: ARI of K = 3 against the species {ari:.3f}; log-likelihood {verdict}")
    n_params = n_parameters(three.params)
    return f"""## 2-D ellipses and the log-likelihood over iterations

Petal length and width of the 150 iris flowers (bundled with scikit-learn), fitted with one
and with three full-covariance components; each ellipse is the contour at Mahalanobis
distance 2 of its component, points are coloured by their most responsible component. The
three-component fit ({n_params} free parameters) agrees with the three species with
ARI {ari:.3f}.

![2-D ellipses](ellipses-2d.png)

EM from {n_curves} random starts (random responsibilities, `tol=0`, 60 iterations), plotting
`FitResult.history`: the mean log-likelihood {verdict} from one iteration to the next.

![log-likelihood over iterations](loglik-history.png)
"""


def run_demo(out_dir, *, quick: bool = False, seed: int = 0, log: Callable = print) -> str:
    """Run every part of the demo and write ``README.md`` and the PNG figures to ``out_dir``.

    Parameters
    ----------
    out_dir : str
        Output folder (created if needed).
    quick : bool
        A much smaller run (one seed, few restarts, small images) for tests.
    seed : int
        First random seed.
    log : callable
        Receives one line of progress per step.

    Returns
    -------
    str
        Path of the report.
    """
    import sklearn

    if not jax.config.jax_enable_x64:
        raise RuntimeError("the demo needs float64: jax.config.update('jax_enable_x64', True)")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    sections, timings = [], []
    for name, part in (
        ("digits", digits_part),
        ("segmentation", segmentation_part),
        ("1-D density", density_part),
        ("2-D ellipses", ellipses_part),
    ):
        part_start = time.perf_counter()
        sections.append(part(out_dir, quick=quick, seed=seed, log=log))
        timings.append(f"{name} {time.perf_counter() - part_start:.0f} s")
    total = time.perf_counter() - start
    from jaxgmm import __version__

    device = jax.devices()[0]
    command = "jaxgmm demo" + (" --quick" if quick else "")
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    quick_note = "\n\nA quick run: smaller problems, fewer seeds and restarts." if quick else ""
    versions = (
        f"jaxgmm {__version__}, JAX {jax.__version__}, scikit-learn {sklearn.__version__}, "
        f"Python {platform.python_version()}"
    )
    header = f"""# jaxgmm demo

Written by `{command}` on {when} in {total:.0f} s, compilation included
({", ".join(timings)}). All data ship with scikit-learn; nothing was downloaded.

- {versions}
- {device.platform.upper()} ({device.device_kind}), {os.cpu_count()} CPU cores{quick_note}
"""
    report = os.path.join(out_dir, "README.md")
    with open(report, "w", encoding="utf-8") as handle:
        handle.write(header + "\n" + "\n".join(sections))
    log(f"demo finished in {total:.0f} s")
    return report
