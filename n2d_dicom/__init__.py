"""n2d_dicom: Noise2Detail denoising for medical images, NIfTI volumes and DICOM series.

The package knows images and nothing about networks; the DICOM node in
``scp_server`` calls the same functions the ``n2d`` command line does.
"""

__version__ = "0.1.0"
