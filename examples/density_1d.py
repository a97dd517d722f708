"""A 1-D Gaussian mixture: histogram, fitted density and each weighted component.

Samples are drawn from a known three-component mixture with jaxgmm.sample, a mixture is
fitted with jaxgmm.fit, and the fitted density exp(log_prob) is drawn over the histogram
with the weighted components pi_k N(x | mu_k, sigma_k^2).

    python examples/density_1d.py [--small] [--out density.png]

``--small`` (or JAXGMM_EXAMPLE_SMALL=1) uses fewer samples.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

import jaxgmm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

jax.config.update("jax_enable_x64", True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick, smaller run")
    parser.add_argument("--out", default="density.png", help="PNG file to write")
    args = parser.parse_args()
    small = args.small or os.environ.get("JAXGMM_EXAMPLE_SMALL") == "1"
    n = 300 if small else 2000

    truth = jaxgmm.GMM(
        weights=jnp.array([0.45, 0.35, 0.20]),
        means=jnp.array([[-2.0], [1.0], [4.0]]),  # (K, D) with D = 1
        covariances=jnp.array([0.49, 1.0, 0.25]),  # spherical: one variance per component
        covariance_type="spherical",
    )
    X, _ = jaxgmm.sample(jax.random.key(0), truth, n)  # (n, 1)

    result = jaxgmm.fit(jax.random.key(1), X, 3, covariance_type="spherical", n_init=3)
    params = result.params
    for w, m, v in zip(params.weights, params.means[:, 0], params.covariances):
        print(f"weight {float(w):.3f}  mean {float(m):+.3f}  sd {float(jnp.sqrt(v)):.3f}")

    grid = jnp.linspace(X.min() - 1.0, X.max() + 1.0, 500)
    density = jnp.exp(jaxgmm.log_prob(params, grid[:, None]))
    fig, axis = plt.subplots(figsize=(7, 4), layout="constrained")
    axis.hist(np.asarray(X[:, 0]), bins=50, density=True, color="0.8", label="data")
    for k in range(3):
        w, m, v = params.weights[k], params.means[k, 0], params.covariances[k]
        component = w * jnp.exp(-0.5 * (grid - m) ** 2 / v) / jnp.sqrt(2 * jnp.pi * v)
        axis.plot(grid, component, "--", label=f"component {k + 1} (weight {float(w):.2f})")
    axis.plot(grid, density, linewidth=2, label="fitted density")
    axis.set_xlabel("x")
    axis.set_ylabel("density")
    axis.set_title(f"{n} samples, 3-component mixture fitted by EM")
    axis.legend(fontsize=8)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
