"""Process-wide JAX settings for the command line: float64 and the persistent compilation
cache (so a second ``jaxgmm`` invocation loads compiled programs instead of compiling them)."""

from __future__ import annotations

import os

CACHE_ENV = "JAXGMM_CACHE_DIR"


def cache_dir(environ=None) -> str | None:
    """The compilation cache folder: ``$JAXGMM_CACHE_DIR`` when set (empty: no cache), else
    ``$XDG_CACHE_HOME/jaxgmm``, else ``~/.cache/jaxgmm``."""
    environ = os.environ if environ is None else environ
    if CACHE_ENV in environ:
        return environ[CACHE_ENV] or None
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxgmm")


def enable_compilation_cache(path: str) -> bool:
    """Store compiled programs in ``path`` (created if needed) and reuse them across
    processes. Returns False, changing nothing, when the folder cannot be created."""
    import jax

    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    if not os.access(path, os.W_OK):
        return False
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every compiled program, however quick to compile or small: the command line runs
    # the same few programs again and again, and loading one costs milliseconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return True


def configure(*, use_cache: bool = True) -> str | None:
    """float64 on, and the persistent compilation cache unless disabled. Returns the cache
    folder in use (None when off)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    if not use_cache:
        return None
    path = cache_dir()
    if path is None or not enable_compilation_cache(path):
        return None
    return path
