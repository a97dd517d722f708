"""Shared test settings: float64 enabled (float32 tests pass float32 arrays explicitly),
small shapes, and data sets shared across modules so compiled functions are reused."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")

# Every compiled XLA CPU program keeps tens of memory mappings while it is cached; a whole test
# run compiles enough programs to approach Linux's per-process limit (vm.max_map_count, 65530
# by default), where the compiler crashes. Caches are dropped between modules when the count
# passes this mark (compiled functions are still shared across most modules).
_MAP_COUNT_LIMIT = 20_000


def _memory_map_count() -> int:
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs_when_maps_run_high():
    yield
    if _memory_map_count() > _MAP_COUNT_LIMIT:
        jax.clear_caches()


def three_blobs(n_per=60, dim=2, seed=0, spread=5.0):
    """Three Gaussian clusters with different shapes, shape (3 * n_per, dim), float64."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(3, dim))
    scales = [0.5, 1.0, 1.5]
    parts = []
    for c, s in zip(centers, scales):
        a = rng.normal(size=(dim, dim)) * 0.3 + np.eye(dim) * s
        parts.append(c + rng.normal(size=(n_per, dim)) @ a)
    return np.concatenate(parts)


@pytest.fixture(scope="session")
def blobs():
    """(180, 2) float64 data with three clusters."""
    return three_blobs()


@pytest.fixture(scope="session")
def blobs3d():
    """(240, 3) float64 data with three clusters."""
    return three_blobs(n_per=80, dim=3, seed=1)
