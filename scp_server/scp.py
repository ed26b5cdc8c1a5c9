"""The pynetdicom AE and its event handlers: the only module of the node that knows pynetdicom's events.

Each C-STORE is answered after the instance is durably in the spool (status
0x0000), or with a failure status that says what happened to it:

- 0xC210 the dataset cannot be decoded: the bytes are quarantined with the reason;
- 0xC211 required identifiers (SOP Instance/Series/Study UID, SOP Class) are
  missing or malformed: quarantined with the reason;
- 0xA700 out of resources (disk full or not writable): nothing is kept, the
  sender should retry later.

Associations are accepted only from the configured calling AE titles, and only
when they call our own AE title.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedPETImageStorage,
    MRImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from scp_server.config import NodeSettings
from scp_server.spool import Spool, instance_of

log = logging.getLogger(__name__)

#: Image storage SOP classes the node accepts as an SCP.
STORAGE_SOP_CLASSES = (
    CTImageStorage,
    EnhancedCTImageStorage,
    MRImageStorage,
    EnhancedMRImageStorage,
    PositronEmissionTomographyImageStorage,
    EnhancedPETImageStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
)
#: Transfer syntaxes accepted for each of them: uncompressed and the common compressed ones.
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

StoredHook = Callable[[str, str], None]
EndedHook = Callable[[str], None]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210
MISSING_IDENTIFIERS = 0xC211


def association_key(event: Event) -> str:
    """An identifier for the association an event belongs to, unique while it lasts."""
    return f"{event.assoc.requestor.ae_title}-{id(event.assoc)}"


def handle_store(event: Event, spool: Spool, on_stored: StoredHook | None = None) -> int:
    """C-STORE: keep the instance durably, then answer; every failure has its own status.

    ``on_stored`` hears of every instance that is on disk (new or duplicate), with
    its association, so that series completion can be tracked.
    """
    calling = event.assoc.requestor.ae_title
    encoded = event.encoded_dataset()
    try:
        dataset = event.dataset
    except Exception as exc:  # pydicom raises many types for malformed data
        where = spool.quarantine(encoded, f"cannot decode dataset: {exc}", calling)
        log.warning("C-STORE from %s: undecodable dataset quarantined as %s (0xC210)", calling, where.name)
        return CANNOT_UNDERSTAND
    try:
        instance = instance_of(dataset)
        stored = spool.store(encoded, instance, calling)
    except (AttributeError, ValueError) as exc:
        where = spool.quarantine(encoded, str(exc), calling)
        log.warning("C-STORE from %s: %s; quarantined as %s (0xC211)", calling, exc, where.name)
        return MISSING_IDENTIFIERS
    except OSError as exc:
        reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else str(exc)
        log.error("C-STORE from %s: not stored (%s); peer must retry (0xA700)", calling, reason)
        return OUT_OF_RESOURCES
    if on_stored is not None:
        on_stored(instance.series_instance_uid, association_key(event))
    log.debug(
        "C-STORE from %s: %s %s/%s",
        calling,
        "stored" if stored else "duplicate of",
        instance.series_instance_uid,
        instance.sop_instance_uid,
    )
    return SUCCESS


def handle_echo(event: Event) -> int:
    """C-ECHO: we are here."""
    return SUCCESS


def _log_association(event: Event) -> None:
    """One line per association event, with AE titles and addresses only."""
    peer = event.assoc.requestor
    log.info(
        "association %s: %s (%s:%s) -> %s",
        event.event.name.removeprefix("EVT_").lower(),
        peer.ae_title,
        peer.address,
        peer.port,
        event.assoc.acceptor.ae_title,
    )


def build_ae(settings: NodeSettings) -> AE:
    """The AE with our title, policies and presentation contexts."""
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = True
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_s
    ae.add_supported_context(Verification)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae


def _association_ended(event: Event, on_ended: EndedHook | None) -> None:
    _log_association(event)
    if on_ended is not None:
        on_ended(association_key(event))


class SourceFilteredServer(ThreadedAssociationServer):
    """pynetdicom's server, closing connections from outside ``allowed_networks`` before any DICOM is read.

    A defence in depth beside the AE title allow-list (AE titles are not secrets).
    """

    allowed_networks: tuple[IPv4Network | IPv6Network, ...] = ()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """socketserver's hook: False closes the connection at once."""
        if not self.allowed_networks:
            return True
        host = ip_address(client_address[0])
        if any(host in network for network in self.allowed_networks):
            return True
        log.warning("connection from %s closed: not in allowed_source_networks", client_address[0])
        return False


def start_scp(
    settings: NodeSettings,
    spool: Spool,
    on_stored: StoredHook | None = None,
    on_ended: EndedHook | None = None,
) -> ThreadedAssociationServer:
    """Listen in background threads; call ``shutdown()`` on the result to stop.

    ``on_stored(series_uid, association)`` follows every stored instance and
    ``on_ended(association)`` every released or aborted association.
    """
    if not settings.allowed_calling_aets:
        raise ValueError("allowed_calling_aets is empty: configure who may store to this node")
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [spool, on_stored]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_ACCEPTED, _log_association),
        (evt.EVT_RELEASED, _association_ended, [on_ended]),
        (evt.EVT_ABORTED, _association_ended, [on_ended]),
        (evt.EVT_REJECTED, _log_association),
    ]
    server_class = type(
        "NodeServer", (SourceFilteredServer,), {"allowed_networks": tuple(settings.allowed_source_networks)}
    )
    ae = build_ae(settings)
    server = ae.make_server(
        (settings.bind_address, settings.port),
        evt_handlers=handlers,
        ssl_context=settings.tls.server_context() if settings.tls else None,
        server_class=server_class,
    )
    ae._servers.append(server)  # as AE.start_server does; the server's shutdown() removes it
    threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
    log.info(
        "listening as %s on %s:%s%s",
        settings.ae_title,
        settings.bind_address,
        settings.port,
        " (TLS)" if settings.tls else "",
    )
    return server
