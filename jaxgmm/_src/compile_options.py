"""Cheaper XLA compilation on CPU for programs that run briefly.

On CPU, XLA compiles a whole EM fit (initialisation, ``while_loop``, restarts) in a few
seconds, most of it in code generation, while a small fit runs in milliseconds. Two per-program
compiler options (they change no global state) cut the compile time:

* ``xla_cpu_use_fusion_emitters=False``: the older fused-loop emitters, about a third faster to
  compile with the same run time;
* ``xla_backend_optimization_level=0`` on top: LLVM without optimisation passes, several times
  faster to compile, with loops about three times slower: worth it when the run is short.

Results are the same arithmetic (the HLO program is unchanged); the options are used only on
the CPU backend, and a JAX/XLA that does not know them falls back to the default compilation.
"""

from __future__ import annotations

import jax

PROFILES = {
    "default": None,
    "fast": {"xla_cpu_use_fusion_emitters": False},
    "cheap": {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0},
}


def em_work(n_rows: int, n_components: int, width: int, batch: int = 1) -> int:
    """A size measure of one EM iteration: ``N * K * (P + 16)`` (the two products with the
    ``P``-column feature matrix plus the element-wise work per responsibility) per fit in a
    batch of ``batch`` fits."""
    return int(n_rows) * int(n_components) * (int(width) + 16) * int(batch)


def persistent_cache_enabled() -> bool:
    """Whether JAX's persistent compilation cache is on (``jax_compilation_cache_dir`` set, as
    the ``jaxgmm`` command line does): a program is then compiled once per machine."""
    return bool(jax.config.jax_compilation_cache_dir)


def profile_for(work: float, *, cheap_below: float = 1e8) -> str:
    """The compile profile for a program of size ``work`` (``em_work``).

    ``"default"`` off CPU. On CPU, ``"fast"`` when the persistent compilation cache is on
    (compilation is paid once, every later run profits from optimised loops); otherwise
    ``"cheap"`` when the unoptimised loop still runs in well under a second on a CPU core
    (about 100 ms per 100 iterations at ``work = 1e7``), else ``"fast"``.
    """
    if jax.default_backend() != "cpu":
        return "default"
    if persistent_cache_enabled():
        return "fast"
    return "cheap" if work <= cheap_below else "fast"


class TunedJit:
    """``jax.jit(fun)`` with one compiled variant per compile profile.

    Call as ``tuned(*args, profile="cheap", **kwargs)``. Inside a trace (another ``jit`` or
    ``vmap``) use ``tuned.fun`` instead: an inner jit's compiler options do not apply.
    """

    def __init__(self, fun, static_argnames=()):
        self.fun = fun
        self._jits = {}
        for name, options in PROFILES.items():
            try:
                jitted = jax.jit(fun, static_argnames=static_argnames, compiler_options=options)
            except TypeError:  # a JAX without per-program compiler options
                jitted = jax.jit(fun, static_argnames=static_argnames)
            self._jits[name] = jitted
        self._unsupported = set()

    def __call__(self, *args, profile: str = "default", **kwargs):
        if profile in self._unsupported or jax.default_backend() != "cpu":
            profile = "default"
        try:
            return self._jits[profile](*args, **kwargs)
        except jax.errors.JaxRuntimeError as error:
            if profile == "default" or "compile option" not in str(error):
                raise
            self._unsupported.add(profile)
            return self._jits["default"](*args, **kwargs)

    def _cache_size(self) -> int:
        """Compiled programs held, over all profiles."""
        return sum(jitted._cache_size() for jitted in self._jits.values())
