"""The benchmark plumbing that GPU runs depend on but CI can check: models compiled in parallel and timed in turns
(benchmarks.common.run_in_turns), the profile's op accounting, and result tables filled over several calls."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from benchmarks.common import wait_for_turn
time.sleep({compile_s})  # compiling
if {crash}:
    sys.exit(3)
wait_for_turn()
t = time.time()
time.sleep(0.5)  # timing: the GPU is this process' alone
print("TURN", t, time.time())
"""


def test_run_in_turns_compiles_in_parallel_and_times_one_at_a_time(tmp_path):
    from benchmarks.common import run_in_turns

    def child(compile_s, crash=False):
        return [sys.executable, "-c", CHILD.format(root=ROOT, compile_s=compile_s, crash=crash)]

    # a: compiles 1 s; crash: dies while compiling; b: 2 s; stuck: never gets ready (killed at the budget).
    cmds = [child(1), child(0.5, crash=True), child(2), child(60)]
    logs = [str(tmp_path / f"{i}.log") for i in range(4)]
    # The budget leaves room for four Python processes importing jax at once on a busy 2-CPU CI machine (b was
    # ready only at 6.1 s once, with a 6 s first turn).
    out = run_in_turns(cmds, logs, budget_s=24, turn_reserve_s=3)
    a, crash, b, stuck = out
    assert [r["rc"] for r in out] == [0, 3, 0, None], out
    assert stuck["ready_s"] is None and crash["ready_s"] is None
    # Both real children compiled at once, before the first turn, which waited for the stuck one until only the
    # turns' reserve was left of the budget (24 - 4 x 3 = 12 s).
    assert a["ready_s"] < 12 and b["ready_s"] < 12 and a["start_s"] >= 12, out
    assert a["others_compiling"] == 1 and b["others_compiling"] == 1, out  # the stuck one
    turns = [tuple(map(float, open(log).read().split()[1:])) for log in (logs[0], logs[2])]
    assert turns[0][1] <= turns[1][0], turns  # b's timing began after a's ended
    assert a["end_s"] <= b["start_s"] and stuck["end_s"] < 24 + 5, out


def test_profile_step_names_each_op_and_sums_its_trace_events(tmp_path):
    """benchmarks/profile_step.py's two halves: HLO instructions to categories, and trace events summed per op."""
    import jax
    import jax.numpy as jnp

    from benchmarks.profile_step import hlo_categories, hlo_of, op_times

    hlo = """
  %custom-call.3 = (f32[4]{0}, u8[0]{0}) custom-call(f32[4]{0} %p), custom_call_target="mosaic_gpu_v2"
  %cudnn-conv.1 = (bf16[2,8,8,4]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$convForward"
  %gemm_fusion.7 = bf16[8,8]{1,0} fusion(%x, %y), kind=kCustom, calls=%c, backend_config={"kind":"__triton_gemm"}
  %loop_add_fusion = f32[8]{0} fusion(%x), kind=kLoop, calls=%fused_add
  ROOT %copy.2 = f32[8]{0} copy(%loop_add_fusion)
"""
    assert hlo_categories(hlo) == {"custom-call.3": "mosaic_gpu kernel", "cudnn-conv.1": "convolution",
                                   "gemm_fusion.7": "matmul", "loop_add_fusion": "fusion", "copy.2": "copy"}
    module = hlo + """
%fused_add (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %add.1 = f32[8]{0} add(%param_0, %param_0)
}
"""
    text = hlo_of(module, "loop_add_fusion").splitlines()
    assert text[0].startswith("%loop_add_fusion = ") and text[1:] == [
        "%param_0 = f32[8]{0} parameter(0)", "ROOT %add.1 = f32[8]{0} add(%param_0, %param_0)"]
    assert hlo_of(module, "copy.2").startswith("ROOT %copy.2") and hlo_of(module, "absent") == ""
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


def test_derivatives_row_joins_its_two_halves_and_says_why_one_is_missing(tmp_path):
    """derivatives_bench measures a model's inference and training in two processes; a half that left no RESULT
    (killed while compiling, say) becomes its error_<part>, and the row keeps the other half."""
    import json

    from benchmarks.derivatives_bench import parse_row

    (tmp_path / "infer.log").write_text("compiling\nRESULT " + json.dumps({"infer_img_s": 5.0, "params_m": 1.0}) + "\n")
    (tmp_path / "train.log").write_text("resvmamba_small: compiling the train step\n")
    logs = {"infer": str(tmp_path / "infer.log"), "train": str(tmp_path / "train.log")}
    row = parse_row("m", logs, {"infer": {"rc": 0}, "train": {"rc": None}})
    assert row["infer_img_s"] == 5.0 and row["params_m"] == 1.0 and "train_img_s" not in row
    assert row["error_train"].startswith("timed out; log tail: resvmamba_small: compiling the train step"), row
    assert "error_infer" not in row


def test_derivatives_rerun_of_one_half_keeps_the_other_from_the_merged_row():
    """--parts train --merge: the new train half replaces the old one (its error included), the old infer half and
    the command that measured it stay, and the table names both commands."""
    from benchmarks.derivatives_bench import command_rows, keep_parts

    old = dict(model="m", infer_img_s=5.0, params_m=1.0, scan_impl="x", error_train="exited with 1; OOM",
               command="old cmd", turns={"infer": {"rc": 0}, "train": {"rc": 1}})
    new = dict(model="m", train_img_s=2.0, train_peak_gib=3.0, command="new cmd", turns={"train": {"rc": 0}})
    row = keep_parts(old, new, ("train",))
    assert row["infer_img_s"] == 5.0 and row["params_m"] == 1.0 and row["train_img_s"] == 2.0
    assert "error_train" not in row and row["turns"] == {"train": {"rc": 0}, "infer": {"rc": 0}}
    assert (row["command_infer"], row["command_train"]) == ("old cmd", "new cmd")
    assert command_rows([row]) == [dict(model="m (infer)", command="old cmd"),
                                   dict(model="m (train)", command="new cmd")]
    assert keep_parts(None, new, ("train",))["train_img_s"] == 2.0


def test_time_fn_back_to_back_times_per_call_and_syncs_once_per_repeat():
    """calls > 1 (scan_bench's *_b2b_ms): every repeat runs `calls` calls and reports their mean, so a host cost paid
    once per sync (here a 50 ms wait in the synchronising call's result) is spread over the calls."""
    import time

    import jax.numpy as jnp

    sys.path.insert(0, ROOT)
    from benchmarks.common import time_fn

    calls = []

    def fn():
        calls.append(None)
        return jnp.zeros(())

    times = time_fn(fn, warmup=2, repeats=3, calls=4)
    assert len(calls) == 2 + 3 * 4 and len(times) == 3

    class Slow:  # jax.block_until_ready(x) calls x.block_until_ready(): the sync costs 50 ms
        def block_until_ready(self):
            time.sleep(0.05)
            return self

    synced = min(time_fn(Slow, warmup=0, repeats=2, calls=1))
    spread = min(time_fn(Slow, warmup=0, repeats=2, calls=5))
    assert synced >= 0.05 and 0.009 <= spread < 0.5 * synced  # 50 ms over 5 calls; a loaded machine may oversleep


def test_sweep_check_rules_bf16_variants_against_the_fp32_result():
    """scan_bench's checked sweeps use gpu_kernel_tests' bf16 rule: the reference passes, a variant 5% off fails."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import jax
    import jax.numpy as jnp

    from benchmarks import scan_bench
    from pallas_kernels.selective_scan.reference import selective_scan_reference
    from pallas_kernels.selective_scan.testing import make_inputs

    args = make_inputs(0, 1, 2, 8, 1, 37, jnp.bfloat16)
    fwd = jax.jit(selective_scan_reference)
    grad = jax.jit(jax.grad(lambda *a: jnp.sum(selective_scan_reference(*a)), tuple(range(len(args)))))
    ok = scan_bench._check_variant(("test", 37), fwd, grad, selective_scan_reference, args)
    assert ok["checked"] and ok["rule"] == "vs_fp32" and ok["max_rel_err"] == 0.0
    off = scan_bench._check_variant(("test", 37), lambda *a: fwd(*a) * 1.05, grad, selective_scan_reference, args)
    assert not off["checked"] and off["max_rel_err_vs_fp32"] > 0.04


def test_sweep_check_that_cannot_run_keeps_the_times():
    """A reference that fails (the XLA reference out of GPU memory at d_state 16, batch 128) is reported as
    check_error, not as a failed variant, and the table says unchecked."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import jax.numpy as jnp

    from benchmarks import scan_bench

    def reference(*a):
        raise MemoryError("out of memory")

    x = jnp.ones((4,))
    out = scan_bench._check_variant(("test-oom",), lambda a: a, lambda a: (a,), reference, (x,))
    assert out == {"check_error": "MemoryError: out of memory"}
    assert scan_bench._check_cell(out).startswith("unchecked")
    assert ("test-oom",) not in scan_bench._REFERENCE_OUTPUTS
