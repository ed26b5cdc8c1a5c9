"""docker/orthanc/ run by the real Orthanc (Debian's 1.10), in a network namespace with only loopback."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker.dockerfiles import ROOT

pytestmark = pytest.mark.slow  # runs Orthanc and the node in a network namespace


def test_orthanc_routes_stable_series_to_the_node_and_keeps_back_the_series_the_node_derived(
    tmp_path: Path,
) -> None:
    assert Path("/usr/sbin/Orthanc").exists(), "apt-get install orthanc"
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("no network namespace here (needs root): Orthanc would listen beyond loopback")
    scenario = f"ip link set lo up && exec {sys.executable} -m tests.docker.autoroute_scenario {tmp_path}"
    result = subprocess.run(
        ["unshare", "--net", "bash", "-c", scenario], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    log = tmp_path / "orthanc.log"
    orthanc_says = log.read_text()[-3000:] if log.exists() else ""
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:] + orthanc_says
    assert "2 series routed to N2D, 2 derived kept back" in result.stdout
