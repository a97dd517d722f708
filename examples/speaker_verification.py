"""Speaker verification with a universal background model adapted to each speaker.

The recipe of Reynolds, Quatieri and Dunn (2000), on synthetic "cepstral" frames (no speech
ships with jaxgmm's dependencies): every speaker says the same sounds, each sound a Gaussian
cloud of frames shifted by that speaker's own offsets. A background mixture (the UBM) is
fitted to the frames of many speakers; each enrolled speaker's model is the UBM with its
means MAP-adapted to a few seconds of that speaker (jaxgmm.map_adapt, vmapped over speakers);
a test utterance is scored by its mean log-likelihood ratio, speaker model against UBM. The
same trials are scored with a mixture of as many components as there are sounds, fitted by EM
to each speaker's enrolment frames alone.
Prints the equal error rates and draws the two score distributions.

    python examples/speaker_verification.py [--small] [--out speakers.png]

``--small`` (or JAXGMM_EXAMPLE_SMALL=1) uses fewer speakers and frames.
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

N_FEATURES = 12  # frame features, like 12 cepstral coefficients
N_SOUNDS = 10  # sounds every speaker produces
K = 32  # components of the background model
SPREAD = 0.25  # how far a speaker's sounds lie from everyone's (frame noise: 0.6)


def make_speakers(rng, n_speakers, sounds, spread):
    """Each speaker's mean of every sound, shape (n_speakers, N_SOUNDS, N_FEATURES)."""
    offsets = spread * rng.normal(size=(n_speakers, N_SOUNDS, N_FEATURES))
    return sounds[None] + offsets


def frames(rng, speaker_means, n):
    """``n`` frames of each speaker, shape (n_speakers, n, N_FEATURES)."""
    n_speakers = speaker_means.shape[0]
    which = rng.integers(0, N_SOUNDS, size=(n_speakers, n))
    centres = np.take_along_axis(speaker_means, which[..., None], axis=1)
    return centres + 0.6 * rng.normal(size=centres.shape)


def equal_error_rate(genuine, impostor):
    """The error rate where false rejections equal false acceptances (thresholds at the
    scores)."""
    thresholds = np.sort(np.concatenate([genuine, impostor]))
    false_reject = (genuine[None, :] < thresholds[:, None]).mean(axis=1)
    false_accept = (impostor[None, :] >= thresholds[:, None]).mean(axis=1)
    best = np.argmin(np.abs(false_reject - false_accept))
    return 0.5 * (false_reject[best] + false_accept[best])


def trial_scores(models, ubm, tests):
    """Mean log-likelihood ratios of every test utterance against every speaker model,
    shape (n_speakers, n_speakers): row = claimed speaker, column = who spoke."""
    ubm_score = jax.vmap(lambda x: jnp.mean(jaxgmm.log_prob(ubm, x)))(tests)

    def against(model):
        return jax.vmap(lambda x: jnp.mean(jaxgmm.log_prob(model, x)))(tests) - ubm_score

    return np.asarray(jax.vmap(against)(models))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick, smaller run")
    parser.add_argument("--out", default="speakers.png", help="PNG file to write")
    args = parser.parse_args()
    small = args.small or os.environ.get("JAXGMM_EXAMPLE_SMALL") == "1"
    n_background, n_enrolled = (20, 10) if small else (60, 30)
    n_enrol, n_test, n_tests = 100, 30, 4  # frames to enrol, frames per test, tests each

    rng = np.random.default_rng(0)
    sounds = 2.0 * rng.normal(size=(N_SOUNDS, N_FEATURES))
    background = frames(rng, make_speakers(rng, n_background, sounds, SPREAD), 300)
    enrolled = make_speakers(rng, n_enrolled, sounds, SPREAD)
    enrolment = jnp.asarray(frames(rng, enrolled, n_enrol))  # (S, n_enrol, D)
    tests = jnp.asarray(
        np.concatenate([frames(rng, enrolled, n_test) for _ in range(n_tests)])
    )  # (n_tests * S, n_test, D): test t of speaker s at row t * S + s
    speaker_of_test = np.tile(np.arange(n_enrolled), n_tests)

    ubm = jaxgmm.fit(
        jax.random.key(0), background.reshape(-1, N_FEATURES), K, covariance_type="diag"
    ).params
    print(f"UBM: {K} diagonal components fitted to {background.shape[0]} background speakers")

    adapt = jax.jit(jax.vmap(lambda x: jaxgmm.map_adapt(ubm, x, relevance=16.0)))
    adapted = adapt(enrolment)  # one GMM per enrolled speaker, stacked
    keys = jax.random.split(jax.random.key(1), n_enrolled)
    fitted = jax.jit(
        jax.vmap(lambda key, x: jaxgmm.fit(key, x, N_SOUNDS, covariance_type="diag").params)
    )(keys, enrolment)

    claimed = np.arange(n_enrolled)[:, None] == speaker_of_test[None, :]
    results = {}
    for name, models in (("UBM + MAP adaptation", adapted), ("EM on enrolment alone", fitted)):
        scores = trial_scores(models, ubm, tests)
        genuine, impostor = scores[claimed], scores[~claimed]
        results[name] = (genuine, impostor)
        print(
            f"{name:24s} equal error rate {100 * equal_error_rate(genuine, impostor):5.1f}%"
            f"  ({genuine.size} genuine, {impostor.size} impostor trials)"
        )

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for axis, (name, (genuine, impostor)) in zip(axes, results.items()):
        both = np.concatenate([genuine, impostor])
        bins = np.linspace(both.min(), both.max(), 40)
        axis.hist(impostor, bins=bins, density=True, alpha=0.6, label="impostor")
        axis.hist(genuine, bins=bins, density=True, alpha=0.6, label="genuine")
        eer = 100 * equal_error_rate(genuine, impostor)
        axis.set_title(f"{name}: EER {eer:.1f}%")
        axis.set_xlabel("mean log-likelihood ratio per frame (model - UBM)")
    axes[0].set_ylabel("density")
    axes[0].legend()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
