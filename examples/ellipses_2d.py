"""2-D mixtures drawn as ellipses, and the log-likelihood over EM iterations.

Petal length and width of scikit-learn's bundled iris flowers are fitted with one and with
three full-covariance components; each component is drawn as its 2-sigma ellipse (the
contour at Mahalanobis distance 2). FitResult.history gives the mean log-likelihood after
every iteration, which EM never decreases.

    python examples/ellipses_2d.py [--small] [--out ellipses.png]

``--small`` (or JAXGMM_EXAMPLE_SMALL=1) runs fewer iterations.
"""

import argparse
import os

import jax
import matplotlib
import numpy as np
from matplotlib.patches import Ellipse
from sklearn.datasets import load_iris

import jaxgmm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

jax.config.update("jax_enable_x64", True)


def draw_ellipse(axis, mean, covariance, colour, n_sigma=2.0):
    """The contour at Mahalanobis distance n_sigma of N(mean, covariance)."""
    values, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
    angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))  # of the major axis
    width, height = 2 * n_sigma * np.sqrt(values[::-1])
    axis.add_patch(Ellipse(mean, width, height, angle=angle, fill=False, color=colour, lw=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick, smaller run")
    parser.add_argument("--out", default="ellipses.png", help="PNG file to write")
    args = parser.parse_args()
    small = args.small or os.environ.get("JAXGMM_EXAMPLE_SMALL") == "1"
    max_iter = 30 if small else 100

    X = load_iris().data[:, 2:4]  # (150, 2): petal length and width in cm

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    for axis, K in zip(axes[:2], (1, 3)):
        # tol=0 runs all max_iter iterations, so the history below is complete.
        result = jaxgmm.fit(jax.random.key(0), X, K, init="random", tol=0.0, max_iter=max_iter)
        params = result.params
        labels = np.asarray(jaxgmm.predict(params, X))
        for k in range(K):
            colour = f"C{k}"
            axis.scatter(*X[labels == k].T, s=8, color=colour, alpha=0.6)
            draw_ellipse(
                axis, np.asarray(params.means[k]), np.asarray(params.covariances[k]), colour
            )
        axis.autoscale_view()
        axis.set_title(f"K = {K}")
        axis.set_xlabel("petal length (cm)")
        axis.set_ylabel("petal width (cm)")
        history = np.asarray(result.history)  # (max_iter,), NaN past n_iter
        axes[2].plot(np.arange(1, max_iter + 1), history, marker=".", label=f"K = {K}")
        steps = np.diff(history[np.isfinite(history)])
        print(
            f"K = {K}: final mean log-likelihood {history[-1]:.4f}, "
            f"largest decrease between iterations {max(0.0, -steps.min()):.1e}"
        )
    axes[2].set_xlabel("EM iteration")
    axes[2].set_ylabel("mean log-likelihood")
    axes[2].set_title("FitResult.history")
    axes[2].legend()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
