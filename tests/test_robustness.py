"""The 20 robustness transformations: shape, dtype, determinism (seeded by (seed, name, index)), that each changes
the image, and reference values on small images for those with an exact definition."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from vmamba_jax.robustness import CLEAN, TRANSFORMS, apply, rng_for, select
from vmamba_jax.robustness import color, filters, geometric, occlusion, photometric

RNG = np.random.default_rng(0)
IMG = (RNG.random((32, 40, 3)) * 255).astype(np.uint8)  # non-square to catch H/W mix-ups


def test_the_study_list():
    assert len(TRANSFORMS) == 21 and next(iter(TRANSFORMS)) == CLEAN
    assert select("Fliplr,Salt") == [CLEAN, "Fliplr", "Salt"]
    with pytest.raises(ValueError, match="unknown"):
        select("Fliplrr")


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_shape_dtype_determinism(name):
    a = apply(name, IMG, seed=0, index=5)
    assert a.shape == IMG.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, apply(name, IMG.copy(), seed=0, index=5))  # deterministic
    if name == CLEAN:
        np.testing.assert_array_equal(a, IMG)
        return
    assert not np.array_equal(a, IMG)
    randomised = name not in ("Fliplr", "Inversion", "Grayscale", "Fast Snowy Landscape")
    if randomised:  # another image index or seed draws other parameters
        assert not np.array_equal(a, apply(name, IMG, seed=0, index=6))
        assert not np.array_equal(a, apply(name, IMG, seed=1, index=5))


def test_rng_streams_are_independent_of_order():
    x = rng_for(3, "Salt", 10).random(4)
    rng_for(3, "Affine", 10).random(100)
    np.testing.assert_array_equal(x, rng_for(3, "Salt", 10).random(4))


def test_exact_pixel_maps():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(photometric.invert(IMG, rng), 255 - IMG)
    np.testing.assert_array_equal(geometric.fliplr(IMG, rng), IMG[:, ::-1])
    px = np.array([[[10, 200, 255], [128, 0, 64]]], np.uint8)
    gray = photometric.grayscale(px, rng, alpha=1.0)
    want = np.rint(0.299 * px[..., 0] + 0.587 * px[..., 1] + 0.114 * px[..., 2])
    np.testing.assert_array_equal(gray, np.repeat(want[..., None], 3, -1))
    np.testing.assert_array_equal(photometric.multiply(px, rng, mul=2.0), [[[20, 255, 255], [255, 0, 128]]])
    # LinearContrast alpha 0.5: 127.5 + 0.5 (x - 127.5), truncated
    np.testing.assert_array_equal(photometric.linear_contrast(px, rng, alpha=0.5), [[[68, 163, 191], [127, 63, 95]]])


def test_color_spaces_match_colorsys():
    rgb = RNG.random((50, 3))
    for conv, ref in ((color.rgb_to_hsv, colorsys.rgb_to_hsv), (color.rgb_to_hls, colorsys.rgb_to_hls)):
        np.testing.assert_allclose(conv(rgb), [ref(*p) for p in rgb], atol=1e-12)
    np.testing.assert_allclose(color.hsv_to_rgb(color.rgb_to_hsv(rgb)), rgb, atol=1e-12)
    np.testing.assert_allclose(color.hls_to_rgb(color.rgb_to_hls(rgb)), rgb, atol=1e-12)


def test_hue_saturation_zero_offset_is_identity_and_snow_brightens():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(photometric.add_to_hue_and_saturation(IMG, rng, value=0.0), IMG)
    dark = np.full((2, 2, 3), 40, np.uint8)  # gray: L = 40 < 140 -> 100
    np.testing.assert_array_equal(photometric.fast_snowy_landscape(dark, rng, 140, 2.5), np.full((2, 2, 3), 100))


def test_kernels_reference():
    x = np.zeros((5, 5, 3), np.uint8)
    x[2, 2] = 100
    rng = np.random.default_rng(0)
    e = filters.edge_detect(x, rng, alpha=1.0)[..., 0]
    assert e[2, 2] == 0 and e[1, 2] == 100 and e[2, 1] == 100 and e[1, 1] == 0  # -400 saturates to 0
    np.testing.assert_array_equal(filters.edge_detect(x, rng, alpha=0.0), x)
    s = 1.0
    em = filters.emboss(x, rng, alpha=1.0, strength=s)[..., 0]
    # correlation: out[y, x] = sum k[dy, dx] in[y + dy - 1, x + dx - 1]; the impulse lands k flipped
    assert em[2, 2] == 100 and em[1, 1] == 200 and em[3, 3] == 0 and em[1, 2] == 100
    b = filters.gaussian_blur(x, rng, sigma=1.0)
    assert 0 < b[2, 2, 0] < 100 and b[2, 2, 0] == b.max() and b[1, 2, 0] == b[2, 1, 0] == b[3, 2, 0] > 0
    np.testing.assert_array_equal(filters.gaussian_blur(x, rng, sigma=0.0), x)


def test_occlusions():
    rng = np.random.default_rng(0)
    img = np.full((20, 20, 3), 50, np.uint8)
    c = occlusion.cutout(img, rng, nb_iterations=1, size=0.2, cval=128)
    assert set(np.unique(c)) == {50, 128} and (c[..., 0] == 128).sum() <= 16
    d = occlusion.dropout(img, np.random.default_rng(1), p=0.5)
    assert np.all((d == 0).all(-1) | (d == 50).all(-1)) and 0.3 < (d[..., 0] == 0).mean() < 0.7
    s = occlusion.salt(img, np.random.default_rng(2), p=0.5)
    hit = s[..., 0] != 50
    assert np.all(s[hit] >= 128) and np.all(s[..., 0] == s[..., 1])


def test_geometric_identities():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(geometric.crop(IMG, rng, percent=0.0), IMG)
    np.testing.assert_array_equal(geometric.affine(IMG, rng, scale=1.0, translate_percent=0.0, rotate=0.0,
                                                   shear=0.0), IMG)
    # an undisturbed control grid maps every pixel to itself
    h, w = 32, 40
    gy, gx = np.meshgrid(np.linspace(0, h - 1, 4), np.linspace(0, w - 1, 4), indexing="ij")
    grid = np.stack([gy, gx], -1)
    coords = geometric.piecewise_map(h, w, grid, grid)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    np.testing.assert_allclose(coords, np.stack([yy, xx]), atol=1e-9)
    np.testing.assert_array_equal(geometric.piecewise_affine(IMG, rng, scale=0.0), IMG)
    # the perspective map sends the output corners onto the quadrilateral
    quad = np.array([[2.0, 1.0], [37.0, 3.0], [39.0, 30.0], [1.0, 29.0]])
    a, b, c, d, e, f, g, hh = geometric.perspective_coeffs(quad, w, h)
    for (x, y), (u, v) in zip([(0, 0), (w, 0), (w, h), (0, h)], quad):
        den = g * x + hh * y + 1
        assert (a * x + b * y + c) / den == pytest.approx(u) and (d * x + e * y + f) / den == pytest.approx(v)
    # crop and pad: padding everything by 25% shrinks the content into the middle, black border
    cp = geometric._crop_pad_resize(np.full((8, 8, 3), 200, np.uint8), -2, -2, -2, -2)
    assert cp[0, 0, 0] == 0 and cp[4, 4, 0] == 200


def test_suite_shares_images_and_counts_exactly(tmp_path):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from vmamba_jax.data import ArraySource
    from vmamba_jax.evaluation.loop import Evaluator
    from vmamba_jax.robustness import suite

    class MeanColour(nn.Module):  # a fixed function of the pixels: logits = per-channel means
        @nn.compact
        def __call__(self, x, train=False):
            self.param("unused", nn.initializers.zeros, (1,))
            return jnp.mean(x, axis=(1, 2))

    rng = np.random.default_rng(0)
    src = ArraySource((rng.random((7, 16, 16, 3)) * 255).astype(np.uint8), rng.integers(0, 3, 7), ["r", "g", "b"])
    model = MeanColour()
    v = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    evs = {"a": Evaluator(model, v), "b": Evaluator(model, v)}
    names = [CLEAN, "Inversion", "Fliplr"]
    res = suite.run(evs, src, names, batch_size=4, image_size=16, crop_pct=1.0, workers=2, progress=False)
    assert res["a"] == res["b"]  # same pixels for every model
    assert all(r["count"] == 7 for r in res["a"].values())
    assert res["a"]["Fliplr"]["top1"] == res["a"][CLEAN]["top1"]  # a mean does not see a flip
    paths = suite.write(res, str(tmp_path), {"date": "d", "device": "cpu", "device_count": 1, "backend": "cpu",
                                             "jax": "x", "flax": "y", "python": "z", "command": "c"},
                        {"images_per_class": None, "seed": 0})
    assert "| Inversion |" in open(paths["md"]).read()
