"""The scan ops inside `jax.shard_map` on 8 fake CPU devices give the unsharded result.

XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax initialises its backends, so the checks run
in a fresh subprocess (this pytest process has already imported jax). Two layouts:
  * data parallel: the batch sharded over an 8-way "data" axis;
  * data x direction parallel: batch over a 2-way "data" axis and the K = 4 scan directions over a 4-way "dir" axis
    (u/delta channels K*D, A/D/delta_bias rows K*D and the B/C group axis K all split by direction).
Each is checked for the selective scan (associative and the TPU kernel in interpret mode) forward and grad, and the
SS2D core (the reference composition and the fused TPU core in interpret mode), data parallel and data x direction
parallel (`ss2d_core_direction_parallel`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from pallas_kernels.selective_scan import selective_scan
    from pallas_kernels.selective_scan import pallas_mosaic_tpu
    from pallas_kernels.ss2d import ss2d_core, ss2d_core_direction_parallel
    from pallas_kernels.ss2d import pallas_mosaic_tpu as fused_tpu

    assert jax.device_count() == 8, jax.devices()
    batch, K, D, N, L = 8, 4, 8, 4, 40
    ks = jax.random.split(jax.random.PRNGKey(0), 7)
    u = jax.random.normal(ks[0], (batch, K * D, L))
    dl = jax.random.normal(ks[1], (batch, K * D, L)) - 1.0
    A = -jnp.exp(0.5 * jax.random.normal(ks[2], (K * D, N)))
    B = jax.random.normal(ks[3], (batch, K, N, L))
    C = jax.random.normal(ks[4], (batch, K, N, L))
    Dv = jax.random.normal(ks[5], (K * D,))
    bias = 0.5 * jax.random.normal(ks[6], (K * D,))
    args = (u, dl, A, B, C, Dv, bias)
    w = jax.random.normal(jax.random.PRNGKey(1), u.shape)

    impls = {
        "associative": lambda *a: selective_scan(*a, implementation="associative"),
        "pallas_mosaic_tpu": lambda *a: pallas_mosaic_tpu.selective_scan(*a, interpret=True),
    }
    layouts = {
        # mesh shape, axis names, specs for (u, dl, A, B, C, D, bias), output spec
        "data": ((8,), ("data",), (P("data"), P("data"), P(), P("data"), P("data"), P(), P()), P("data")),
        "data_x_dir": ((2, 4), ("data", "dir"),
                       (P("data", "dir"), P("data", "dir"), P("dir"), P("data", "dir"), P("data", "dir"),
                        P("dir"), P("dir")), P("data", "dir")),
    }
    for name, fn in impls.items():
        y0 = jax.jit(fn)(*args)
        g0 = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * w), range(7)))(*args)
        for lname, (shape, axes, in_specs, out_spec) in layouts.items():
            mesh = jax.make_mesh(shape, axes)
            sharded = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_spec, check_vma=False)
            with jax.set_mesh(mesh):
                sargs = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, in_specs)]
                y1 = jax.jit(sharded)(*sargs)
                g1 = jax.jit(jax.grad(lambda *a: jnp.sum(sharded(*a) * w), range(7)))(*sargs)
            err = float(jnp.abs(y1 - y0).max())
            gerr = max(float(jnp.abs(a - b).max() / (jnp.abs(b).max() + 1e-6)) for a, b in zip(g1, g0))
            print(f"RESULT {name} {lname} fwd {err:.3e} grad {gerr:.3e}", flush=True)
            assert err < 1e-5 and gerr < 1e-5, (name, lname, err, gerr)

    # SS2D core with the batch sharded.
    H = W = 6; Dm = 8; R = 2
    kx = jax.random.split(jax.random.PRNGKey(2), 6)
    x = jax.random.normal(kx[0], (8, H, W, Dm))
    params = (0.3 * jax.random.normal(kx[1], (4, R + 2 * N, Dm)), 0.5 * jax.random.normal(kx[2], (4, Dm, R)),
              0.5 * jax.random.normal(kx[3], (4, Dm)), jnp.log(jnp.tile(jnp.arange(1., N + 1), (4 * Dm, 1))),
              jnp.ones((4 * Dm,)))
    cores = {"associative": lambda x, *p: ss2d_core(x, *p, implementation="associative"),
             "fused_mosaic_tpu": lambda x, *p: fused_tpu.ss2d_core(x, *p, interpret=True)}
    for cname, core in cores.items():
        y0 = jax.jit(core)(x, *params)
        mesh = jax.make_mesh((8,), ("data",))
        sharded = jax.shard_map(core, mesh=mesh, in_specs=(P("data"),) + (P(),) * 5, out_specs=P("data"),
                                check_vma=False)
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, NamedSharding(mesh, P("data")))
            ps = [jax.device_put(p, NamedSharding(mesh, P())) for p in params]
            y1 = jax.jit(sharded)(xs, *ps)
            gx = jax.jit(jax.grad(lambda x, *p: jnp.sum(sharded(x, *p) ** 2), range(6)))(xs, *ps)
        gx0 = jax.jit(jax.grad(lambda x, *p: jnp.sum(core(x, *p) ** 2), range(6)))(x, *params)
        err = float(jnp.abs(y1 - y0).max())
        gerr = max(float(jnp.abs(a - b).max() / (jnp.abs(b).max() + 1e-6)) for a, b in zip(gx, gx0))
        print(f"RESULT ss2d_core {cname} data fwd {err:.3e} grad {gerr:.3e}", flush=True)
        assert err < 1e-5 and gerr < 1e-5

        # Data x direction parallel: batch over "data", the four scan orders' parameters over "dir".
        impl = "associative" if cname == "associative" else "fused_mosaic_tpu"
        mesh = jax.make_mesh((2, 4), ("data", "dir"))
        dp = lambda x, *p: ss2d_core_direction_parallel(x, *p, axis_name="dir", implementation=impl)
        specs = (P("data"),) + (P("dir"),) * 5
        sharded = jax.shard_map(dp, mesh=mesh, in_specs=specs, out_specs=P("data"), check_vma=False)
        with jax.set_mesh(mesh):
            sargs = [jax.device_put(a, NamedSharding(mesh, sp)) for a, sp in zip((x,) + params, specs)]
            y1 = jax.jit(sharded)(*sargs)
            gx = jax.jit(jax.grad(lambda x, *p: jnp.sum(sharded(x, *p) ** 2), range(6)))(*sargs)
        err = float(jnp.abs(y1 - y0).max())
        gerr = max(float(jnp.abs(a - b).max() / (jnp.abs(b).max() + 1e-6)) for a, b in zip(gx, gx0))
        print(f"RESULT ss2d_core {cname} data_x_dir fwd {err:.3e} grad {gerr:.3e}", flush=True)
        assert err < 1e-5 and gerr < 1e-5
    print("ALL OK")
""")


@pytest.mark.slow
def test_scan_ops_under_shard_map_match_unsharded():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and "ALL OK" in proc.stdout, (
        "\n".join(results) + "\n" + proc.stdout[-2000:] + proc.stderr[-4000:])
    assert len(results) == 8
