"""Device names, free memory, the slice batch that fits it, and the precision ``auto`` decides."""

import pytest
import torch

from n2d_dicom.devices import (
    TRAINING_BYTES_PER_PIXEL_CHANNEL,
    cpu_flags,
    fit_slice_batch,
    free_memory,
    resolve_precision,
)

#: The start of a /proc/cpuinfo of a CPU with AVX512-BF16 (one core shown; each core repeats it).
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs
"""


def test_slice_batch_shrinks_to_what_half_the_free_memory_holds():
    per_slice = TRAINING_BYTES_PER_PIXEL_CHANNEL * 48 * 512 * 512  # about 604 MB
    assert fit_slice_batch(8, 512, 512, 48, free=None) == 8
    assert fit_slice_batch(8, 512, 512, 48, free=100 * per_slice) == 8
    assert fit_slice_batch(64, 512, 512, 48, free=10 * per_slice) == 5
    assert fit_slice_batch(8, 512, 512, 48, free=per_slice // 10) == 1  # never zero


def test_free_memory_of_the_cpu_is_known_on_linux():
    free = free_memory(torch.device("cpu"))
    assert free is not None and free > 0


def test_cpu_flags_are_the_flags_line_of_cpuinfo():
    assert cpu_flags(CPUINFO) == {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"}
    assert cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n") == frozenset()  # Arm names them otherwise
    assert "flags" not in cpu_flags()  # this machine's, read from /proc/cpuinfo: names only


@pytest.mark.parametrize(
    ("flags", "device", "ran"),
    [
        ({"avx2", "avx512f", "avx512_bf16"}, "cpu", "bf16"),
        ({"avx2", "amx_tile", "amx_bf16"}, "cpu", "bf16"),
        ({"avx2", "fma", "avx512f"}, "cpu", "fp32"),  # bfloat16 emulated: slower than fp32
        (set(), "cpu", "fp32"),
        ({"avx512_bf16"}, "cuda", "fp32"),  # GPUs run fp32: bf16 measured no faster there
    ],
)
def test_auto_precision_is_bf16_only_on_cpus_with_native_bfloat16(flags, device, ran):
    assert resolve_precision("auto", torch.device(device), frozenset(flags)) == ran


@pytest.mark.parametrize("asked", ["fp32", "tf32", "bf16"])
def test_a_precision_asked_for_is_kept_on_every_device(asked):
    for device in ("cpu", "cuda"):
        assert resolve_precision(asked, torch.device(device), frozenset({"avx512_bf16"})) == asked
