"""``jaxgmm bench --suite``: jaxgmm against scikit-learn, gmmx and pomegranate.

Every library starts from the same parameters on the same data. Measured per case:

* **time per iteration**: the difference between a long and a short fixed-iteration run
  (``tol`` disabled) over the difference in iterations, best of ``repeats`` (removes set-up,
  initialisation and compilation); the long run is lengthened until the difference takes
  about 0.3 s;
* **compile time** (JAX libraries): first call minus a second identical call;
* **time to convergence**: ``tol=1e-3`` on the mean per-sample log-likelihood, ``max_iter=100``,
  after compilation; with restarts, the whole ``fit`` including initialisation;
* **peak memory**: the peak resident memory of the library's conversion of the data and a
  short fit (compilation included), above what the process held before (Linux ``VmHWM``,
  reset through ``/proc/self/clear_refs``); each library and case runs in a fresh process;
* the final mean log-likelihood, evaluated by jaxgmm on each library's parameters.

scikit-learn is always measured (when installed); gmmx and pomegranate when importable
(``pip install gmmx pomegranate``; pomegranate needs PyTorch). None of them is a dependency.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxgmm._src.benchmark import machine_description, per_iteration
from jaxgmm._src.em import log_likelihood
from jaxgmm._src.fitting import fit
from jaxgmm._src.initialization import init_params
from jaxgmm._src.model import GMM

SUITE_SHAPES = ((20_000, 2, 5), (100_000, 16, 16), (100_000, 64, 32), (1_000_000, 8, 8))
RESTART_SHAPES = ((20_000, 2, 5), (100_000, 16, 16))
LIBRARIES = ("jaxgmm", "sklearn", "gmmx", "pomegranate")
_MODULES = {"sklearn": "scikit-learn", "gmmx": "gmmx", "pomegranate": "pomegranate"}
# Covariance types each comparison library can fit.
_SUPPORTED = {
    "jaxgmm": ("full", "diag", "spherical", "tied"),
    "sklearn": ("full", "diag", "spherical", "tied"),
    "gmmx": ("full", "diag"),
    "pomegranate": ("full", "diag"),
}


@dataclass
class SuiteRow:
    """One library on one case. Times in seconds except ``ms_per_iter``; ``None`` where not
    measured or not applicable."""

    library: str
    n_samples: int
    n_features: int
    n_components: int
    covariance_type: str
    dtype: str
    n_init: int
    ms_per_iter: float | None = None
    compile_s: float | None = None
    converge_s: float | None = None
    n_iter: int | None = None
    mean_log_likelihood: float | None = None
    peak_mb: float | None = None
    speedup: float | None = None
    note: str = ""


def available_libraries() -> dict:
    """Installed comparison libraries and their versions (jaxgmm always)."""
    found = {"jaxgmm": importlib.metadata.version("jaxgmm")}
    for name, dist in _MODULES.items():
        if importlib.util.find_spec(name) is not None:
            try:
                found[name] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                found[name] = "?"
    return found


# --- peak memory


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable):
    """Run ``fn()``; return ``(its result, rise of peak RSS in MB)`` (MB ``None`` where the
    platform gives no way to measure). Uses ``VmHWM`` after resetting it where Linux allows,
    else samples ``VmRSS`` every millisecond."""
    before = _status_kb("VmRSS")
    if before is None:
        return fn(), None
    if _reset_peak():
        result = fn()
        return result, max(_status_kb("VmHWM") - before, 0.0) / 1024
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _status_kb("VmRSS") or 0.0)
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, max(peak[0] - before, 0.0) / 1024


# --- adapters: fit from given parameters for n iterations (tol disabled) or to convergence


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


class _Jaxgmm:
    name = "jaxgmm"
    compiles = True

    def __init__(self, X, start: GMM, n_init: int, seed: int):
        self.X = jnp.asarray(X)
        self.start = start
        self.n_init = n_init
        self.key = jax.random.key(seed)

    def _fit(self, max_iter, tol):
        options = dict(covariance_type=self.start.covariance_type, max_iter=max_iter, tol=tol)
        if self.n_init == 1:
            options["init_params"] = self.start
        else:
            options["n_init"] = self.n_init
        result = fit(self.key, self.X, self.start.n_components, **options)
        result.log_likelihood.block_until_ready()
        return result

    def run(self, n_iter):
        self._fit(n_iter, 0.0)

    def converge(self, max_iter, tol):
        result = self._fit(max_iter, tol)
        return result.params, int(result.n_iter)


class _Sklearn:
    name = "sklearn"
    compiles = False

    def __init__(self, X, start: GMM, n_init: int, seed: int):
        self.X = np.asarray(X)
        self.start = start
        self.n_init = n_init
        self.seed = seed

    def _model(self, max_iter, tol):
        from sklearn.mixture import GaussianMixture

        start = self.start
        kind = start.covariance_type
        options = dict(covariance_type=kind, max_iter=max_iter, tol=tol, random_state=self.seed)
        if self.n_init == 1:
            covariances = np.asarray(start.covariances, np.float64)
            precisions = np.linalg.inv(covariances) if kind in ("full", "tied") else 1 / covariances
            weights = np.asarray(start.weights, np.float64)
            options.update(
                weights_init=weights / weights.sum(),
                means_init=np.asarray(start.means, np.float64),
                precisions_init=precisions,
            )
        else:
            options.update(n_init=self.n_init, init_params="k-means++")
        return GaussianMixture(start.n_components, **options)

    def _fit(self, max_iter, tol):
        model = self._model(max_iter, tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(self.X)
        return model

    def run(self, n_iter):
        self._fit(n_iter, 0.0)

    def converge(self, max_iter, tol):
        model = self._fit(max_iter, tol)
        params = GMM(
            jnp.asarray(model.weights_),
            jnp.asarray(model.means_),
            jnp.asarray(model.covariances_),
            self.start.covariance_type,
        )
        return params, int(model.n_iter_)


class UnsupportedCase(Exception):
    """A peer library cannot run this case (e.g. no restarts, float32 only); reported in the
    row's note instead of a time."""


class _Gmmx:
    name = "gmmx"
    compiles = True

    def __init__(self, X, start: GMM, n_init: int, seed: int):
        from gmmx import GaussianMixtureModelJax

        if n_init != 1:
            raise UnsupportedCase("no restarts")
        if np.dtype(X.dtype) != np.float32:
            raise UnsupportedCase("float32 only")
        with _float32_jax():  # gmmx checks for float32 arrays, and breaks under x64
            self.X = jnp.asarray(X)
            self.gmm = GaussianMixtureModelJax.from_squeezed(
                means=jnp.asarray(start.means, jnp.float32),
                covariances=jnp.asarray(start.covariances, jnp.float32),
                weights=jnp.asarray(start.weights, jnp.float32),
                covariance_type=start.covariance_type,
            )
        self.start = start

    def _fit(self, max_iter, tol):
        from gmmx import EMFitter

        with _float32_jax():
            result = EMFitter(max_iter=max_iter, tol=tol).fit(self.X, self.gmm)
            jax.block_until_ready(result.log_likelihood)
        return result

    def run(self, n_iter):
        self._fit(n_iter, -1.0)

    def converge(self, max_iter, tol):
        result = self._fit(max_iter, tol)
        gmm = result.gmm
        params = GMM(
            jnp.asarray(gmm.weights_numpy),
            jnp.asarray(gmm.means_numpy),
            jnp.asarray(gmm.covariances.values_numpy),
            self.start.covariance_type,
        )
        return params, int(result.n_iter)


def _float32_jax():
    """A context in which JAX's default dtypes are 32-bit (``jax.enable_x64(False)``)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(False)
    return contextlib.nullcontext()


class _Pomegranate:
    name = "pomegranate"
    compiles = False

    def __init__(self, X, start: GMM, n_init: int, seed: int):
        import torch

        if n_init != 1:
            raise UnsupportedCase("no restarts")
        self.torch = torch
        self.dtype = torch.float64 if np.asarray(X).dtype == np.float64 else torch.float32
        self.X = torch.as_tensor(np.asarray(X))
        self.start = start

    def _model(self, max_iter, tol):
        from pomegranate.distributions import Normal
        from pomegranate.gmm import GeneralMixtureModel

        start, torch = self.start, self.torch
        components = [
            Normal(
                means=torch.as_tensor(np.asarray(start.means[k]), dtype=self.dtype),
                covs=torch.as_tensor(np.asarray(start.covariances[k]), dtype=self.dtype),
                covariance_type=start.covariance_type,
            )
            for k in range(start.n_components)
        ]
        priors = torch.as_tensor(np.asarray(start.weights), dtype=self.dtype)
        return GeneralMixtureModel(components, priors=priors, max_iter=max_iter, tol=tol)

    def run(self, n_iter):
        # pomegranate's loop makes max_iter E-steps and stops on an improvement of the total
        # log-likelihood below tol: -inf never stops early.
        self._model(n_iter, -math.inf).fit(self.X)

    def converge(self, max_iter, tol):
        n = self.X.shape[0]
        model = self._model(max_iter + 1, tol * n).fit(self.X)  # its tol is on the total
        components = model.distributions
        params = GMM(
            jnp.asarray(model.priors.detach().numpy()),
            jnp.asarray(np.stack([d.means.detach().numpy() for d in components])),
            jnp.asarray(np.stack([d.covs.detach().numpy() for d in components])),
            self.start.covariance_type,
        )
        return params, None


_IMPORTS = {
    "jaxgmm": (),
    "sklearn": ("sklearn.mixture",),
    "gmmx": ("gmmx",),
    "pomegranate": ("torch", "pomegranate.gmm", "pomegranate.distributions"),
}
_ADAPTERS = {"jaxgmm": _Jaxgmm, "sklearn": _Sklearn, "gmmx": _Gmmx, "pomegranate": _Pomegranate}


def make_data(n: int, d: int, k: int, seed: int = 0) -> np.ndarray:
    """``n`` samples in float64 from ``k`` unit-variance blobs with centres of scale 4."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    return centers[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


def measure_case(
    library: str,
    X,
    start: GMM,
    *,
    n_init: int = 1,
    repeats: int = 2,
    iterations=(2, 12),
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    converge_budget_s: float | None = None,
) -> SuiteRow:
    """Measure one library on one data set from the starting parameters ``start``, in this
    process.

    Peak memory is measured first: the library's conversion of the data and a short fit
    (``iterations[0]`` iterations, compilation included). In a fresh process that is the fit's
    memory; in a process that already ran larger fits it is a lower bound (allocators keep
    freed memory). The convergence run is skipped (noted) when ``max_iter`` iterations at the
    measured time per iteration would exceed ``converge_budget_s``."""
    n, d = X.shape
    row = SuiteRow(
        library=library,
        n_samples=n,
        n_features=d,
        n_components=start.n_components,
        covariance_type=start.covariance_type,
        dtype=str(np.dtype(X.dtype)),
        n_init=n_init,
    )
    if start.covariance_type not in _SUPPORTED[library]:
        row.note = f"no {start.covariance_type} covariances"
        return row
    try:
        for module in _IMPORTS[library]:  # imports are not the fit's memory
            importlib.import_module(module)

        def first_fit():
            adapter = _ADAPTERS[library](X, start, n_init, seed)
            adapter.run(iterations[0])
            return adapter

        adapter, row.peak_mb = peak_memory_mb(first_fit)
    except UnsupportedCase as error:
        row.note = str(error)
        return row
    except Exception as error:  # a comparison library failing must not stop the suite
        row.note = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
        return row
    try:
        row.ms_per_iter = 1e3 * per_iteration(
            adapter.run, *iterations, repeats, warm=adapter.compiles
        )
        if converge_budget_s is not None and row.ms_per_iter * max_iter > 1e3 * converge_budget_s:
            row.note = f"convergence run skipped (over {converge_budget_s:g} s)"
            return row
        if adapter.compiles:
            _, first = _timed(lambda: adapter.converge(max_iter, tol))
        (params, n_iter), seconds = _timed(lambda: adapter.converge(max_iter, tol))
        row.converge_s = seconds
        row.n_iter = n_iter
        if adapter.compiles:
            row.compile_s = max(first - seconds, 0.0)
        X64 = np.asarray(X, np.float64)
        if jax.config.jax_enable_x64:
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        row.mean_log_likelihood = float(log_likelihood(params, X64)) / n
    except Exception as error:  # a comparison library failing must not stop the suite
        row.note = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
    return row


def _child(queue, library, shape, kind, dtype, n_init, options, x64):
    jax.config.update("jax_enable_x64", x64)
    n, d, k = shape
    seed = options["seed"]
    X = make_data(n, d, k, seed).astype(dtype)
    start = init_params(jax.random.key(seed), jnp.asarray(X), k, covariance_type=kind)
    jax.block_until_ready(start)
    row = measure_case(library, X, start, n_init=n_init, **options)
    queue.put(asdict(row))


def measure_case_isolated(
    library: str, shape, covariance_type: str, dtype: str, *, n_init=1, timeout_s=600, **options
) -> SuiteRow:
    """``measure_case`` in a fresh (spawned) process, on ``make_data`` data with
    jaxgmm's k-means++ start: libraries do not share thread pools or allocator state, peak
    memory is the fit's own, and a measurement that hangs or crashes is noted after
    ``timeout_s`` instead of stopping the suite. (A spawned process re-imports ``__main__``:
    call this from a script guarded by ``if __name__ == "__main__":``.)"""
    import multiprocessing
    import queue as queue_module

    options.setdefault("seed", 0)
    n, d, k = shape
    row = SuiteRow(library, n, d, k, covariance_type, dtype, n_init)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(
        target=_child,
        args=(
            results,
            library,
            tuple(shape),
            covariance_type,
            dtype,
            n_init,
            options,
            bool(jax.config.jax_enable_x64),
        ),
    )
    process.start()
    try:
        return SuiteRow(**results.get(timeout=timeout_s))
    except queue_module.Empty:
        row.note = f"no result in {timeout_s:g} s (hung or crashed)"
        return row
    finally:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()


def run_suite(
    shapes=SUITE_SHAPES,
    covariance_types=("full", "diag"),
    dtypes=("float32", "float64"),
    restart_shapes=RESTART_SHAPES,
    n_init: int = 8,
    libraries=None,
    repeats: int = 2,
    iterations=(2, 12),
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    converge_budget_s: float | None = None,
    isolate: bool = True,
    timeout_s: float = 600,
    progress: Callable | None = None,
) -> list[SuiteRow]:
    """Measure every library on every (shape, covariance type, dtype), then restarts.

    Parameters
    ----------
    shapes : sequence of (N, D, K)
    covariance_types : sequence of str
    dtypes : sequence of {"float32", "float64"}
        float64 needs ``jax_enable_x64``.
    restart_shapes : sequence of (N, D, K)
        Shapes also measured with ``n_init`` restarts from k-means++ (``"full"`` covariances;
        libraries without restarts are skipped).
    n_init : int
    libraries : sequence of str, optional
        Default: jaxgmm and every installed one of scikit-learn, gmmx and pomegranate.
    repeats : int
        Timing repeats; the best is kept.
    iterations : (int, int)
        Short and long fixed iteration counts for the time per iteration.
    max_iter, tol : int, float
        For the time to convergence.
    seed : int
    converge_budget_s : float, optional
        Skip a convergence run whose ``max_iter`` iterations would take longer.
    isolate : bool
        Measure every library on every case in a fresh process
        (``measure_case_isolated``, with ``timeout_s``); the calling script must then be
        guarded by ``if __name__ == "__main__":``. Otherwise all run in this process (peak
        memory is then a lower bound, and a library that hangs stops the suite).
    timeout_s : float
        Per measurement, when ``isolate``.
    progress : callable, optional
        Called with every ``SuiteRow`` as it is measured.

    Returns
    -------
    list of SuiteRow
        ``speedup`` on a comparison library's row is its time per iteration over jaxgmm's on
        the same case (above 1: jaxgmm is faster).

    Examples
    --------
    >>> from jaxgmm._src.bench_suite import run_suite, format_suite_table
    >>> rows = run_suite(shapes=[(500, 2, 2)], covariance_types=["diag"], dtypes=["float32"],
    ...                  restart_shapes=[], libraries=["jaxgmm"], repeats=1,
    ...                  iterations=(1, 2), max_iter=5, isolate=False)
    >>> [(r.library, r.n_samples, r.covariance_type) for r in rows]
    [('jaxgmm', 500, 'diag')]
    >>> "ms/iter" in format_suite_table(rows)
    True
    """
    if libraries is None:
        libraries = [name for name in LIBRARIES if name in available_libraries()]
    unknown = set(libraries) - set(LIBRARIES)
    if unknown:
        raise ValueError(f"libraries must be among {LIBRARIES}; got {sorted(unknown)}")
    if "float64" in dtypes and not jax.config.jax_enable_x64:
        raise RuntimeError("float64 benchmarks need jax.config.update('jax_enable_x64', True)")
    cases = [
        (shape, kind, dtype, 1) for shape in shapes for kind in covariance_types for dtype in dtypes
    ]
    cases += [(shape, "full", dtype, n_init) for shape in restart_shapes for dtype in dtypes]
    options = dict(
        repeats=repeats,
        iterations=tuple(iterations),
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        converge_budget_s=converge_budget_s,
    )
    rows = []
    for (n, d, k), kind, dtype, restarts in cases:
        if not isolate:
            X = make_data(n, d, k, seed).astype(dtype)
            start = init_params(jax.random.key(seed), jnp.asarray(X), k, covariance_type=kind)
        case_rows = []
        for library in libraries:
            if isolate:
                row = measure_case_isolated(
                    library,
                    (n, d, k),
                    kind,
                    dtype,
                    n_init=restarts,
                    timeout_s=timeout_s,
                    **options,
                )
            else:
                row = measure_case(library, X, start, n_init=restarts, **options)
            case_rows.append(row)
            if progress is not None:
                progress(row)
        rows.extend(add_speedups(case_rows))
    return rows


def _case(row: SuiteRow) -> tuple:
    return (
        row.n_samples,
        row.n_features,
        row.n_components,
        row.covariance_type,
        row.dtype,
        row.n_init,
    )


def add_speedups(rows: list[SuiteRow]) -> list[SuiteRow]:
    """Set ``speedup`` on every comparison row: its time per iteration over jaxgmm's on the
    same case (above 1: jaxgmm is faster). Returns ``rows``."""
    reference = {_case(r): r.ms_per_iter for r in rows if r.library == "jaxgmm"}
    for row in rows:
        base = reference.get(_case(row))
        if row.library != "jaxgmm" and base and row.ms_per_iter:
            row.speedup = row.ms_per_iter / base
    return rows


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_suite_table(rows: list[SuiteRow]) -> str:
    """The rows as an aligned text table (also valid Markdown)."""
    header = (
        "N",
        "D",
        "K",
        "cov",
        "dtype",
        "n_init",
        "library",
        "ms/iter",
        "jaxgmm speedup",
        "compile s",
        "converge s",
        "iters",
        "final ll/N",
        "peak MB",
        "note",
    )
    lines = [
        (
            f"{r.n_samples:,}",
            str(r.n_features),
            str(r.n_components),
            r.covariance_type,
            r.dtype,
            str(r.n_init),
            r.library,
            _fmt(r.ms_per_iter, ".2f"),
            _fmt(r.speedup, ".1f") + ("x" if r.speedup is not None else ""),
            _fmt(r.compile_s, ".2f"),
            _fmt(r.converge_s, ".2f"),
            _fmt(r.n_iter, "d"),
            _fmt(r.mean_log_likelihood, ".4f"),
            _fmt(r.peak_mb, ".0f"),
            r.note,
        )
        for r in rows
    ]
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]

    def join(cells):
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"

    out = [join(header), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    out.extend(join(line) for line in lines)
    return "\n".join(out)


def suite_to_json(rows: list[SuiteRow]) -> dict:
    """The rows, the machine and the library versions, as a JSON-ready dict."""
    return {
        "machine": machine_description(),
        "libraries": available_libraries(),
        "rows": [asdict(r) for r in rows],
    }


def write_suite_json(path, rows: list[SuiteRow]) -> None:
    """Write ``suite_to_json`` to ``path``."""
    with open(path, "w") as handle:
        json.dump(suite_to_json(rows), handle, indent=2)


def read_suite_json(path) -> list[SuiteRow]:
    """Rows back from a file written by ``write_suite_json``."""
    with open(path) as handle:
        return [SuiteRow(**row) for row in json.load(handle)["rows"]]


def plot_suite(rows: list[SuiteRow], path, title: str | None = None) -> None:
    """A PNG with, per case, the time per iteration and the time to convergence of every
    library (log scales). Needs matplotlib (imported here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = []
    for r in rows:
        if _case(r) not in cases:
            cases.append(_case(r))
    libraries = [name for name in LIBRARIES if any(r.library == name for r in rows)]
    index = {_case(r) + (r.library,): r for r in rows}
    labels = [
        f"{n // 1000}k×{d}×{k} {kind} {dtype[-2:]}" + (f" ×{m}" if m > 1 else "")
        for n, d, k, kind, dtype, m in cases
    ]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(cases) + 3), 8), sharex=True)
    width = 0.8 / max(len(libraries), 1)
    positions = np.arange(len(cases))
    for panel, (field, ylabel) in zip(
        axes,
        (("ms_per_iter", "time per EM iteration (ms)"), ("converge_s", "time to convergence (s)")),
    ):
        for j, library in enumerate(libraries):
            values = [getattr(index.get(case + (library,)), field, None) for case in cases]
            heights = [np.nan if v is None else v for v in values]
            panel.bar(
                positions + (j - (len(libraries) - 1) / 2) * width, heights, width, label=library
            )
        panel.set_yscale("log")
        panel.set_ylabel(ylabel)
        panel.grid(axis="y", alpha=0.3)
    axes[0].legend(ncol=len(libraries), fontsize="small")
    axes[1].set_xticks(positions, labels, rotation=60, ha="right", fontsize="small")
    if title is None:
        title = f"jaxgmm bench --suite ({os.cpu_count()} CPU cores, {jax.default_backend()})"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
