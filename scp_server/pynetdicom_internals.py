"""Every pynetdicom internal the node relies on, in one place, each with why; and the series they fit.

pynetdicom's public API has no hooks for what an exposed DICOM port needs, so
the node reaches into it in these places (written and tested against the
series in :data:`TESTED_SERIES`, which ``pyproject.toml`` pins):

1. ``AssociationSocket.ready`` is replaced process-wide (:func:`poll_for_readiness`):
   pynetdicom asks ``select.select`` whether a socket has data, and ``select``
   cannot watch a descriptor numbered 1024 or more. A process holding many
   connections (HTTP clients, say) would abort every new association at once.
2. ``_config.VALIDATORS["UI"]`` is replaced (:func:`judge_uids_ourselves`), so
   that a C-STORE with a malformed UID reaches the handler, which refuses it
   with 0xC211, instead of pynetdicom aborting the association.
3. :mod:`scp_server.transport` re-classes the ``AssociationSocket`` pynetdicom
   made for a connection (``_PrefixedSocket.adopt``), to serve the
   A-ASSOCIATE-RQ it read under its own limits, and bounds every later PDU.
4. :mod:`scp_server.transport` swaps ``Association.dimse`` for a provider that
   aborts on a command set pynetdicom cannot decode (its reactor thread would
   die) or on a message over ``max_instance_bytes``.
5. :mod:`scp_server.transport` wraps ``Association.acse.is_release_requested``,
   which the acceptor's reactor polls between requests, so that every request
   already received is answered before a release, and the release is recorded
   before A-RELEASE-RP goes out.
6. :mod:`scp_server.transport` appends its server to ``AE._servers``, as
   ``AE.start_server`` does, so that ``AE.shutdown`` finds it.
7. :mod:`scp_server.sender` cuts a C-STORE off at its deadline by shutting down
   ``Association.dul.socket.socket`` (pynetdicom reads a PDU whole, a trickled one
   for as long as each read comes within the network timeout) and putting
   ``(None, None)`` on ``Association.dimse.msg_queue``, which ``send_c_store`` takes
   for a DIMSE timeout.
8. :mod:`scp_server.transport` restarts ``Association.dul._idle_timer`` while
   requests received wait for their answers, so a peer that pipelined many and
   waits is not aborted as silent.
"""

from __future__ import annotations

import select
import ssl

from pynetdicom import _config
from pynetdicom.transport import AssociationSocket

#: The pynetdicom release series the internals above were read in; pyproject.toml admits only it.
TESTED_SERIES = (3, 0)


def _poll_ready(self: AssociationSocket) -> bool:
    """``AssociationSocket.ready`` by ``poll``: data waiting (or TLS bytes buffered), any descriptor number.

    Like pynetdicom's own, a socket that cannot be polled puts Evt17 (connection
    closed) on the state machine's queue.
    """
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        ready = bool(poller.poll(0))
    except (OSError, ValueError):
        self.event_queue.put("Evt17")
        return False
    if isinstance(sock, ssl.SSLSocket):
        return ready or bool(sock.pending())
    return ready


def poll_for_readiness() -> None:
    """Make every pynetdicom association socket in this process ask ``poll``, not ``select``."""
    AssociationSocket.ready = property(_poll_ready)  # type: ignore[assignment,method-assign]


def judge_uids_ourselves() -> None:
    """Let pynetdicom pass UIDs of any syntax up to the C-STORE handler, which judges them.

    pynetdicom aborts an association whose C-STORE request carries a UID it
    finds invalid (over 64 characters, say), so the sender hears nothing and
    retries forever; the handler instead answers 0xC211 and quarantines the
    instance (:func:`scp_server.spool.instance_of` applies :mod:`n2d_dicom.uids`).
    pynetdicom offers this only as process-wide configuration.
    """
    _config.VALIDATORS["UI"] = lambda value: (True, "")
