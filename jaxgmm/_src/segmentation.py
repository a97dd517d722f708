"""Colour segmentation of an image: pixels as colour features (optionally with their scaled
coordinates), one Gaussian mixture over them, each pixel painted with its component's colour.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src.criteria import bic
from jaxgmm._src.em import e_step
from jaxgmm._src.fitting import fit
from jaxgmm._src.model import GMM, FitResult


class Segmentation(NamedTuple):
    """What ``segment_image`` returns (``H``, ``W`` the image size)."""

    labels: np.ndarray  # (H, W) int: the most responsible component of each pixel
    segmented: np.ndarray  # (H, W, 3) uint8: each pixel in its component's mean colour
    uncertainty: np.ndarray  # (H, W) float: 1 - max_k responsibility, in [0, 1 - 1/K]
    params: GMM  # the mixture over the features (colours in [0, 1], then coordinates)
    n_components: int  # K used
    bic_by_k: dict  # {K: BIC} for every K tried when a range was given, else {}
    fit_result: FitResult  # the fit with K components on all pixels


# Pillow's modes for grey levels wider than 8 bits (16-bit PNG and TIFF images).
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _grey_16_bit_to_rgb(levels: np.ndarray, mode: str, path: str) -> np.ndarray:
    """Grey levels (H, W) of 16 bits as 8-bit RGB (H, W, 3), uint8. Pillow's 32-bit mode
    ``"I"`` holds 16-bit levels, or 8-bit ones when none exceeds 255."""
    levels = levels.astype(np.int64)
    if levels.size and (levels.min() < 0 or levels.max() > 65535):
        raise ValueError(f"{path!r} has grey levels outside 0..65535")
    if mode != "I" or (levels.size and levels.max() > 255):
        levels = np.round(levels / 257.0)
    return np.repeat(levels.astype(np.uint8)[..., None], 3, axis=-1)


def load_image(path) -> np.ndarray:
    """Read an image file as RGB.

    Parameters
    ----------
    path : str or os.PathLike
        Any format Pillow reads (PNG, JPEG, ...). Grey and palette images become RGB; an alpha
        channel is dropped; 16-bit grey levels are rounded to 8 bits.

    Returns
    -------
    numpy.ndarray, shape (H, W, 3), uint8

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    try:
        with Image.open(path) as image:
            if image.mode in _WIDE_GREY_MODES:  # Pillow's RGB conversion would clip them
                return _grey_16_bit_to_rgb(np.asarray(image), image.mode, path)
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"{path!r} is not a readable image: {error}") from None


def image_features(image, *, spatial_weight: float = 0.0, dtype=np.float32) -> np.ndarray:
    """Pixels of an image as rows of features.

    Parameters
    ----------
    image : array, shape (H, W, 3) or (H, W)
        uint8 values ``0..255`` (scaled to ``[0, 1]``) or floats already in ``[0, 1]``.
    spatial_weight : float
        When positive, two more columns hold the pixel's row and column divided by
        ``max(H, W)`` and multiplied by this weight (so ``1`` gives coordinates on the same
        ``[0, 1]`` scale as the colours; larger values make segments more compact).
    dtype : numpy dtype

    Returns
    -------
    numpy.ndarray, shape (H * W, C) or (H * W, C + 2)
        ``C`` colour channels (3 for RGB, 1 for grey), in row-major pixel order.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must have shape (H, W) or (H, W, C); got {image.shape}")
    height, width, channels = image.shape
    dtype = np.dtype(dtype)
    colours = image.reshape(-1, channels).astype(dtype)
    if np.issubdtype(image.dtype, np.integer):
        colours = colours / dtype.type(255)
    if spatial_weight <= 0:
        return colours
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    scale = spatial_weight / max(height, width)
    coords = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(dtype) * dtype.type(scale)
    return np.concatenate([colours, coords], axis=1)


def _assign(params: GMM, X):
    """Most responsible component and ``1 - max responsibility`` of every row."""
    log_resp, _ = e_step(params, X)
    labels = jnp.argmax(log_resp, axis=1)
    uncertainty = 1.0 - jnp.exp(jnp.max(log_resp, axis=1))
    return labels, uncertainty


def bic_sweep(
    key,
    X,
    k_values,
    *,
    covariance_type: str = "full",
    n_init: int = 1,
    max_iter: int = 100,
    tol=1e-3,
    reg_covar=1e-6,
    progress=None,
):
    """Fit one mixture per number of components and score each by BIC.

    For now a loop of ``jaxgmm.fit`` and ``jaxgmm.bic`` (one compilation per ``K``);
    every caller that chooses ``K`` by BIC goes through this one function.

    Parameters
    ----------
    key : PRNG key
        The same key is used for every ``K``.
    X : Array, shape (N, D)
    k_values : sequence of int
    covariance_type, n_init, max_iter, tol, reg_covar, progress
        As in ``jaxgmm.fit``.

    Returns
    -------
    bics : dict
        ``{K: BIC}`` (floats; lower is better).
    results : dict
        ``{K: FitResult}``.
    """
    bics, results = {}, {}
    for k in k_values:
        result = fit(
            key,
            X,
            int(k),
            covariance_type=covariance_type,
            n_init=n_init,
            max_iter=max_iter,
            tol=tol,
            reg_covar=reg_covar,
            progress=progress,
        )
        value = float(bic(result.params, X))
        bics[int(k)] = value if math.isfinite(value) else math.inf
        results[int(k)] = result
    return bics, results


def segment_image(
    key,
    image,
    n_components: int | None = None,
    *,
    k_values=None,
    spatial_weight: float = 0.0,
    covariance_type: str = "full",
    n_init: int = 1,
    max_iter: int = 100,
    tol=1e-3,
    reg_covar=1e-6,
    dtype=np.float32,
    selection_pixels: int | None = 20000,
    progress=None,
) -> Segmentation:
    """Segment an image by colour with a Gaussian mixture over its pixels.

    Parameters
    ----------
    key : PRNG key
    image : array, shape (H, W, 3) or (H, W)
        uint8 ``0..255`` or floats in ``[0, 1]``.
    n_components : int, optional
        ``K``. Give either this or ``k_values``.
    k_values : sequence of int, optional
        Candidate ``K``; the one with the lowest BIC is used (see ``bic_sweep``).
    spatial_weight : float
        Weight of the pixel coordinates appended to the colours (0: colours only); see
        ``image_features``.
    covariance_type, n_init, max_iter, tol, reg_covar, progress
        As in ``jaxgmm.fit``.
    dtype : numpy dtype, default float32
        Computation dtype (8-bit colours need no more than float32).
    selection_pixels : int, optional
        When choosing ``K``, score the candidates on this many randomly chosen pixels (all of
        them when ``None`` or when the image is smaller); the chosen ``K`` is then fitted on
        every pixel.

    Returns
    -------
    Segmentation
        Labels ``(H, W)``, the segmented image ``(H, W, 3)`` uint8, the uncertainty ``(H, W)``,
        the mixture, ``K``, the BIC of each candidate and the fit.
    """
    image = np.asarray(image)
    features = image_features(image, spatial_weight=spatial_weight, dtype=dtype)
    height, width = image.shape[:2]
    n_pixels = features.shape[0]
    if (n_components is None) == (k_values is None):
        raise ValueError("give either n_components or k_values")
    if k_values is not None:
        k_values = sorted({int(k) for k in k_values})
        if not k_values or k_values[0] < 1:
            raise ValueError(f"k_values must be positive integers; got {k_values}")
    for k in [n_components] if k_values is None else k_values:
        if k > n_pixels:
            raise ValueError(f"K = {k} exceeds the number of pixels ({n_pixels})")
    select_key, fit_key = jax.random.split(key)
    options = dict(
        covariance_type=covariance_type,
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        progress=progress,
    )
    bics: dict = {}
    if k_values is not None:
        subset = features
        if selection_pixels is not None and n_pixels > selection_pixels:
            rows = np.random.default_rng(int(jax.random.randint(select_key, (), 0, 2**31 - 1)))
            subset = features[np.sort(rows.choice(n_pixels, selection_pixels, replace=False))]
        bics, _ = bic_sweep(select_key, jnp.asarray(subset), k_values, **options)
        n_components = min(bics, key=bics.get)
    X = jnp.asarray(features)
    result = fit(fit_key, X, int(n_components), **options)
    labels, uncertainty = _assign(result.params, X)
    labels = np.asarray(labels)
    colours = np.clip(np.asarray(result.params.means)[:, :3], 0.0, 1.0)
    if image.ndim == 2 or image.shape[2] == 1:
        colours = np.repeat(np.asarray(result.params.means)[:, :1], 3, axis=1).clip(0.0, 1.0)
    palette = np.round(colours * 255).astype(np.uint8)
    return Segmentation(
        labels=labels.reshape(height, width),
        segmented=palette[labels].reshape(height, width, 3),
        uncertainty=np.asarray(uncertainty, dtype=np.float64).reshape(height, width),
        params=result.params,
        n_components=int(n_components),
        bic_by_k=bics,
        fit_result=result,
    )
