"""Starting or joining Ray as `--ray` asks, with Ray's token authentication on, and the options
each worker actor is created with (its GPUs, restarts, threads)."""

from __future__ import annotations

import os
from typing import Any

from . import ClusterConfig, ClusterError

NAMESPACE = "nodegraph"
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
"""A local cluster's shared-memory object store (jobs and pictures pass through it)."""


def connect(config: ClusterConfig) -> bool:
    """Start (`local`) or join Ray; whether this process started it. Refuses a cluster without
    token authentication, and more workers than its GPUs (or CPUs) can hold: an actor asking
    for a GPU that is not free would wait forever."""
    import ray

    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        raise ClusterError(
            "RAY_AUTH_MODE=disabled: nodegraph's cluster runs only with Ray's token "
            "authentication (unset it, or set RAY_AUTH_MODE=token)"
        )
    started = False
    if not ray.is_initialized():
        cpus = os.cpu_count() or 1
        try:
            if config.address == "local":  # address="local": never an older cluster here
                ray.init(
                    address="local", num_gpus=config.local_gpus, num_cpus=max(cpus, config.workers),
                    include_dashboard=False, log_to_driver=False, namespace=NAMESPACE,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                )  # fmt: skip
                started = True
            else:
                ray.init(address=config.address, log_to_driver=False, namespace=NAMESPACE)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(
                f"cannot join the Ray cluster at {config.address}: {exc} (a cluster started "
                "with `ray start --head` needs RAY_AUTH_MODE=token and its token in "
                "RAY_AUTH_TOKEN or ~/.ray/auth_token here)"
            ) from None
    try:
        check_room(config, ray.cluster_resources())
    except ClusterError:
        if started:
            ray.shutdown()
        raise
    return started


def gpus_per_worker(config: ClusterConfig, resources: dict[str, float]) -> float:
    if config.worker_gpus is not None:
        return config.worker_gpus
    return 1.0 if resources.get("GPU", 0) >= 1 else 0.0


def check_room(config: ClusterConfig, resources: dict[str, float]) -> None:
    per = gpus_per_worker(config, resources)
    if per < 0:
        raise ClusterError("--worker-gpus cannot be negative")
    if per > 0:
        total = resources.get("GPU", 0.0)
        if per * config.workers > total + 1e-9:
            raise ClusterError(
                f"--workers {config.workers} with --worker-gpus {per:g} needs "
                f"{per * config.workers:g} GPUs; the cluster has {total:g}"
            )
    elif config.workers > resources.get("CPU", 0.0):
        raise ClusterError(
            f"--workers {config.workers} CPU workers need {config.workers} CPUs; the cluster "
            f"has {resources.get('CPU', 0.0):g}"
        )


def worker_options(config: ClusterConfig) -> dict[str, Any]:
    """Ray options of each worker actor: its GPUs (Ray sets its CUDA_VISIBLE_DEVICES), one
    CPU slot when it has none, restarted cold whenever it dies, reports and interrupts served
    while it runs a job."""
    import ray

    per = gpus_per_worker(config, ray.cluster_resources())
    return {
        "num_gpus": per,
        "num_cpus": 0 if per > 0 else 1,
        "max_restarts": -1,
        "max_task_retries": 0,
        "max_concurrency": 4,
    }
