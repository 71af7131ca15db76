"""The training loop: config -> data, model, sharded state, resume, train/eval, checkpoints, logs, summary.

Entry points: `train_and_evaluate(config, workdir)` (what train.py calls) and `evaluate_checkpoint(config, workdir)`
(restore the latest/best checkpoint onto whatever devices are present and evaluate raw and EMA weights).
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from vmamba_jax.data import (ArrayRecordSource, EvalTransform, ImageFolderSource, TfdsSource, TrainTransform,
                             check_classes, decode_in_memory, digits_source, eval_dataset, train_dataset)
from vmamba_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from vmamba_jax.train.compile_cache import use_compilation_cache
from vmamba_jax.train.mesh import (batch_sharding, global_batch, initialize_distributed, make_mesh,
                                   state_shardings)
from vmamba_jax.train.metrics import MetricWriter
from vmamba_jax.train.optimizer import make_optimizer
from vmamba_jax.train.state import create_train_state
from vmamba_jax.train.steps import make_eval_step, make_train_step

logger = logging.getLogger("vmamba_jax.train")


# ---------------------------------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------------------------------

def build_sources(data_cfg):
    """(train source, eval source) from config.data; raises on empty data or a class mismatch."""
    kind = data_cfg.kind
    if kind == "digits":
        size = host_image_size(data_cfg)
        train, ev = digits_source("train", size), digits_source("test", size)
    elif kind == "imagefolder":
        train = ImageFolderSource(os.path.join(data_cfg.root, data_cfg.train_split))
        ev = ImageFolderSource(os.path.join(data_cfg.root, data_cfg.eval_split))
    elif kind == "arrayrecord":
        train, ev = (ArrayRecordSource(data_cfg.root, data_cfg.train_split),
                     ArrayRecordSource(data_cfg.root, data_cfg.eval_split))
    elif kind == "tfds":
        train = TfdsSource(data_cfg.tfds_name, data_cfg.train_split, data_cfg.root)
        ev = TfdsSource(data_cfg.tfds_name, data_cfg.eval_split, data_cfg.root)
    else:
        raise ValueError(f"config.data.kind={kind!r}; choose digits, imagefolder, arrayrecord or tfds")
    check_classes(train, ev)
    return train, ev


def host_image_size(data_cfg) -> int:
    """The side the host pipeline emits: config.data.augment_size when set (the steps then resize to image_size on
    the device, vmamba_jax/data/device_resize.py), else image_size."""
    size = data_cfg.get("augment_size") or data_cfg.image_size
    if size > data_cfg.image_size:
        raise ValueError(f"config.data.augment_size={size} > image_size={data_cfg.image_size}: augment at the model's "
                         "size or below (the device resize is for upsampling small images)")
    return int(size)


def build_transforms(cfg):
    a, d = cfg.aug, cfg.data
    rrc = tuple(a.rrc_scale) if a.rrc_scale else None
    size = host_image_size(d)
    train = TrainTransform(size=size, rrc_scale=rrc, crop_padding=a.crop_padding, hflip=a.hflip,
                           randaugment=a.randaugment or "", reprob=a.reprob, mean=tuple(d.mean), std=tuple(d.std))
    ev = EvalTransform(size=size, crop_pct=a.crop_pct, mean=tuple(d.mean), std=tuple(d.std))
    return train, ev


def build_model(cfg, num_classes: int):
    from vmamba_jax.models import create_model

    kwargs = dict(cfg.model.kwargs)
    kwargs.update(num_classes=num_classes, dtype=jnp.dtype(cfg.dtype), use_checkpoint=bool(cfg.remat),
                  scan_implementation=cfg.scan_implementation or None)
    if cfg.get("scan_blocks"):  # a VSSM field: passed only when on
        kwargs["scan_blocks"] = True
    return create_model(cfg.model.name, **kwargs)


class _Run:
    """Everything derived from the config that both training and evaluation need."""

    def __init__(self, cfg, workdir: str):
        initialize_distributed(cfg.get("distributed"))
        self.cfg = cfg
        self.mesh = make_mesh(cfg.mesh.fsdp)
        self.train_src, self.eval_src = build_sources(cfg.data)
        if cfg.data.get("cache_train_mib"):
            cached = decode_in_memory(self.train_src, cfg.data.cache_train_mib)
            logger.info("train set %s", "decoded into host memory" if cached is not None else
                        f"not cached: over config.data.cache_train_mib={cfg.data.cache_train_mib} or mixed shapes")
            self.train_src = cached if cached is not None else self.train_src
        self.num_classes = cfg.model.get("num_classes") or len(self.train_src.classes)
        if self.num_classes < len(self.train_src.classes):
            raise ValueError(f"model.num_classes={self.num_classes} < {len(self.train_src.classes)} classes in data")
        self.global_batch = cfg.global_batch
        if self.global_batch % jax.device_count():
            raise ValueError(f"global_batch {self.global_batch} not divisible by {jax.device_count()} devices")
        self.steps_per_epoch = len(self.train_src) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.train_src)} training images < one global batch of {self.global_batch}")
        self.total_steps = int(round(cfg.epochs * self.steps_per_epoch))
        self.model = build_model(cfg, self.num_classes)
        self.train_tf, self.eval_tf = build_transforms(cfg)
        size = cfg.data.image_size
        sample = jnp.zeros((1, size, size, 3), jnp.float32)
        abstract_params = jax.eval_shape(
            lambda: self.model.init({"params": jax.random.PRNGKey(0)}, sample)["params"])
        self.tx, self.schedule = make_optimizer(cfg.optim, abstract_params, global_batch=self.global_batch,
                                                steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps)
        use_ema = cfg.ema_decay > 0
        self.init_fn = lambda rng: create_train_state(self.model, self.tx, rng, sample, ema=use_ema)
        self.abstract_state = jax.eval_shape(self.init_fn, jax.random.PRNGKey(cfg.seed))
        self.state_sharding = state_shardings(self.abstract_state, self.mesh)
        self.batch_sharding = batch_sharding(self.mesh)
        self._eval_cache = None  # see eval_batches
        self._eval_ahead = None  # see prepare_eval_ahead
        self.eval_step = make_eval_step(self.model, params_sharding=self.state_sharding.params,
                                        batch_sharding=self.batch_sharding, mesh=self.mesh, image_size=size)
        self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.checkpoint.keep,
                                         keep_best=cfg.checkpoint.keep_best,
                                         async_save=cfg.checkpoint.async_save)

    def _eval_fits_cache(self, steps: int) -> bool:
        size = host_image_size(self.cfg.data)
        return steps * self.cfg.eval_batch * size * size * 3 * 4 <= self.cfg.data.cache_eval_mib * 2 ** 20

    def eval_batches(self):
        """The eval set as global batches: decoded by Grain, or from the device cache (config.data.cache_eval_mib)
        once one pass has filled it."""
        if self._eval_cache is not None:
            yield from self._eval_cache
            return
        ds, steps = eval_dataset(self.eval_src, self.eval_tf, global_batch=self.cfg.eval_batch,
                                 process_index=jax.process_index(), process_count=jax.process_count(),
                                 worker_count=self.cfg.data.eval_workers, threads=16, prefetch=16)
        cache = [] if self._eval_fits_cache(steps) else None
        for local in ds:
            batch = global_batch(local, self.batch_sharding)
            if cache is not None:
                cache.append(batch)
            yield batch
        self._eval_cache = cache  # only a finished pass is kept

    def prepare_eval_ahead(self, params) -> None:
        """Starts the first evaluation's slow parts in a background thread: decoding the eval set into the device
        cache (when it fits: config.data.cache_eval_mib) and compiling the eval step. They then overlap the train
        step's compile and the first epoch instead of pausing training after it (on an H200 the CIFAR-10 model's
        eval step took ~23 s to compile). XLA compiles without holding the GIL, so training goes on meanwhile."""

        # Shapes and shardings only: the train step donates the parameters it is given.
        params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), params)

        def work(box):
            try:
                batches = self.eval_batches()
                first = next(batches)
                if self._eval_fits_cache(-(-len(self.eval_src) // self.cfg.eval_batch)):
                    for _ in batches:  # the rest of the pass: fills the device cache
                        pass
                else:
                    batches.close()  # a big eval set is decoded at evaluation time, not twice
                box["step"] = self.eval_step.lower(params, first).compile()
            except BaseException as e:  # noqa: BLE001 - re-raised by the evaluation that needs it
                box["error"] = e

        box = {}
        thread = threading.Thread(target=work, args=(box,), name="eval-ahead", daemon=True)
        thread.start()
        self._eval_ahead = (thread, box)

    def _eval_fn(self):
        """The eval step: the one compiled ahead (waiting for it if need be), else the jitted one."""
        if self._eval_ahead is None:
            return self.eval_step
        thread, box = self._eval_ahead
        thread.join()
        if "error" in box:
            self._eval_ahead = None
            raise RuntimeError("preparing the evaluation in the background failed") from box["error"]
        return box["step"]

    def evaluate(self, state) -> dict:
        """top1/top5/loss of raw and (if any) EMA params over the whole eval set."""
        variants = {"": state.params}
        if state.ema_params is not None:
            variants["ema_"] = state.ema_params
        sums = {k: None for k in variants}
        eval_step = self._eval_fn()
        for batch in self.eval_batches():
            for k, p in variants.items():
                out = eval_step(p, batch)
                sums[k] = out if sums[k] is None else jax.tree.map(jnp.add, sums[k], out)
        result = {}
        for k, s in sums.items():
            s = jax.device_get(s)
            n = max(float(s["count"]), 1.0)
            result.update({f"{k}top1": float(100.0 * s["top1"] / n), f"{k}top5": float(100.0 * s["top5"] / n),
                           f"{k}loss": float(s["loss"] / n)})
        result["count"] = float(jax.device_get(sums[""]["count"]))
        return result


def _count_params(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


class _Preemption:
    """SIGTERM (how TPU/Slurm preemption arrives) sets a flag; the loop saves and stops at the next step. With several
    processes, JAX's preemption sync point makes every process stop at the same step."""

    def __init__(self):
        self.flag = False
        self.multi = jax.process_count() > 1
        if not self.multi:
            try:
                signal.signal(signal.SIGTERM, self._handler)
            except ValueError:  # not the main thread (e.g. called from a notebook worker): no handler
                pass

    def _handler(self, signum, frame):
        self.flag = True

    def __call__(self, step: int) -> bool:
        if self.multi:
            from jax.experimental import multihost_utils
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self.flag


# ---------------------------------------------------------------------------------------------------------------------
# Train
# ---------------------------------------------------------------------------------------------------------------------

def train_and_evaluate(cfg, workdir: str) -> dict:
    """Trains `cfg` in `workdir`, resuming from its latest checkpoint if there is one. Returns the summary dict
    (status "done" or "preempted")."""
    t_start = time.time()
    use_compilation_cache(cfg.get("compilation_cache_dir"))  # a restart loads its compiled steps
    run = _Run(cfg, workdir)
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2, sort_keys=True))

    train_ds = train_dataset(run.train_src, run.train_tf, global_batch=run.global_batch, seed=cfg.seed,
                             process_index=jax.process_index(), process_count=jax.process_count(),
                             worker_count=cfg.data.workers)
    train_it = iter(train_ds)
    ckpt = run.checkpointer
    restored, start_step = ckpt.restore(abstract_with_shardings(run.abstract_state, run.state_sharding), train_it)
    if restored is not None:
        state = restored
        _log(is_main, f"resumed from {ckpt.directory}/{start_step} (step {start_step}/{run.total_steps})")
    else:
        state = jax.jit(run.init_fn, out_shardings=run.state_sharding)(jax.random.PRNGKey(cfg.seed))
    step = int(jax.device_get(state.step))
    n_params = _count_params(state.params)
    _log(is_main, f"model {cfg.model.name} ({n_params:,} params, dtype {cfg.dtype}), {len(run.train_src):,} train / "
         f"{len(run.eval_src):,} eval images, {run.num_classes} classes; {jax.device_count()} devices "
         f"({jax.devices()[0].platform}), mesh {dict(run.mesh.shape)}, global batch {run.global_batch}, "
         f"{run.steps_per_epoch} steps/epoch x {cfg.epochs} epochs = {run.total_steps} steps")

    train_step = make_train_step(run.model, run.tx, run.schedule, cfg, num_classes=run.num_classes,
                                 state_sharding=run.state_sharding, batch_sharding=run.batch_sharding, mesh=run.mesh)
    if cfg.data.get("eval_ahead", True) and step < run.total_steps:
        run.prepare_eval_ahead(state.params)
    writer = MetricWriter(workdir, tensorboard=cfg.tensorboard)
    preempted = _Preemption()
    bar = _progress(is_main and cfg.progress_bar, run.total_steps, step)
    history, corrupt_epoch, corrupt_total = [], jnp.zeros((), jnp.int32), 0
    t_log, step_log, img_s, status, start = time.time(), step, float("nan"), "done", step
    eval_every = max(1, int(round(cfg.eval_every_epochs * run.steps_per_epoch)))
    # Where the wall time goes besides the steps (the summary reports them): the first step (compilation), the
    # evaluations, and the blocking part of the checkpoint saves.
    seconds = {"first_step": 0.0, "evaluation": 0.0, "checkpoint": 0.0}
    t_first = time.time()

    def save(**metrics):  # a checkpoint of this step, its blocking part timed
        t_save = time.time()
        ckpt.save(step, state, train_it, **metrics)
        seconds["checkpoint"] += time.time() - t_save

    while step < run.total_steps:
        batch = global_batch(next(train_it), run.batch_sharding)
        state, metrics = train_step(state, batch)
        step += 1
        if step == start + 1:  # img/s excludes compilation: the clock starts once the first step has run
            jax.block_until_ready(metrics)
            t_log, step_log = time.time(), step
            seconds["first_step"] = t_log - t_first
        corrupt_epoch = corrupt_epoch + metrics["corrupt"]
        if step % cfg.log_every_steps == 0 or step == run.total_steps:
            m = jax.device_get(metrics)
            now = time.time()
            img_s = (step - step_log) * run.global_batch / max(now - t_log, 1e-9) if step > step_log else img_s
            t_log, step_log = now, step
            writer.write(step, {"loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"], "img_per_s": img_s,
                                "epoch": step / run.steps_per_epoch}, prefix="train/")
            if bar is not None:
                bar.set_postfix_str(f"loss {float(m['loss']):.4f} lr {float(m['lr']):.2e} {img_s:,.0f} img/s",
                                    refresh=False)
            if not math.isfinite(float(m["loss"])):
                raise FloatingPointError(f"loss is {float(m['loss'])} at step {step}")
        if bar is not None:
            bar.update(1)
        if step % eval_every == 0 or step == run.total_steps:
            t_eval = time.time()
            ev = run.evaluate(state)
            seconds["evaluation"] += time.time() - t_eval
            n_corrupt = int(jax.device_get(corrupt_epoch))
            corrupt_epoch, corrupt_total = jnp.zeros((), jnp.int32), corrupt_total + n_corrupt
            ev_row = {**ev, "corrupt_images": n_corrupt, "epoch": step / run.steps_per_epoch}
            writer.write(step, ev_row, prefix="eval/")
            history.append({"step": step, **ev_row})
            msg = (f"epoch {step / run.steps_per_epoch:.2f} step {step}: top1 {ev['top1']:.2f} top5 {ev['top5']:.2f}"
                   + (f" | EMA top1 {ev['ema_top1']:.2f}" if "ema_top1" in ev else "")
                   + (f" | {n_corrupt} corrupt images skipped" if n_corrupt else ""))
            _log(is_main, msg, bar)
            if len(history) % max(1, cfg.checkpoint.every_evals) == 0 or step == run.total_steps:
                save(metrics={"top1": max(ev["top1"], ev.get("ema_top1", -1.0))})
            t_log, step_log = time.time(), step  # img/s measures training only, not evaluation
        elif cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
            save()
        if preempted(step):
            save()
            status = "preempted"
            _log(is_main, f"SIGTERM: saved checkpoint at step {step}; exiting", bar)
            break
    ckpt.wait()
    if hasattr(train_it, "close"):
        train_it.close()  # stops Grain worker processes
    if bar is not None:
        bar.close()
    writer.close()
    summary = _summary(cfg, run, workdir, history, step, n_params, time.time() - t_start, img_s, corrupt_total,
                       status, seconds)
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        if status == "done":
            print(_format_summary(summary), flush=True)
    ckpt.close()
    return summary


def evaluate_checkpoint(cfg, workdir: str, step: int | None = None) -> dict:
    """Restores a checkpoint of `workdir` onto the current devices/mesh (any count) and evaluates it."""
    use_compilation_cache(cfg.get("compilation_cache_dir"))
    run = _Run(cfg, workdir)
    state, step = run.checkpointer.restore(abstract_with_shardings(run.abstract_state, run.state_sharding),
                                           step=step)
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {run.checkpointer.directory}")
    result = {"step": step, **run.evaluate(state)}
    run.checkpointer.close()
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------

def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5, smoothing=0.1)


def _log(enabled: bool, msg: str, bar=None):
    if not enabled:
        return
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, flush=True)


def _summary(cfg, run, workdir, history, step, n_params, wall_s, img_s, corrupt_total, status, seconds) -> dict:
    best = max(history, key=lambda h: h["top1"]) if history else {}
    best_ema = max(history, key=lambda h: h.get("ema_top1", -1)) if history else {}
    last = history[-1] if history else {}
    return {
        "status": status, "model": cfg.model.name, "params": n_params, "dtype": cfg.dtype,
        "devices": jax.device_count(), "platform": jax.devices()[0].platform, "jax_version": jax.__version__,
        "steps": step, "total_steps": run.total_steps, "epochs": step / run.steps_per_epoch,
        "global_batch": run.global_batch, "wall_minutes": wall_s / 60.0, "img_per_s_last": float(img_s),
        "final_top1": last.get("top1"), "final_top1_ema": last.get("ema_top1"),
        "best_top1": best.get("top1"), "best_top1_step": best.get("step"),
        "best_top1_ema": best_ema.get("ema_top1"), "best_top1_ema_step": best_ema.get("step"),
        "corrupt_images": corrupt_total, "workdir": os.path.abspath(workdir),
        "seconds": {"total": wall_s, **seconds},  # first_step (compilation), evaluation, checkpoint (blocking part)
        "history": [{k: h[k] for k in ("step", "epoch", "top1", "top5", "ema_top1") if k in h} for h in history],
    }


def _format_summary(s: dict) -> str:
    def f(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    lines = [
        "=" * 72,
        f" {s['model']}: {s['params']:,} params, {s['dtype']}, {s['devices']} x {s['platform']}, jax {s['jax_version']}",
        f" {s['steps']} steps ({s['epochs']:.1f} epochs) of {s['global_batch']} images in {s['wall_minutes']:.2f} min"
        f" ({f(s['img_per_s_last'], ',.0f')} img/s at the end)",
        f" test top-1: final {f(s['final_top1'])}  best {f(s['best_top1'])} (step {s['best_top1_step']})",
        f" EMA  top-1: final {f(s['final_top1_ema'])}  best {f(s['best_top1_ema'])} (step {s['best_top1_ema_step']})",
        f" corrupt images skipped: {s['corrupt_images']}",
        f" seconds: first step (compile) {s['seconds']['first_step']:.0f}, evaluations"
        f" {s['seconds']['evaluation']:.0f}, checkpoint saves {s['seconds']['checkpoint']:.0f} of"
        f" {s['seconds']['total']:.0f}",
        f" logs + checkpoints: {s['workdir']}  (metrics.jsonl, tensorboard/, checkpoints/, config.json)",
        "=" * 72,
    ]
    return "\n".join(lines)
