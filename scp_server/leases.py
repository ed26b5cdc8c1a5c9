"""Who holds a piece of work, and whether they still can: owners, their liveness, and lease renewal.

Several worker processes (on one machine or many) take jobs and outbox rows.
Each claim names its owner (``host:pid:token``) and carries an expiry that the
owner renews while it works. A claim whose owner stopped renewing (killed,
frozen, cut off) expires and the work is taken again; a claim whose owner is a
dead process on this very host is taken at once, so a restarted node does not
wait out the lease of the process it replaces.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


def process_owner() -> str:
    """This process, as owners name it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_owner() -> str:
    """A claim owner unique to this process and call: ``host:pid:token``."""
    return f"{process_owner()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True only when ``owner`` is a process of this host that no longer exists."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextmanager
def renewed(renew: Callable[[], bool], every_s: float) -> Iterator[threading.Event]:
    """Call ``renew`` every ``every_s`` seconds while the block runs.

    Yields an event that is set when a renewal says the claim was lost (another
    worker may be redoing the work), so the holder can avoid finishing it twice.
    A renewal that raises (a full disk, a locked database) is logged and tried
    again at the next beat: the thread never dies of it.
    """
    stop, lost = threading.Event(), threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                still_ours = renew()
            except Exception:  # e.g. a full disk: try again next beat; the lease may still hold
                log.exception("lease renewal failed; trying again in %.1f s", every_s)
                continue
            if not still_ours:
                lost.set()
                return

    thread = threading.Thread(target=beat, name="lease-renewal", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        stop.set()
        thread.join()
