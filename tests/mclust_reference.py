"""R's mclust as an outside reference for ``jaxgmm.select`` (needs ``Rscript`` with mclust;
``apt-get install r-cran-mclust``). Not a test module: ``tests/test_selection.py`` uses it
when R is there, and ``python tests/mclust_reference.py`` prints the comparison on iris, wine
and Old Faithful.

mclust's models VVV, VVI, VII, EEE are ``full``, ``diag``, ``spherical``, ``tied``; its BIC
is ``2 log L - p log N`` (higher is better), the negative of ours. It starts EM from a
model-based hierarchical clustering (deterministic, one start) and reports a model whose
covariance becomes singular as missing (NaN here).
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

MCLUST_NAMES = {"full": "VVV", "diag": "VVI", "spherical": "VII", "tied": "EEE"}

_SCRIPT = """
suppressMessages(library(mclust))
args <- commandArgs(trailingOnly = TRUE)
X <- as.matrix(read.csv(args[1], header = FALSE))
b <- mclustBIC(X, G = as.integer(strsplit(args[2], ",")[[1]]),
               modelNames = strsplit(args[3], ",")[[1]], verbose = FALSE)
write.table(b[, , drop = FALSE], args[4], sep = ",", row.names = FALSE, col.names = FALSE)
"""


def available() -> bool:
    """True when ``Rscript`` runs and has mclust."""
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(
        ["Rscript", "-e", "library(mclust)"], capture_output=True, timeout=60, check=False
    )
    return probe.returncode == 0


def mclust_bic(X, K, covariance_types) -> np.ndarray:
    """Our-sign BIC (lower is better) from mclust, shape (T, L); NaN where mclust has none.

    Parameters
    ----------
    X : array, shape (N, D)
    K : sequence of int, length L
    covariance_types : sequence of str, length T
    """
    X = np.asarray(X, np.float64)
    with tempfile.TemporaryDirectory() as tmp:
        data, out, script = (os.path.join(tmp, n) for n in ("x.csv", "bic.csv", "bic.R"))
        np.savetxt(data, X, delimiter=",", fmt="%.17g")
        with open(script, "w") as handle:
            handle.write(_SCRIPT)
        models = ",".join(MCLUST_NAMES[t] for t in covariance_types)
        subprocess.run(
            ["Rscript", script, data, ",".join(str(int(k)) for k in K), models, out],
            check=True,
            capture_output=True,
            timeout=300,
        )
        table = np.genfromtxt(out, delimiter=",", missing_values="NA", filling_values=np.nan)
    return -np.atleast_2d(table).reshape(len(K), len(covariance_types)).T


def classic_datasets() -> dict:
    """iris and wine (shipped with scikit-learn) and Old Faithful (shipped with jaxgmm)."""
    from sklearn.datasets import load_iris, load_wine

    path = importlib.resources.files("jaxgmm") / "data" / "faithful.csv"
    with path.open() as handle:
        faithful = np.loadtxt(handle, delimiter=",", comments="#", skiprows=2)
    return {"iris": load_iris().data, "wine": load_wine().data, "faithful": faithful}


def main() -> int:  # pragma: no cover - a report, run by hand
    import warnings

    import jax

    jax.config.update("jax_enable_x64", True)
    from sklearn.mixture import GaussianMixture

    import jaxgmm

    if not available():
        print("Rscript with mclust not found (apt-get install r-cran-mclust)")
        return 1
    Ks = range(1, 11)
    for name, X in classic_datasets().items():
        selection = jaxgmm.select(jax.random.key(0), X, Ks, n_init=10)
        kinds = selection.covariance_types
        reference = mclust_bic(X, Ks, kinds)
        sk = np.full_like(reference, np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for t, kind in enumerate(kinds):
                for j, k in enumerate(Ks):
                    model = GaussianMixture(k, covariance_type=kind, n_init=20, random_state=0)
                    sk[t, j] = model.fit(X).bic(X)
        print(f"== {name} {X.shape}")
        print(selection.summary())
        t, j = np.unravel_index(np.nanargmin(reference), reference.shape)
        print(
            f"mclust best: {MCLUST_NAMES[kinds[t]]},{Ks[j]} "
            f"BIC {-reference[t, j]:.3f} (mclust sign)"
        )
        t, j = np.unravel_index(np.nanargmin(sk), sk.shape)
        print(f"sklearn (n_init=20) best: {kinds[t]}, K = {Ks[j]}, BIC {sk[t, j]:.3f}")
        np.set_printoptions(linewidth=160, precision=2, suppress=True)
        print("our BIC - mclust's (our sign; negative: we found a higher likelihood):")
        print(selection.bic - reference)
        print("our BIC - sklearn's:")
        print(selection.bic - sk)
        print("collapsed:")
        print(selection.collapsed.astype(int))
    return 0


if __name__ == "__main__":
    sys.exit(main())
