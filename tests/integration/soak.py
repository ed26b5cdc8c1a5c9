"""A bounded soak of the node with faults injected, ending with an exact account.

``python -m tests.integration.soak --seconds 180`` starts, all on 127.0.0.1: a
node (``n2d serve`` with ``workers: 0``) and one ``n2d worker`` whose spool is
a small tmpfs in a mount namespace held by a ``sleep`` process (so that kill -9
of the node keeps the files, and the disk can be filled), ``n2d load``'s
stand-in PACS, and M modalities sending ``n2d load``'s synthetic CT series for
``--seconds``. Modalities behave as real ones do: a refused instance (0xA700)
is sent again later, a series whose association broke is sent again whole.
While they send, faults are injected:

- ``peer_abort``: a series' association is aborted midway, then the series is
  sent again whole (``peer_abort_abandoned``: never sent again; the node must
  complete it with what it has after ``aborted_grace_s``);
- ``identical_resend``: instances of a series already delivered are sent again,
  unchanged (no second derived series may come of it);
- ``node_kill``: kill -9 of the node while a modality is mid-series, then a restart;
- ``worker_kill``: kill -9 of the worker while it holds a run, then a restart;
- ``destination_down``: the PACS stops, then starts again on the same port;
- ``disk_full``: the spool's tmpfs is filled, then freed;
- ``http_flood``: about 1,100 half-sent HTTP requests held open on the node's HTTP port;
- ``stow_trickle``: the route's second destination, a STOW-RS receiver, answers a byte at a
  time (past ``send_deadline_s``), then normally again.

The worker process runs ``workers`` threads (the node only receives and sends).

Then it waits (bounded) until ``n2d status`` shows nothing receiving, queued,
processing or pending delivery, stops everything it started, and accounts:
every acknowledged instance is in the spool (``lost`` = acknowledged but not
stored); every source series' last run reached the PACS as one complete derived
series (``duplicated series``: a second derived series for one run, or a run
that brought nothing new; a derived instance received twice is a
``duplicated delivery``, counted apart: a kill mid-send may repeat what was in
flight); no run failed. It prints one block of figures and exits 1 unless the
account is exact. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import BaseModel
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from scp_server.pynetdicom_internals import poll_for_readiness
from scp_server.tools.load import start_pacs, synthetic_series
from tests.helpers import free_port
from tests.peers.stow_rs import StowPeer

N2D = Path(sys.executable).with_name("n2d")
#: Faults injected over time, in turn.
TIMED_FAULTS = ("disk_full", "node_kill", "destination_down", "worker_kill", "http_flood", "stow_trickle")
#: Every kind of fault the soak injects; the CI test wants each at least once.
FAULT_KINDS = ("peer_abort", "peer_abort_abandoned", "identical_resend", *TIMED_FAULTS)
#: How a derived series names a later run (see scp_server.tasks.derivation_for_run).
RUN_SUFFIX = re.compile(r" run (\d+)$")
CALLING_AE = "SOAKMOD"
#: Prints the rows of a query (argv 2) on an SQLite file that must exist (argv 1), as JSON.
QUERY = (
    "import json, sqlite3, sys; db = sqlite3.connect(f'file:{sys.argv[1]}?mode=rw', uri=True, timeout=5); "
    "print(json.dumps(db.execute(sys.argv[2]).fetchall()))"
)


class SoakPlan(BaseModel):
    """How long and how hard to soak, and how often each fault comes."""

    seconds: float = 180
    scus: int = 3
    series_interval_s: float = 2.0
    min_slices: int = 4
    max_slices: int = 8
    sides: tuple[int, ...] = (64, 96, 128)
    seed: int = 1
    abort_every: int = 6
    abandon_every: int = 17
    fault_every_s: float = 20
    disk_full_s: float = 5
    destination_down_s: float = 8
    resend_every_s: float = 25
    retry_s: float = 90
    drain_s: float = 240
    tmpfs_mb: int = 96
    quiet_period_s: float = 0.5
    aborted_grace_s: float = 5
    job_lease_s: float = 3
    workers: int = 2
    http_flood_connections: int = 1100
    http_flood_s: float = 8
    stow_trickle_s: float = 8
    send_deadline_s: float = 3


class SoakFigures(BaseModel):
    """What a soak did and the account it ends with."""

    duration_s: float
    sending_s: float
    drain_s: float
    mount_namespace: bool
    series: int
    instances: int
    instances_sent: int
    acknowledged: int
    refused: dict[str, int]
    unanswered: int
    per_scu: dict[str, dict[str, int]]
    stored: int
    stored_unacknowledged: int
    lost: int
    lost_uids: list[str]
    series_fully_acknowledged: int
    series_expected: int
    series_delivered: int
    undelivered: list[str]
    derived_series_received: int
    runs: int
    duplicated_series: int
    duplicated_series_detail: list[str]
    duplicated_deliveries: int
    failed_runs: int
    unfinished: dict[str, int]
    outbox_pending: int
    faults: dict[str, int]
    worker_kills_mid_job: int
    node_kills_mid_series: int
    unexpected_exits: dict[str, int]
    healthz: str
    notes: list[str]

    def problems(self) -> list[str]:
        """What makes the account inexact (empty: every acknowledged instance kept, every series once)."""
        found = []
        if self.lost:
            found.append(f"{self.lost} acknowledged instance(s) not stored: {self.lost_uids}")
        if self.undelivered:
            found.append(f"{len(self.undelivered)} series not delivered complete: {self.undelivered}")
        if self.duplicated_series:
            found.append(
                f"{self.duplicated_series} duplicated derived series: {self.duplicated_series_detail}"
            )
        if self.failed_runs:
            found.append(f"{self.failed_runs} failed run(s)")
        if self.unfinished or self.outbox_pending:
            found.append(f"not finished after the drain: {self.unfinished}, {self.outbox_pending} pending")
        if self.unexpected_exits:
            found.append(f"processes that exited by themselves: {self.unexpected_exits}")
        if self.healthz != "ok":
            found.append(f"/healthz after the drain: {self.healthz}")
        return found


def mount_namespaces_work() -> bool:
    """Whether this process may make a mount namespace (root, or a user namespace allowing it)."""
    try:
        return subprocess.run(["unshare", "--mount", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Source:
    """One series a modality sends, and how."""

    uid: str
    datasets: list[Dataset]
    kind: str  # plain, abort-resend, abort-abandon
    not_before: float
    done: bool = False


@dataclass
class Ledger:
    """What the modalities did and what the PACS received, shared by the soak's threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    acknowledged: set[str] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)
    unanswered: int = 0
    mid_series: int = 0
    per_scu: dict[str, Counter[str]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    # derived SOP UID, derived series UID, description, referenced source SOP UID
    received: list[tuple[str, str, str, str]] = field(default_factory=list)
    resent_after_run: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        with self.lock:
            self.faults[kind] += 1

    def note(self, line: str) -> None:
        with self.lock:
            self.notes.append(line)

    def pacs_stored(self, derived: Dataset) -> None:
        reference = str(derived.SourceImageSequence[0].ReferencedSOPInstanceUID)
        row = (
            str(derived.SOPInstanceUID),
            str(derived.SeriesInstanceUID),
            str(derived.get("SeriesDescription", "")),
            reference,
        )
        with self.lock:
            self.received.append(row)


def derived_run(description: str) -> int:
    """The run a derived series came from, by its description (run 1 has no suffix)."""
    found = RUN_SUFFIX.search(description)
    return int(found.group(1)) if found else 1


class Site:
    """The processes the soak starts: mount namespace holder, node, worker, and the PACS in-process."""

    def __init__(self, workdir: Path, plan: SoakPlan, ledger: Ledger, namespace: bool) -> None:
        self.workdir = workdir
        self.plan = plan
        self.ledger = ledger
        self.namespace = namespace
        self.spool = workdir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.port, self.http_port, self.pacs_port = free_port(), free_port(), free_port()
        self.stow = StowPeer().start()
        self.config = workdir / "node.yaml"
        self.config.write_text(yaml.safe_dump(self.node_config()))
        self.holder: subprocess.Popen[bytes] | None = None
        self.node: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.pacs: Any = None
        self.pacs_lock = threading.Lock()
        self.unexpected: Counter[str] = Counter()
        self._logs: list[TextIO] = []

    def node_config(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "ae_title": "N2D",
            "port": self.port,
            "http_port": self.http_port,
            "allowed_calling_aets": [f"{CALLING_AE}{n}" for n in range(plan.scus + 1)],
            "spool_dir": str(self.spool),
            "quiet_period_s": plan.quiet_period_s,
            "aborted_grace_s": plan.aborted_grace_s,
            "max_wait_s": 3600,
            "device": "cpu",
            "threads": 1,
            "workers": 0,
            "job_lease_s": plan.job_lease_s,
            "outbox_retry_s": 1,
            "send_attempts": 2,
            "send_backoff_s": 0.2,
            "send_deadline_s": plan.send_deadline_s,
            "network_timeout_s": 10,
            "routes": [
                {
                    "name": "ct",
                    "match": {"modalities": ["CT"]},
                    "n2d": {"iterations": 3, "channels": 8, "mode": "per-series"},
                    "destinations": [
                        {"ae_title": "PACS", "host": "127.0.0.1", "port": self.pacs_port},
                        {"dicomweb": {"url": f"http://127.0.0.1:{self.stow.port}"}},
                    ],
                }
            ],
        }

    # -- where the spool is --------------------------------------------------------------------

    def enter(self) -> list[str]:
        """The command prefix that runs a command in the spool's mount namespace."""
        if self.holder is None:
            return []
        return ["nsenter", "--target", str(self.holder.pid), "--mount", "--"]

    def seen(self, path: Path) -> Path:
        """``path`` (in the namespace) as this process can open it."""
        if self.holder is None:
            return path
        return Path(f"/proc/{self.holder.pid}/root") / path.relative_to("/")

    def start_holder(self) -> None:
        """A ``sleep`` in its own mount namespace holding a tmpfs on the spool."""
        lifetime = int(self.plan.seconds + self.plan.retry_s + self.plan.drain_s + 600)
        script = (
            f"mount -t tmpfs -o size={self.plan.tmpfs_mb}m n2d-soak {self.spool} && exec sleep {lifetime}"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], start_new_session=True
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                raise RuntimeError("the mount namespace holder exited: cannot mount a tmpfs")
            mounts = Path(f"/proc/{self.holder.pid}/mounts").read_text()
            if f" {self.spool} tmpfs " in mounts:
                return
            time.sleep(0.05)
        raise RuntimeError("the spool's tmpfs did not appear within 15 s")

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, role: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{role}.log").open("a")
        self._logs.append(log)
        log.write(f"---- {role} started at {time.strftime('%H:%M:%S')}\n")
        log.flush()
        workers = 0 if role == "node" else self.plan.workers  # the environment wins over the YAML
        return subprocess.Popen(
            [*self.enter(), str(N2D), "serve" if role == "node" else "worker", "--config", str(self.config)],
            env={**os.environ, "N2D_WORKERS": str(workers)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start_node(self) -> None:
        self.node = self._spawn("node")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.node.poll() is not None:
                raise RuntimeError(f"the node exited on start; see {self.workdir / 'node.log'}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise TimeoutError("the node did not listen within 90 s")

    def start_worker(self) -> None:
        self.worker = self._spawn("worker")

    def check_alive(self) -> None:
        """Note (and restart) a node or worker that exited without being killed by the soak."""
        for role in ("node", "worker"):
            process = getattr(self, role)
            if process is not None and process.poll() is not None:
                self.unexpected[role] += 1
                self.ledger.note(f"the {role} exited by itself (code {process.returncode}); restarted")
                self.start_node() if role == "node" else self.start_worker()

    @staticmethod
    def kill(process: subprocess.Popen[bytes] | None) -> None:
        """kill -9 of the process group."""
        if process is None or process.poll() is not None:
            return
        with suppress_lookup():
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    @staticmethod
    def stop(process: subprocess.Popen[bytes] | None) -> None:
        """SIGINT (graceful), then kill -9 of the group after 30 s."""
        if process is None or process.poll() is not None:
            return
        with suppress_lookup():
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            Site.kill(process)

    def start_pacs(self) -> None:
        with self.pacs_lock:
            self.pacs = start_pacs("PACS", self.pacs_port, self.ledger.pacs_stored)

    def stop_pacs(self) -> None:
        with self.pacs_lock:
            if self.pacs is not None:
                self.pacs.shutdown()
                self.pacs = None

    def close(self, keep: bool) -> None:
        """Stop everything started, whatever state it is in; with ``keep``, copy the tmpfs spool out."""
        for process in (self.worker, self.node):
            self.stop(process)
        self.stop_pacs()
        self.stow.stop()
        if keep and self.holder is not None and self.holder.poll() is None:
            shutil.copytree(self.seen(self.spool), self.workdir / "spool-copy", dirs_exist_ok=True)
        self.kill(self.holder)
        for log in self._logs:
            log.close()

    # -- what the node says ------------------------------------------------------------------

    def status(self) -> dict[str, Any] | None:
        """``n2d status --json`` (None if it could not answer)."""
        try:
            shown = subprocess.run(
                [*self.enter(), str(N2D), "status", "--config", str(self.config), "--json"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return None
        if shown.returncode != 0:
            return None
        answer: dict[str, Any] = json.loads(shown.stdout)
        return answer

    def query(self, database: str, sql: str) -> list[list[Any]]:
        """Rows of a query that only reads one of the spool's SQLite files ([] if it cannot be read now).

        It runs in the spool's mount namespace: SQLite resolves ``/proc/PID/root`` as a
        symbolic link, so that path would open the file of this namespace instead.
        """
        command = [*self.enter(), sys.executable, "-I", "-c", QUERY, str(self.spool / database), sql]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return []
        if done.returncode != 0:
            return []
        rows: list[list[Any]] = json.loads(done.stdout)
        return rows

    def healthz(self) -> str:
        """What ``/healthz`` answers now, on one line ("ok" when healthy)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=10) as answer:
                return " | ".join(answer.read().decode().split("\n")).strip(" |")
        except urllib.error.HTTPError as exc:
            return f"{exc.code}: " + " | ".join(exc.read().decode().split("\n")).strip(" |")
        except OSError as exc:
            return f"no answer ({exc})"

    def fill_disk(self) -> None:
        subprocess.run(
            [*self.enter(), "sh", "-c", f"cat /dev/zero > {self.spool}/filler 2>/dev/null; true"],
            timeout=60,
            check=True,
        )

    def free_disk(self) -> None:
        subprocess.run([*self.enter(), "rm", "-f", f"{self.spool}/filler"], timeout=60, check=True)


@contextmanager
def suppress_lookup() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


class Modality:
    """A C-STORE SCU that behaves like a modality: what was refused or cut off is sent again."""

    def __init__(self, site: Site, ledger: Ledger, number: int, deadline: float) -> None:
        self.site = site
        self.ledger = ledger
        self.ae_title = f"{CALLING_AE}{number}"
        self.deadline = deadline

    def store(self, datasets: list[Dataset], abort_after: int | None = None) -> tuple[bool, list[Dataset]]:
        """One association: ``(it ended with a release, the datasets not acknowledged)``.

        With ``abort_after``, the association is aborted after that many acknowledged instances.
        """
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        assoc = ae.associate("127.0.0.1", self.site.port, ae_title="N2D")
        if not assoc.is_established:
            return False, datasets
        left: list[Dataset] = []
        acknowledged = 0
        try:
            for number, ds in enumerate(datasets):
                if abort_after is not None and acknowledged >= abort_after:
                    assoc.abort()
                    return False, datasets[number:] + left
                with self.ledger.lock:
                    self.ledger.sent += 1
                    self.ledger.mid_series += acknowledged > 0
                try:
                    answer = assoc.send_c_store(ds)
                finally:
                    with self.ledger.lock:
                        self.ledger.mid_series -= acknowledged > 0
                status = answer.get("Status") if answer else None
                with self.ledger.lock:
                    mine = self.ledger.per_scu.setdefault(self.ae_title, Counter())
                    mine["sent"] += 1
                    if status is None:
                        self.ledger.unanswered += 1
                        mine["unanswered"] += 1
                    elif status == 0x0000:
                        self.ledger.acknowledged.add(str(ds.SOPInstanceUID))
                        mine["acknowledged"] += 1
                    else:
                        self.ledger.refused[f"0x{status:04X}"] += 1
                        mine["refused"] += 1
                if status is None:
                    return False, datasets[number:] + left
                if status == 0x0000:
                    acknowledged += 1
                else:
                    left.append(ds)
            assoc.release()
            return True, left
        finally:
            if assoc.is_established:
                assoc.abort()

    def send(self, source: Source, rng: random.Random) -> None:
        """Send a series until every instance is acknowledged (or the deadline passes)."""
        time.sleep(max(0.0, source.not_before - time.time()))
        if source.kind != "plain":
            cut = rng.randint(1, len(source.datasets) - 1)
            self.store(source.datasets, abort_after=cut)
            self.ledger.count("peer_abort" if source.kind == "abort-resend" else "peer_abort_abandoned")
            if source.kind == "abort-abandon":
                source.done = True
                return
            time.sleep(0.5)  # then the modality sends the series again, whole
        todo, backoff = source.datasets, 0.5
        for _ in range(1000):
            if time.time() > self.deadline:
                self.ledger.note(f"series {source.uid}: gave up at the deadline")
                return
            released, left = self.store(todo)
            if released and not left:
                source.done = True
                return
            todo = left if released else source.datasets  # a broken association: the whole series again
            time.sleep(backoff)
            backoff = min(backoff * 2, 4.0)


def run_modality(modality: Modality, work: list[Source], lock: threading.Lock, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        with lock:
            if not work:
                return
            source = work.pop(0)
        modality.send(source, rng)


class Faults:
    """Faults over time (one at a time, in turn), and identical re-sends of delivered series."""

    def __init__(self, site: Site, ledger: Ledger, sources: list[Source], plan: SoakPlan, t0: float) -> None:
        self.site, self.ledger, self.sources, self.plan, self.t0 = site, ledger, sources, plan, t0
        self.stop = threading.Event()
        self.mid_job = 0
        self.mid_series = 0
        self.source_of = {str(ds.SOPInstanceUID): s.uid for s in sources for ds in s.datasets}

    def timed(self) -> None:
        """Inject the timed faults at even intervals over the sending time, each kind in turn."""
        plan = self.plan
        count = max(len(TIMED_FAULTS), round(plan.seconds / plan.fault_every_s))
        for number in range(count):
            at = self.t0 + plan.seconds * (number + 0.5) / count
            while time.time() < at and not self.stop.is_set():
                self.site.check_alive()
                self.stop.wait(min(0.5, max(0.0, at - time.time())))
            if self.stop.is_set():
                return
            kind = TIMED_FAULTS[number % len(TIMED_FAULTS)]
            if kind == "disk_full" and not self.site.namespace:
                continue
            try:
                getattr(self, kind)()
                self.ledger.count(kind)
            except Exception as exc:  # noted, and the soak goes on: the account says what it did
                self.ledger.note(f"fault {kind} could not be injected: {exc}")

    def disk_full(self) -> None:
        """Fill the spool's disk while a run is in hand if one comes (receptions get 0xA700 anyway)."""
        self.wait_for_processing(10)
        self.site.fill_disk()
        try:
            self.stop.wait(self.plan.disk_full_s)
        finally:
            self.site.free_disk()

    def node_kill(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.ledger.mid_series:
            time.sleep(0.005)
        self.mid_series += bool(self.ledger.mid_series)
        self.site.kill(self.site.node)
        time.sleep(1)
        self.site.start_node()

    def wait_for_processing(self, seconds: float) -> bool:
        """Wait (at most ``seconds``) until the worker holds a run; whether it does."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stop.is_set():
            if self.site.query("series.sqlite3", "SELECT 1 FROM series WHERE state = 'processing'"):
                return True
            time.sleep(0.2)
        return False

    def worker_kill(self) -> None:
        self.mid_job += self.wait_for_processing(20)
        self.site.kill(self.site.worker)
        time.sleep(1)
        self.site.start_worker()

    def destination_down(self) -> None:
        self.site.stop_pacs()
        try:
            self.stop.wait(self.plan.destination_down_s)
        finally:
            self.site.start_pacs()

    def http_flood(self) -> None:
        """Hold many half-sent HTTP requests open on the node's HTTP port while modalities send."""
        held: list[socket.socket] = []
        try:
            for _ in range(self.plan.http_flood_connections):
                try:
                    sock = socket.create_connection(("127.0.0.1", self.site.http_port), timeout=5)
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: soak\r\n")
                    held.append(sock)
                except OSError:  # closed at once by the node's cap, or the node restarting
                    continue
            self.stop.wait(self.plan.http_flood_s)
        finally:
            for sock in held:
                sock.close()

    def stow_trickle(self) -> None:
        """The STOW-RS destination answers a byte every 0.2 s for a while (its requests are cut off)."""
        self.site.stow.trickle_s = 0.2
        try:
            self.stop.wait(self.plan.stow_trickle_s)
        finally:
            self.site.stow.trickle_s = 0.0

    def resends(self) -> None:
        """Now and then, send two instances of a series already delivered again, unchanged."""
        plan = self.plan
        modality = Modality(self.site, self.ledger, 0, self.t0 + plan.seconds + plan.retry_s)
        count = max(1, round(plan.seconds / plan.resend_every_s))
        for number in range(count):
            at = self.t0 + plan.seconds * (number + 0.7) / count
            self.stop.wait(max(0.0, at - time.time()))
            for _ in range(20):  # bounded: a candidate, acknowledged, or give up on this turn
                if self.stop.is_set():
                    return
                candidate = self._delivered_series()
                if candidate is None:
                    self.stop.wait(1)
                    continue
                source, run = candidate
                released, left = modality.store(source.datasets[:2])
                if released and not left:
                    with self.ledger.lock:
                        self.ledger.resent_after_run[source.uid] = run
                    self.ledger.count("identical_resend")
                    break
                self.stop.wait(1)

    def _delivered_series(self) -> tuple[Source, int] | None:
        """A plain series, every instance acknowledged, whose latest derived run the PACS has whole."""
        with self.ledger.lock:
            received = list(self.ledger.received)
            resent = set(self.ledger.resent_after_run)
        runs: dict[str, dict[int, set[str]]] = {}
        for _, _, description, reference in received:
            series = self.source_of.get(reference, "?")
            runs.setdefault(series, {}).setdefault(derived_run(description), set()).add(reference)
        for source in self.sources:
            if source.kind != "plain" or not source.done or source.uid in resent:
                continue
            seen = runs.get(source.uid)
            if seen and seen[max(seen)] == {str(ds.SOPInstanceUID) for ds in source.datasets}:
                return source, max(seen)
        return None


def make_sources(plan: SoakPlan, t0: float) -> list[Source]:
    """The series to send, one every ``series_interval_s`` over ``seconds``, some to be aborted."""
    rng = random.Random(plan.seed)
    count = max(1, int(plan.seconds / plan.series_interval_s))
    sources = []
    for number in range(count):
        slices = rng.randint(plan.min_slices, plan.max_slices)
        datasets = synthetic_series(slices, rng.choice(plan.sides), plan.seed * 100_000 + number)
        kind = "plain"
        if number % plan.abandon_every == plan.abandon_every // 2:
            kind = "abort-abandon"
        elif number % plan.abort_every == plan.abort_every - 1:
            kind = "abort-resend"
        at = t0 + number * plan.series_interval_s
        sources.append(Source(str(datasets[0].SeriesInstanceUID), datasets, kind, at))
    return sources


def drain(site: Site, plan: SoakPlan) -> tuple[dict[str, int], int]:
    """Wait until nothing is receiving, queued, processing or pending delivery; what is left if not."""
    deadline = time.monotonic() + plan.drain_s
    unfinished: dict[str, int] = {}
    pending = 0
    idle_polls = 0
    while time.monotonic() < deadline:
        site.check_alive()
        shown = site.status()
        if shown is not None:
            series = shown["series"]
            unfinished = {s: series[s] for s in ("receiving", "queued", "processing") if series.get(s)}
            pending = sum(states.get("pending", 0) for states in shown["outbox"].values())
            idle_polls = idle_polls + 1 if not unfinished and not pending else 0
            if idle_polls >= 2:
                return {}, 0
        time.sleep(1)
    return unfinished, pending


def run_soak(plan: SoakPlan, workdir: Path | None = None, out: Callable[[str], None] = print) -> SoakFigures:
    """Soak a node for ``plan.seconds`` with faults, drain it, stop it, and return the account."""
    started = time.time()
    poll_for_readiness()  # the modalities' sockets number past 1023 during the HTTP flood
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    pynetdicom_log = logging.getLogger("pynetdicom")
    level = pynetdicom_log.level
    pynetdicom_log.setLevel(logging.CRITICAL)  # refused associations are the faults, not news
    own_dir = workdir is None
    root = Path(tempfile.mkdtemp(prefix="n2d-soak-")) if workdir is None else workdir
    root = root.resolve()
    ledger = Ledger()
    namespace = mount_namespaces_work()
    if not namespace:
        ledger.note("no mount namespace here (needs root): spool on plain disk, no disk_full fault")
    site = Site(root, plan, ledger, namespace)
    threads: list[threading.Thread] = []
    faults: Faults | None = None
    try:
        if namespace:
            site.start_holder()
        site.start_pacs()
        site.start_node()
        site.start_worker()
        out(f"soak: node on 127.0.0.1:{site.port}, PACS on {site.pacs_port}, files in {root}")
        t0 = time.time() + 1
        sources = make_sources(plan, t0)
        work, lock = list(sources), threading.Lock()
        deadline = t0 + plan.seconds + plan.retry_s
        for number in range(1, plan.scus + 1):
            modality = Modality(site, ledger, number, deadline)
            threads.append(
                threading.Thread(
                    target=run_modality, args=(modality, work, lock, plan.seed + number), daemon=True
                )
            )
        faults = Faults(site, ledger, sources, plan, t0)
        timed = threading.Thread(target=faults.timed, daemon=True)
        resends = threading.Thread(target=faults.resends, daemon=True)
        for thread in [*threads, timed, resends]:
            thread.start()
        for thread in threads:
            thread.join(max(1.0, deadline + 30 - time.time()))
        timed.join(180)  # the faults scheduled last come, even once the modalities are done
        sending_s = time.time() - t0
        faults.stop.set()
        resends.join(60)
        out(f"soak: sent for {sending_s:.0f} s; draining")
        drained = time.time()
        unfinished, pending = drain(site, plan)
        drain_s = time.time() - drained
        time.sleep(1)  # a delivery answered just now is recorded by the PACS thread
        healthz = site.healthz()
        site.stop(site.worker)
        site.stop(site.node)
        figures = account(site, ledger, sources, faults, unfinished, pending)
        return figures.model_copy(
            update={
                "healthz": healthz,
                "duration_s": round(time.time() - started, 1),
                "sending_s": round(sending_s, 1),
                "drain_s": round(drain_s, 1),
            }
        )
    finally:
        if faults is not None:
            faults.stop.set()
        site.close(keep=not own_dir)
        pynetdicom_log.setLevel(level)
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def account(
    site: Site,
    ledger: Ledger,
    sources: list[Source],
    faults: Faults,
    unfinished: dict[str, int],
    pending: int,
) -> SoakFigures:
    """The exact account, from the ledger, the spool's index and the tracker (node stopped)."""
    rows = site.query("index.sqlite3", "SELECT sop_instance_uid, series_instance_uid, path FROM instances")
    stored_in: dict[str, set[str]] = {}
    stored: set[str] = set()
    for sop, series, path in rows:
        where = Path(path) if Path(path).is_absolute() else site.spool / path
        if site.seen(where).is_file():
            stored.add(sop)
            stored_in.setdefault(series, set()).add(sop)
    tracker = {
        uid: (int(run), str(state))
        for uid, run, state in site.query(
            "series.sqlite3", "SELECT series_instance_uid, run, state FROM series"
        )
    }
    with ledger.lock:
        acknowledged = set(ledger.acknowledged)
        received = list(ledger.received)
    lost = sorted(acknowledged - stored)
    source_of = {str(ds.SOPInstanceUID): s.uid for s in sources for ds in s.datasets}

    # derived series by source series, then by derived Series Instance UID
    derived: dict[str, dict[str, dict[str, Any]]] = {}
    deliveries: Counter[str] = Counter()
    for sop, series, description, reference in received:
        deliveries[sop] += 1
        entry = derived.setdefault(source_of.get(reference, "?"), {}).setdefault(
            series, {"run": derived_run(description), "sops": set(), "references": set()}
        )
        entry["sops"].add(sop)
        entry["references"].add(reference)

    duplicated: list[str] = []
    undelivered: list[str] = []
    expected = delivered = 0
    for source in sources:
        kept = stored_in.get(source.uid, set())
        got = derived.get(source.uid, {})
        by_run: dict[int, list[dict[str, Any]]] = {}
        for entry in got.values():
            by_run.setdefault(entry["run"], []).append(entry)
        for run, entries in sorted(by_run.items()):
            if len(entries) > 1:
                duplicated.append(f"{source.uid} run {run}: {len(entries)} derived series")
            earlier = [e for r, es in by_run.items() if r < run for e in es]
            if any(e["references"] == entries[0]["references"] for e in earlier):
                duplicated.append(f"{source.uid} run {run}: nothing new since an earlier run")
        resent_after = ledger.resent_after_run.get(source.uid)
        if resent_after is not None and any(run > resent_after for run in by_run):
            duplicated.append(f"{source.uid}: a run after an identical re-send (was run {resent_after})")
        if not kept:
            continue
        expected += 1
        final = tracker.get(source.uid, (0, "unknown"))[0]
        last = by_run.get(final, [])
        if len(last) == 1 and last[0]["references"] == kept and len(last[0]["sops"]) == len(kept):
            delivered += 1
        else:
            undelivered.append(f"{source.uid} (run {final}, {len(kept)} stored, derived {sorted(by_run)})")

    fully = sum(1 for s in sources if {str(ds.SOPInstanceUID) for ds in s.datasets} <= acknowledged)
    with ledger.lock:
        return SoakFigures(
            duration_s=0,
            sending_s=0,
            drain_s=0,
            mount_namespace=site.namespace,
            series=len(sources),
            instances=sum(len(s.datasets) for s in sources),
            instances_sent=ledger.sent,
            acknowledged=len(acknowledged),
            refused=dict(ledger.refused),
            unanswered=ledger.unanswered,
            per_scu={ae: dict(counts) for ae, counts in sorted(ledger.per_scu.items())},
            stored=len(stored),
            stored_unacknowledged=len(stored - acknowledged),
            lost=len(lost),
            lost_uids=lost[:10],
            series_fully_acknowledged=fully,
            series_expected=expected,
            series_delivered=delivered,
            undelivered=undelivered[:20],
            derived_series_received=sum(len(d) for d in derived.values()),
            runs=sum(run for run, _ in tracker.values()),
            duplicated_series=len(duplicated),
            duplicated_series_detail=duplicated[:20],
            duplicated_deliveries=sum(n - 1 for n in deliveries.values()),
            failed_runs=sum(1 for _, state in tracker.values() if state == "failed"),
            unfinished=unfinished,
            outbox_pending=pending,
            faults={kind: ledger.faults[kind] for kind in FAULT_KINDS},
            worker_kills_mid_job=faults.mid_job,
            node_kills_mid_series=faults.mid_series,
            unexpected_exits=dict(site.unexpected),
            healthz="",
            notes=list(ledger.notes),
        )


def describe(figures: SoakFigures) -> str:
    """One block of figures for a person."""
    f = figures
    refused = ", ".join(f"{n} x {code}" for code, n in sorted(f.refused.items())) or "none"
    faults = ", ".join(f"{kind} {n}" for kind, n in f.faults.items())
    lines = [
        f"duration               {f.duration_s} s (sending {f.sending_s} s, drain {f.drain_s} s)",
        f"series                 {f.series} ({f.instances} instances); "
        f"{f.series_fully_acknowledged} fully acknowledged",
        f"instances sent         {f.instances_sent} C-STORE requests",
        f"acknowledged           {f.acknowledged} distinct instances (0x0000)",
        f"refused                {refused}; {f.unanswered} unanswered (association cut)",
        "per SCU                "
        + "; ".join(
            f"{ae}: {c.get('sent', 0)} sent, {c.get('acknowledged', 0)} answered 0x0000, "
            f"{c.get('refused', 0)} refused, {c.get('unanswered', 0)} unanswered"
            for ae, c in f.per_scu.items()
        ),
        f"stored                 {f.stored} ({f.stored_unacknowledged} stored but never acknowledged)",
        f"lost                   {f.lost}",
        f"derived series         {f.derived_series_received} received for {f.runs} runs; "
        f"{f.series_delivered}/{f.series_expected} series delivered whole (last run)",
        f"duplicated series      {f.duplicated_series}",
        f"duplicated deliveries  {f.duplicated_deliveries} (same derived instance received again)",
        f"faults injected        {faults}",
        f"                       worker kills mid-job {f.worker_kills_mid_job}, "
        f"node kills mid-series {f.node_kills_mid_series}, mount namespace {f.mount_namespace}",
        f"failed runs            {f.failed_runs}",
        f"/healthz at the end    {f.healthz}",
    ]
    lines += [f"note                   {note}" for note in f.notes]
    problems = f.problems()
    lines.append("account                " + ("EXACT" if not problems else "NOT EXACT"))
    lines += [f"problem                {problem}" for problem in problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=180, help="How long the modalities send.")
    parser.add_argument("--scus", type=int, default=3, help="Modalities sending at once.")
    parser.add_argument("--interval", type=float, default=2.0, help="Seconds between two series' starts.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="Keep the spool copy, logs and config in this folder.")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args(argv)
    plan = SoakPlan(seconds=args.seconds, scus=args.scus, series_interval_s=args.interval, seed=args.seed)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup runs on SIGTERM too
    try:
        figures = run_soak(plan, args.keep, out=lambda line: print(line, file=sys.stderr))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(figures.model_dump_json(indent=2) if args.json else describe(figures))
    return 1 if figures.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
