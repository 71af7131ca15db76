"""Devices: multi-host initialisation, the (data, fsdp) mesh, and the shardings of state and batches.

The mesh has a "data" axis and an "fsdp" axis (size 1 unless configured). Batches are split over both axes (FSDP is
data parallelism whose params and optimizer state are also split); with fsdp > 1, each param and optimizer leaf is
split along its largest dimension divisible by the fsdp size (small leaves stay replicated: gathering them costs more
than it saves). Axes are `AxisType.Auto`: classic jit in/out shardings and GSPMD propagation.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

logger = logging.getLogger("vmamba_jax.train")

DATA_AXES = ("data", "fsdp")


def initialize_distributed(cfg) -> None:
    """jax.distributed.initialize: explicit flags if given, else auto-detection on Cloud TPU and Slurm, else single
    process. Must run before anything touches the devices."""
    addr = cfg.get("coordinator_address") if cfg is not None else None
    if addr:
        jax.distributed.initialize(coordinator_address=addr, num_processes=int(cfg.num_processes),
                                   process_id=int(cfg.process_id))
    elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "MEGASCALE_COORDINATOR_ADDRESS")) \
            or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()  # cluster auto-detection (Cloud TPU, Slurm, Kubernetes)
    else:
        return
    logger.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    if len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} does not divide the {len(devices)} devices")
    shape = (len(devices) // fsdp, fsdp)
    auto = (jax.sharding.AxisType.Auto,) * 2
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, DATA_AXES, axis_types=auto)
    return jax.sharding.Mesh(np.asarray(devices).reshape(shape), DATA_AXES, axis_types=auto)


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp_size: int, min_size: int = 2 ** 12) -> P:
    """Largest dim divisible by fsdp_size, for leaves with at least min_size elements; else replicated."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[d] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(abstract_state, mesh, min_size: int = 2 ** 12):
    """NamedShardings for a pytree of ShapeDtypeStructs (the shape rule makes AdamW's mu/nu follow their params)."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size, min_size)), abstract_state)


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
    """Per-host numpy batch -> global jax.Arrays (each host contributes its contiguous block of the batch)."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
