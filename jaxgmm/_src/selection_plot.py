"""The criterion-against-K figure of a ``jaxgmm.Selection`` (matplotlib, imported lazily)."""

from __future__ import annotations

import numpy as np

from jaxgmm._src.selection import CRITERIA, Selection

_MARKERS = {"full": "o", "diag": "s", "spherical": "^", "tied": "D"}
_MCLUST_NAMES = {"full": "VVV", "diag": "VVI", "spherical": "VII", "tied": "EEE"}


def plot_bic_curve(selection: Selection, path, *, criterion: str = "bic", dpi: int = 120):
    """Save a PNG of a criterion against ``K``, one line per covariance type.

    Like mclust's BIC plot, but with scikit-learn's sign: lower is better, and the best cell
    is circled. Cells whose fit did not converge are drawn with hollow markers, cells with a
    collapsed component (not eligible, see ``jaxgmm.select``) are crossed.

    Parameters
    ----------
    selection : Selection
        From ``jaxgmm.select``.
    path : str or path-like
        Where to write the PNG.
    criterion : {"bic", "aic", "icl"}
        Which column of the table to draw (default BIC whatever the selection used).
    dpi : int

    Returns
    -------
    path
        The ``path`` written.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = getattr(selection, criterion)
    figure = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    Ks = np.asarray(selection.K)
    for t, kind in enumerate(selection.covariance_types):
        marker = _MARKERS.get(kind, "o")
        (line,) = axes.plot(
            Ks, values[t], marker=marker, label=f"{kind} ({_MCLUST_NAMES[kind]})", linewidth=1.5
        )
        failed = ~np.asarray(selection.converged[t], bool)
        if failed.any():
            axes.plot(
                Ks[failed],
                values[t][failed],
                linestyle="none",
                marker=marker,
                markerfacecolor="white",
                markeredgecolor=line.get_color(),
            )
        gone = np.asarray(selection.collapsed[t], bool)
        if gone.any():
            axes.plot(
                Ks[gone],
                values[t][gone],
                linestyle="none",
                marker="x",
                markersize=9,
                color="black",
                label="collapsed" if t == int(np.argmax(selection.collapsed.any(axis=1))) else None,
            )
    eligible = np.isfinite(values) & ~np.asarray(selection.collapsed, bool)
    if not eligible.any():
        eligible = np.isfinite(values)
    t_best, j_best = np.unravel_index(
        int(np.argmin(np.where(eligible, values, np.inf))), values.shape
    )
    axes.plot(
        Ks[j_best],
        values[t_best, j_best],
        marker="o",
        markersize=16,
        markerfacecolor="none",
        markeredgecolor="black",
        linestyle="none",
        label=f"best: K = {int(Ks[j_best])}, {selection.covariance_types[t_best]}",
    )
    axes.set_xlabel("number of components K")
    axes.set_ylabel(f"{criterion.upper()} (lower is better)")
    axes.set_xticks(Ks)
    axes.set_title(f"{criterion.upper()} by number of components and covariance type")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return path
