"""The node's listener: pynetdicom's association server with the limits an exposed DICOM port needs.

pynetdicom 3.0's server hands each TCP connection to an association thread that
reads whatever the peer sends (a PDU of any declared length, as slowly as it
likes) before any AE title is checked, and counts those threads, negotiated or
not, against ``maximum_associations``. Its TLS handshake runs on the accepting
thread. Its acceptor reports an association's end only through events that a
failure of its own reactor skips. :class:`NodeServer` changes that:

- each connection first has to deliver one A-ASSOCIATE-RQ of at most
  ``max_association_request_bytes`` within ``acse_timeout_s`` of being
  accepted (TLS handshake included), read on the connection's own thread;
  anything else is closed after its 6-byte PDU header, and a request that
  cannot be decoded after it is read, all logged by address.
  At most ``max_pending_connections`` connections may be at that stage;
- only then does it take one of ``max_associations`` slots (or is answered
  A-ASSOCIATE-RJ, local limit exceeded) and become a pynetdicom association,
  whose slot is held until its threads have ended;
- ``on_closed(assoc, how)`` hears of every accepted association exactly once,
  however it ended: a release when every request before it was answered and
  before the release is (a peer ignoring the asynchronous operations window
  loses nothing), anything else after its threads (and so its event handlers)
  have finished;
- a DIMSE command set pynetdicom cannot decode aborts the association (logged)
  instead of killing its reactor thread (see :class:`_GuardedDIMSE`);
- an established association whose peer stalls inside a PDU is dropped after
  ``network_timeout_s`` (pynetdicom reads the rest of a PDU on a blocking socket).
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.events import Event
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_items import TransferSyntaxSubItem
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from scp_server.config import NodeSettings
from scp_server.pynetdicom_internals import poll_for_readiness

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom import AE

log = logging.getLogger(__name__)

#: ``on_closed(assoc, how)``: ``how`` is "released" after a clean A-RELEASE, else "aborted".
ClosedHook = Callable[[Association, str], None]

_PDU_HEADER = struct.Struct(">BBL")
_ASSOCIATE_RQ = 0x01
_ABORT = 0x07
_KNOWN_PDU_TYPES = range(0x01, 0x08)
# A-ABORT reasons (PS3.8 9.3.8), service-provider source
_UNRECOGNIZED_PDU = 0x01
_UNEXPECTED_PDU = 0x02
_INVALID_PARAMETER_VALUE = 0x06


#: Stands for a proposed transfer syntax UID over 64 characters: no transfer syntax the node accepts.
UNUSABLE_TRANSFER_SYNTAX = (
    "2.25.182182419394234334903893395062135114764"  # 2.25: uuid5 of n2d-dicom:unusable-transfer-syntax
)

#: Least bound on a PDU after the request, whatever maximum PDU size we announce.
MIN_PDU_READ = 1 << 20


def max_pdu_read(settings: NodeSettings, assoc: Association) -> int:
    """The longest PDU read from a peer: the request's bound, or a few of our announced maximum PDUs.

    Peers must not send PDUs longer than the maximum we announce; some do, by a
    little, so the bound is generous and only stops a peer that wants memory.
    """
    announced = assoc.acceptor.maximum_length or 0
    return max(settings.max_association_request_bytes, 4 * announced, MIN_PDU_READ)


def _address(client_address: Any) -> str:
    """``host:port`` of a peer, for logs (addresses only: nothing the peer chose to send)."""
    host, port = client_address[0], client_address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _usable_request(request: bytes) -> bytes:
    """The A-ASSOCIATE-RQ as pynetdicom can take it; raises (many types) when it cannot be decoded.

    A proposed transfer syntax UID over 64 characters decodes (the node judges
    UIDs itself, see :mod:`scp_server.pynetdicom_internals`) but then kills
    pynetdicom's state machine in Sta2, leaving the peer unanswered; it is
    replaced by :data:`UNUSABLE_TRANSFER_SYNTAX`, so that its presentation context
    is refused (transfer syntaxes not supported) like any other we cannot take.
    """
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(request)
    replaced = False
    for item in decoded.variable_items:
        for sub_item in getattr(item, "abstract_transfer_syntax_sub_items", []):
            if isinstance(sub_item, TransferSyntaxSubItem) and len(sub_item.transfer_syntax_name or "") > 64:
                sub_item.transfer_syntax_name = UNUSABLE_TRANSFER_SYNTAX
                replaced = True
    decoded.to_primitive()  # what pynetdicom does next, in its state machine
    return decoded.encode() if replaced else request


class _PrefixedSocket(AssociationSocket):
    """pynetdicom's socket wrapper, serving bytes already read from the connection before the rest.

    The A-ASSOCIATE-RQ is read before the association exists (to bound it);
    pynetdicom's state machine then reads it from here as if from the network.
    """

    unread: bytearray
    max_read: int

    @classmethod
    def adopt(cls, wrapper: AssociationSocket, unread: bytes, max_read: int) -> None:
        """Make ``wrapper`` (created by pynetdicom, already queued as connected) serve ``unread`` first.

        Re-classing keeps the one wrapper pynetdicom made: a second one would
        announce the connection to the state machine twice. ``max_read`` bounds
        every later read: pynetdicom reads a PDU whole, however long it says it is.
        """
        wrapper.__class__ = cls
        adopted = cast(_PrefixedSocket, wrapper)
        adopted.unread = bytearray(unread)
        adopted.max_read = max_read

    @property
    def ready(self) -> bool:
        """Data to read: buffered bytes, or what the network has."""
        if self.unread and self.socket is not None:
            return True
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def recv(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` from the buffer first, then from the network; a PDU over ``max_read`` is refused.

        Raising OSError is what pynetdicom's DUL takes as the connection lost
        (Evt17): the association ends, aborted, with nothing of the PDU buffered.
        """
        if nr_bytes > self.max_read:
            log.warning(
                "association from %s: a PDU of %d bytes, over the %d allowed; connection closed",
                _address((self.assoc.requestor.address, self.assoc.requestor.port)),
                nr_bytes,
                self.max_read,
            )
            self.close()
            raise OSError(f"PDU of {nr_bytes} bytes refused")
        if not self.unread:
            return super().recv(nr_bytes)
        data = self.unread[:nr_bytes]
        del self.unread[:nr_bytes]
        if len(data) < nr_bytes:
            data += super().recv(nr_bytes - len(data))
        return data


class _GuardedDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, aborting the association on a command set it cannot decode.

    Works around pynetdicom 3.0.4: ``DIMSEMessage.decode_msg``
    (dimse_messages.py, the ``_MESSAGE_TYPES[self.command_set.CommandField]``
    lookup) raises AttributeError or KeyError on a command set without a known
    Command Field; ``DIMSEServiceProvider.receive_primitive`` (dimse.py) calls it
    outside the try that guards ``message_to_primitive``; ``StateMachine.do_action``
    (fsm.py) re-raises, which ends the DUL reactor thread; and
    ``Association._run_reactor`` (association.py, ``if not self.dul.is_alive()``)
    then stops without EVT_ABORTED. Here the failure becomes what pynetdicom does
    for an undecodable message: Evt19 (invalid PDU), so the state machine sends
    an A-ABORT and the association ends as aborted, with its events.
    """

    max_message_bytes: int = 0
    received_bytes: int = 0

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Decode a P-DATA into a DIMSE message; an undecodable or oversized one aborts the association.

        pynetdicom keeps every fragment of a message in memory until its last
        one, so a message (an instance) larger than ``max_message_bytes`` is
        refused as it grows, not after.
        """
        if self.message is None:
            self.received_bytes = 0
        self.received_bytes += sum(len(data) for _, data in primitive.presentation_data_value_list)
        if self.max_message_bytes and self.received_bytes > self.max_message_bytes:
            peer = self.assoc.requestor
            log.warning(
                "association from %r (%s): a DIMSE message over max_instance_bytes (%d); aborting it",
                peer.ae_title,
                _address((peer.address, peer.port)),
                self.max_message_bytes,
            )
            self.message = None
            self.dul.event_queue.put("Evt19")
            return
        try:
            super().receive_primitive(primitive)
        except Exception as exc:  # pydicom and pynetdicom raise many types for malformed data
            peer = self.assoc.requestor
            log.warning(
                "association from %r (%s): DIMSE command set cannot be decoded (%s: %s); aborting it",
                peer.ae_title,
                _address((peer.address, peer.port)),
                type(exc).__name__,
                exc,
            )
            self.message = None
            self.dul.event_queue.put("Evt19")


class _Ending:
    """What an association's own events said about it (bound to that association only)."""

    def __init__(self) -> None:
        self.accepted = False
        self.ended_by_event = False
        self.reported = False

    def on_accepted(self, event: Event) -> None:
        self.accepted = True

    def on_ended(self, event: Event) -> None:
        self.ended_by_event = True


class _Connection(RequestHandler):
    """One TCP connection, on its own thread: negotiation under limits, then the association's lifetime."""

    server: NodeServer

    def handle(self) -> None:
        """Read the A-ASSOCIATE-RQ within bounds, take a slot, run the association, report its end."""
        try:
            request = self._read_association_request()
        finally:
            self.server._end_pending()
        if request is None:
            return
        if not self.server._take_slot():
            self._reject_local_limit(request)
            return
        try:
            assoc, ending = self._run_association(request)
        finally:
            self.server._free_slot()
        if ending.accepted and not ending.reported:
            self._report(assoc, ending)

    def finish(self) -> None:
        """Close the connection (a no-op when pynetdicom already has)."""
        self.server.shutdown_request(self.request)

    def _read_association_request(self) -> bytes | None:
        """The whole A-ASSOCIATE-RQ PDU, or None (logged) when the connection cannot be one."""
        settings = self.server.settings
        peer = _address(self.client_address)
        deadline = time.monotonic() + settings.acse_timeout_s
        try:
            if self.server.ssl_context is not None:
                self._handshake(self.server.ssl_context, deadline)
            header = self._read(_PDU_HEADER.size, deadline)
            if not header:
                log.debug("connection from %s closed before sending anything", peer)
                return None
            if len(header) < _PDU_HEADER.size:
                log.info("connection from %s closed inside a PDU header", peer)
                return None
            pdu_type, _, length = _PDU_HEADER.unpack(header)
            if pdu_type != _ASSOCIATE_RQ:
                known = pdu_type in _KNOWN_PDU_TYPES
                log.warning(
                    "connection from %s closed: %s PDU type 0x%02X before an A-ASSOCIATE-RQ",
                    peer,
                    "unexpected" if known else "unknown",
                    pdu_type,
                )
                if pdu_type != _ABORT:
                    self._abort(_UNEXPECTED_PDU if known else _UNRECOGNIZED_PDU)
                return None
            if length > settings.max_association_request_bytes:
                log.warning(
                    "connection from %s closed: A-ASSOCIATE-RQ of %d bytes, over "
                    "max_association_request_bytes (%d); not read",
                    peer,
                    length,
                    settings.max_association_request_bytes,
                )
                self._abort(_INVALID_PARAMETER_VALUE)
                return None
            body = self._read(length, deadline)
        except TimeoutError:
            log.warning(
                "connection from %s dropped: no complete A-ASSOCIATE-RQ within acse_timeout_s (%g s)",
                peer,
                settings.acse_timeout_s,
            )
            return None
        except OSError as exc:  # ssl.SSLError included
            log.info("connection from %s closed before association: %s", peer, exc)
            return None
        if len(body) < length:
            log.info("connection from %s closed inside its A-ASSOCIATE-RQ", peer)
            return None
        try:  # here, so that a request pynetdicom cannot decode never holds an association slot
            return _usable_request(header + body)
        except Exception as exc:  # pynetdicom raises many types for malformed items
            log.warning("connection from %s closed: A-ASSOCIATE-RQ cannot be decoded (%s)", peer, exc)
            self._abort(_INVALID_PARAMETER_VALUE)
            return None

    def _handshake(self, context: ssl.SSLContext, deadline: float) -> None:
        """TLS on this connection's thread, so a silent peer cannot stall the listener."""
        tls = context.wrap_socket(self.request, server_side=True, do_handshake_on_connect=False)
        self.request = tls
        tls.settimeout(max(deadline - time.monotonic(), 0.001))
        tls.do_handshake()  # CPython bounds the whole handshake by the socket's timeout

    def _read(self, count: int, deadline: float) -> bytes:
        """Up to ``count`` bytes (fewer only if the peer closed), all before ``deadline``."""
        sock = cast(socket.socket, self.request)
        data = bytearray()
        while len(data) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(min(count - len(data), 65536))
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def _send(self, pdu: bytes) -> None:
        """Best effort, briefly: the peer may already be gone."""
        sock = cast(socket.socket, self.request)
        try:
            sock.settimeout(1)
            sock.sendall(pdu)
        except OSError:
            pass

    def _abort(self, reason: int) -> None:
        abort = A_ABORT_RQ()
        abort.source = 0x02  # service provider
        abort.reason_diagnostic = reason
        self._send(abort.encode())

    def _reject_local_limit(self, request: bytes) -> None:
        """A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation), local limit exceeded."""
        calling = request[26:42].decode("ascii", "replace").strip()
        if self.server._count_rejection():
            log.warning(
                "association from %r (%s) rejected: max_associations (%d) associations in progress; "
                "further rejections are counted until one ends",
                calling,
                _address(self.client_address),
                self.server.settings.max_associations,
            )
        reject = A_ASSOCIATE_RJ()
        reject.result, reject.source, reject.reason_diagnostic = 0x02, 0x03, 0x02
        self._send(reject.encode())

    def _run_association(self, request: bytes) -> tuple[Association, _Ending]:
        """Hand the connection to pynetdicom and wait until all of the association's threads are done."""
        assoc = self._create_association()
        settings = self.server.settings
        _PrefixedSocket.adopt(
            cast(AssociationSocket, assoc.dul.socket), request, max_pdu_read(settings, assoc)
        )
        cast(socket.socket, self.request).settimeout(settings.network_timeout_s)
        assoc.dimse = _GuardedDIMSE(assoc)
        assoc.dimse.max_message_bytes = settings.max_instance_bytes
        ending = _Ending()
        self._answer_everything_before_release(assoc, ending)
        assoc.bind(evt.EVT_ACCEPTED, ending.on_accepted)
        assoc.bind(evt.EVT_RELEASED, ending.on_ended)
        assoc.bind(evt.EVT_ABORTED, ending.on_ended)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        assoc.join()
        if assoc.dul.ident is not None:
            assoc.dul.join()
        return assoc, ending

    def _answer_everything_before_release(self, assoc: Association, ending: _Ending) -> None:
        """Hold a peer's release until every request it sent before it is answered, then report it.

        pynetdicom's reactor serves one request, then looks for a release; a peer
        that ignores the 1/1 asynchronous operations window and releases right after
        a burst would have the rest of the burst dropped in silence and its
        association ended as released (the series declared complete without them).
        A release behind a half-received request is never answered: the network
        timeout aborts that association. While answers are owed the network timeout
        is held off (polled between requests, so the peer is not taken for silent).
        ``on_closed(assoc, "released")`` runs before A-RELEASE-RP goes out, so a crash
        after the peer's release keeps it a release.
        """
        requested = assoc.acse.is_release_requested
        dimse = cast(_GuardedDIMSE, assoc.dimse)

        def release_once_answered() -> bool:
            if not dimse.msg_queue.empty():
                # Requests received wait for their answers: the peer is waiting, not silent
                # (pynetdicom_internals item 8). Only a half-received one is left to time out.
                assoc.dul._idle_timer.restart()
                return False
            if dimse.message is not None:
                return False
            if not requested():
                return False
            ending.reported = True
            self._call_on_closed(assoc, "released")
            return True

        assoc.acse.is_release_requested = release_once_answered  # type: ignore[method-assign]

    def _report(self, assoc: Association, ending: _Ending) -> None:
        how = "released" if assoc.is_released else "aborted"
        if not ending.ended_by_event:
            log.warning(
                "association from %r (%s) ended without release or abort events "
                "(pynetdicom's reactor stopped); reported as aborted",
                assoc.requestor.ae_title,
                _address(self.client_address),
            )
        self._call_on_closed(assoc, how)

    def _call_on_closed(self, assoc: Association, how: str) -> None:
        on_closed = self.server.on_closed
        if on_closed is None:
            return
        try:
            on_closed(assoc, how)
        except Exception:
            log.exception("association from %r: on_closed failed", assoc.requestor.ae_title)


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the node's connection limits, source filter and end reports.

    Built by :meth:`pynetdicom.AE.make_server` (see :func:`serve`) with two extra
    keywords: ``settings`` (the limits, timeouts and ``allowed_source_networks``)
    and ``on_closed``.
    """

    daemon_threads = True
    #: The listen backlog: pynetdicom's 5 makes a burst of modalities wait a second for SYN retries.
    request_queue_size = 128

    def __init__(
        self,
        ae: AE,
        address: tuple[str, int] | tuple[str, int, int, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
        request_handler: Callable[..., Any] | None = None,
        *,
        settings: NodeSettings,
        on_closed: ClosedHook | None = None,
    ) -> None:
        self.settings = settings
        self.on_closed = on_closed
        self._lock = threading.Lock()
        self._pending = 0
        self._negotiated = 0
        self._refused_while_full = 0
        self._rejected_while_busy = 0
        super().__init__(
            ae, address, ae_title, contexts, ssl_context, evt_handlers, request_handler or _Connection
        )

    @property
    def pending_connections(self) -> int:
        """Connections accepted that have not yet delivered an A-ASSOCIATE-RQ."""
        return self._pending

    @property
    def negotiated_associations(self) -> int:
        """Associations holding one of the ``max_associations`` slots (negotiating, open or ending)."""
        return self._negotiated

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept only: the TLS handshake, if any, happens on the connection's thread."""
        return cast(socket.socket, self.socket).accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """socketserver's hook on the accepting thread: False closes the connection before anything is read.

        Closed: peers outside ``allowed_source_networks`` (defence in depth beside
        the AE title allow-list, as AE titles are not secrets), and any connection
        while ``max_pending_connections`` are still negotiating.
        """
        networks = self.settings.allowed_source_networks
        if networks and not any(ip_address(client_address[0]) in network for network in networks):
            log.warning("connection from %s closed: not in allowed_source_networks", client_address[0])
            return False
        with self._lock:
            if self._pending >= self.settings.max_pending_connections:
                if not self._refused_while_full:
                    log.warning(
                        "connection from %s closed: max_pending_connections (%d) connections are "
                        "negotiating; further refusals are counted until one finishes",
                        _address(client_address),
                        self.settings.max_pending_connections,
                    )
                self._refused_while_full += 1
                return False
            self._pending += 1
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread; if that fails, it was never pending."""
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._end_pending()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An unexpected error on a connection's thread: logged, not printed."""
        log.exception("connection from %s: unexpected error", _address(client_address))

    def _end_pending(self) -> None:
        with self._lock:
            self._pending -= 1
            refused, self._refused_while_full = self._refused_while_full, 0
        if refused > 1:
            log.warning("%d connections were refused while max_pending_connections were negotiating", refused)

    def _take_slot(self) -> bool:
        with self._lock:
            if self._negotiated >= self.settings.max_associations:
                return False
            self._negotiated += 1
            return True

    def _free_slot(self) -> None:
        with self._lock:
            self._negotiated -= 1
            rejected, self._rejected_while_busy = self._rejected_while_busy, 0
        if rejected > 1:
            log.warning(
                "%d more associations were rejected while max_associations (%d) were in progress",
                rejected - 1,
                self.settings.max_associations,
            )

    def _count_rejection(self) -> bool:
        """Count an association rejected for want of a slot; True for the first since one was free.

        A flood of associations must not become a flood of log lines.
        """
        with self._lock:
            self._rejected_while_busy += 1
            return self._rejected_while_busy == 1


def serve(
    ae: AE,
    settings: NodeSettings,
    evt_handlers: list[Any],
    on_closed: ClosedHook | None = None,
) -> NodeServer:
    """Listen on ``settings.bind_address:port`` (TLS if configured) in background threads.

    ``shutdown()`` on the result stops listening; associations in progress run
    to their end.
    """
    server = ae.make_server(
        (settings.bind_address, settings.port),
        evt_handlers=evt_handlers,
        ssl_context=settings.tls.server_context() if settings.tls else None,
        server_class=NodeServer,
        settings=settings,
        on_closed=on_closed,
    )
    poll_for_readiness()
    ae._servers.append(server)  # as AE.start_server does; the server's shutdown() removes it
    threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
    return cast(NodeServer, server)
