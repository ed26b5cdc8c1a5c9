"""Orthanc with its DICOMweb plugin (Debian's orthanc-dicomweb) as a STOW-RS destination, on loopback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_derived_series_reaches_orthanc_over_stow_rs_and_its_refusals_are_recorded(tmp_path):
    assert shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists(), "apt-get install orthanc"
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip(
            "cannot create a network namespace here (needs root): Orthanc would listen beyond loopback"
        )
    script = f"ip link set lo up && exec {sys.executable} -m tests.integration.dicomweb_scenario {tmp_path}"
    result = subprocess.run(
        ["unshare", "--net", "bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for line in ("stored over STOW-RS in the study", "HTTP 404", "HTTP 401", "-> pending", "no credentials"):
        assert line in result.stdout, result.stdout
