"""Sharded and multi-process EM equal the single-device fit (float64, 1e-10 relative).

Each scenario runs in a subprocess: the virtual device count and jax.distributed must be set
before JAX starts, which this test process has already done."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxgmm

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 300


def _load_worker():
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    worker = _load_worker()
    result = jaxgmm.fit(jax.random.key(0), worker.make_data(), 3, max_iter=25, tol=0.0)
    return worker.summarise(result)


@pytest.fixture(scope="module")
def screened_reference():
    worker = _load_worker()
    result = jaxgmm.fit(
        jax.random.key(0), worker.make_data(), 3, max_iter=25, tol=0.0, **worker.SCREENED
    )
    return worker.summarise(result)


def _assert_same_fit(got, expected):
    # Only the order of floating-point additions differs (per-device partial sums).
    np.testing.assert_allclose(got["log_likelihood"], expected["log_likelihood"], rtol=1e-10)
    for name in ("weights", "means", "covariances"):
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, atol=1e-12)
    assert got["n_iter"] == expected["n_iter"]


def _environment(**extra):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def test_fit_on_eight_sharded_devices(tmp_path, reference, screened_reference):
    out = tmp_path / "devices.json"
    env = _environment(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    subprocess.run(
        [sys.executable, str(WORKER), "devices", str(out)], env=env, check=True, timeout=TIMEOUT
    )
    report = json.loads(out.read_text())
    assert report["n_devices"] == 8 and report["shards"] == 8
    _assert_same_fit(report["sharded"], reference)
    _assert_same_fit(report["sharded_chunked"], reference)
    _assert_same_fit(report["sharded_screened"], screened_reference)
    assert report["full_size_gathers"] == 0


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fit_across_two_processes(tmp_path, reference):
    port = _free_port()
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "process", str(i), "2", str(port), str(outs[i])],
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=TIMEOUT)[0].decode(errors="replace"))
        finally:
            proc.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    for out in outs:
        report = json.loads(out.read_text())
        assert report["process_count"] == 2
        _assert_same_fit(report, reference)
