"""Orbax checkpointing: train state + Grain iterator state, async, keep the last N and the best K.

Layout: <workdir>/checkpoints/<step>/{state, data} (Orbax `CheckpointManager`, items "state" via StandardSave and
"data" via Grain's handler) and <workdir>/config.json (the resolved config). Saves are atomic (Orbax writes to a
temporary directory and renames), so a SIGKILL during a save leaves the previous checkpoint intact.

Restores go through an abstract state carrying the *current* mesh's shardings, so a checkpoint written on N devices
restores onto M (Orbax "change sharding": the target sharding must be given). The Grain iterator state is per process
and is restored only when the process count is unchanged (data may be skipped with `restore_data=False`).
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

logger = logging.getLogger("vmamba_jax.train")


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 2, keep_best: int = 1, best_metric: str = "top1",
                 async_save: bool = True):
        policies = [ocp.checkpoint_managers.LatestN(keep)]
        if keep_best:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[best_metric], n=keep_best, keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, create=True)
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._last_saved = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state, data_iterator=None, metrics: dict | None = None) -> bool:
        """Saves (async) unless this step is already saved: a SIGTERM that lands on an epoch's last step asks again
        for the step the epoch-end checkpoint just saved, which Orbax would refuse (StepAlreadyExistsError)."""
        if int(step) in (self._last_saved, self.manager.latest_step()):
            return False
        self._last_saved = int(step)
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=True)

    def restore(self, abstract_state, data_iterator=None, step: int | None = None):
        """abstract_state: pytree of jax.ShapeDtypeStruct with target shardings. Returns (state, step) or (None, None)."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None, None
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(abstract_state, shardings):
    """ShapeDtypeStructs carrying the target shardings (what Orbax restores onto)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
