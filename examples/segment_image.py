"""Colour segmentation of a photograph with a Gaussian mixture, K chosen by BIC.

Every pixel is a point in RGB space; a mixture is fitted for each candidate K, the one with
the lowest BIC is kept, and every pixel is painted with the mean colour of its most
responsible component. The uncertainty of a pixel is 1 - its largest responsibility.

    python examples/segment_image.py [--small] [--image PHOTO.jpg] [--out segments.png]

Without --image it uses scikit-learn's bundled china.jpg (no download). ``--small`` (or
JAXGMM_EXAMPLE_SMALL=1) works on a downsampled image with fewer candidates.
"""

import argparse
import os

import jax
import matplotlib
import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

import jaxgmm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick, smaller run")
    parser.add_argument("--image", help="image file (default: scikit-learn's china.jpg)")
    parser.add_argument("--out", default="segments.png", help="PNG file to write")
    args = parser.parse_args()
    small = args.small or os.environ.get("JAXGMM_EXAMPLE_SMALL") == "1"

    if args.image:
        image = np.asarray(Image.open(args.image).convert("RGB"))
    else:
        image = load_sample_image("china.jpg")
    if small:
        image = image[::8, ::8]
    height, width, _ = image.shape
    X = image.reshape(-1, 3).astype(np.float32) / 255.0  # (H * W, 3) colours in [0, 1]

    # Choose K by BIC (lower is better); the fits are kept, the best one is used.
    candidates = range(2, 4) if small else range(2, 9)
    bic = jax.jit(jaxgmm.bic)  # one compiled program per K instead of many small ones
    fits = {K: jaxgmm.fit(jax.random.key(0), X, K) for K in candidates}
    bics = {K: float(bic(result.params, X)) for K, result in fits.items()}
    for K, value in bics.items():
        print(f"K = {K}: BIC {value:.1f}")
    K = min(bics, key=bics.get)
    params = fits[K].params
    print(f"chosen K = {K}")

    responsibilities = np.asarray(jaxgmm.predict_proba(params, X))  # (H * W, K)
    labels = responsibilities.argmax(axis=1)
    colours = np.clip(np.asarray(params.means), 0.0, 1.0)
    segmented = colours[labels].reshape(height, width, 3)
    uncertainty = (1.0 - responsibilities.max(axis=1)).reshape(height, width)

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), layout="constrained")
    axes[0].imshow(image)
    axes[0].set_title("original")
    axes[1].imshow(segmented)
    axes[1].set_title(f"K = {K} segments")
    shown = axes[2].imshow(uncertainty, cmap="magma")
    axes[2].set_title("uncertainty (1 - max responsibility)")
    fig.colorbar(shown, ax=axes[2], shrink=0.8)
    for axis in axes:
        axis.set_axis_off()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
