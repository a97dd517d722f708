"""The ``jaxgmm`` command line."""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A mistake by the user (bad file, bad option): printed as one line, exit status 2."""


def _enable_x64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


def _cmd_bench(args) -> int:
    _enable_x64()
    from jaxgmm._src import benchmark

    shapes = tuple(tuple(int(v) for v in s.split(",")) for s in args.shape)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxgmm", description="Gaussian mixture models fitted by EM, in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser(
        "bench",
        help="time per EM iteration of jaxgmm against scikit-learn",
        description="Time per EM iteration, measured after compilation, of jaxgmm and "
        "scikit-learn started from the same parameters, and their ratio.",
    )
    bench.add_argument(
        "--shape",
        action="append",
        metavar="N,D,K",
        help="problem size (repeatable; default 100000,16,16)",
    )
    bench.add_argument(
        "--covariance-type",
        action="append",
        choices=["full", "diag", "spherical", "tied"],
        help="repeatable; default full and diag",
    )
    bench.add_argument(
        "--dtype", action="append", choices=["float64", "float32"], help="repeatable; default both"
    )
    bench.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    bench.add_argument("--no-sklearn", action="store_true", help="measure jaxgmm alone")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress lines")
    bench.set_defaults(func=_cmd_bench, shape=None, covariance_type=None, dtype=None)
    return parser


def _fill_defaults(args) -> None:
    if args.command == "bench":
        args.shape = args.shape or ["100000,16,16"]
        args.covariance_type = args.covariance_type or ["full", "diag"]
        args.dtype = args.dtype or ["float64", "float32"]


def main(argv=None) -> int:
    """Entry point of the ``jaxgmm`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _fill_defaults(args)
    try:
        return args.func(args)
    except UserError as error:
        print(f"jaxgmm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
