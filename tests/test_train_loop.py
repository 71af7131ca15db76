"""The loop end to end through `python train.py` (tiny VMamba on the embedded digits): resume after SIGKILL gives
the bitwise-identical loss sequence; SIGTERM saves a checkpoint and exits 143; config saved; eval-only restore."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", os.path.join(ROOT, "configs", "digits.py"), "--config.model.kwargs.dims=(8,)",
        "--config.model.kwargs.depths=(1,)", "--config.data.image_size=16", "--config.global_batch=32",
        "--config.eval_batch=120", "--config.log_every_steps=1", "--config.progress_bar=False",
        "--config.ema_decay=0.9"]


def _env(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    # one device: keep the inherited flags (conftest's) but no device count another test may have added
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    return env


def _train(tmp_path, workdir, *extra, **kw):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *TINY, f"--workdir={workdir}", *extra],
                            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _rows(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def _losses(workdir):
    """step -> train loss, the last logged value per step (a resumed run re-logs the steps after its checkpoint)."""
    return {r["step"]: r["train/loss"] for r in _rows(workdir) if "train/loss" in r}


def _finalized_steps(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _wait(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    args = ["--config.epochs=3", "--config.checkpoint.every_steps=10"]  # 44 steps/epoch, 132 steps
    ref_dir, run_dir = str(tmp_path / "ref"), str(tmp_path / "run")
    rc, out = _wait(_train(tmp_path, ref_dir, *args))
    assert rc == 0, out[-3000:]
    ref = _losses(ref_dir)
    assert sorted(ref) == list(range(1, 133))

    proc = _train(tmp_path, run_dir, *args)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if max(_losses(run_dir), default=0) >= 25 and any(s >= 20 for s in _finalized_steps(run_dir)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(run_dir))
    assert 25 <= killed_at < 132 and killed_at % 44, killed_at  # mid-epoch
    rc, out = _wait(_train(tmp_path, run_dir, *args))
    assert rc == 0, out[-3000:]
    assert "resumed from" in out
    got = _losses(run_dir)
    assert sorted(got) == sorted(ref)
    assert got == ref  # bitwise: float equality of every step's loss
    evals = lambda d: [(r["step"], r["eval/top1"], r["eval/ema_top1"]) for r in _rows(d) if "eval/top1" in r]
    assert evals(run_dir)[-1] == evals(ref_dir)[-1]
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(run_dir, "tensorboard")))
    with open(os.path.join(run_dir, "config.json")) as f:
        assert json.load(f)["model"]["kwargs"]["dims"] == [8]


@pytest.mark.slow
def test_sigterm_saves_then_exits_and_eval_only_restores(tmp_path):
    run_dir = str(tmp_path / "term")
    proc = _train(tmp_path, run_dir, "--config.epochs=3", "--config.checkpoint.every_steps=0")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and max(_losses(run_dir), default=0) < 5:
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    rc, out = _wait(proc)
    assert rc == 143, out[-3000:]
    assert "SIGTERM: saved checkpoint" in out
    last = max(_losses(run_dir))
    assert _finalized_steps(run_dir)[-1] == last and last < 132
    # eval-only: restores the checkpoint onto this process's devices and evaluates raw and EMA weights
    res = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *TINY, "--config.epochs=3",
                          f"--workdir={run_dir}", "--eval_only"], env=_env(tmp_path), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    result = json.loads(res.stdout[res.stdout.index("{"):])
    assert result["step"] == last and result["count"] == 360 and 0 <= result["top1"] <= 100 and "ema_top1" in result


@pytest.mark.slow
def test_checkpoints_every_nth_evaluation_and_the_last_step(tmp_path):
    """checkpoint.every_evals=2: of the three epoch-end evaluations (steps 44, 88, 132) the second saves, and the last
    step always does (a short run's evaluations come every few seconds; saving at each cost it time)."""
    run_dir = str(tmp_path / "evals")
    rc, out = _wait(_train(tmp_path, run_dir, "--config.epochs=3", "--config.checkpoint.every_steps=0",
                           "--config.checkpoint.every_evals=2", "--config.checkpoint.keep=5",
                           "--config.checkpoint.keep_best=0"))
    assert rc == 0, out[-3000:]
    assert _finalized_steps(run_dir) == [88, 132]
    assert [r["step"] for r in _rows(run_dir) if "eval/top1" in r] == [44, 88, 132]  # every epoch still evaluates


def test_saving_a_step_twice_is_a_no_op(tmp_path):
    """A SIGTERM on an epoch's last step re-saves the step the epoch-end checkpoint just wrote (asynchronously):
    that must not raise Orbax's StepAlreadyExistsError and lose the preemption save's exit path."""
    import jax.numpy as jnp

    from vmamba_jax.train.checkpoint import Checkpointer

    state = {"w": jnp.arange(4.0)}
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep_best=0)
    assert ckpt.save(99, state)
    assert not ckpt.save(99, state)  # the first save may still be in flight
    ckpt.wait()
    assert not Checkpointer(str(tmp_path / "ckpt"), keep_best=0).save(99, state)  # after a restart too
    assert ckpt.save(100, state)
    ckpt.wait()
    assert ckpt.latest_step() == 100


def test_small_eval_sets_are_decoded_once_and_give_the_same_metrics(tmp_path, monkeypatch):
    """config.data.cache_eval_mib: after one pass the eval batches come from the devices, with the same result."""
    import jax

    from vmamba_jax.train import loop

    cfg = _tiny_digits_config()
    passes = []
    real = loop.eval_dataset
    monkeypatch.setattr(loop, "eval_dataset", lambda *a, **k: passes.append(1) or real(*a, **k))

    run = loop._Run(cfg, str(tmp_path))
    state = jax.jit(run.init_fn)(jax.random.PRNGKey(0))
    first, second = run.evaluate(state), run.evaluate(state)
    assert len(passes) == 1 and first == second and first["count"] == 360

    cfg.data.cache_eval_mib = 0  # off: decoded every time
    run = loop._Run(cfg, str(tmp_path / "off"))
    assert run.evaluate(state) == first and run.evaluate(state) == first and len(passes) == 3


def _tiny_digits_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits", os.path.join(ROOT, "configs", "digits.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    cfg.model.kwargs.dims, cfg.model.kwargs.depths, cfg.data.image_size = (8,), (1,), 16
    cfg.global_batch, cfg.eval_batch, cfg.ema_decay = 32, 120, 0.9
    return cfg


def test_evaluation_prepared_in_the_background_gives_the_same_metrics(tmp_path):
    """prepare_eval_ahead (what train_and_evaluate starts before its first step): the thread fills the eval cache and
    compiles the eval step from the parameters' shapes alone (the train step donates the real ones), and the
    evaluation that uses them reports what the plain one does; a failure there surfaces at that evaluation."""
    import jax

    from vmamba_jax.train import loop

    cfg = _tiny_digits_config()
    run = loop._Run(cfg, str(tmp_path / "plain"))
    state = jax.jit(run.init_fn)(jax.random.PRNGKey(0))
    plain = run.evaluate(state)

    ahead = loop._Run(cfg, str(tmp_path / "ahead"))
    ahead.prepare_eval_ahead(state.params)
    thread, box = ahead._eval_ahead
    thread.join()
    assert ahead._eval_cache is not None and "step" in box, box.get("error")
    assert ahead.evaluate(state) == plain

    class Broken:
        def lower(self, *args):
            raise ValueError("no eval step")

    broken = loop._Run(cfg, str(tmp_path / "broken"))
    broken.eval_step = Broken()
    broken.prepare_eval_ahead(state.params)
    with pytest.raises(RuntimeError, match="background") as err:
        broken.evaluate(state)
    assert isinstance(err.value.__cause__, ValueError)


def test_augment_size_ships_small_images_that_the_steps_upsample(tmp_path):
    """config.data.augment_size: the pipeline emits 8x8 digits, the eval and train steps resize them to the model's
    16x16 on the device (the eval step's logits are the model's on `resize_to(batch, 16)`); larger than image_size
    is an error that names both."""
    import jax
    import numpy as np

    from vmamba_jax.data import train_dataset
    from vmamba_jax.data.device_resize import resize_to
    from vmamba_jax.train import loop
    from vmamba_jax.train.steps import make_train_step

    cfg = _tiny_digits_config()
    cfg.data.augment_size = 8
    run = loop._Run(cfg, str(tmp_path))
    batch = next(run.eval_batches())
    assert batch["image"].shape[1:] == (8, 8, 3)
    state = jax.jit(run.init_fn)(jax.random.PRNGKey(0))
    sums = run.eval_step(state.params, batch)
    logits = run.model.apply({"params": state.params}, resize_to(batch["image"], 16))
    want = (np.argmax(np.asarray(logits), -1) == np.asarray(batch["label"])) * np.asarray(batch["mask"])
    assert float(sums["top1"]) == float(want.sum())

    step = make_train_step(run.model, run.tx, run.schedule, cfg, num_classes=run.num_classes,
                           state_sharding=run.state_sharding, batch_sharding=run.batch_sharding, mesh=run.mesh)
    train = next(iter(train_dataset(run.train_src, run.train_tf, global_batch=cfg.global_batch, seed=0)))
    assert train["image"].shape[1:] == (8, 8, 3)
    _, metrics = step(state, loop.global_batch(train, run.batch_sharding))
    assert np.isfinite(float(metrics["loss"]))

    cfg.data.augment_size = 32
    with pytest.raises(ValueError, match="augment_size=32 > image_size=16"):
        loop.build_transforms(cfg)


CACHE_SCRIPT = """
import os, sys, jax, jax.numpy as jnp
from vmamba_jax.train.compile_cache import use_compilation_cache
used = use_compilation_cache(sys.argv[1], min_compile_secs=0)
jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
print("USED", used)
"""


@pytest.mark.parametrize("env_dir", [False, True], ids=["config", "environment"])
def test_compilation_cache_goes_where_the_config_says_unless_the_environment_says_otherwise(tmp_path, env_dir):
    """config.compilation_cache_dir: what a restarted run reloads its compiled steps from; JAX_COMPILATION_CACHE_DIR
    (tests, benchmarks) takes precedence."""
    env = {k: v for k, v in _env(tmp_path).items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.pop("JAX_COMPILATION_CACHE_DIR")
    if env_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "from_env")
    out = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, str(tmp_path / "from_config")], env=env, text=True,
                         capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    want = tmp_path / ("from_env" if env_dir else "from_config")
    assert f"USED {want}" in out.stdout and os.listdir(want)
    assert not (tmp_path / ("from_config" if env_dir else "from_env")).exists()
