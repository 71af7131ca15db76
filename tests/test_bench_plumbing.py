"""The benchmark plumbing that GPU runs depend on but CI can check: parallel precompilation into a shared persistent
compilation cache (benchmarks.common.precompile), so that a timed process loads its executable instead of compiling."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from benchmarks.common import use_compilation_cache
use_compilation_cache()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() + {salt})
x = jnp.ones((64, 64))
if "--compile_only" in sys.argv:
    f.lower(x).compile()
else:
    print("RESULT", float(f(x)))
"""


def test_precompile_fills_the_shared_cache_and_reports_each_child(tmp_path, monkeypatch):
    from benchmarks.common import precompile

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cache"))
    children = [[sys.executable, "-c", CHILD.format(root=ROOT, salt=s)] for s in (1, 2)]
    children.append([sys.executable, "-c", "import time; time.sleep(120)"])
    out = precompile(children, timeout_s=30, log_dir=str(tmp_path))
    assert [r["rc"] for r in out] == [0, 0, None], out  # the sleeper is killed at the timeout
    entries = os.listdir(tmp_path / "cache")
    assert sum(e.startswith("jit__lambda") for e in entries) == 2, entries
    # A timed run of a precompiled function adds no new executable: it was loaded from the cache.
    res = subprocess.run(children[0], capture_output=True, text=True, timeout=120)
    assert "RESULT" in res.stdout, res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(entries)


def test_profile_step_names_each_op_and_sums_its_trace_events(tmp_path):
    """benchmarks/profile_step.py's two halves: HLO instructions to categories, and trace events summed per op."""
    import jax
    import jax.numpy as jnp

    from benchmarks.profile_step import hlo_categories, op_times

    hlo = """
  %custom-call.3 = (f32[4]{0}, u8[0]{0}) custom-call(f32[4]{0} %p), custom_call_target="mosaic_gpu_v2"
  %cudnn-conv.1 = (bf16[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$convForward"
  %gemm_fusion.7 = bf16[8,8]{1,0} fusion(%x, %y), kind=kCustom, calls=%c, backend_config={"kind":"__triton_gemm"}
  %loop_add_fusion = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused_add
  ROOT %copy.2 = f32[8]{0} copy(%loop_add_fusion)
"""
    assert hlo_categories(hlo) == {"custom-call.3": "mosaic_gpu kernel", "cudnn-conv.1": "convolution",
                                   "gemm_fusion.7": "matmul", "loop_add_fusion": "fusion", "copy.2": "copy"}
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
    x = jnp.ones((256, 256))
    f(x).block_until_ready()
    with jax.profiler.trace(str(tmp_path)):
        f(x).block_until_ready()
    times = op_times(str(tmp_path), "/host:CPU")
    ops = set(hlo_categories(f.lower(x).compile().as_text()))
    assert times and set(times) <= ops, (times, ops)
    assert all(ns > 0 for ns in times.values())


def test_merge_records_fills_one_table_over_several_calls(tmp_path):
    """--merge: a re-run model replaces its row, unless it failed where the earlier row was measured."""
    import json

    from benchmarks.common import commands_md, merge_records

    path = tmp_path / "t.json"
    ok = lambda r: "img_per_s" in r  # noqa: E731
    assert merge_records(str(path), [{"model": "T", "img_per_s": 1}], ok) == [{"model": "T", "img_per_s": 1}]
    path.write_text(json.dumps([{"model": "T", "img_per_s": 1, "command": "a"}, {"model": "S", "error": "x"}]))
    merged = merge_records(str(path), [{"model": "S", "img_per_s": 2, "command": "b"}, {"model": "T", "error": "y"},
                                       {"model": "B", "error": "z", "command": "b"}], ok)
    assert merged == [{"model": "T", "img_per_s": 1, "command": "a"}, {"model": "S", "img_per_s": 2, "command": "b"},
                      {"model": "B", "error": "z", "command": "b"}]
    assert commands_md(merged) == ["Commands:", "- T: `a`", "- S, B: `b`"]
    assert commands_md(merged[1:]) == ["Command: `b`."]
