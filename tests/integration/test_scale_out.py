"""Scale-out as a site runs it: `n2d serve` only receiving, two `n2d worker` processes sharing the
spool, huey on a real redis-server; ten series from ten concurrent modalities; one worker killed
mid-job. Loopback only; everything stops by itself."""

import os
import signal
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from scp_server.tracker import SeriesTracker
from tests.integration.conftest import N2D, send_with_pynetdicom, start_node, stop_node, write_config
from tests.n2d_dicom.conftest import write_ct_series

pytestmark = pytest.mark.slow  # every test starts the node (n2d serve) or its peers in processes of their own

SERIES = 10


def start_worker(config_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(N2D), "worker", "--config", str(config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def held_by(tracker: SeriesTracker, pid: int) -> list[str]:
    """Series a worker process is processing now."""
    return [uid for uid, _, owner, _ in tracker.in_flight() if owner.split(":")[1] == str(pid)]


def test_two_workers_on_redis_denoise_and_deliver_each_series_once_despite_a_killed_worker(
    tmp_path, pacs, redis_url
):
    pacs_port, received = pacs
    path, config = write_config(tmp_path, pacs_port, iterations=60)  # jobs of a few seconds
    config.update(
        queue={"backend": "redis", "redis_url": redis_url},
        workers=0,
        job_lease_s=3,
        max_associations=20,
        threads=1,
    )
    path.write_text(yaml.safe_dump(config))
    folders = []
    for number in range(SERIES):
        folder = tmp_path / f"modality-{number}"
        folder.mkdir()
        write_ct_series(folder, [0.0, 2.5, 5.0, 7.5])
        folders.append(folder)

    node = start_node(path, config["port"])
    workers = [start_worker(path), start_worker(path)]
    tracker = SeriesTracker(Path(config["spool_dir"]) / "series.sqlite3", 0.5, 3600)
    try:
        with ThreadPoolExecutor(max_workers=SERIES) as modalities:
            for sent in [modalities.submit(send_with_pynetdicom, config["port"], f) for f in folders]:
                sent.result()

        victim = workers[0]
        deadline = time.monotonic() + 120
        while not (killed := held_by(tracker, victim.pid)):
            assert time.monotonic() < deadline, "the first worker never took a job"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)  # mid-job: no chance to clean up
        victim.wait()

        deadline = time.monotonic() + 240
        while tracker.counts() != {"done": SERIES} or len(received) < SERIES * 4:
            assert time.monotonic() < deadline, f"not finished: {tracker.counts()}, {len(received)} received"
            assert workers[1].poll() is None, workers[1].stderr.read().decode()
            time.sleep(0.2)
        time.sleep(2)  # anything sent twice would arrive now
        attempts = dict(
            tracker._db.query("SELECT series_instance_uid, attempts FROM series")  # noqa: SLF001
        )
    finally:
        tracker.close()
        for worker in workers:
            worker.send_signal(signal.SIGINT)
        for worker in workers:
            worker.wait(timeout=30)
        stop_node(node)

    per_series = Counter(ds.SeriesInstanceUID for ds in received)
    assert len(per_series) == SERIES
    copies = Counter(ds.SOPInstanceUID for ds in received)
    resent = [uid for uid, n in copies.items() if n > 1]
    assert len(resent) <= 1  # at most the instance in flight when the worker died
    assert all(n in (4, 4 + len(resent)) for n in per_series.values())
    assert len(copies) == SERIES * 4
    # Denoised once each; the killed worker's series twice (started, then redone elsewhere).
    assert sorted(attempts.values()) == [1] * (SERIES - 1) + [2]
    assert attempts[killed[0]] == 2
