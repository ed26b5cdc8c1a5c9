"""``n2d bench``: N2D against the denoisers users pick today, on real and synthetic images.

Clean images are centre crops of real CT and MR slices shipped by ``pydicom-data``
and a synthetic 3-D ellipsoid phantom. Noise is added at fixed seeds (white
Gaussian, Poisson, and Gaussian noise correlated by a 3x3 binomial kernel, the
way a CT reconstruction kernel spreads noise). Two cases make their noise by physics instead
(:mod:`n2d_dicom.tools.physics`): ``lowdose``, the CT slice scanned at a low dose and
reconstructed by filtered back projection against the noiseless reconstruction, and ``rician``,
the MR slice as a magnitude image with Gaussian noise on its real and imaginary parts; these are
mapped to [0, 1] from the noisy image's range, as the node maps a series. Every method sees the
same noisy array in [0, 1]; PSNR and SSIM use the clean image's data range. BM3D runs twice:
with the sigma a user would estimate, and told the true noise spectrum, the bound
of a classical denoiser with a perfect noise model. BM3D (non-commercial) is a
benchmark comparator only, in the ``bench`` extra with the test images, never a
runtime dependency of the node; scikit-image is a runtime dependency, since its
non-local means is part of the defaults (:mod:`n2d_dicom.nlm`), and is also shown
here on its own.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Literal
from unittest import mock

import numpy as np
import torch

from n2d_dicom.engine import denoise_slices
from n2d_dicom.errors import N2DInputError
from n2d_dicom.intensity import IntensityMap
from n2d_dicom.nlm import nlm_estimate
from n2d_dicom.pipeline import settings_for_modality
from n2d_dicom.settings import N2DSettings, Precision
from n2d_dicom.tools import measures
from n2d_dicom.tools.measures import Edge
from n2d_dicom.tools.phantom import (
    NOISES,
    POISSON_PEAK,
    SIGMA,
    add_noise,
    ellipsoid_phantom,
    noise_spectrum,
    psnr,
)
from n2d_dicom.tools.physics import AIR_HU, VIEWS, low_dose_scan, rician_magnitude

#: Real slices from pydicom-data: (case name, file name).
REAL_IMAGES = (("CT head", "693_UNCI.dcm"), ("MR abdomen", "MR-SIEMENS-DICOM-WithOverlays.dcm"))
#: The cases whose noise the scanner makes (:mod:`n2d_dicom.tools.physics`): (image, noise).
PHYSICS_CASES = (
    ("CT head", "lowdose"),
    ("MR abdomen", "rician"),
    ("CT water phantom", "lowdose"),
    ("MR brain volume", "rician"),
)
#: Photons per ray entering the head in the ``lowdose`` case: a low dose for this slice's
#: 0.48 mm pixels and the scan's views (the noise it gives, in HU, is printed by the bench).
LOWDOSE_PHOTONS = 5e5
#: Noise per channel (real, imaginary) of the ``rician`` case, in the MR crop's [0, 1] units.
RICIAN_SIGMA = SIGMA
#: The water phantom case: side (pixels), pixel size, dose, and its acrylic-like insert.
PHANTOM_SIDE, PHANTOM_PIXEL_MM, PHANTOM_PHOTONS = 192, 0.8, 5e4
INSERT_HU, INSERT_RADIUS = 120.0, 12
#: The MR volume's stored maximum, and its noise per channel as a share of it.
MR_VOLUME_MAX, MR_VOLUME_SIGMA = 1000.0, 0.04

Denoiser = Callable[[np.ndarray, torch.device], np.ndarray]
#: Noises of the volume cases BM4D is compared on (3-D MR and CT); the phantom's added noises have
#: BM3D told the spectrum instead.
PEER_VOLUME_NOISES = ("rician", "lowdose")

PlanName = Literal["realistic", "quick", "standard", "full"]


@dataclass(frozen=True)
class BenchPlan:
    """What to run: crop size, N2D settings, phantom size, and which rows."""

    crop: int
    settings: N2DSettings
    """The "defaults" row's settings; every N2D row takes its iteration count."""
    phantom_slices: int
    phantom_side: int
    only: tuple[tuple[str, str], ...] = ()
    """(image, noise) pairs to run, images named by how their name starts; empty: every pair."""
    ablations: bool = True
    """Also the rows that take the defaults apart (noise auto alone, Anscombe alone) and BM3D told
    the true noise spectrum: what the defaults' choices rest on, not what a user compares."""
    paper_rows: bool = True
    """Also the paper's pipeline (N2D per-slice) and its stage 1 alone (ZS-N2N)."""
    volume_slices: int = 16
    """Adjacent 1 mm slices of the 3-D MR volume case."""

    @classmethod
    def realistic(cls) -> BenchPlan:
        """The cases whose noise a scanner makes (low-dose CT of a head slice and of a water phantom
        with an insert, MR magnitude of a crop and of a 3-D brain volume) against what users of each
        run, with the node's defaults: the table users read (minutes on 2 CPU cores)."""
        return cls(
            crop=128,
            settings=N2DSettings(),
            phantom_slices=2,
            phantom_side=64,
            only=tuple((image, noise) for image, noise in PHYSICS_CASES),
            ablations=False,
            paper_rows=False,
        )

    @classmethod
    def full(cls) -> BenchPlan:
        """The paper's settings on 256x256 crops and a 16-slice 64x64 phantom."""
        return cls(crop=256, settings=N2DSettings(), phantom_slices=16, phantom_side=64)

    @classmethod
    def standard(cls) -> BenchPlan:
        """Every row on 96x96 crops at 800 iterations, sized for a CPU (times: docs/benchmarks.md)."""
        return cls(crop=96, settings=N2DSettings(iterations=800), phantom_slices=4, phantom_side=64)

    @classmethod
    def quick(cls) -> BenchPlan:
        """The standard plan's crops and iterations on one case per image (a 2-slice phantom), the
        rows users compare: a few minutes on 2 CPU cores. The white-noise CT case is the paper's,
        the filtered one CT's own noise, Poisson noise MR's signal-dependent kind, and the phantom
        shows per-series mode."""
        return cls(
            crop=96,
            settings=N2DSettings(iterations=800),
            phantom_slices=2,
            phantom_side=64,
            ablations=False,
            only=(
                ("CT", "gaussian"),
                ("CT", "correlated"),
                ("MR", "poisson"),
                ("phantom", "gaussian"),
                ("CT head", "lowdose"),
                ("MR abdomen", "rician"),
            ),
        )

    @classmethod
    def named(cls, name: PlanName) -> BenchPlan:
        """The plan ``quick``, ``standard`` or ``full``."""
        plans = {"realistic": cls.realistic, "quick": cls.quick, "standard": cls.standard, "full": cls.full}
        return plans[name]()

    def includes(self, case: Case) -> bool:
        """Whether ``case`` is one of the plan's (image, noise) pairs."""
        return not self.only or any(case.name.startswith(i) and case.noise == n for i, n in self.only)

    def with_iterations(self, iterations: int) -> BenchPlan:
        """The same plan with another N2D iteration count."""
        return replace(self, settings=self.settings.model_copy(update={"iterations": iterations}))

    def with_precision(self, precision: Precision) -> BenchPlan:
        """The same plan with the N2D rows' networks in another precision."""
        return replace(self, settings=self.settings.model_copy(update={"precision": precision}))


@dataclass(frozen=True)
class Images:
    """A case's clean and noisy volumes ``(S, H, W)``, and what the header says about its noise."""

    clean: np.ndarray
    noisy: np.ndarray
    note: str = ""
    per_unit: float = 100.0
    """Bias is shown in ``units``: this many of them per unit value (HU for CT, else % of the range)."""
    units: str = "%"
    edge: Edge | None = None
    """A circular insert whose edge gives the task transfer function, where the case has one."""

    @cached_property
    def uniform(self) -> np.ndarray:
        """Where noise and bias are measured (:func:`~n2d_dicom.tools.measures.uniform_mask`)."""
        return measures.uniform_mask(self.clean, self.noisy)

    @cached_property
    def reference_ttf(self) -> tuple[float, float] | None:
        """The noiseless reference's TTF of the insert edge, against which every row's is read."""
        return None if self.edge is None else measures.edge_ttf(self.clean, self.edge)


@dataclass(frozen=True)
class Case:
    """An image and a noise; its volumes are made by ``make`` when first asked for (a scan
    simulation takes seconds, and a case filtered out is never simulated)."""

    name: str
    noise: str
    seed: int
    make: Callable[[], Images]

    @property
    def label(self) -> str:
        return f"{self.name}, {self.noise}"

    @cached_property
    def images(self) -> Images:
        return self.make()

    @property
    def clean(self) -> np.ndarray:
        return self.images.clean

    @property
    def noisy(self) -> np.ndarray:
        return self.images.noisy


@dataclass(frozen=True)
class Physics:
    """A row's physics measures (:mod:`n2d_dicom.tools.measures`); None where the case has no place
    to measure them (no uniform region, no insert)."""

    noise_reduction: float | None
    """% less noise than the noisy image in uniform regions."""
    bias: float | None
    """Mean error in uniform regions, in the case's units."""
    ttf50: float | None
    """The insert edge's 50% TTF frequency, in % of the noiseless reference's."""
    nps_peak: float | None
    """Peak frequency of the error's noise power spectrum, cycles per pixel."""
    edge_correlation: float
    """Correlation of the residual's local energy with the reference's edges (0: no anatomy)."""


@dataclass(frozen=True)
class Result:
    """One row of the table."""

    case: str
    method: str
    psnr: float
    ssim: float
    seconds: float | None
    peak_mb: float | None
    physics: Physics | None = None


def _require_bench_extras() -> None:
    """Fail with an install hint when the optional comparators are missing."""
    try:
        import bm3d  # noqa: F401
        import pydicom  # noqa: F401
        import skimage  # noqa: F401
        from pydicom.data import get_testdata_file

        if get_testdata_file(REAL_IMAGES[0][1], download=False) is None:
            raise ImportError("pydicom-data")
    except ImportError as exc:
        raise N2DInputError(
            f"the benchmark needs the bench extra ({exc.name or exc}): pip install 'n2d-dicom[bench]'"
        ) from exc


def real_slice(file_name: str) -> tuple[np.ndarray, float]:
    """A pydicom-data slice in its modality's units (HU for CT), and its pixel spacing in mm."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file(file_name, download=False)
    if not isinstance(path, str):
        raise N2DInputError(f"{file_name} not found: pip install pydicom-data")
    dataset = pydicom.dcmread(path)
    pixels = np.asarray(apply_modality_lut(dataset.pixel_array, dataset), dtype=np.float64)
    return pixels, float(dataset.PixelSpacing[0])


def centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The centre ``side x side`` pixels of a 2-D ``image``."""
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return image[top : top + side, left : left + side]


def real_crop(file_name: str, side: int) -> np.ndarray:
    """Centre ``side x side`` crop of a pydicom-data slice, scaled to [0, 1]."""
    crop = centre_crop(real_slice(file_name)[0], side)
    if crop.max() == crop.min():
        raise N2DInputError(f"the centre {side}x{side} crop of {file_name} is flat; use a larger crop")
    return ((crop - crop.min()) / (crop.max() - crop.min()))[np.newaxis]


def added_noise(clean: Callable[[], np.ndarray], noise: str, seed: int) -> Images:
    """The volume ``clean()`` and that volume with ``noise`` added (:func:`add_noise`)."""
    volume = clean()
    return Images(volume, add_noise(volume, noise, seed))


def unit_images(
    clean: np.ndarray, noisy: np.ndarray, note: str, hu: bool = False, edge: Edge | None = None
) -> Images:
    """Both mapped to [0, 1] by the noisy one's range, as the node maps a series it denoises (stored 0
    kept at 0 for non-negative data, as for MR magnitudes); 2-D slices become stacks of one."""
    intensity = IntensityMap.from_array(noisy, keep_zero=True)
    clean_unit, noisy_unit = intensity.to_unit(clean), intensity.to_unit(noisy)
    if clean_unit.ndim == 2:
        clean_unit, noisy_unit = clean_unit[np.newaxis], noisy_unit[np.newaxis]
    if hu:
        return Images(clean_unit, noisy_unit, note, per_unit=intensity.span, units="HU", edge=edge)
    return Images(clean_unit, noisy_unit, note, edge=edge)


def lowdose_images(crop: int, seed: int) -> Images:
    """The CT slice scanned at :data:`LOWDOSE_PHOTONS`: the centre crops of the noiseless and the
    noisy reconstruction, and the noise's standard deviation in HU over the crop."""
    hu, pixel_mm = real_slice(REAL_IMAGES[0][1])
    scan = low_dose_scan(hu, pixel_mm, LOWDOSE_PHOTONS, seed, VIEWS)
    clean, noisy = centre_crop(scan.reference_hu, crop), centre_crop(scan.noisy_hu, crop)
    note = (
        f"CT lowdose: {LOWDOSE_PHOTONS:.0f} photons per ray, {VIEWS} parallel-beam views, ramp-filtered "
        f"back projection, noise sigma {np.std(noisy - clean):.1f} HU on a reference crop spanning "
        f"{np.ptp(clean):.0f} HU"
    )
    return unit_images(clean, noisy, note, hu=True)


def water_phantom_images(crop: int, seed: int) -> Images:
    """A water cylinder in air with an acrylic insert (:data:`INSERT_HU`), scanned at
    :data:`PHANTOM_PHOTONS` as :func:`lowdose_images` scans the head: the uniform water gives noise,
    bias and the noise power spectrum, the insert's edge the task transfer function."""
    side = PHANTOM_SIDE
    rows, cols = np.indices((side, side)) - side // 2
    hu = np.where(np.hypot(rows, cols) <= 0.42 * side, 0.0, AIR_HU)
    offset, radius = side // 5, INSERT_RADIUS
    hu[np.hypot(rows, cols - offset) <= radius] = INSERT_HU
    scan = low_dose_scan(hu, PHANTOM_PIXEL_MM, PHANTOM_PHOTONS, seed, VIEWS)
    water = np.hypot(rows, cols) <= 0.3 * side
    sigma_hu = np.std((scan.noisy_hu - scan.reference_hu)[water])
    note = (
        f"CT water phantom: {side}x{side} at {PHANTOM_PIXEL_MM} mm, {PHANTOM_PHOTONS:.0f} photons per ray, "
        f"an insert of {INSERT_HU:.0f} HU, noise sigma {sigma_hu:.1f} HU in water"
    )
    edge = Edge((side // 2, side // 2 + offset), radius)
    return unit_images(scan.reference_hu, scan.noisy_hu, note, hu=True, edge=edge)


def brain_volume_images(slices: int, seed: int) -> Images:
    """``slices`` adjacent 1 mm axial slices of the MNI ICBM152 T1 template (a real brain's anatomy,
    nearly noiseless) as an MR magnitude series: scaled to :data:`MR_VOLUME_MAX`, noise of
    :data:`MR_VOLUME_SIGMA` of that per channel, stored as int16."""
    import nibabel as nib

    volume = np.asarray(nib.nifti1.load(brain_template()).get_fdata(), dtype=np.float64)
    first = volume.shape[2] // 2 - slices // 2 + 10  # through the ventricles and the basal ganglia
    clean = np.moveaxis(volume[:, :, first : first + slices], 2, 0) / volume.max() * MR_VOLUME_MAX
    noisy = np.rint(rician_magnitude(clean, MR_VOLUME_SIGMA * MR_VOLUME_MAX, seed)).astype(np.int16)
    note = (
        f"MR brain volume: {slices} adjacent 1 mm slices of the ICBM152 T1 template, Rician noise "
        f"{MR_VOLUME_SIGMA:.0%} of the maximum per channel, int16"
    )
    return unit_images(clean, noisy, note)


def brain_template() -> Path:
    """The MNI ICBM152 2009a T1 template nilearn ships (bench extra)."""
    from importlib.resources import files

    path = files("nilearn.datasets") / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return Path(str(path))


def rician_images(crop: int, seed: int) -> Images:
    """The MR crop in [0, 1] as a magnitude image, and its magnitude with :data:`RICIAN_SIGMA`
    Gaussian noise on the real and imaginary parts."""
    clean = real_crop(REAL_IMAGES[1][1], crop)[0]
    note = f"MR rician: sigma {RICIAN_SIGMA * 255:.0f}/255 on the real and imaginary parts"
    return unit_images(clean, rician_magnitude(clean, RICIAN_SIGMA, seed), note)


def build_cases(plan: BenchPlan, wanted: list[str]) -> list[Case]:
    """The plan's (image, noise) cases whose label contains one of ``wanted`` (all if empty)."""
    images = [(name, partial(real_crop, file, plan.crop)) for name, file in REAL_IMAGES]
    images.append(
        (
            f"phantom {plan.phantom_slices}x{plan.phantom_side}^2",
            partial(ellipsoid_phantom, plan.phantom_slices, plan.phantom_side),
        )
    )
    pairs = [(name, clean, noise) for name, clean in images for noise in NOISES]
    # Seeds follow the full list, so that a case gets the same noise however the cases are filtered.
    cases = [
        Case(name, noise, seed, partial(added_noise, clean, noise, seed))
        for seed, (name, clean, noise) in enumerate(pairs)
    ]
    made = {
        "CT head": partial(lowdose_images, plan.crop),
        "MR abdomen": partial(rician_images, plan.crop),
        "CT water phantom": partial(water_phantom_images, plan.crop),
        "MR brain volume": partial(brain_volume_images, plan.volume_slices),
    }
    cases += [
        Case(name, noise, seed, partial(made[name], seed))
        for seed, (name, noise) in enumerate(PHYSICS_CASES, start=len(pairs))
    ]
    cases = [c for c in cases if plan.includes(c)]
    return [c for c in cases if not wanted or any(w.lower() in c.label.lower() for w in wanted)]


def n2d_method(settings: N2DSettings) -> Denoiser:
    """N2D (or its stage 1 alone) with ``settings``, as a benchmark method."""

    def run(noisy: np.ndarray, device: torch.device) -> np.ndarray:
        unit = torch.from_numpy(noisy.astype(np.float32))
        return denoise_slices(unit, settings, device).numpy().astype(np.float64)

    return run


def bm3d_method(noisy: np.ndarray, device: torch.device) -> np.ndarray:
    """BM3D per slice with a white-noise sigma estimated from the image (what a user can do)."""
    import bm3d
    from skimage.restoration import estimate_sigma

    return np.stack([bm3d.bm3d(s, sigma_psd=estimate_sigma(s)) for s in noisy])


def bm3d_known_noise(spectrum: np.ndarray) -> Denoiser:
    """BM3D told the noise's true ``spectrum`` (:func:`~n2d_dicom.tools.phantom.noise_spectrum`).

    No user has that: it is the bound of what a classical denoiser with a perfect noise model
    reaches, against which N2D, which measures the noise on the image, is read.
    """

    def run(noisy: np.ndarray, device: torch.device) -> np.ndarray:
        import bm3d

        with numpy_trapz():  # bm3d runs on bm4d
            return np.stack([bm3d.bm3d(s, sigma_psd=spectrum) for s in noisy])

    return run


def bm4d_method(noisy: np.ndarray, device: torch.device) -> np.ndarray:
    """BM4D on the whole volume with the white-noise sigma estimated per slice (median), what a
    user of the ``bm4d`` package does; a volume of fewer than 4 slices is padded by reflection."""
    import bm4d
    from skimage.restoration import estimate_sigma

    sigma = float(np.median([estimate_sigma(s) for s in noisy]))
    with numpy_trapz():
        return np.asarray(bm4d.bm4d(noisy, sigma_psd=sigma), dtype=np.float64)


@contextmanager
def numpy_trapz() -> Iterator[None]:
    """``numpy.trapz`` meanwhile, which bm4d 4.2.5 (and bm3d, which runs on it) still calls on a
    noise spectrum, and NumPy 2.4 removed (``numpy.trapezoid`` under its old name)."""
    trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009
    with mock.patch.object(np, "trapz", trapezoid, create=True):
        yield


def dipy_rician_method(noisy: np.ndarray, device: torch.device) -> np.ndarray:
    """dipy's non-local means with its Rician correction on the volume, sigma from dipy's own
    estimate, as neuroimaging users run it (``nlmeans(..., rician=True)``)."""
    from dipy.denoise.nlmeans import nlmeans
    from dipy.denoise.noise_estimate import estimate_sigma

    volume = np.ascontiguousarray(np.moveaxis(noisy, 0, 2))  # (H, W, S): dipy's slices are the last axis
    sigma = estimate_sigma(volume)
    return np.moveaxis(np.asarray(nlmeans(volume, sigma=sigma, rician=True), dtype=np.float64), 2, 0)


def nlm_method(noisy: np.ndarray, device: torch.device) -> np.ndarray:
    """scikit-image's fast non-local means per slice, h = 0.8 * estimated sigma (what N2D blends in)."""
    return nlm_estimate(torch.from_numpy(noisy)).numpy()


def paper_settings(settings: N2DSettings) -> N2DSettings:
    """The paper's pipeline: white noise assumed, no non-local means, no Wiener step, no Anscombe
    transform (each on by default in the node, so each switched off here)."""
    return settings.model_copy(
        update={"noise": "white", "nlm_blend": 0, "wiener": False, "anscombe": "off", "rician": "off"}
    )


def methods_for(plan: BenchPlan, case: Case) -> dict[str, Denoiser]:
    """The methods compared on ``case``: the peers a user of its modality runs (BM3D and non-local
    means; for MR magnitudes dipy's Rician non-local means; for volumes BM4D), then N2D.

    The N2D rows are the paper's pipeline (:func:`paper_settings`) and its stage 1 alone (with
    ``plan.paper_rows``), ablations (with ``plan.ablations``: "noise auto", which samples the image at
    the stride its measured noise correlation asks for, "Anscombe", which denoises after the
    generalised Anscombe transform, and BM3D told the true noise spectrum where it has one), then
    "defaults", the node's defaults, and per-series where there is a series.
    """
    paper = paper_settings(plan.settings)
    chosen: dict[str, Denoiser] = {"BM3D (sigma estimated)": bm3d_method}
    volume = case.clean.shape[0] > 1
    if volume and case.noise in PEER_VOLUME_NOISES:
        chosen["BM4D (sigma estimated)"] = bm4d_method
    # The physics cases' noise has a spectrum, but not one known in closed form.
    spectrum = noise_spectrum(case.noise, case.clean.shape[1:]) if case.noise in NOISES else None
    if spectrum is not None and plan.ablations:
        chosen["BM3D (noise known)"] = bm3d_known_noise(spectrum)
    chosen["NLM (scikit-image)"] = nlm_method
    if case.noise == "rician":
        chosen["dipy NLM (Rician)"] = dipy_rician_method
    if plan.paper_rows:
        chosen["stage 1 only (ZS-N2N)"] = n2d_method(paper.model_copy(update={"pipeline": "stage1"}))
        chosen["N2D per-slice"] = n2d_method(paper)
    if plan.ablations:
        chosen["N2D per-slice, noise auto"] = n2d_method(paper.model_copy(update={"noise": "auto"}))
        chosen["N2D per-slice, Anscombe"] = n2d_method(paper.model_copy(update={"anscombe": "on"}))
    chosen["N2D defaults"] = n2d_method(as_node_runs(plan.settings, case))
    if volume and plan.paper_rows:
        chosen["N2D per-series"] = n2d_method(paper.model_copy(update={"mode": "per-series"}))
    return chosen


def as_node_runs(settings: N2DSettings, case: Case) -> N2DSettings:
    """``settings`` as the node applies them to a DICOM series of the case's modality: an MR
    magnitude where the noise is a magnitude's (the noises added to the MR crop are not), CT for
    the CT cases (:func:`~n2d_dicom.pipeline.settings_for_modality`)."""
    modality = "MR" if case.noise == "rician" else "CT" if case.name.startswith("CT") else "OT"
    return settings_for_modality(settings, modality, ["ORIGINAL", "PRIMARY", "M"])


def select_methods(methods: dict[str, Denoiser], wanted: list[str]) -> dict[str, Denoiser]:
    """The methods an entry of ``wanted`` names exactly, else those whose name contains it (all
    if ``wanted`` is empty): "N2D per-slice" is the paper's row alone, "N2D" every N2D row."""
    if not wanted:
        return methods
    kept: set[str] = set()
    for entry in (w.lower() for w in wanted):
        exact = {name for name in methods if name.lower() == entry}
        kept |= exact or {name for name in methods if entry in name.lower()}
    return {name: method for name, method in methods.items() if name in kept}


def quality(clean: np.ndarray, estimate: np.ndarray) -> tuple[float, float]:
    """PSNR over the whole volume and mean per-slice SSIM, on the clean image's data range."""
    from skimage.metrics import structural_similarity

    data_range = float(clean.max() - clean.min())
    psnr_db = psnr(clean, estimate, data_range)
    ssim = np.mean([structural_similarity(c, e, data_range=data_range) for c, e in zip(clean, estimate)])
    return psnr_db, float(ssim)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[list[float]]:
    """Yield a one-item list that receives the peak extra memory (MB) of the block.

    On CUDA this is the peak of allocated GPU memory; on the CPU it is the peak
    resident-set growth over the block, sampled every 5 ms.
    """
    peak = [0.0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield peak
        torch.cuda.synchronize(device)
        peak[0] = (torch.cuda.max_memory_allocated(device) - start) / 2**20
        return
    baseline, highest, done = _resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            highest[0] = max(highest[0], _resident_bytes())
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(0, max(highest[0], _resident_bytes()) - baseline) / 2**20


def physics(images: Images, estimate: np.ndarray) -> Physics:
    """The physics measures of ``estimate`` against the case's reference (the noisy image itself
    for the noisy row)."""
    clean, noisy, uniform, reference = images.clean, images.noisy, images.uniform, images.reference_ttf
    flat = int(uniform.sum()) >= MIN_UNIFORM_PIXELS
    ttf = None
    if images.edge is not None and reference is not None:
        found = measures.edge_ttf(estimate, images.edge)
        ttf = None if found is None else 100 * found[0] / reference[0]
    return Physics(
        noise_reduction=measures.noise_reduction(clean, noisy, estimate, uniform) if flat else None,
        bias=measures.bias(clean, estimate, uniform) * images.per_unit if flat else None,
        ttf50=ttf,
        nps_peak=measures.nps_peak(estimate - clean, uniform),
        edge_correlation=measures.residual_edge_correlation(clean, noisy, estimate),
    )


def run_case(plan: BenchPlan, case: Case, device: torch.device, wanted: list[str]) -> Iterator[Result]:
    """Noisy row first, then one row per method."""
    noisy = case.noisy
    yield Result(
        case.label, "noisy input", *quality(case.clean, noisy), None, None, physics(case.images, noisy)
    )
    for name, method in select_methods(methods_for(plan, case), wanted).items():
        with peak_memory(device) as peak:
            started = time.perf_counter()
            estimate = method(noisy, device)
            seconds = time.perf_counter() - started
        measured = physics(case.images, estimate)
        yield Result(case.label, name, *quality(case.clean, estimate), seconds, peak[0], measured)


#: Fewer uniform pixels than this, and noise and bias are not measured.
MIN_UNIFORM_PIXELS = 256
#: The table's header: quality, the physics measures (:class:`Physics`), cost.
HEADER = (
    "| case | method | PSNR dB | SSIM | noise -% | bias | TTF50 % | NPS peak | residual-edge r "
    "| seconds | peak MB |"
)


def _cell(value: float | None, form: str) -> str:
    return "-" if value is None else format(value, form)


def format_row(result: Result) -> str:
    """A Markdown table row."""
    p = result.physics
    measured = (
        [_cell(p.noise_reduction, ".0f"), _cell(p.bias, "+.2f"), _cell(p.ttf50, ".0f")]
        + [_cell(p.nps_peak, ".3f"), f"{p.edge_correlation:+.3f}"]
        if p
        else ["-"] * 5
    )
    cells = [result.case, result.method, f"{result.psnr:.2f}", f"{result.ssim:.4f}", *measured]
    cells += [_cell(result.seconds, ".2f"), _cell(result.peak_mb, ".0f")]
    return "| " + " | ".join(cells) + " |"


def run_benchmark(
    plan: BenchPlan,
    device: torch.device,
    cases: list[str],
    methods: list[str],
    echo: Callable[[str], None],
) -> list[Result]:
    """Run the plan and print a Markdown table as rows complete; returns the rows."""
    _require_bench_extras()
    chosen = build_cases(plan, cases)
    notes = "".join(f"; {case.images.note}" for case in chosen if case.images.note)
    echo(
        f"n2d bench: crops {plan.crop}x{plan.crop}, N2D {plan.settings.iterations} iterations, "
        f"device {device}, {torch.get_num_threads()} CPU threads; noise sigma {SIGMA * 255:.0f}/255, "
        f"Poisson peak {POISSON_PEAK:g}{notes}"
    )
    echo(HEADER)
    echo("|" + "---|" * HEADER.count(" | ") + "---|")
    results = []
    for case in chosen:
        for result in run_case(plan, case, device, methods):
            echo(format_row(result))
            results.append(result)
    return results
