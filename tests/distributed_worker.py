"""Run by tests/test_distributed.py in subprocesses (not collected as a test).

Modes:
  devices OUT.json             8 virtual CPU devices: fit on X sharded along samples.
  process PID NPROC PORT OUT   one of NPROC processes (jax.distributed on a loopback
                               coordinator), each holding its own block of rows.
"""

import json
import sys

# Start screening, checked on sharded data too.
SCREENED = dict(n_init=2, n_candidates=6, candidate_iter=3)


def make_data():
    import numpy as np

    rng = np.random.default_rng(0)
    return np.concatenate([rng.normal(0, 1, (400, 3)), rng.normal(5, 1, (400, 3))])


def summarise(result):
    import numpy as np

    return {
        "log_likelihood": float(result.log_likelihood),
        "means": np.asarray(result.params.means).tolist(),
        "covariances": np.asarray(result.params.covariances).tolist(),
        "weights": np.asarray(result.params.weights).tolist(),
        "n_iter": int(result.n_iter),
    }


def devices_mode(out_path):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import jaxgmm
    from jaxgmm._src import fitting
    from jaxgmm._src.chunking import Chunking

    X = make_data()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(X, NamedSharding(mesh, PartitionSpec("data", None)))
    options = dict(max_iter=25, tol=0.0)
    report = {"n_devices": len(jax.devices()), "shards": len(sharded.addressable_shards)}
    report["sharded"] = summarise(jaxgmm.fit(jax.random.key(0), sharded, 3, **options))
    report["sharded_chunked"] = summarise(
        jaxgmm.fit(jax.random.key(0), sharded, 3, chunk_size=30, **options)
    )
    report["sharded_screened"] = summarise(
        jaxgmm.fit(jax.random.key(0), sharded, 3, **SCREENED, **options)
    )
    # Inspect the compiled program: no all-gather may rebuild the whole (N, D) data.
    compiled = (
        fitting._fit_compiled.lower(
            jax.random.key(0),
            sharded,
            jnp.ones(X.shape[0]),
            jnp.asarray(0.0),
            jnp.asarray(1e-6),
            None,
            n_components=3,
            covariance_type="full",
            init="kmeans++",
            n_init=1,
            max_iter=25,
            chunk_size=Chunking(30, len(jax.devices())),
            progress=None,
        )
        .compile()
        .as_text()
    )
    gathers = [line for line in compiled.splitlines() if "all-gather(" in line]
    big = [g for g in gathers if f"[{X.shape[0]},{X.shape[1]}]" in g.split("=")[1]]
    report["full_size_gathers"] = len(big)
    with open(out_path, "w") as handle:
        json.dump(report, handle)


def process_mode(pid, n_processes, port, out_path):
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=n_processes, process_id=pid
    )
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    import jaxgmm

    X = make_data()
    rows = X.shape[0] // n_processes
    local = X[pid * rows : (pid + 1) * rows]  # this process reads only its own rows
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data", None))
    global_X = jax.make_array_from_process_local_data(sharding, local, X.shape)
    result = jaxgmm.fit(jax.random.key(0), global_X, 3, max_iter=25, tol=0.0)
    report = summarise(result)
    report["process_count"] = jax.process_count()
    with open(out_path, "w") as handle:
        json.dump(report, handle)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        devices_mode(sys.argv[2])
    else:
        process_mode(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
