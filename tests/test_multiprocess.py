"""Scale on CPU: 8 fake devices (data-parallel, and fsdp with params/optimizer sharded) match 1 device within fp32
tolerance; 2 processes x 2 devices with jax.distributed on localhost train like 1 process x 4 devices; a checkpoint
written by the 2-process run restores and evaluates on 1 device."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config", os.path.join(ROOT, "configs", "digits.py"), "--config.model.kwargs.dims=(8,)",
        "--config.model.kwargs.depths=(1,)", "--config.data.image_size=16", "--config.global_batch=32",
        "--config.eval_batch=120", "--config.log_every_steps=1", "--config.progress_bar=False",
        "--config.epochs=0.25", "--config.ema_decay=0.9", "--config.tensorboard=False"]


def _env(tmp_path, devices):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / f"jax_cache_{devices}"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


SHARDING_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from vmamba_jax.train.config import default_config
    from vmamba_jax.train.loop import build_model
    from vmamba_jax.train.mesh import make_mesh, state_shardings, batch_sharding, global_batch
    from vmamba_jax.train.optimizer import make_optimizer
    from vmamba_jax.train.state import create_train_state
    from vmamba_jax.train.steps import make_train_step
    assert jax.device_count() == 8
    cfg = default_config()
    cfg.model.kwargs.dims, cfg.model.kwargs.depths, cfg.dtype = (8,), (1,), "float32"
    cfg.model.kwargs.drop_path_rate = 0.1
    cfg.ema_decay, cfg.optim.warmup_epochs = 0.99, 0.0
    model = build_model(cfg, 10)
    sample = jnp.zeros((1, 16, 16, 3))
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), sample)["params"])
    tx, sched = make_optimizer(cfg.optim, params, global_batch=16, steps_per_epoch=10, total_steps=100)
    init = lambda rng: create_train_state(model, tx, rng, sample)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.standard_normal((16, 16, 16, 3), dtype=np.float32),
                "label": rng.integers(0, 10, 16).astype(np.int32), "corrupt": np.zeros(16, np.int32)}
               for _ in range(3)]
    results = {}
    for name, fsdp, devices in (("1dev", 1, jax.devices()[:1]), ("dp8", 1, None), ("fsdp4x2", 2, None)):
        mesh = make_mesh(fsdp, devices)
        abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
        sh = state_shardings(abstract, mesh, min_size=64)
        state = jax.jit(init, out_shardings=sh)(jax.random.PRNGKey(0))
        step = make_train_step(model, tx, sched, cfg, num_classes=10, state_sharding=sh,
                               batch_sharding=batch_sharding(mesh), mesh=mesh)
        losses = []
        for b in batches:
            state, m = step(state, global_batch(b, batch_sharding(mesh)))
            losses.append(float(m["loss"]))
        if name == "fsdp4x2":
            specs = [s.spec for s in jax.tree.leaves(sh.params)]
            assert any("fsdp" in tuple(sp) for sp in specs), specs
            shard = jax.tree.leaves(state.params)[0]
        results[name] = (losses, jax.device_get(state.params), jax.device_get(state.ema_params))
    ref_l, ref_p, ref_e = results["1dev"]
    for name in ("dp8", "fsdp4x2"):
        l, p, e = results[name]
        np.testing.assert_allclose(l, ref_l, rtol=2e-5, atol=2e-6)
        for a, b in zip(jax.tree.leaves(p) + jax.tree.leaves(e), jax.tree.leaves(ref_p) + jax.tree.leaves(ref_e)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    print("OK", results["1dev"][0], results["dp8"][0], results["fsdp4x2"][0])
""")


@pytest.mark.slow
def test_eight_fake_devices_data_parallel_and_fsdp_match_one_device(tmp_path):
    res = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT], env=_env(tmp_path, 8), capture_output=True,
                         text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout[-3000:] + res.stderr[-5000:]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_with_jax_distributed_agree_with_one_process(tmp_path):
    train = [sys.executable, os.path.join(ROOT, "train.py"), *TINY]
    one_dir, two_dir = str(tmp_path / "one"), str(tmp_path / "two")
    ref = subprocess.run([*train, f"--workdir={one_dir}"], env=_env(tmp_path, 4), capture_output=True, text=True,
                         timeout=900)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen([*train, f"--workdir={two_dir}",
                               f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                               "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
                              env=_env(tmp_path, 2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (0, 1)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n\n".join(o[-3000:] for o in outs)
    assert "process 1 of 2" not in outs[0]
    a = [r for r in _rows(one_dir) if "train/loss" in r]
    b = [r for r in _rows(two_dir) if "train/loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 12))
    for x, y in zip(a, b):
        assert y["train/loss"] == pytest.approx(x["train/loss"], rel=2e-5, abs=2e-6)
    ev_a = [r for r in _rows(one_dir) if "eval/top1" in r][-1]
    ev_b = [r for r in _rows(two_dir) if "eval/top1" in r][-1]
    assert ev_b["eval/count"] == 360
    assert abs(ev_b["eval/top1"] - ev_a["eval/top1"]) <= 100 / 360 + 1e-6  # at most one image flips

    # The checkpoint written by 2 processes x 2 devices restores onto 1 process x 1 device.
    res = subprocess.run([*train, f"--workdir={two_dir}", "--eval_only"], env=_env(tmp_path, 1),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    got = json.loads(res.stdout[res.stdout.index("{"):])
    assert got["step"] == 11 and got["count"] == 360
    assert abs(got["top1"] - ev_b["eval/top1"]) <= 100 / 360 + 1e-6
    assert abs(got["ema_top1"] - ev_b["eval/ema_top1"]) <= 100 / 360 + 1e-6
