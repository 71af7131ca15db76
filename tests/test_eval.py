"""Eval loop: exact counting with a padded, masked last batch; top-k; loss; JSON/markdown writers; plots;
weights from one of our Orbax checkpoints; eval.py end to end on the embedded digits."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmamba_jax.data import ArraySource, EvalTransform, eval_dataset
from vmamba_jax.evaluation import data as eval_data
from vmamba_jax.evaluation.loop import Evaluator, evaluate
from vmamba_jax.evaluation.metrics import finalize, masked_sums, topk_correct
from vmamba_jax.evaluation.plots import accuracy_curves, resolution_curves, robustness_bars
from vmamba_jax.evaluation.report import markdown_table, write_json


class PixelClassifier(nn.Module):
    """Logits = a fixed function of the image: class = the image's (constant) value // 10, so predictions are known."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train=False):
        self.param("unused", nn.initializers.zeros, (1,))
        v = x[:, 0, 0, 0]  # normalised pixel value, identical over the image
        centres = jnp.arange(self.num_classes, dtype=jnp.float32)
        return -(v[:, None] - centres[None]) ** 2


def test_topk_correct_and_ties():
    logits = jnp.array([[0.1, 0.5, 0.2, 0.0, 0.3, 0.4], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    labels = jnp.array([4, 1])
    np.testing.assert_array_equal(topk_correct(logits, labels, 1), [0, 0])  # a tie does not count as top-1
    np.testing.assert_array_equal(topk_correct(logits, labels, 3), [1, 1])  # 0.5, 0.4, 0.3 -> label 4 is third
    np.testing.assert_array_equal(topk_correct(logits, labels, 2), [0, 1])
    np.testing.assert_array_equal(topk_correct(logits[:, :3], jnp.array([0, 2]), 5), [1, 1])  # k > classes


def test_masked_sums_ignore_padding():
    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05]]))
    labels = jnp.array([0, 2, 2, 1])
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    r = finalize({k: np.asarray(v) for k, v in masked_sums(logits, labels, mask).items()})
    assert r["count"] == 3
    assert r["top1"] == pytest.approx(200 / 3)
    assert r["loss"] == pytest.approx(-(np.log(0.7) + np.log(0.1) + np.log(0.4)) / 3, rel=1e-5)


@pytest.mark.parametrize("n,batch", [(23, 8), (24, 8), (5, 16)])
def test_every_image_counts_exactly_once(n, batch):
    # image i has the constant value 10 * (i % 10) (so PixelClassifier predicts i % 10); labels are i % 10
    # except every third image, labelled wrong: the exact top-1 is known in advance.
    idx = np.arange(n)
    values = (10 * (idx % 10)).astype(np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (n, 8, 8, 3)).copy()
    labels = np.where(idx % 3 == 0, (idx + 1) % 10, idx % 10)
    source = ArraySource(images, labels, [str(i) for i in range(10)])
    # identity-ish transform: no resize (size 8, crop_pct 1), mean 0, std 1/255*10 maps value v to v/10
    transform = EvalTransform(size=8, crop_pct=1.0, mean=(0.0, 0.0, 0.0), std=(10 / 255,) * 3)
    batches, steps = eval_dataset(source, transform, global_batch=batch, threads=1, prefetch=1)
    assert steps == -(-n // batch)
    model = PixelClassifier()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    r = evaluate(model, variables, batches, steps, progress=False)
    assert r["count"] == n
    assert r["top1"] == pytest.approx(100.0 * np.mean(idx % 3 != 0))
    # a wrong label is the next class, in the top 5 unless it wrapped around (class 9 labelled 0)
    assert r["top5"] == pytest.approx(100.0 * np.mean((idx % 3 != 0) | (idx % 10 != 9)))


def test_evaluator_logits_shape():
    model = PixelClassifier()
    ev = Evaluator(model, model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3))))
    assert ev.logits(np.zeros((2 * ev.size, 4, 4, 3), np.float32)).shape == (2 * ev.size, 10)


def test_per_class_indices():
    labels = np.array([0, 0, 1, 0, 1, 1, 2, 1])
    src = ArraySource(np.zeros((8, 2, 2, 3), np.uint8), labels, ["a", "b", "c"])
    np.testing.assert_array_equal(eval_data.per_class_indices(src, 2), [0, 1, 2, 4, 6])
    assert len(eval_data.Subset(src, eval_data.per_class_indices(src, 0))) == 8


def test_writers_and_plots(tmp_path):
    p = write_json(str(tmp_path / "r.json"), {"a": np.float32(1.5), "b": [np.int64(2)], "c": float("nan")})
    assert json.loads(open(p).read()) == {"a": 1.5, "b": [2], "c": None}
    md = markdown_table(["x", "y"], [["a", 1.23456], ["b", None]])
    assert md.splitlines()[2] == "| a | 1.23 |" and md.splitlines()[3] == "| b | - |"
    results = {"m1": {"Clean": 80.0, "A": 70.0, "B": 60.0, "C": 79.0}, "m2": {"Clean": 75.0, "A": 72.0,
                                                                             "B": 50.0, "C": 74.0}}
    png = robustness_bars(results, str(tmp_path / "bars.png"))
    rows = [dict(model="m", resolution=r, img_per_s=1000 / r, peak_memory_bytes=r ** 2, gflops=r ** 2 / 1e4)
            for r in (224, 512)]
    png2 = resolution_curves(rows, str(tmp_path / "res.png"))
    runs = {"run a": {"top1": [50.0, 80.0, 91.0], "top1_ema": [40.0, 70.0, 90.5]}, "run b": {"top1": [60.0, 85.0]}}
    png3 = accuracy_curves(runs, str(tmp_path / "curves.png"), goal=90.0)
    for f in (png, png2, png3):
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_load_our_orbax_checkpoint(tmp_path):
    import orbax.checkpoint as ocp

    from vmamba_jax.evaluation.weights import load_variables

    model = PixelClassifier()
    params = {"unused": np.array([3.0], np.float32)}
    state = {"step": np.int32(7), "params": params, "ema_params": {"unused": np.array([5.0], np.float32)},
             "opt_state": {"mu": np.zeros(1, np.float32)}, "rng": np.zeros(2, np.uint32)}
    path = tmp_path / "run" / "checkpoints" / "7" / "state"
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(str(path), state)
    ckpt.wait_until_finished()
    raw, _ = load_variables(model, str(tmp_path / "run"))
    ema, _ = load_variables(model, str(tmp_path / "run"), ema=True)
    assert float(raw["params"]["unused"][0]) == 3.0 and float(ema["params"]["unused"][0]) == 5.0


@pytest.mark.slow
def test_eval_py_end_to_end(tmp_path):
    import eval as eval_script

    out = tmp_path / "out"
    res = eval_script.main(["--model", "convnext_tiny", "--data", "digits:test", "--dtype", "float32",
                            "--batch-size", "16", "--image-size", "32", "--limit", "21", "--out", str(out),
                            "--no-progress"])
    assert res["convnext_tiny"]["count"] == 21
    saved = json.loads((out / "eval.json").read_text())
    assert saved["results"]["convnext_tiny"]["count"] == 21
    assert "| convnext_tiny |" in (out / "eval.md").read_text()
