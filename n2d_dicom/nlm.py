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
import torch.nn.functional as F
from torch import Tensor

from n2d_dicom.noise import noise_sigma

#: Filter strength, as a multiple of the estimated noise sigma.
STRENGTH = 0.8
#: Side of the compared patches and largest offset searched, in pixels.
PATCH_SIZE, PATCH_DISTANCE = 5, 6
#: Schraudolph's constants as scikit-image sets them: 2^20 / ln 2, and 1023 * 2^20 - 60801.
SCHRAUDOLPH_A, SCHRAUDOLPH_BIAS = 1512775.3951951856938, 1072632447


#: scikit-image's fast mode skips a patch pair whose scaled distance exceeds this (its weight ~ e^-5).
DISTANCE_CUTOFF = 5.0
#: Bytes of working arrays one call of :func:`nlm_torch` may hold at once; more slices go in chunks.
MEMORY_BUDGET = 1 << 30
#: Float32 arrays of the padded slice size :func:`nlm_torch` holds per slice.
ARRAYS_PER_SLICE = 8


def nlm_estimate(slices: Tensor) -> Tensor:
    """Fast non-local means of every slice of ``(S, H, W)``, ``h = 0.8 sigma``, on the slices' device.

    On a CPU, scikit-image's filter, in as many threads as torch may use (the node's
    ``threads``; it releases the GIL, so they run in parallel): faster there than
    :func:`nlm_torch`. On a GPU, :func:`nlm_torch`, the same filter (the tests hold
    the two to 1e-6), so the slices never leave the device.
    """
    images = slices.detach()
    if images.device.type != "cpu":
        sigmas = torch.stack([noise_sigma(image) for image in images]).to(images.device)
        return nlm_torch(images.float(), sigmas)
    out = torch.empty_like(images)

    def one(index: int) -> None:
        out[index] = torch.from_numpy(_nlm(images[index].double().numpy()))

    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        list(pool.map(one, range(images.shape[0])))
    return out


def nlm_torch(images: Tensor, sigmas: Tensor, memory_budget: int = MEMORY_BUDGET) -> Tensor:
    """scikit-image's fast non-local means (``fast_mode=True``) of ``(S, H, W)`` slices, in torch.

    The same filter as :func:`_nlm`, written for any device: for every offset of the
    search window, the distance of each pixel's patch to the offset patch is the sum
    of squared differences minus twice the noise variance, over the 4x4 box that
    scikit-image's integral images cover (rows and columns -1..+2 around the pixel, for
    a patch size of 5), scaled by ``patch^2 h^2``; the weight is scikit-image's fast
    exponential of minus that (0 past :data:`DISTANCE_CUTOFF`), the pixel itself weighs
    the fast exponential of 0, and the image is reflected at its borders. Slices go
    in chunks of at most ``memory_budget`` bytes of working arrays.
    """
    s, h, w = images.shape
    pad = PATCH_SIZE // 2 + PATCH_DISTANCE + 1
    per_slice = ARRAYS_PER_SLICE * 4 * (h + 2 * pad) * (w + 2 * pad)
    chunk = max(1, memory_budget // per_slice)
    return torch.cat([_nlm_chunk(images[i : i + chunk], sigmas[i : i + chunk]) for i in range(0, s, chunk)])


def _nlm_chunk(images: Tensor, sigmas: Tensor) -> Tensor:
    _, h, w = images.shape
    half, reach = PATCH_SIZE // 2, PATCH_DISTANCE
    pad = half + reach + 1
    padded = F.pad(images[:, None], (pad, pad, pad, pad), mode="reflect")[:, 0]
    twice_variance = (2 * sigmas.float() ** 2)[:, None, None]
    scale = ((STRENGTH * sigmas.float()) ** 2 * PATCH_SIZE**2)[:, None, None]
    box = 2 * half  # the rows (and columns) -half+1 .. +half around each pixel
    start = pad - half + 1
    reference = padded[:, start : start + h + box - 1, start : start + w + box - 1]
    itself = fast_exp(torch.zeros((), dtype=images.dtype, device=images.device))
    total = itself * images
    weights = torch.full_like(images, float(itself))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            if dy == 0 and dx == 0:
                continue
            moved = padded[:, start + dy : start + dy + h + box - 1, start + dx : start + dx + w + box - 1]
            squares = (reference - moved) ** 2 - twice_variance
            distance = F.avg_pool2d(squares[:, None], box, stride=1)[:, 0] * box**2
            scaled = distance.clamp(min=0) / scale
            weight = torch.where(scaled > DISTANCE_CUTOFF, 0.0, fast_exp(-scaled))
            total += weight * padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
            weights += weight
    return total / weights


def fast_exp(y: Tensor) -> Tensor:
    """scikit-image's fast exponential (Schraudolph's: the integer ``2^20/ln2 y + bias`` written into
    the high word of a double), so that :func:`nlm_torch` weighs patches exactly as it does."""
    high = (SCHRAUDOLPH_A * y.double()).to(torch.int32).to(torch.int64) + SCHRAUDOLPH_BIAS
    return (high << 32).view(torch.float64).to(y.dtype)


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
