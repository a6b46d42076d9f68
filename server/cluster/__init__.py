"""Scale-out: one server's queue run by a pool of Ray actors, one per GPU (or CPU slot).

The server stays the single source of truth (its SQLite queue and history, its folders); each
worker actor (actor.py) keeps its own loaded models and cache warm, and streams a job's events,
outputs and files back. The router (router.py) picks the worker by cache and model affinity;
pool.py dispatches and survives workers that die; connect.py starts or joins Ray. Nothing here
imports Ray unless the server is started with `--ray`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterConfig:
    address: str
    """"local" starts a Ray cluster on this machine; anything else is joined (host:port)."""
    workers: int = 1
    worker_gpus: float | None = None
    """GPUs per worker (a fraction packs workers on one GPU); None: 1 if the cluster has GPUs,
    else 0 (CPU workers)."""
    local_gpus: int | None = None
    """Logical GPUs a local cluster declares (tests on CPU machines); None: detected."""
    node_packages: tuple[str, ...] = ()
    default_nodes: bool = True


class ClusterError(RuntimeError):
    """The cluster cannot be started or joined as asked (shown to the user as it is)."""
