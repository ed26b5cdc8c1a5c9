"""The node's commands of ``n2d`` as an operator runs them, in processes of their own."""

import sqlite3
import subprocess

import pytest
import yaml

from tests.helpers import N2D

pytestmark = pytest.mark.slow  # each test starts n2d


@pytest.mark.parametrize("command", ["status", "serve"])
def test_a_spool_of_another_schema_version_is_one_line_and_exit_1(tmp_path, command):
    spool = tmp_path / "spool"
    spool.mkdir()
    with sqlite3.connect(spool / "index.sqlite3") as index:
        index.execute("CREATE TABLE instances (sop_instance_uid TEXT)")
        index.execute("PRAGMA user_version = 99")
    config = tmp_path / "node.yaml"
    settings = {"spool_dir": str(spool), "allowed_calling_aets": ["X"], "http_port": 0}
    config.write_text(yaml.safe_dump(settings))
    run = subprocess.run(
        [str(N2D), command, "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert errors == [
        f"n2d: error: {spool / 'index.sqlite3'}: written with schema version 99, this n2d-dicom reads "
        "version 1; give the node a new spool_dir (or run the n2d-dicom that wrote it)"
    ], run.stderr
