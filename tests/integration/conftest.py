"""What the integration tests share: the node as a subprocess, a PACS, a Redis, the modalities' sends."""

import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.helpers import N2D, dcmtk, free_port


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else "node exited"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {port} after {timeout} s")


def write_config(tmp_path: Path, pacs_port: int, **n2d: object) -> tuple[Path, dict]:
    config = {
        "ae_title": "N2D",
        "port": free_port(),
        "http_port": free_port(),
        "allowed_calling_aets": ["STORESCU"],
        "spool_dir": str(tmp_path / "spool"),
        "quiet_period_s": 0.5,
        "device": "cpu",
        "send_backoff_s": 0.2,
        "routes": [
            {
                "name": "ct",
                "match": {"modalities": ["CT"]},
                "n2d": {"iterations": 3, "channels": 8, "mode": "per-series", **n2d},
                "destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}],
            }
        ],
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def start_node(config_path: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(N2D), "serve", "--config", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, process)
    return process


def stop_node(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def send_series(port: int, folder: Path) -> None:
    sent = subprocess.run(
        [
            dcmtk("storescu"),
            "-aet",
            "STORESCU",
            "-aec",
            "N2D",
            "127.0.0.1",
            str(port),
            *map(str, folder.iterdir()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sent.returncode == 0, sent.stderr


def wait_until(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        assert process.poll() is None, "the node exited"
        time.sleep(0.1)
    assert condition()


def metrics(http_port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()


def send_with_pynetdicom(port: int, folder: Path) -> None:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="N2D")
    assert assoc.is_established, f"rejected: {assoc.is_rejected}, aborted: {assoc.is_aborted}"
    assert [assoc.send_c_store(path).Status for path in sorted(folder.iterdir())] == [0] * 4
    assoc.release()


@pytest.fixture
def redis_url(tmp_path):
    """A redis-server of the test's own on loopback, no persistence."""
    server = shutil.which("redis-server")
    assert server, "redis-server not found: apt-get install redis-server"
    port = free_port()
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)
