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
    mixtures (leading axis from ``vmap``) is stored as is.
    """
    if not isinstance(params, GMM):
        raise TypeError(f"params must be a jaxgmm.GMM; got {type(params).__name__}")
    validation.check_covariance_type(params.covariance_type)
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
        The file is truncated, not an ``.npz`` archive, or not a jaxgmm model.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ValueError(f"path {path!r} is not a readable jaxgmm model file: {error}") from None
    if str(contents.get("format", "")) != _FORMAT:
        raise ValueError(f"path {path!r} is not a jaxgmm model file (no jaxgmm format marker)")
    if int(contents.get("version", -1)) != _VERSION:
        raise ValueError(f"path {path!r} has unsupported format version {contents.get('version')}")
    covariance_type = str(contents.get("covariance_type", ""))
    missing = [name for name in ("weights", "means", "covariances") if name not in contents]
    if missing or covariance_type not in COVARIANCE_TYPES:
        raise ValueError(f"path {path!r} is a damaged jaxgmm model file (missing {missing})")
    return GMM(
        jnp.asarray(contents["weights"]),
        jnp.asarray(contents["means"]),
        jnp.asarray(contents["covariances"]),
        covariance_type,
    )
