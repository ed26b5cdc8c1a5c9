"""`n2d load` against a real `n2d serve`: it sends, receives the derived series and reports figures."""

import json
import subprocess

import pytest

from tests.helpers import free_port
from tests.integration.conftest import N2D, start_node, stop_node, write_config

pytestmark = pytest.mark.slow  # every test starts the node (n2d serve) or its peers in processes of their own


def test_load_sends_every_series_gets_each_back_and_reports_the_figures(tmp_path):
    receive_port = free_port()
    path, config = write_config(tmp_path, receive_port, iterations=20)
    node = start_node(path, config["port"])
    try:
        run = subprocess.run(
            [
                str(N2D),
                "load",
                *("--port", str(config["port"]), "--series", "4", "--scus", "2", "--slices", "3"),
                *("--interval", "0.5"),
                *("--side", "32", "--receive-ae", "PACS", "--receive-port", str(receive_port)),
                *("--status-url", f"http://127.0.0.1:{config['http_port']}/status", "--timeout", "120"),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        stop_node(node)
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout)
    assert (figures["series_completed"], figures["instances"]) == (4, 12)
    assert figures["instances_per_s_received"] > 0 and figures["series_per_s_completed"] > 0
    assert 0 < figures["c_store_s"]["p50"] <= figures["c_store_s"]["p95"] <= figures["c_store_s"]["max"]
    assert figures["end_to_end_s"]["p50"] > 0
    assert figures["node"]["count"] == 4
    assert figures["node"]["queue_wait_s"]["max"] >= 0


def test_load_fails_clearly_when_no_node_listens(tmp_path):
    run = subprocess.run(
        [
            str(N2D),
            "load",
            "--port",
            str(free_port()),
            "--receive-port",
            str(free_port()),
            "--status-url",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "association to N2D@127.0.0.1" in run.stderr
