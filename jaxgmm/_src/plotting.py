"""Figures for the demo and the ``segment`` command, written as PNG files.

matplotlib is imported inside each function (``import jaxgmm`` never imports it), and only its
object-oriented ``Figure`` is used: no pyplot state, no display needed.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np

_DPI = 100


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def save_figure(fig, path, *, colours: int | None = 256) -> str:
    """Write ``fig`` to ``path`` as PNG; with ``colours``, reduce it to a palette image of at
    most that many colours (much smaller files, visually the same for plots).

    Returns
    -------
    str
        ``path``.
    """
    path = os.fspath(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    if colours is None:
        with open(path, "wb") as handle:
            handle.write(buffer.getvalue())
        return path
    from PIL import Image

    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
        palette.save(path, format="PNG", optimize=True)
    return path


def full_covariances(covariances, covariance_type: str, n_components: int, n_features: int):
    """Any covariance layout as full matrices, shape (K, D, D)."""
    covariances = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full":
        return covariances
    if covariance_type == "tied":
        return np.broadcast_to(covariances, (n_components, n_features, n_features)).copy()
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    return covariances[:, None, None] * np.eye(n_features)


def _ellipse(mean, covariance, n_sigma: float, **style):
    """The contour at Mahalanobis distance ``n_sigma`` of a 2-D Gaussian, as a patch."""
    from matplotlib.patches import Ellipse

    values, vectors = np.linalg.eigh(covariance)
    values = np.maximum(values, 0.0)
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
    width, height = 2 * n_sigma * np.sqrt(values[::-1])
    return Ellipse(mean, width, height, angle=angle, **style)


def plot_segmentation(
    path,
    image,
    segmented,
    uncertainty,
    *,
    title: str | None = None,
    n_components: int | None = None,
) -> str:
    """Side by side: the original image, the segments, the per-pixel uncertainty.

    Parameters
    ----------
    path : str
        PNG file to write.
    image, segmented : array, shape (H, W, 3), uint8
    uncertainty : array, shape (H, W)
        ``1 - max_k responsibility``.
    """
    height, width = np.shape(uncertainty)
    panel = 3.6
    fig = _figure(3 * panel + 0.6, panel * height / width + 0.7)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("original")
    axes[1].imshow(segmented)
    axes[1].set_title(
        f"{n_components} segments (component mean colours)" if n_components else "segments"
    )
    shown = axes[2].imshow(
        uncertainty, cmap="magma", vmin=0.0, vmax=max(float(np.max(uncertainty)), 1e-3)
    )
    axes[2].set_title("uncertainty (1 − max responsibility)")
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    for axis in axes:
        axis.set_axis_off()
    if title:
        fig.suptitle(title)
    # Photographs: 128 colours keep the file small (about 120 KB) and look the same.
    return save_figure(fig, path, colours=128)


def plot_bic(path, curves: dict, *, title: str = "Choosing K by BIC") -> str:
    """BIC against the number of components, one line per data set, the minimum marked.

    Parameters
    ----------
    curves : dict
        ``{name: {K: BIC}}``.
    """
    fig = _figure(5.5, 3.6)
    axis = fig.subplots()
    for name, bics in curves.items():
        ks = sorted(bics)
        values = [bics[k] for k in ks]
        (line,) = axis.plot(ks, values, marker="o", label=name)
        best = min(bics, key=bics.get)
        axis.plot(
            [best],
            [bics[best]],
            marker="*",
            markersize=16,
            color=line.get_color(),
            linestyle="none",
        )
    axis.set_xlabel("number of components K")
    axis.set_ylabel("BIC (lower is better)")
    axis.set_title(title)
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.legend(title="★ = chosen K")
    axis.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_image_grid(
    path, images, titles, *, columns: int = 5, title: str | None = None, cmap: str = "gray_r"
) -> str:
    """Small grey images in a grid (e.g. mixture means mapped back to 8x8 digits).

    Parameters
    ----------
    images : array, shape (K, h, w)
    titles : sequence of str, length K
    """
    images = np.asarray(images)
    rows = math.ceil(len(images) / columns)
    fig = _figure(1.6 * columns, 1.75 * rows + (0.4 if title else 0.0))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for axis in axes:
        axis.set_axis_off()
    for axis, picture, label in zip(axes, images, titles):
        axis.imshow(picture, cmap=cmap, interpolation="nearest")
        axis.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion(
    path, matrix, *, title: str, xlabel: str, ylabel: str, xticklabels=None, yticklabels=None
) -> str:
    """A confusion matrix with the count in every cell.

    Parameters
    ----------
    matrix : array, shape (R, C), int
    """
    matrix = np.asarray(matrix)
    fig = _figure(5.4, 4.8)
    axis = fig.subplots()
    shown = axis.imshow(matrix, cmap="Blues")
    fig.colorbar(shown, ax=axis, shrink=0.8, label="images")
    rows, cols = matrix.shape
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(rows):
        for j in range(cols):
            if matrix[i, j]:
                axis.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black",
                )
    axis.set_xticks(range(cols), xticklabels if xticklabels is not None else range(cols))
    axis.set_yticks(range(rows), yticklabels if yticklabels is not None else range(rows))
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    return save_figure(fig, path)


def _normal_pdf(x, mean, variance):
    return np.exp(-0.5 * (x - mean) ** 2 / variance) / np.sqrt(2 * np.pi * variance)


def plot_density_1d(
    path, x, weights, means, variances, *, truth=None, title: str = "1-D mixture fitted by EM"
) -> str:
    """Histogram of 1-D data with the fitted density and each weighted component.

    Parameters
    ----------
    x : array, shape (N,)
    weights, means, variances : arrays, shape (K,)
        The fitted mixture (``variances`` of each component).
    truth : tuple of three arrays, optional
        ``(weights, means, variances)`` of the mixture the data came from, drawn dotted.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    weights, means, variances = (
        np.asarray(a, dtype=np.float64).ravel() for a in (weights, means, variances)
    )
    grid = np.linspace(x.min() - 1.0, x.max() + 1.0, 600)
    parts = weights[:, None] * _normal_pdf(grid[None], means[:, None], variances[:, None])
    fig = _figure(7.0, 4.0)
    axis = fig.subplots()
    axis.hist(x, bins=60, density=True, color="0.82", edgecolor="white", label="data")
    colours = [f"C{k + 1}" for k in range(len(weights))]
    for k, (part, colour) in enumerate(zip(parts, colours)):
        axis.plot(
            grid,
            part,
            "--",
            color=colour,
            linewidth=1.5,
            label=f"π={weights[k]:.2f}, μ={means[k]:.2f}, σ={np.sqrt(variances[k]):.2f}",
        )
    axis.plot(grid, parts.sum(axis=0), color="C0", linewidth=2.2, label="fitted density")
    if truth is not None:
        w, m, v = (np.asarray(a, dtype=np.float64).ravel() for a in truth)
        true_density = (w[:, None] * _normal_pdf(grid[None], m[:, None], v[:, None])).sum(0)
        axis.plot(grid, true_density, ":", color="black", linewidth=1.5, label="true density")
    axis.set_xlabel("x")
    axis.set_ylabel("density")
    axis.set_title(title)
    axis.set_ylim(0.0, 1.45 * axis.get_ylim()[1])  # room for the legend above the curves
    axis.legend(fontsize=8, loc="upper right")
    return save_figure(fig, path)


def plot_ellipses(
    path,
    X,
    panels,
    *,
    xlabel: str = "x₁",
    ylabel: str = "x₂",
    title: str | None = None,
    n_sigma: float = 2.0,
) -> str:
    """Scatter plots of 2-D data with each component's ``n_sigma`` ellipse, one panel per fit.

    Parameters
    ----------
    X : array, shape (N, 2)
    panels : sequence of (str, labels, weights, means, covariances, covariance_type)
        ``labels`` shape (N,) colours the points; the mixture gives the ellipses.
    """
    X = np.asarray(X, dtype=np.float64)
    fig = _figure(4.6 * len(panels), 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    pad = 0.08 * (X.max(axis=0) - X.min(axis=0))
    for axis, (name, labels, _, means, covariances, kind) in zip(axes, panels):
        means = np.asarray(means, dtype=np.float64)
        K = means.shape[0]
        full = full_covariances(covariances, kind, K, 2)
        labels = np.asarray(labels)
        for k in range(K):
            colour = f"C{k}"
            chosen = labels == k
            axis.scatter(X[chosen, 0], X[chosen, 1], s=9, alpha=0.55, color=colour, linewidths=0)
            axis.add_patch(
                _ellipse(means[k], full[k], n_sigma, fill=False, edgecolor=colour, linewidth=2.0)
            )
            axis.plot(*means[k], marker="x", color="black", markersize=7)
        axis.set_title(name)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        # Room for the points and for every ellipse (half-widths n_sigma * standard deviation).
        reach = n_sigma * np.sqrt(np.diagonal(full, axis1=1, axis2=2))
        low = np.minimum(X.min(axis=0), (means - reach).min(axis=0)) - pad
        high = np.maximum(X.max(axis=0), (means + reach).max(axis=0)) + pad
        axis.set_xlim(low[0], high[0])
        axis.set_ylim(low[1], high[1])
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_history(
    path, histories, labels, *, title: str = "Log-likelihood over EM iterations"
) -> str:
    """Mean log-likelihood per sample after each iteration (``FitResult.history``).

    Parameters
    ----------
    histories : sequence of arrays, shape (max_iter,)
        NaN entries (past ``n_iter``) are dropped.
    labels : sequence of str
    """
    fig = _figure(6.0, 3.8)
    axis = fig.subplots()
    for history, label in zip(histories, labels):
        history = np.asarray(history, dtype=np.float64)
        history = history[np.isfinite(history)]
        axis.plot(np.arange(1, len(history) + 1), history, marker=".", markersize=4, label=label)
    axis.set_xlabel("EM iteration")
    axis.set_ylabel("mean log-likelihood per sample")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(fig, path)
