"""Cluster scikit-learn's 8x8 handwritten digits with a Gaussian mixture.

PCA done in JAX (the SVD of the centred data) reduces the 64 pixels to 30 dimensions; a
mixture with K = 10 full-covariance components and 10 restarts clusters them; the adjusted
Rand index (ARI) compares the clusters with the true digits, for jaxgmm (plain restarts, and
restarts chosen from screened starts) and for scikit-learn's GaussianMixture with the same
settings. The component means, mapped back
through the PCA, are drawn as 8x8 images.

    python examples/digits.py [--small] [--out digits-means.png]

``--small`` (or JAXGMM_EXAMPLE_SMALL=1) runs a smaller version in a few seconds.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

import jaxgmm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

jax.config.update("jax_enable_x64", True)


def pca(X, n_components):
    """Scores (N, d), components (d, F) and mean (F,) from the SVD of the centred data."""
    mean = jnp.mean(X, axis=0)
    _, _, vt = jnp.linalg.svd(X - mean, full_matrices=False)
    components = vt[:n_components]
    return (X - mean) @ components.T, components, mean


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick, smaller run")
    parser.add_argument("--out", default="digits-means.png", help="PNG file to write")
    args = parser.parse_args()
    small = args.small or os.environ.get("JAXGMM_EXAMPLE_SMALL") == "1"
    n_dims, n_init = (10, 2) if small else (30, 10)
    K = 10

    images, digits = load_digits(return_X_y=True)
    Z, components, mean = pca(jnp.asarray(images, jnp.float64), n_dims)

    result = jaxgmm.fit(
        jax.random.key(0), Z, K, covariance_type="full", n_init=n_init, init="kmeans"
    )
    labels = np.asarray(jaxgmm.predict(result.params, Z))
    print(
        f"jaxgmm:       ARI {adjusted_rand_score(digits, labels):.3f}, "
        f"{int(result.n_iter)} EM iterations"
    )

    # The same restarts chosen from ten times as many screened starts (short EM runs).
    screened = jaxgmm.fit(
        jax.random.key(0), Z, K, covariance_type="full", n_init=n_init, init="kmeans",
        n_candidates=10 * n_init,
    )  # fmt: skip
    screened_labels = np.asarray(jaxgmm.predict(screened.params, Z))
    print(
        f"screened:     ARI {adjusted_rand_score(digits, screened_labels):.3f}, "
        f"mean log-likelihood {float(screened.log_likelihood) / Z.shape[0]:.3f} "
        f"(plain restarts: {float(result.log_likelihood) / Z.shape[0]:.3f})"
    )

    # scikit-learn with the same settings (one BLAS thread: fastest for these small matrices).
    with threadpool_limits(limits=1, user_api="blas"):
        sk = GaussianMixture(K, covariance_type="full", n_init=n_init, random_state=0)
        sk_labels = sk.fit(np.asarray(Z)).predict(np.asarray(Z))
    print(f"scikit-learn: ARI {adjusted_rand_score(digits, sk_labels):.3f}")

    # Component means back in pixel space, titled with the most common digit in each cluster.
    pixel_means = np.asarray(result.params.means @ components + mean).reshape(K, 8, 8)
    fig, axes = plt.subplots(2, 5, figsize=(8, 3.8), layout="constrained")
    for k, axis in enumerate(axes.ravel()):
        members = digits[labels == k]
        common = np.bincount(members, minlength=10).argmax() if members.size else -1
        axis.imshow(pixel_means[k], cmap="gray_r")
        axis.set_title(f"mostly {common}", fontsize=9)
        axis.set_axis_off()
    fig.suptitle("Mixture component means as 8x8 images")
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
