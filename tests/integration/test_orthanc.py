"""Orthanc (Debian's package) as the PACS, in a network namespace with only loopback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test starts the node (n2d serve) or its peers in processes of their own

ROOT = Path(__file__).resolve().parents[2]


def test_orthanc_sends_a_series_and_receives_the_derived_series_in_the_same_study(tmp_path):
    assert shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists(), "apt-get install orthanc"
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip(
            "cannot create a network namespace here (needs root): Orthanc would listen beyond loopback"
        )
    script = f"ip link set lo up && exec {sys.executable} -m tests.integration.orthanc_scenario {tmp_path}"
    result = subprocess.run(
        ["unshare", "--net", "bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "derived series" in result.stdout
