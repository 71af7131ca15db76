"""Data pipeline: sources, corrupt images, errors, determinism, per-host sharding, iterator state, transforms,
mixup/cutmix, ArrayRecord prepare round trip, the embedded digits set."""

import io
import os

import jax
import numpy as np
import pytest
from PIL import Image

from vmamba_jax.data import (ArrayRecordSource, EvalTransform, ImageFolderSource, TrainTransform, check_classes,
                             digits_source, eval_dataset, mixup_cutmix, train_dataset)
from vmamba_jax.data.sources import DecodedSource

SMALL = TrainTransform(size=16, rrc_scale=(0.3, 1.0), hflip=0.5, randaugment="rand-m9-mstd0.5-inc1", reprob=0.5)


def _png(rng, size=(20, 24)):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    """train/{a,b,c}/ 6 images each, one corrupt in b; val/{a,b,c}/ 2 images each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for c in "abc":
            os.makedirs(tmp_path / split / c)
            for i in range(n):
                (tmp_path / split / c / f"{i}.png").write_bytes(_png(rng))
    (tmp_path / "train" / "b" / "3.png").write_bytes(b"not an image")
    return tmp_path


def test_image_folder_and_corrupt_images_are_skipped_and_counted(folder):
    src = ImageFolderSource(str(folder / "train"))
    assert len(src) == 18 and src.classes == ["a", "b", "c"]
    dec = DecodedSource(src)
    flags = [int(dec[i]["corrupt"]) for i in range(len(src))]
    assert sum(flags) == 1  # the corrupt file is replaced by its neighbour and flagged, never raised
    ds = train_dataset(src, SMALL, global_batch=6, seed=0)
    it = iter(ds)
    seen = sum(int(next(it)["corrupt"].sum()) for _ in range(3))  # one epoch = 3 batches of 6
    assert seen == 1


def test_clear_errors(tmp_path, folder):
    os.makedirs(tmp_path / "empty" / "a")
    with pytest.raises(ValueError, match="no images"):
        ImageFolderSource(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no class subfolders"):
        ImageFolderSource(str(tmp_path / "empty" / "a"))
    os.makedirs(folder / "val" / "d")
    (folder / "val" / "d" / "0.png").write_bytes(_png(np.random.default_rng(1)))
    with pytest.raises(ValueError, match="class mismatch"):
        check_classes(ImageFolderSource(str(folder / "train")), ImageFolderSource(str(folder / "val")))


def test_train_stream_deterministic_sharded_and_resumable():
    src = digits_source("train", 16)
    tf = TrainTransform(size=16, rrc_scale=None, crop_padding=2, hflip=0.5, randaugment="rand-m9-mstd0.5-inc1",
                        reprob=0.25)
    a = [next(it) for it in [iter(train_dataset(src, tf, global_batch=8, seed=3))] for _ in range(4)]
    b = [next(it) for it in [iter(train_dataset(src, tf, global_batch=8, seed=3))] for _ in range(4)]
    c = next(iter(train_dataset(src, tf, global_batch=8, seed=4)))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not np.array_equal(a[0]["image"], c["image"])
    # Two hosts: host p's batches are the p-th contiguous halves of the single-host global batches.
    hosts = [iter(train_dataset(src, tf, global_batch=8, seed=3, process_index=p, process_count=2)) for p in (0, 1)]
    for x in a:
        parts = [next(h) for h in hosts]
        np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), x["image"])
    # Iterator state: restoring it replays exactly what followed.
    it = iter(train_dataset(src, tf, global_batch=8, seed=3))
    next(it), next(it)
    state = it.get_state()
    expected = next(it)
    it2 = iter(train_dataset(src, tf, global_batch=8, seed=3))
    it2.set_state(state)
    np.testing.assert_array_equal(next(it2)["image"], expected["image"])
    # Epochs are reshuffled: the second pass is a different order of the same images (1437 = 479 batches of 3).
    n = len(src) // 3
    it = iter(train_dataset(src, TrainTransform(size=16, rrc_scale=None, hflip=0, randaugment="", reprob=0),
                            global_batch=3, seed=0))
    e1 = np.concatenate([next(it)["label"] for _ in range(n)])
    e2 = np.concatenate([next(it)["label"] for _ in range(n)])
    assert not np.array_equal(e1, e2) and np.array_equal(np.bincount(e1), np.bincount(e2))


def test_eval_pass_counts_every_image_once():
    src = digits_source("test", 16)
    ds, steps = eval_dataset(src, EvalTransform(size=16, crop_pct=1.0), global_batch=64)
    batches = list(ds)
    assert steps == len(batches) == 6
    assert sum(b["mask"].sum() for b in batches) == len(src) == 360
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(labels, src.labels)


def test_transforms_shapes_and_official_eval_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    out = TrainTransform(size=224).random_map({"image": img, "label": 0}, np.random.default_rng(1))["image"]
    again = TrainTransform(size=224).random_map({"image": img, "label": 0}, np.random.default_rng(1))["image"]
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out, again)
    ev = EvalTransform(size=224, crop_pct=0.875).map({"image": img})["image"]
    assert ev.shape == (224, 224, 3)
    # resize shorter side 300 -> 256 (bicubic), center crop 224: equals doing it by hand with PIL
    ref = np.asarray(Image.fromarray(img).resize((341, 256), Image.BICUBIC))[16:240, 58:282]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(ev, (ref / 255.0 - mean) / std, atol=1e-5)


def test_mixup_cutmix():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (8, 16, 16, 3))
    y = jax.numpy.arange(8) % 4
    out, t = mixup_cutmix(key, x, y, num_classes=4, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.1)
    np.testing.assert_array_equal(out, x)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    assert float(t[0, 0]) == pytest.approx(0.925) and float(t[0, 1]) == pytest.approx(0.025)
    for seed in range(6):
        out, t = mixup_cutmix(jax.random.PRNGKey(seed), x, y, num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0,
                              switch_prob=0.5, label_smoothing=0.1)
        np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-5)
        # every output pixel is a convex mix of the image and its flipped partner, with the targets' lam
        xf = np.asarray(x)[::-1]
        lam_img = (np.asarray(out) - xf) / (np.asarray(x) - xf)
        onehot = np.eye(4)[np.asarray(y)] * 0.9 + 0.025
        lam_t = (np.asarray(t)[0, 0] - onehot[7, 0]) / (onehot[0, 0] - onehot[7, 0])  # row 0 (class 0) + row 7
        cutmix = np.all(np.isclose(lam_img, 0, atol=1e-4) | np.isclose(lam_img, 1, atol=1e-4))
        if cutmix:  # lam = the fraction of pixels kept from the image
            kept = np.isclose(lam_img[0], 1, atol=1e-4).mean()
            assert lam_t == pytest.approx(kept, abs=1e-5)
        else:
            assert np.median(lam_img) == pytest.approx(lam_t, abs=1e-4)


def test_prepare_arrayrecord_round_trip(folder, tmp_path):
    pytest.importorskip("array_record")
    from vmamba_jax.data.prepare import prepare

    counts = prepare(str(folder), str(tmp_path / "ar"), splits=("train", "val"), shards=4)
    assert counts == {"train": 18, "val": 6}
    ref, got = ImageFolderSource(str(folder / "train")), ArrayRecordSource(str(tmp_path / "ar"), "train")
    assert len(got) == 18 and got.classes == ref.classes
    for i in (0, 7, 17):
        assert got[i]["image"] == ref[i]["image"] and got[i]["label"] == ref[i]["label"]


def test_digits_embedded():
    tr, te = digits_source("train"), digits_source("test")
    assert (len(tr), len(te)) == (1437, 360)
    assert tr[0]["image"].shape == (32, 32, 3) and tr[0]["image"].dtype == np.uint8
    assert sorted(set(te.labels.tolist())) == list(range(10))


def test_decode_in_memory_keeps_the_stream_and_the_corrupt_count(folder):
    """config.data.cache_train_mib: the train set decoded once into an ArraySource gives the same batches as decoding
    in the stream, and the corrupt image's stand-in is still counted each epoch; too big or mixed shapes: None."""
    from vmamba_jax.data import decode_in_memory

    src = ImageFolderSource(str(folder / "train"))
    cached = decode_in_memory(src, max_mib=1)
    assert cached is not None and cached.images.shape == (18, 20, 24, 3) and cached.classes == src.classes
    plain, mem = iter(train_dataset(src, SMALL, global_batch=6, seed=0)), iter(train_dataset(cached, SMALL,
                                                                                             global_batch=6, seed=0))
    for _ in range(6):  # two epochs
        a, b = next(plain), next(mem)
        for k in ("image", "label", "corrupt"):
            np.testing.assert_array_equal(a[k], b[k])
    assert int(sum(DecodedSource(cached)[i]["corrupt"] for i in range(18))) == 1
    assert decode_in_memory(src, max_mib=18 * 20 * 24 * 3 / 2 ** 20 / 2) is None   # over the limit
    (folder / "train" / "a" / "odd.png").write_bytes(_png(np.random.default_rng(1), size=(8, 8)))
    assert decode_in_memory(ImageFolderSource(str(folder / "train")), max_mib=1) is None  # mixed shapes
