"""A non-local means estimate, averaged into N2D's smooth intermediate.

N2D's networks see 5x5 pixels; non-local means compares 5x5 patches over a
13x13 search window, so it averages pixels N2D cannot see together, and the two
make different errors. Their average is a better smooth intermediate ``d2``,
from which stage 3 then restores detail. It runs on the images stage 2 sees: the
slices for white noise, the decorrelated sub-images for correlated noise, so its
noise is white either way, as the sigma estimate (:func:`n2d_dicom.noise.noise_sigma`)
and the patch comparison assume. Blending here, rather than averaging the two
final outputs, lets stage 3 restore the detail non-local means smooths away
(the comparison is in docs/benchmarks.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from n2d_dicom.noise import noise_sigma

#: Filter strength, as a multiple of the estimated noise sigma.
STRENGTH = 0.8
#: Side of the compared patches and largest offset searched, in pixels.
PATCH_SIZE, PATCH_DISTANCE = 5, 6


def nlm_estimate(slices: Tensor) -> Tensor:
    """scikit-image's fast non-local means of every slice of ``(S, H, W)``, ``h = 0.8 sigma``.

    Slices run in as many threads as torch may use (the node's ``threads``): scikit-image's
    filter releases the GIL, so the threads run in parallel.
    """
    images = slices.detach().cpu()
    out = torch.empty_like(images)

    def one(index: int) -> None:
        out[index] = torch.from_numpy(_nlm(images[index].double().numpy()))

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(one, range(images.shape[0])))
    return out


def _nlm(image: np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    sigma = float(noise_sigma(torch.from_numpy(image)))
    return np.asarray(
        denoise_nl_means(
            image,
            h=STRENGTH * sigma,
            sigma=sigma,
            patch_size=PATCH_SIZE,
            patch_distance=PATCH_DISTANCE,
            fast_mode=True,
        )
    )


def blend_nlm(noisy: Tensor, denoised: Tensor, weight: float) -> Tensor:
    """``(1 - weight) * denoised + weight * NLM(noisy)`` for ``(N, K, H, W)`` images.

    ``weight = 0`` returns ``denoised`` as it is.
    """
    if weight <= 0:
        return denoised
    n, k, h, w = noisy.shape
    estimate = nlm_estimate(noisy.reshape(n * k, h, w)).reshape(n, k, h, w)
    return torch.lerp(denoised, estimate.to(denoised.device, denoised.dtype), weight).clamp(0, 1)
