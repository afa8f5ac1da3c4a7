"""Run by tests/runtime/test_ray_cluster.py in its own process: a two-node local Ray cluster, and a simulation across it."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fl.ray_runtime import RayPool, init_ray, ray_object_channel  # first: keeps the cluster on 127.0.0.1
from fl.scenario import build_data, build_model_fn
from fl.simulation import run_simulation
from fl.worker import WorkerSetup
from tests.conftest import small_config

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402


def main(out_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    init_ray(cluster.address)
    config = small_config(Path(out_dir), 'runtime.backend="ray"', f'runtime.address="{cluster.address}"',
                          "runtime.num_workers=2")
    data = build_data(config.data, config.seed)
    pool = RayPool(WorkerSetup(build_model_fn(config.model, data), data, config.client, None, "cpu"),
                   ray_object_channel().endpoint(), num_workers=2)
    print("nodes", len(set(pool.node_ids())))
    pool.close()
    on_cluster = run_simulation(config, write=False, show_progress=False).global_params
    config.runtime.backend, config.runtime.address = "local", ""
    in_process = run_simulation(config, write=False, show_progress=False).global_params
    print("identical", torch.equal(on_cluster, in_process))
    ray.shutdown()  # the driver leaves before its nodes go
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
