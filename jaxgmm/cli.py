"""The ``jaxgmm`` command line: ``fit``, ``predict``, ``adapt``, ``select``, ``segment``,
``demo`` and ``bench``.

Every subcommand enables float64 and JAX's persistent compilation cache (see
:mod:`jaxgmm._src.runtime`) before any work, so a second invocation with the same shapes
loads its compiled programs instead of compiling them again. A user mistake (missing file,
unreadable data, impossible option) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

EXAMPLES_HINT = 'pip install "jaxgmm[examples]"'
COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
INIT_METHODS = ("kmeans++", "kmeans", "random", "random_from_data")

# Above this many floating-point operations (estimated) a fit counts as long and shows its
# progress on a terminal. Fits with progress are not stored in the compilation cache (JAX
# does not persist programs with host callbacks), so short fits run without it.
LONG_FIT_FLOPS = 2e10


class UserError(Exception):
    """A mistake by the user (bad file, bad option): printed as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------
# Progress from inside the compiled EM loop.

_progress_state = {"shown": False, "last": 0.0}


def print_progress(n_iter, mean_log_likelihood) -> None:
    """Show ``iteration`` and mean log-likelihood on one terminal line (stderr).

    Passed as ``jaxgmm.fit(..., progress=print_progress)``: one module-level function object,
    so the compiled fit is reused. Called once per iteration (per restart when ``n_init > 1``)
    through ``jax.debug.callback``; redraws at most ten times a second.
    """
    now = time.monotonic()
    if _progress_state["shown"] and now - _progress_state["last"] < 0.1:
        return
    _progress_state["shown"] = True
    _progress_state["last"] = now
    sys.stderr.write(
        f"\r  EM iteration {int(n_iter):5d}   mean log-likelihood {float(mean_log_likelihood):.6f}"
    )
    sys.stderr.flush()


def _end_progress() -> None:
    if _progress_state["shown"]:
        import jax

        jax.effects_barrier()  # let callbacks still in flight print before the line is cleared
        sys.stderr.write("\r" + " " * 79 + "\r")
        sys.stderr.flush()
    _progress_state["shown"] = False


def _show_progress(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _fit_is_long(
    n_samples: int, n_features: int, K: int, covariance_type: str, n_init: int, max_iter: int
) -> bool:
    quadratic = {
        "full": n_features * (n_features + 1) // 2,
        "tied": n_features * (n_features + 1) // 2,
        "diag": n_features,
        "spherical": 1,
    }[covariance_type]
    width = quadratic + n_features + 1
    return 4.0 * n_samples * K * width * n_init * max_iter > LONG_FIT_FLOPS


def _status(args, message: str) -> None:
    """A progress note on stderr (not with --quiet)."""
    if not getattr(args, "quiet", False):
        print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the subcommands.


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not -(2**63) <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a 64-bit integer, got {text}")
    return value


def _shape(text: str) -> str:
    try:
        n, d, k = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N,D,K (three integers) such as 100000,16,16, got {text!r}"
        ) from None
    if min(n, d, k) < 1 or k > n:
        raise argparse.ArgumentTypeError(f"expected N,D,K >= 1 with K <= N, got {text!r}")
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _k_range(text: str) -> list[int]:
    parts = text.split("..")
    try:
        low, high = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A..B such as 2..8, got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= A <= B in A..B, got {text!r}")
    return list(range(low, high + 1))


def _load_data(path: str, fmt: str | None, dtype):
    import numpy as np

    from jaxgmm import datasets

    try:
        data = datasets.load_data(path, format=None if fmt == "auto" else fmt, dtype=dtype)
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from None
    if data.shape[0] == 0:
        raise UserError(f"{path} holds no samples")
    if not np.all(np.isfinite(data)):
        raise UserError(f"{path} contains NaN or infinite values")
    return data


def _input_file(path: str) -> str:
    """The file behind a DATA argument (``file.npz:name`` names an array of ``file.npz``)."""
    if not os.path.exists(path) and ":" in os.path.basename(path):
        return path.rsplit(":", 1)[0]
    return path


def _check_writable(path: str, *inputs: str) -> None:
    """Fail before any work when ``path`` cannot be written or is one of the ``inputs``."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise UserError(f"cannot write {path}: it is a folder")
    for source in map(_input_file, inputs):
        same = os.path.abspath(path) == os.path.abspath(source) or (
            os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)
        )
        if same:
            raise UserError(f"{path} is also an input: choose another output file")


def _check_figure(path: str, *inputs: str) -> None:
    """``_check_writable`` for a figure, which is written as PNG."""
    if not path.lower().endswith(".png"):
        raise UserError(f"figures are PNG files: give {path} a .png name")
    _check_writable(path, *inputs)


def _format_number(value: float) -> str:
    return f"{value:.6g}"


def _format_vector(vector, limit: int = 6) -> str:
    values = [f"{float(v):.4g}" for v in vector]
    if len(values) > limit:
        return "[" + ", ".join(values[: limit - 1]) + f", ... ({len(values)} values)]"
    return "[" + ", ".join(values) + "]"


def _table(headers, rows) -> str:
    """A plain text table with left-aligned columns."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _default_output(path: str, suffix: str) -> str:
    name = os.path.basename(path)
    if path != _input_file(path):  # file.npz:name -> file-name
        stem, array = path.rsplit(":", 1)
        name = _default_output(stem, "") + "-" + array
    for extension in (".gz", ".csv", ".txt", ".tsv", ".npy", ".npz", ".png", ".jpg", ".jpeg"):
        if name.lower().endswith(extension):
            name = name[: -len(extension)]
    return (name or "data") + suffix


# ---------------------------------------------------------------------------------------------
# fit


def _cmd_fit(args) -> int:
    import jax
    import numpy as np

    import jaxgmm

    dtype = np.dtype(args.dtype)
    X = _load_data(args.data, args.format, dtype)
    n_samples, n_features = X.shape
    if args.components > n_samples:
        raise UserError(
            f"-k {args.components} is larger than the number of samples "
            f"({n_samples}) in {args.data}"
        )
    output = args.output or _default_output(args.data, ".gmm.npz")
    _check_writable(output, args.data)
    long_fit = _fit_is_long(
        n_samples, n_features, args.components, args.covariance_type, args.n_init, args.max_iter
    )
    progress = print_progress if (long_fit and _show_progress(args)) else None
    start = time.perf_counter()
    try:
        result = jaxgmm.fit(
            jax.random.key(args.seed),
            X,
            args.components,
            covariance_type=args.covariance_type,
            init=args.init,
            n_init=args.n_init,
            max_iter=args.max_iter,
            tol=args.tol,
            reg_covar=args.reg_covar,
            progress=progress,
            n_candidates=args.n_candidates,
        )
        log_likelihood = float(result.log_likelihood)
    except (ValueError, TypeError) as error:
        raise UserError(str(error)) from None
    finally:
        _end_progress()
    seconds = time.perf_counter() - start
    params = result.params
    try:  # saved before anything is printed, so a closed pipe cannot lose it
        jaxgmm.save(output, params)
    except OSError as error:
        raise UserError(f"cannot write {output}: {error}") from None
    except ValueError as error:  # parameters that fail save's checks
        raise UserError(f"the fitted model cannot be saved: {error}") from None
    n_parameters = jaxgmm.n_parameters(params)
    bic = -2.0 * log_likelihood + n_parameters * math.log(n_samples)
    aic = -2.0 * log_likelihood + 2.0 * n_parameters
    weights = np.asarray(params.weights)
    means = np.asarray(params.means)
    print(
        f"{args.data}: N = {n_samples} samples, D = {n_features} "
        f"feature{'s' if n_features > 1 else ''}; "
        f"K = {args.components}, covariance {args.covariance_type}, {dtype.name}"
    )
    print()
    rows = [(k, f"{weights[k]:.4f}", _format_vector(means[k])) for k in range(len(weights))]
    print(_table(["component", "weight", "mean"], rows))
    print()
    iterations = int(result.n_iter)
    summary = [
        (
            "log-likelihood",
            f"{_format_number(log_likelihood)} "
            f"(mean per sample {_format_number(log_likelihood / n_samples)})",
        ),
        ("BIC", _format_number(bic)),
        ("AIC", _format_number(aic)),
        ("free parameters", str(n_parameters)),
        ("iterations", f"{iterations} (max {args.max_iter})"),
        ("converged", "yes" if bool(result.converged) else f"no (tol {args.tol})"),
    ]
    if args.n_init > 1:
        totals = np.asarray(result.all_log_likelihoods)
        summary.append(
            (
                "restarts",
                f"{args.n_init}, log-likelihoods "
                f"{_format_number(np.nanmin(totals))} .. "
                f"{_format_number(np.nanmax(totals))}",
            )
        )
    if args.n_candidates is not None and args.n_candidates > args.n_init:
        summary.append(("screened starts", f"{args.n_candidates}, the best {args.n_init} run"))
    summary.append(("time", f"{seconds:.2f} s (compilation included unless cached)"))
    width = max(len(name) for name, _ in summary)
    for name, value in summary:
        print(f"{name.ljust(width)}  {value}")
    if _has_collapsed_component(X, params, args.reg_covar):
        print(
            "note: some component has collapsed (its covariance is at the reg_covar floor: "
            "repeated values, or fewer samples than features); its log-likelihood, BIC and "
            "AIC are not meaningful. Try a smaller -k or another --covariance-type."
        )
    print(f"model saved to {output}")
    return 0


def _has_collapsed_component(X, params, reg_covar: float) -> bool:
    """``select``'s test for a collapsed cell, on one fitted mixture."""
    import numpy as np

    from jaxgmm._src.selection import collapse_test, has_collapsed_component

    return has_collapsed_component(params, reg_covar, collapse_test(np.asarray(X)))


# ---------------------------------------------------------------------------------------------
# predict

_compiled = {}


def _compiled_fn(name: str):
    """``jax.jit`` of ``jaxgmm.predict`` / ``predict_proba``, made once per process."""
    if name not in _compiled:
        import jax

        import jaxgmm

        _compiled[name] = jax.jit(getattr(jaxgmm, name))
    return _compiled[name]


def _load_model(path: str, command: str):
    """The single mixture saved in ``path``, or a ``UserError``."""
    import jaxgmm
    from jaxgmm._src.serialization import InvalidModelFile

    try:
        params = jaxgmm.load(path)
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except InvalidModelFile as error:
        raise UserError(str(error).replace(f"path {path!r}", path, 1)) from None
    except ValueError:
        raise UserError(
            f"{path} is not a jaxgmm model file (one written by 'jaxgmm fit' or jaxgmm.save)"
        ) from None
    if params.weights.ndim != 1:
        raise UserError(f"{path} holds a batch of mixtures; {command} needs one")
    return params


def _model_and_data(args):
    """``args.model`` and ``args.data`` in ``args.dtype`` (default: the model's), checked to
    have the same number of features."""
    import jax
    import numpy as np

    params = _load_model(args.model, args.command)
    dtype = np.dtype(args.dtype) if args.dtype else np.dtype(params.dtype)
    params = jax.tree.map(lambda leaf: leaf.astype(dtype), params)
    X = _load_data(args.data, args.format, dtype)
    if X.shape[1] != params.n_features:
        raise UserError(
            f"{args.data} has D = {X.shape[1]} features but the model in "
            f"{args.model} was fitted to D = {params.n_features}"
        )
    return params, X


def _cmd_predict(args) -> int:
    import numpy as np

    params, X = _model_and_data(args)
    if args.output:
        _check_writable(args.output, args.data, args.model)
    if args.proba:
        values = np.asarray(_compiled_fn("predict_proba")(params, X))
        header = ",".join(f"p{k}" for k in range(values.shape[1]))
        fmt, what = "%.6g", "probabilities"
    elif args.log_prob:
        values = np.asarray(_compiled_fn("log_prob")(params, X))[:, None]
        header, fmt, what = "log_prob", "%.9g", "log-densities"
    else:
        values = np.asarray(_compiled_fn("predict")(params, X))[:, None]
        header, fmt, what = "label", "%d", "labels"
    target = args.output if args.output else sys.stdout
    try:
        np.savetxt(target, values, fmt=fmt, delimiter=",", header=header, comments="")
    except BrokenPipeError:
        raise
    except OSError as error:
        raise UserError(f"cannot write {args.output}: {error}") from None
    if args.output:
        _status(args, f"wrote {what} of {X.shape[0]} samples to {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------
# adapt


def _cmd_adapt(args) -> int:
    import numpy as np

    import jaxgmm

    params, X = _model_and_data(args)
    output = args.output or _default_output(args.data, ".adapted.gmm.npz")
    _check_writable(output, args.data, args.model)
    try:
        adapted = jaxgmm.map_adapt(
            params, X, relevance=args.relevance, adapt=tuple(args.adapt), n_iter=args.n_iter
        )
        before = float(jaxgmm.log_likelihood(params, X)) / X.shape[0]
        after = float(jaxgmm.log_likelihood(adapted, X)) / X.shape[0]
        shares = np.asarray(jaxgmm.predict_proba(params, X)).sum(axis=0)
    except (ValueError, TypeError) as error:
        raise UserError(str(error)) from None
    try:  # saved before anything is printed, so a closed pipe cannot lose it
        jaxgmm.save(output, adapted)
    except OSError as error:
        raise UserError(f"cannot write {output}: {error}") from None
    n_samples, n_features = X.shape
    print(
        f"{args.data}: N = {n_samples} samples, D = {n_features} "
        f"feature{'s' if n_features > 1 else ''}; adapted the {', '.join(args.adapt)} of "
        f"{args.model} (K = {params.n_components}, {params.covariance_type}), "
        f"relevance {_format_number(args.relevance)}"
    )
    print()
    alpha = shares / (shares + args.relevance)
    moved = np.linalg.norm(np.asarray(adapted.means) - np.asarray(params.means), axis=1)
    order = np.argsort(-shares)
    shown = order[:_ADAPT_ROWS]
    rows = [(k, f"{shares[k]:.1f}", f"{alpha[k]:.3f}", _format_number(moved[k])) for k in shown]
    print(_table(["component", "samples", "alpha", "mean moved by"], rows))
    if len(shown) < len(order):
        print(f"... and {len(order) - len(shown)} components with fewer samples")
    print()
    print(
        f"mean log-likelihood per sample: {_format_number(before)} under {args.model}, "
        f"{_format_number(after)} adapted ({after - before:+.4g})"
    )
    print(f"model saved to {output}")
    return 0


# Components listed by 'jaxgmm adapt' (those with the most samples).
_ADAPT_ROWS = 12


# ---------------------------------------------------------------------------------------------
# segment


def _require_examples_extra() -> None:
    from jaxgmm._src import demo

    missing = demo.missing_extras()
    if missing:
        raise UserError(f"this needs {', '.join(missing)}: {EXAMPLES_HINT}")


def _cmd_segment(args) -> int:
    _require_examples_extra()
    import jax
    import numpy as np
    from PIL import Image

    from jaxgmm._src import plotting, segmentation

    try:
        image = segmentation.load_image(args.image)
    except FileNotFoundError:
        raise UserError(f"no such file: {args.image}") from None
    except ValueError as error:
        raise UserError(str(error)) from None
    height, width = image.shape[:2]
    n_pixels = height * width
    ks = [args.components] if args.components else args.k_range
    if max(ks) > n_pixels:
        raise UserError(
            f"K = {max(ks)} is larger than the number of pixels ({n_pixels}) of {args.image}"
        )
    output = args.output or _default_output(args.image, "-segmented.png")
    extension = os.path.splitext(output)[1].lower()
    if Image.registered_extensions().get(extension) not in Image.SAVE:
        raise UserError(f"cannot write an image named {output}: use a .png or .jpg name")
    _check_writable(output, args.image)
    if args.no_figure and args.figure:
        raise UserError("--figure and --no-figure contradict each other")
    figure = args.figure or (os.path.splitext(output)[0] + "-figure.png")
    if not args.no_figure:
        _check_figure(figure, args.image, output)
    _status(
        args,
        f"{args.image}: {width} x {height} pixels; "
        + (
            f"K = {args.components}"
            if args.components
            else f"choosing K in {ks[0]}..{ks[-1]} by BIC"
        ),
    )
    features = 3 + (2 if args.spatial_weight > 0 else 0)
    long_fit = _fit_is_long(
        n_pixels, features, max(ks), args.covariance_type, args.n_init, args.max_iter
    )
    progress = print_progress if (long_fit and _show_progress(args)) else None
    start = time.perf_counter()
    try:
        result = segmentation.segment_image(
            jax.random.key(args.seed),
            image,
            args.components,
            k_values=None if args.components else ks,
            spatial_weight=args.spatial_weight,
            covariance_type=args.covariance_type,
            n_init=args.n_init,
            max_iter=args.max_iter,
            dtype=np.dtype(args.dtype),
            selection_pixels=args.selection_pixels,
            progress=progress,
        )
    except (ValueError, TypeError) as error:
        raise UserError(str(error)) from None
    finally:
        _end_progress()
    seconds = time.perf_counter() - start
    try:  # written before anything is printed, so a closed pipe cannot lose them
        Image.fromarray(result.segmented).save(output)
        if not args.no_figure:
            plotting.plot_segmentation(
                figure,
                image,
                result.segmented,
                result.uncertainty,
                n_components=result.n_components,
                title=os.path.basename(args.image),
            )
    except (OSError, ValueError) as error:
        raise UserError(f"cannot write the output image: {error}") from None
    if result.bic_by_k:
        print(
            _table(
                ["K", "BIC"],
                [
                    (k, _format_number(v) + ("  <- chosen" if k == result.n_components else ""))
                    for k, v in sorted(result.bic_by_k.items())
                ],
            )
        )
        print()
    counts = np.bincount(result.labels.ravel(), minlength=result.n_components)
    colours = [
        tuple(int(c) for c in np.round(np.clip(m[:3], 0, 1) * 255))
        for m in np.asarray(result.params.means)
    ]
    rows = [
        (k, f"{counts[k] / n_pixels:.3f}", "#{:02x}{:02x}{:02x}".format(*colours[k]))
        for k in range(result.n_components)
    ]
    print(_table(["segment", "pixel share", "mean colour"], rows))
    print()
    print(
        f"K = {result.n_components}; mean uncertainty {float(result.uncertainty.mean()):.3f}; "
        f"EM iterations {int(result.fit_result.n_iter)}; {seconds:.2f} s"
    )
    print(f"segmented image: {output}")
    if not args.no_figure:
        print(f"figure: {figure}")
    return 0


# ---------------------------------------------------------------------------------------------
# demo


def _cmd_demo(args) -> int:
    _require_examples_extra()
    from jaxgmm._src import demo

    def log(message: str) -> None:
        _status(args, message)

    out_dir = args.output
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {out_dir}: {error}") from None
    report = demo.run_demo(out_dir, quick=args.quick, seed=args.seed, log=log)
    print(f"report: {report}")
    return 0


# ---------------------------------------------------------------------------------------------
# select


def _cmd_select(args) -> int:
    import jax
    import numpy as np

    import jaxgmm

    X = _load_data(args.data, args.format, np.dtype(args.dtype))
    ks = args.k_range
    if ks[-1] > X.shape[0]:
        raise UserError(
            f"K up to {ks[-1]} exceeds the number of samples ({X.shape[0]}); "
            f"give a smaller --k-range such as 1..{min(X.shape[0], 10)}"
        )
    if args.output:
        _check_writable(args.output, args.data)
    if args.figure:
        _check_figure(args.figure, args.data, args.output or args.data)
    _status(args, f"fitting K = {ks[0]}..{ks[-1]} x {', '.join(args.covariance_type)}")
    selection = jaxgmm.select(
        jax.random.key(args.seed),
        X,
        ks,
        covariance_types=tuple(args.covariance_type),
        criterion=args.criterion,
        n_init=args.n_init,
        max_iter=args.max_iter,
    )
    print(selection.format_table())
    print()
    print(selection.summary())
    if args.output:
        try:
            jaxgmm.save(args.output, selection.params)
        except OSError as error:
            raise UserError(f"cannot write {args.output}: {error}") from None
        print(f"saved the best model to {args.output}")
    if args.figure:
        _require_examples_extra()
        from jaxgmm._src.selection_plot import plot_bic_curve

        plot_bic_curve(selection, args.figure, criterion=args.criterion)
        print(f"wrote {args.figure}")
    return 0


# ---------------------------------------------------------------------------------------------
# bench


def _cmd_bench(args) -> int:
    from jaxgmm._src import benchmark

    shapes = tuple(tuple(int(v) for v in s.split(",")) for s in args.shape)
    if args.json:
        _check_writable(args.json)
    if args.figure:
        if not args.suite:
            raise UserError("--figure draws the suite's results: add --suite")
        _check_figure(args.figure)
    dtypes = tuple(args.dtype)
    kinds = tuple(args.covariance_type)
    quiet = args.quiet or not sys.stderr.isatty()

    def progress(row):
        if not quiet:
            print(
                f"  measured N={row.n_samples} D={row.n_features} K={row.n_components} "
                f"{row.covariance_type} {row.dtype}",
                file=sys.stderr,
            )

    with_sklearn = not args.no_sklearn
    if with_sklearn:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            print(
                "scikit-learn is not installed: measuring jaxgmm alone "
                "(pip install 'jaxgmm[sklearn]' to compare)",
                file=sys.stderr,
            )
            with_sklearn = False
    if args.suite:
        return _run_suite(args, with_sklearn, quiet)
    if args.select:
        return _run_select_bench(args, with_sklearn, quiet)
    if args.groups:
        return _run_groups_bench(args, with_sklearn)
    rows = benchmark.run_benchmark(
        shapes=shapes,
        covariance_types=kinds,
        dtypes=dtypes,
        with_sklearn=with_sklearn,
        repeats=args.repeats,
        progress=progress,
    )
    print(benchmark.format_table(rows))
    if args.json:
        benchmark.write_json(args.json, rows)
        print(f"wrote {args.json}")
    return 0


def _write_json(path, record) -> None:
    import dataclasses
    import json

    with open(path, "w") as handle:
        json.dump(dataclasses.asdict(record), handle, indent=2)
    print(f"wrote {path}")


def _run_select_bench(args, with_sklearn: bool, quiet: bool) -> int:
    """``jaxgmm bench --select``: one ``select`` sweep against loops of separate fits."""
    import jax

    from jaxgmm._src import benchmark

    def progress(message):
        if not quiet:
            print(f"  {message}", file=sys.stderr)

    record = benchmark.run_select_benchmark(
        dtype=args.dtype[0], with_sklearn=with_sklearn, sklearn_threads=1, progress=progress
    )
    print(benchmark.format_select_bench(record))
    cache = jax.config.jax_compilation_cache_dir
    print(f"persistent compilation cache: {cache or 'off'}")
    if args.json:
        _write_json(args.json, record)
    return 0


def _run_groups_bench(args, with_sklearn: bool) -> int:
    """``jaxgmm bench --groups``: ``vmap(fit)`` over 1,000 small 1-D data sets."""
    from jaxgmm._src import bench_groups

    record = bench_groups.run_groups_benchmark(
        dtype=args.dtype[0], repeats=args.repeats, with_sklearn=with_sklearn
    )
    print(bench_groups.format_groups_benchmark(record))
    if args.json:
        _write_json(args.json, record)
    return 0


def _run_suite(args, with_sklearn: bool, quiet: bool) -> int:
    """``jaxgmm bench --suite``: every library on the suite's shapes, each in its own process."""
    from jaxgmm._src import bench_suite

    options = {}
    if args.explicit_shape:
        options["shapes"] = tuple(tuple(int(v) for v in s.split(",")) for s in args.shape)

    def progress(row):
        if not quiet:
            print(f"  measured {row}", file=sys.stderr)

    rows = bench_suite.run_suite(
        covariance_types=tuple(args.covariance_type),
        dtypes=tuple(args.dtype),
        repeats=args.repeats,
        libraries=None if with_sklearn else ["jaxgmm"],
        progress=progress,
        **options,
    )
    print(bench_suite.format_suite_table(rows))
    if args.json:
        bench_suite.write_suite_json(args.json, rows)
        print(f"wrote {args.json}")
    if args.figure:
        bench_suite.plot_suite(rows, args.figure)
        print(f"wrote {args.figure}")
    return 0


# ---------------------------------------------------------------------------------------------
# The parser.


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``jaxgmm fit: error: ... (see jaxgmm fit --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxgmm`` command (one subparser per subcommand)."""
    common = _Parser(add_help=False)
    common.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    common.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the persistent compilation cache (as JAXGMM_CACHE_DIR= empty does)",
    )

    data_options = _Parser(add_help=False)
    data_options.add_argument(
        "--format",
        choices=["auto", "csv", "npy", "npz", "idx"],
        default="auto",
        help="file format of DATA (default: auto, from the name and the first bytes)",
    )

    saved_model = _Parser(add_help=False)  # commands that read a model file
    saved_model.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default=None,
        help="computation dtype (default: the model's)",
    )

    parser = _Parser(
        prog="jaxgmm",
        description="Gaussian mixture models fitted by EM, in JAX.",
        epilog="Compiled programs are cached in $JAXGMM_CACHE_DIR (default "
        "$XDG_CACHE_HOME/jaxgmm or ~/.cache/jaxgmm); set it empty to disable the cache. "
        "Run 'jaxgmm COMMAND --help' for the options of a command.",
    )
    from jaxgmm import __version__

    parser.add_argument("--version", action="version", version=f"jaxgmm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = sub.add_parser(
        "fit",
        parents=[common, data_options],
        help="fit a mixture to a data file and save it",
        description="Fit a Gaussian mixture by EM to the rows of DATA (CSV with or without a "
        "header, .npy, .npz or MNIST IDX), print a summary and save the model "
        "(an .npz file for 'jaxgmm predict' or jaxgmm.load).",
    )
    fit.add_argument("data", metavar="DATA", help="data file, one sample per row")
    fit.add_argument(
        "-k",
        "--components",
        type=_positive_int,
        required=True,
        metavar="K",
        help="number of components (required)",
    )
    fit.add_argument(
        "--covariance-type",
        choices=COVARIANCE_TYPES,
        default="full",
        metavar="TYPE",
        help="full, diag, spherical or tied (default: full)",
    )
    fit.add_argument(
        "--init",
        choices=INIT_METHODS,
        default="kmeans++",
        metavar="METHOD",
        help="kmeans++, kmeans, random or random_from_data (default: kmeans++)",
    )
    fit.add_argument(
        "--n-init",
        type=_positive_int,
        default=1,
        metavar="N",
        help="restarts, run together; the best is kept (default: 1)",
    )
    fit.add_argument(
        "--n-candidates",
        type=_positive_int,
        default=None,
        metavar="C",
        help="screen C >= N starts with short EM runs and run the N best to convergence "
        "(default: no screening)",
    )
    fit.add_argument(
        "--max-iter",
        type=_positive_int,
        default=100,
        metavar="N",
        help="most EM iterations (default: 100)",
    )
    fit.add_argument(
        "--tol",
        type=_non_negative_float,
        default=1e-3,
        metavar="TOL",
        help="stop when the mean log-likelihood per sample changes by less (default: 1e-3)",
    )
    fit.add_argument(
        "--reg-covar",
        type=_non_negative_float,
        default=1e-6,
        metavar="EPS",
        help="added to the covariance diagonals (default: 1e-6)",
    )
    fit.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    fit.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="computation dtype (default: float64)",
    )
    fit.add_argument(
        "-o",
        "--output",
        metavar="MODEL",
        help="where to save the model (default: DATA's name + .gmm.npz, in the current folder)",
    )
    fit.set_defaults(parser=fit, func=_cmd_fit)

    predict = sub.add_parser(
        "predict",
        parents=[common, data_options, saved_model],
        help="labels or probabilities from a saved model",
        description="Assign the rows of DATA to the components of MODEL (saved by 'jaxgmm "
        "fit'): the most probable component of each row, with --proba the "
        "probability of every component, or with --log-prob the log-density of each row. "
        "Writes CSV with a header line.",
    )
    predict.add_argument("model", metavar="MODEL", help="model file from 'jaxgmm fit'")
    predict.add_argument("data", metavar="DATA", help="data file, one sample per row")
    predict.add_argument(
        "-o", "--output", metavar="OUT.csv", help="output file (default: standard output)"
    )
    written = predict.add_mutually_exclusive_group()
    written.add_argument(
        "--proba", action="store_true", help="write the K component probabilities of every row"
    )
    written.add_argument(
        "--log-prob", action="store_true", help="write the log-density log p(x) of every row"
    )
    predict.set_defaults(parser=predict, func=_cmd_predict)

    adapt = sub.add_parser(
        "adapt",
        parents=[common, data_options, saved_model],
        help="adapt a saved model (a background model) to new data",
        description="MAP adaptation of MODEL (a background mixture saved by 'jaxgmm fit') to "
        "the rows of DATA, as in speaker verification (jaxgmm.map_adapt): every component "
        "keeps its parameters as a prior worth --relevance samples and moves towards the "
        "samples it is responsible for. Prints each component's share of the samples and "
        "how far its mean moved, and saves the adapted model.",
    )
    adapt.add_argument("model", metavar="MODEL", help="background model from 'jaxgmm fit'")
    adapt.add_argument("data", metavar="DATA", help="data file, one sample per row")
    adapt.add_argument(
        "--relevance",
        type=_positive_float,
        default=16.0,
        metavar="R",
        help="samples' worth of the prior per component (default: 16)",
    )
    adapt.add_argument(
        "--adapt",
        action="append",
        choices=["weights", "means", "covariances"],
        metavar="WHAT",
        help="weights, means or covariances; repeatable (default: means)",
    )
    adapt.add_argument(
        "--n-iter",
        type=_positive_int,
        default=1,
        metavar="N",
        help="MAP-EM iterations (default: 1)",
    )
    adapt.add_argument(
        "-o",
        "--output",
        metavar="MODEL",
        help="where to save the adapted model (default: DATA's name + .adapted.gmm.npz)",
    )
    adapt.set_defaults(parser=adapt, func=_cmd_adapt, adapt=None)

    segment = sub.add_parser(
        "segment",
        parents=[common],
        help="colour segmentation of an image",
        description="Segment an image by colour: one Gaussian mixture over the pixels' RGB "
        "values (in [0, 1], optionally with their scaled coordinates); each pixel "
        "is painted with its component's mean colour. With --k-range, K is chosen "
        "by BIC (scored on --selection-pixels random pixels). Writes the "
        "segmented image and a figure: original | segments | uncertainty.",
    )
    segment.add_argument("image", metavar="IMAGE", help="image file (PNG, JPEG, ...)")
    choice = segment.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "-k", "--components", type=_positive_int, metavar="K", help="number of segments"
    )
    choice.add_argument(
        "--k-range", type=_k_range, metavar="A..B", help="choose K in A..B (inclusive) by BIC"
    )
    segment.add_argument(
        "-o",
        "--output",
        metavar="OUT.png",
        help="segmented image (default: IMAGE's name + -segmented.png, in the current folder)",
    )
    segment.add_argument(
        "--figure",
        metavar="FIG.png",
        help="side-by-side figure (default: OUT's name + -figure.png)",
    )
    segment.add_argument("--no-figure", action="store_true", help="skip the figure")
    segment.add_argument(
        "--spatial-weight",
        type=_non_negative_float,
        default=0.0,
        metavar="W",
        help="weight of the pixel coordinates appended to the colours (default: 0, colour "
        "only; 1 puts the coordinates on the colours' [0, 1] scale)",
    )
    segment.add_argument(
        "--covariance-type",
        choices=COVARIANCE_TYPES,
        default="full",
        metavar="TYPE",
        help="full, diag, spherical or tied (default: full)",
    )
    segment.add_argument(
        "--n-init", type=_positive_int, default=1, metavar="N", help="restarts (default: 1)"
    )
    segment.add_argument(
        "--max-iter",
        type=_positive_int,
        default=100,
        metavar="N",
        help="most EM iterations (default: 100)",
    )
    segment.add_argument(
        "--selection-pixels",
        type=_positive_int,
        default=20000,
        metavar="N",
        help="random pixels scored for each K when choosing K by BIC (default: 20000)",
    )
    segment.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    segment.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="computation dtype (default: float32)",
    )
    segment.set_defaults(parser=segment, func=_cmd_segment)

    select = sub.add_parser(
        "select",
        parents=[common, data_options],
        help="choose K and the covariance type by BIC, AIC or ICL",
        description="Fit every (K, covariance type) to DATA, all K of one type in one compiled "
        "program, print the table of log-likelihood, parameters, BIC, AIC and ICL (lower is "
        "better, as scikit-learn; R's mclust reports BIC with the opposite sign) with the best "
        "cell marked, and optionally save the best model and a BIC-curve figure.",
    )
    select.add_argument("data", metavar="DATA", help="data file, one sample per row")
    select.add_argument(
        "--k-range",
        type=_k_range,
        default=list(range(1, 11)),
        metavar="A..B",
        help="numbers of components to try (default: 1..10)",
    )
    select.add_argument(
        "--covariance-type",
        action="append",
        choices=COVARIANCE_TYPES,
        metavar="TYPE",
        help="repeatable; default all four",
    )
    select.add_argument(
        "--criterion",
        choices=["bic", "aic", "icl"],
        default="bic",
        help="the criterion that chooses the model (default: bic)",
    )
    select.add_argument(
        "--n-init",
        type=_positive_int,
        default=5,
        metavar="N",
        help="restarts per cell (default: 5)",
    )
    select.add_argument(
        "--max-iter",
        type=_positive_int,
        default=100,
        metavar="N",
        help="most EM iterations per fit (default: 100)",
    )
    select.add_argument("--seed", type=_seed, default=0, help="random seed (default: 0)")
    select.add_argument(
        "--dtype",
        choices=["float64", "float32"],
        default="float64",
        help="computation dtype (default: float64)",
    )
    select.add_argument("-o", "--output", metavar="MODEL", help="save the best model here")
    select.add_argument(
        "--figure", metavar="PNG", help="write the curves of the --criterion here (PNG)"
    )
    select.set_defaults(parser=select, func=_cmd_select, covariance_type=None)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run the demonstration and write a report with figures",
        description="Cluster scikit-learn's 8x8 digits (against k-means and scikit-learn's "
        "GaussianMixture), segment two sample photographs with K chosen by BIC, "
        "fit a 1-D density and 2-D ellipses; write README.md with the numbers and "
        "PNG figures to DIR. Uses only data bundled with scikit-learn (no "
        f"download); needs the examples extra: {EXAMPLES_HINT}.",
    )
    demo.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        default="jaxgmm-demo",
        help="output folder (default: jaxgmm-demo)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a much smaller run (one seed, fewer restarts, small images), for testing",
    )
    demo.add_argument("--seed", type=_seed, default=0, help="first random seed (default: 0)")
    demo.set_defaults(parser=demo, func=_cmd_demo)

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="time per EM iteration of jaxgmm against scikit-learn",
        description="Time per EM iteration, measured after compilation, of jaxgmm and "
        "scikit-learn started from the same parameters, and their ratio.",
    )
    bench.add_argument(
        "--shape",
        action="append",
        type=_shape,
        metavar="N,D,K",
        help="problem size (repeatable; default 100000,16,16)",
    )
    bench.add_argument(
        "--covariance-type",
        action="append",
        choices=COVARIANCE_TYPES,
        help="repeatable; default full and diag",
    )
    bench.add_argument(
        "--dtype",
        action="append",
        choices=["float64", "float32"],
        help="repeatable; default both",
    )
    bench.add_argument(
        "--repeats", type=_positive_int, default=3, help="timing repeats (best is kept)"
    )
    bench.add_argument("--no-sklearn", action="store_true", help="measure jaxgmm alone")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument(
        "--suite",
        action="store_true",
        help="the full suite: shapes (20k,2,5) (100k,16,16) (100k,64,32) (1M,8,8), restarts, "
        "compile time, time to convergence, peak memory, against scikit-learn and gmmx / "
        "pomegranate when installed (takes tens of minutes)",
    )
    bench.add_argument("--figure", metavar="PNG", help="with --suite: write a figure")
    bench.add_argument(
        "--select",
        action="store_true",
        help="time jaxgmm select over K = 1..10 x 4 covariance types on 10,000 x 8 data "
        "against loops of jaxgmm fits and of scikit-learn fits (one thread); first --dtype "
        "(default float64)",
    )
    bench.add_argument(
        "--groups",
        action="store_true",
        help="time vmap(fit) over 1,000 groups of 500 1-D samples (K = 3) against loops of "
        "single jaxgmm and scikit-learn fits; first --dtype (default float32)",
    )
    bench.set_defaults(parser=bench, func=_cmd_bench, shape=None, covariance_type=None, dtype=None)
    return parser


def _fill_defaults(args) -> None:
    """Defaults of the repeatable options, and each repeated value once."""

    def once(values):
        return list(dict.fromkeys(values))

    if args.command == "bench":
        args.explicit_shape = bool(args.shape)
        args.shape = once(args.shape or ["100000,16,16"])
        args.covariance_type = once(args.covariance_type or ["full", "diag"])
        default_dtypes = ["float32"] if args.groups else ["float64", "float32"]
        args.dtype = once(args.dtype or default_dtypes)
    if args.command == "select":
        args.covariance_type = once(args.covariance_type or COVARIANCE_TYPES)
    if args.command == "adapt":
        args.adapt = once(args.adapt or ["means"])


def _show_warning(command: str):
    """``warnings.showwarning`` for the command line: one line naming the command, with the
    command's option in place of advice for Python code."""

    def show(message, category, filename, lineno, file=None, line=None):
        from jaxgmm._src.rounding import FLOAT64_ADVICE

        _end_progress()
        advice = "" if command == "demo" else "Use --dtype float64 for accurate parameters."
        text = str(message).replace(FLOAT64_ADVICE, advice).rstrip()
        print(f"jaxgmm {command}: warning: {text}", file=sys.stderr)

    return show


def main(argv=None) -> int:
    """Entry point of the ``jaxgmm`` console script; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the subcommand, whose help lists its options
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _fill_defaults(args)
    try:
        from jaxgmm._src import runtime

        runtime.configure(use_cache=not args.no_cache)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning(args.command)
            return args.func(args)
    except UserError as error:
        print(f"jaxgmm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_progress()
        print(f"jaxgmm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `jaxgmm predict ... | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
