"""Which DICOM objects are images to denoise: one explicit list, shared by the command line and the node.

Only image storage SOP classes whose pixels are measurements a denoiser may
touch are listed: CT, MR, PET, NM, projection radiography (CR, DX, MG,
intra-oral), X-ray angiography and fluoroscopy, and grayscale secondary
capture, with their enhanced and legacy-converted multi-frame forms.
Everything else (segmentations, RT dose grids, structured reports,
presentation states, waveforms, colour-only classes such as VL photographs)
is left alone: denoising a label map or a dose grid would change what it
means, and writing it back as a "derived image" would break its IOD. The node
forwards such objects unchanged where it is configured to.
"""

from __future__ import annotations

DENOISABLE_SOP_CLASSES: frozenset[str] = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # Digital Mammography X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.1.3",  # Digital Intra-Oral X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.3.1",  # Digital Intra-Oral X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage (grayscale ones only are read)
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
        "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
        "1.2.840.10008.5.1.4.1.1.128.1",  # Legacy Converted Enhanced PET Image Storage
        "1.2.840.10008.5.1.4.1.1.130",  # Enhanced PET Image Storage
    }
)
"""SOP Class UIDs of the objects n2d-dicom denoises; every other object is skipped with the reason."""


def is_denoisable(sop_class_uid: str) -> bool:
    """Whether objects of ``sop_class_uid`` are images n2d-dicom denoises (exact UID match)."""
    return sop_class_uid in DENOISABLE_SOP_CLASSES
