"""3x3 kernels and blur (imgaug semantics via scipy.ndimage). Each: (uint8 (H, W, 3), rng, **magnitudes) -> uint8.

Borders are mirrored without repeating the edge pixel (`mode="mirror"`, OpenCV's BORDER_REFLECT_101, the default of
the cv2.filter2D call imgaug makes); kernels are applied as correlations, as filter2D does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vmamba_jax.robustness.color import to_uint8
from vmamba_jax.robustness.sampling import uniform

IDENTITY = np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]], np.float64)
EDGE = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64)



def correlate3x3(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Per-channel 3x3 correlation with reflect-101 borders, saturated to uint8."""
    x = img.astype(np.float64)
    out = np.stack([ndimage.correlate(x[..., c], kernel, mode="mirror") for c in range(x.shape[-1])], -1)
    return to_uint8(out)


def edge_detect(img, rng, alpha=(0.0, 1.0)):
    """imgaug EdgeDetect(alpha): kernel (1 - a) * identity + a * Laplacian [[0,1,0],[1,-4,1],[0,1,0]]."""
    a = uniform(rng, alpha)
    return correlate3x3(img, (1.0 - a) * IDENTITY + a * EDGE)


def emboss(img, rng, alpha=(0.0, 1.0), strength=(0.5, 1.5)):
    """imgaug Emboss(alpha, strength): kernel (1 - a) * identity + a * [[-1-s, -s, 0], [-s, 1, s], [0, s, 1+s]]."""
    a, s = uniform(rng, alpha), uniform(rng, strength)
    effect = np.array([[-1 - s, -s, 0], [-s, 1, s], [0, s, 1 + s]], np.float64)
    return correlate3x3(img, (1.0 - a) * IDENTITY + a * effect)


def gaussian_blur(img, rng, sigma=(0.0, 3.0)):
    """imgaug GaussianBlur(sigma): separable Gaussian per channel, kernel truncated at 4 sigma, reflect-101 borders;
    sigma < 0.01 leaves the image unchanged."""
    s = uniform(rng, sigma)
    if s < 0.01:
        return img.copy()
    return to_uint8(ndimage.gaussian_filter(img.astype(np.float64), (s, s, 0), mode="mirror", truncate=4.0))
