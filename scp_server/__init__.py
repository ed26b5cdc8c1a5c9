"""scp_server: the DICOM node. Receives series over C-STORE, keeps them durably, denoises, sends back.

Everything about being a node on a hospital network lives here; everything about
images lives in :mod:`n2d_dicom`.
"""
