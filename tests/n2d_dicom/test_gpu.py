"""The CUDA-only paths: device selection, batch sizing on the GPU's free memory, tf32 and bf16.

Every test here is marked ``gpu``: tests/conftest.py skips them, saying why, where torch sees no
CUDA GPU, and they run wherever one is.
"""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from n2d_dicom import engine, training
from n2d_dicom.devices import MEMORY_SHARE, TRAINING_BYTES_PER_PIXEL_CHANNEL, free_memory, resolve_device
from n2d_dicom.engine import denoise_slices
from n2d_dicom.losses import stage1_loss
from n2d_dicom.settings import N2DSettings
from n2d_dicom.training import new_networks

pytestmark = pytest.mark.gpu

#: N2D's networks alone: no non-local means (CPU), no Wiener step, nothing measured first.
NETWORKS_ONLY = {"nlm_blend": 0, "wiener": False, "anscombe": "off", "noise": "white"}
MIB = 1 << 20


@pytest.fixture
def cuda() -> torch.device:
    torch.cuda.empty_cache()  # what earlier tests cached would hide allocations from the free count
    return torch.device("cuda")


def test_auto_picks_the_gpu_and_cuda_names_select_it():
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert torch.ones(1, device=resolve_device("cuda")).is_cuda


def test_free_memory_on_cuda_is_the_gpus_and_follows_allocations(cuda):
    before = free_memory(cuda)
    assert before is not None and 0 < before <= torch.cuda.get_device_properties(cuda).total_memory
    block = torch.empty(1024 * MIB, dtype=torch.uint8, device=cuda)
    after = free_memory(cuda)
    assert after is not None
    assert 1024 * MIB <= before - after < 1024 * MIB + 64 * MIB  # the allocator rounds up a little
    del block


def test_the_slice_batch_shrinks_to_what_the_gpus_free_memory_holds(cuda, monkeypatch):
    """Fill the GPU but for about 7 slices' worth of training (at half the free memory): a batch
    of 16 asked for runs in smaller batches, sized on the free memory CUDA reports, and completes."""
    settings = N2DSettings(iterations=2, channels=48, slice_batch=16, **NETWORKS_ONLY)
    per_slice = TRAINING_BYTES_PER_PIXEL_CHANNEL * settings.channels * 256 * 256
    seen: list[tuple[int | None, int, int]] = []
    real = engine.fit_slice_batch

    def recorded(wanted: int, rows: int, columns: int, channels: int, free: int | None) -> int:
        fitted = real(wanted, rows, columns, channels, free)
        seen.append((free, torch.cuda.mem_get_info(cuda)[0], fitted))
        return fitted

    monkeypatch.setattr(engine, "fit_slice_batch", recorded)
    leave = 14 * per_slice
    filler = torch.empty(torch.cuda.mem_get_info(cuda)[0] - leave, dtype=torch.uint8, device=cuda)
    try:
        out = denoise_slices(torch.rand(16, 256, 256), settings, cuda)
    finally:
        del filler
        torch.cuda.empty_cache()
    ((free, reported, fitted),) = seen
    assert free is not None and abs(free - reported) < 64 * MIB  # CUDA's free memory, read then
    assert abs(free - leave) < 256 * MIB
    assert fitted == int(free * MEMORY_SHARE) // per_slice and 1 < fitted < 16
    assert out.shape == (16, 256, 256) and bool(torch.isfinite(out).all())


def test_bf16_runs_the_networks_in_bfloat16_and_keeps_losses_and_output_float32(cuda):
    net = new_networks([0], N2DSettings(channels=8), cuda)
    x = torch.rand(1, 1, 32, 32, device=cuda)
    with training.in_precision(cuda, "bf16"):
        assert net(x).dtype == torch.bfloat16
        assert stage1_loss(net, x, x).dtype == torch.float32
    with training.in_precision(cuda, "fp32"):
        assert net(x).dtype == torch.float32


def test_tf32_allows_tf32_inside_and_restores_the_flags_after(cuda):
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with training.in_precision(cuda, "tf32"):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("mode", ["per-slice", "per-series"])
def test_every_precision_denoises_on_the_gpu(phantom, noisy_phantom, cuda, precision, mode):
    settings = N2DSettings(iterations=300, channels=32, mode=mode, precision=precision)
    noisy = torch.from_numpy(noisy_phantom.astype(np.float32))
    out = denoise_slices(noisy, settings, cuda)
    assert out.device.type == "cpu" and out.dtype == torch.float32 and out.shape == noisy.shape
    denoised = out.numpy().astype(np.float64)
    before = peak_signal_noise_ratio(phantom, noisy_phantom, data_range=1)
    assert peak_signal_noise_ratio(phantom, denoised, data_range=1) > before + 1.5
