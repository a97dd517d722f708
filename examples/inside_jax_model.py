"""A Gaussian mixture as one part of a larger JAX model, trained end to end with optax.

The model is a small normalising flow: a learned invertible linear map ``z = A x + b`` with
a mixture of *spherical* Gaussians as the base density in ``z``,

    log p(x) = log p_GMM(A x + b) + log |det A|.

The mixture's parameters enter through ``jaxgmm.from_unconstrained`` (so any real values are
valid), its density through ``jaxgmm.log_prob``, and ``jax.value_and_grad`` differentiates
through both; ``A``, ``b`` and the mixture are trained jointly by Adam inside one jitted
``lax.scan``.

The data are three round clusters seen through a shear and a rotation. A spherical mixture
fitted to ``x`` directly (EM) cannot express the shear; in the learned coordinates ``z`` it
can, and the flow matches a full-covariance mixture with fewer free parameters (all
components share one shape, ``A^-1 A^-T``, at their own scale).

Run ``python examples/inside_jax_model.py --out flow.png``; ``--small`` (or the environment
variable ``JAXGMM_EXAMPLE_SMALL=1``) runs a quick version for tests.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxgmm

K = 3


class Flow(NamedTuple):
    """All trainable parameters: the linear map and the mixture (unconstrained)."""

    A: jax.Array  # (2, 2)
    b: jax.Array  # (2,)
    gmm: jaxgmm.UnconstrainedGMM  # spherical, K components in z-space


def make_data(n: int, seed: int = 0) -> np.ndarray:
    """``n`` points, shape (n, 2): three round clusters, sheared, rotated and shifted."""
    rng = np.random.default_rng(seed)
    centers = np.array([[-3.0, 0.0], [0.5, 1.5], [3.0, -1.0]])
    scales = np.array([0.6, 0.9, 0.5])
    labels = rng.choice(K, size=n, p=[0.4, 0.35, 0.25])
    z = centers[labels] + scales[labels, None] * rng.normal(size=(n, 2))
    shear = np.array([[1.0, 1.4], [0.0, 1.0]])
    angle = 0.6
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return z @ (rotation @ shear).T + np.array([1.0, -0.5])


def base_mixture(flow: Flow) -> jaxgmm.GMM:
    return jaxgmm.from_unconstrained(flow.gmm, reg_covar=1e-6)


def flow_log_prob(flow: Flow, X) -> jax.Array:
    """``log p(x)`` of every row of ``X`` (shape (N, 2)), shape (N,)."""
    Z = X @ flow.A.T + flow.b
    return jaxgmm.log_prob(base_mixture(flow), Z) + jnp.linalg.slogdet(flow.A)[1]


def train(flow0: Flow, X, n_steps: int, learning_rate: float = 0.05):
    """Adam on the negative mean log-likelihood; returns the flow and the learning curve."""
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, n_steps, alpha=0.02))

    def loss(flow, X):
        return -jnp.mean(flow_log_prob(flow, X))

    @jax.jit
    def run(flow, X):
        def step(carry, _):
            flow, state = carry
            value, grads = jax.value_and_grad(loss)(flow, X)
            updates, state = optimizer.update(grads, state, flow)
            return (optax.apply_updates(flow, updates), state), -value

        (flow, _), curve = jax.lax.scan(step, (flow, optimizer.init(flow)), None, n_steps)
        return flow, curve

    return run(flow0, X)


def plot(path, X, flow, curve, references):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    X = np.asarray(X)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), constrained_layout=True)

    ax = axes[0]
    label = f"flow (Adam): {curve[-1]:.3f}"
    ax.plot(np.arange(1, len(curve) + 1), curve, color="C0", label=label)
    styles = {"EM, spherical on x": ("C3", "--"), "EM, full on x": ("C2", ":")}
    for name, value in references.items():
        color, style = styles[name]
        ax.axhline(value, color=color, linestyle=style, label=f"{name}: {value:.3f}")
    low = min(min(references.values()), float(np.min(curve)))
    high = max(max(references.values()), float(np.max(curve)))
    ax.set_ylim(low - 0.05 * (high - low), high + 0.15 * (high - low))
    ax.set_xlabel("training step")
    ax.set_ylabel("mean log-likelihood per sample")
    ax.set_title("Learning curve")
    ax.legend(loc="lower right", fontsize=9)

    ax = axes[1]
    pad = 1.5
    lo, hi = X.min(axis=0) - pad, X.max(axis=0) + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 160), np.linspace(lo[1], hi[1], 160))
    grid = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1), X.dtype)
    density = np.asarray(jax.jit(flow_log_prob)(flow, grid)).reshape(gx.shape)
    levels = np.max(density) - np.array([8.0, 6.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    ax.scatter(X[:, 0], X[:, 1], s=4, color="0.45", alpha=0.5, linewidths=0)
    ax.contour(gx, gy, density, levels=levels, cmap="viridis", linewidths=1.2)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title("Learned density over the data (log p contours)")
    ax.set_aspect("equal", adjustable="datalim")

    ax = axes[2]
    base = base_mixture(flow)
    Z = np.asarray(X @ np.asarray(flow.A).T + np.asarray(flow.b))
    labels = np.asarray(jaxgmm.predict(base, Z))
    for k in range(K):
        ax.scatter(*Z[labels == k].T, s=4, color=f"C{k}", alpha=0.5, linewidths=0)
        sd = float(np.sqrt(base.covariances[k]))
        for radius in (1.0, 2.0):
            circle = plt.Circle(base.means[k], radius * sd, fill=False, color=f"C{k}", lw=1.2)
            ax.add_patch(circle)
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title("Data in z = Ax + b: spherical base (1 and 2 sd)")
    ax.set_aspect("equal", adjustable="datalim")

    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="inside_jax.png", help="path of the PNG figure")
    parser.add_argument("--small", action="store_true", help="a quick run (for tests)")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    small = args.small or os.environ.get("JAXGMM_EXAMPLE_SMALL") == "1"
    n, n_steps = (300, 150) if small else (2000, 800)
    n_steps = args.steps or n_steps

    start = time.perf_counter()
    X = jnp.asarray(make_data(n, args.seed), jnp.float32)
    key_init, key_sph, key_full = jax.random.split(jax.random.key(args.seed), 3)

    # References: EM on x directly, spherical and full covariances.
    references = {
        "EM, spherical on x": jaxgmm.fit(key_sph, X, K, covariance_type="spherical"),
        "EM, full on x": jaxgmm.fit(key_full, X, K, covariance_type="full"),
    }
    references = {name: float(r.log_likelihood) / n for name, r in references.items()}

    # The flow starts at the identity map with jaxgmm's k-means++ start for the mixture.
    start_gmm = jaxgmm.init_params(key_init, X, K, covariance_type="spherical")
    flow0 = Flow(
        A=jnp.eye(2, dtype=X.dtype),
        b=jnp.zeros(2, X.dtype),
        gmm=jaxgmm.to_unconstrained(start_gmm),
    )
    flow, curve = train(flow0, X, n_steps)
    final = float(jnp.mean(flow_log_prob(flow, X)))
    train_s = time.perf_counter() - start

    print(f"{n} points, {n_steps} Adam steps, float32, backend {jax.default_backend()}")
    print("mean log-likelihood per sample")
    for name, value in references.items():
        print(f"  {name:<22} {value:8.4f}")
    print(f"  {'flow (spherical base)':<22} {final:8.4f}")
    print(
        f"A = {np.round(np.asarray(flow.A), 3).tolist()}, log|det A| = "
        f"{float(jnp.linalg.slogdet(flow.A)[1]):.3f}"
    )
    plot(args.out, X, flow, np.asarray(curve), references)
    print(
        f"total {time.perf_counter() - start:.1f} s "
        f"(data, EM references and training {train_s:.1f} s, then the figure)"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
