"""Device names, free memory, and the slice batch that fits it."""

import torch

from n2d_dicom.devices import TRAINING_BYTES_PER_PIXEL_CHANNEL, fit_slice_batch, free_memory


def test_slice_batch_shrinks_to_what_half_the_free_memory_holds():
    per_slice = TRAINING_BYTES_PER_PIXEL_CHANNEL * 48 * 512 * 512  # about 604 MB
    assert fit_slice_batch(8, 512, 512, 48, free=None) == 8
    assert fit_slice_batch(8, 512, 512, 48, free=100 * per_slice) == 8
    assert fit_slice_batch(64, 512, 512, 48, free=10 * per_slice) == 5
    assert fit_slice_batch(8, 512, 512, 48, free=per_slice // 10) == 1  # never zero


def test_free_memory_of_the_cpu_is_known_on_linux():
    free = free_memory(torch.device("cpu"))
    assert free is not None and free > 0
