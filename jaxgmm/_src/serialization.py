"""``save`` and ``load``: an exact round trip of a ``GMM`` through a NumPy ``.npz`` file."""

from __future__ import annotations

import os
import zipfile

import jax.numpy as jnp
import numpy as np

from jaxgmm._src import validation
from jaxgmm._src.model import COVARIANCE_TYPES, GMM

_FORMAT = "jaxgmm.GMM"
_VERSION = 1


def save(path, params: GMM) -> None:
    """Write a mixture to ``path`` (a NumPy ``.npz`` archive; the name is used as given).

    Stores the exact values and dtype of every array and the covariance type. A batch of
    mixtures (leading axis from ``vmap``) is stored as is. Raises ``ValueError`` for invalid
    parameters (inconsistent shapes, non-finite values, weights not summing to one,
    covariances not positive definite).
    """
    if not isinstance(params, GMM):
        raise TypeError(f"params must be a jaxgmm.GMM; got {type(params).__name__}")
    validation.check_covariance_type(params.covariance_type)
    _check_mixtures(params, "params")
    arrays = {
        name: np.asarray(getattr(params, name)) for name in ("weights", "means", "covariances")
    }
    with open(os.fspath(path), "wb") as handle:
        np.savez(
            handle,
            format=np.array(_FORMAT),
            version=np.array(_VERSION),
            covariance_type=np.array(params.covariance_type),
            **arrays,
        )


def load(path) -> GMM:
    """Read a mixture written by ``save``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is truncated, not an ``.npz`` archive, not a jaxgmm model, or holds invalid
        parameters (the checks of ``save``: shapes, finite values, weights summing to one,
        positive definite covariances).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError:  # neither .npy nor .npz: NumPy takes it for a pickle
        message = f"path {path!r} is not a jaxgmm model file (not an .npz archive)"
        raise ValueError(message) from None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"path {path!r} is not a readable jaxgmm model file: {error}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy array
        raise ValueError(f"path {path!r} is not a jaxgmm model file (not an .npz archive)")
    try:
        with loaded as archive:
            contents = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:  # a damaged member
        raise ValueError(f"path {path!r} is not a readable jaxgmm model file: {error}") from None
    if _text(contents.get("format")) != _FORMAT:
        raise ValueError(f"path {path!r} is not a jaxgmm model file (no jaxgmm format marker)")
    if _text(contents.get("version")) != str(_VERSION):
        raise ValueError(f"path {path!r} has unsupported format version {contents.get('version')}")
    covariance_type = _text(contents.get("covariance_type"))
    missing = [name for name in ("weights", "means", "covariances") if name not in contents]
    if missing or covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"path {path!r} is a damaged jaxgmm model file (missing {missing})")
    arrays = [contents[name] for name in ("weights", "means", "covariances")]
    if not all(np.issubdtype(array.dtype, np.floating) for array in arrays):
        raise ValueError(f"path {path!r} is a damaged jaxgmm model file (non-float arrays)")
    params = GMM(*(jnp.asarray(array) for array in arrays), covariance_type)
    try:
        _check_mixtures(params, "params")
    except ValueError as error:
        raise InvalidModelFile(f"path {path!r} holds an invalid model: {error}") from None
    return params


class InvalidModelFile(ValueError):
    """A jaxgmm model file whose parameters fail the checks of ``save``."""


def _text(value) -> str:
    """A scalar archive entry as text ('' when missing or not a scalar)."""
    if value is None or np.ndim(value) != 0:
        return ""
    return str(value)


def _check_mixtures(params: GMM, name: str) -> None:
    """``validation.check_params`` on a mixture, or on every mixture of a batch (leading
    axes on every leaf)."""
    leaves = [np.asarray(leaf) for leaf in (params.weights, params.means, params.covariances)]
    batch_shape = leaves[0].shape[:-1]
    if any(leaf.shape[: len(batch_shape)] != batch_shape for leaf in leaves[1:]):
        raise ValueError(f"{name}: the arrays have inconsistent shapes")
    for index in np.ndindex(*batch_shape):
        one = GMM(*(leaf[index] for leaf in leaves), params.covariance_type)
        validation.check_params(one, None, name)
