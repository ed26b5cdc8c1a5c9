"""The pynetdicom AE and its event handlers: the only module of the node that knows pynetdicom's events.

Each C-STORE is answered after the instance is durably in the spool (status
0x0000), or with a failure status that says what happened to it:

- 0xC210 the dataset cannot be decoded: the bytes are quarantined with the reason;
- 0xC211 required identifiers (SOP Instance/Series/Study UID, SOP Class) are
  missing or malformed: quarantined with the reason;
- 0xA900 content no run could use: an element too long for its VR (sent as UN,
  or in implicit VR), or uncompressed Pixel Data shorter than the image
  attributes say: quarantined with the reason;
- 0xA700 out of resources (disk full or not writable): nothing is kept, the
  sender should retry later.

Associations are accepted only from the configured calling AE titles, and only
when they call our own AE title.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from pydicom.uid import (
    JPEG2000,
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
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from n2d_dicom.sop_classes import DENOISABLE_SOP_CLASSES
from n2d_dicom.uids import printable
from scp_server.config import NodeSettings
from scp_server.leases import process_owner
from scp_server.pynetdicom_internals import judge_uids_ourselves
from scp_server.spool import InvalidIdentifiers, Outcome, Spool, content_problem, instance_of
from scp_server.transport import NodeServer, serve

log = logging.getLogger(__name__)

#: Transfer syntaxes accepted for each of them: uncompressed and the common compressed ones. Not
#: Deflated Explicit VR Little Endian: pynetdicom inflates it with no bound while the association
#: lasts (a small message can take gigabytes), and modalities do not send images that way.
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
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

StoredHook = Callable[[str, str, Outcome], None]
EndedHook = Callable[[str, bool], None]
"""``(association key, aborted)``: every accepted association once it has ended; released or not."""

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210
MISSING_IDENTIFIERS = 0xC211


def association_key(assoc: Association) -> str:
    """An identifier for an association, unique while it lasts: ``host:pid:id``.

    It names this process (as :func:`scp_server.leases.process_owner` does), so
    that a restarted node knows which associations died with the process before it.
    """
    return f"{process_owner()}:{id(assoc):x}"


def handle_store(event: Event, spool: Spool, on_stored: StoredHook | None = None) -> int:
    """C-STORE: keep the instance durably, then answer; every failure has its own status.

    ``on_stored`` hears of every instance that is on disk (new, duplicate or
    changed), with its association, so that series completion can be tracked;
    if it cannot record that (its database is not writable), the instance is
    kept but answered 0xA700, and the peer's retry is then a duplicate that is
    recorded. Each refusal is one log line.
    """
    calling = printable(event.assoc.requestor.ae_title)
    encoded = event.encoded_dataset()
    try:
        dataset = event.dataset
        instance = instance_of(dataset)
        announced = str(getattr(event.request, "AffectedSOPInstanceUID", None) or "")
        if announced != instance.sop_instance_uid:  # the peer would believe another instance stored
            raise InvalidIdentifiers(
                f"SOPInstanceUID {printable(instance.sop_instance_uid)} differs from the request's "
                f"Affected SOP Instance UID {printable(announced)}"
            )
        unprocessable = content_problem(dataset, str(event.context.transfer_syntax))
    except InvalidIdentifiers as exc:
        return _refuse(spool, encoded, calling, str(exc), MISSING_IDENTIFIERS)
    except Exception as exc:  # pydicom raises many types for malformed data
        return _refuse(spool, encoded, calling, f"cannot decode dataset: {exc}", CANNOT_UNDERSTAND)
    if unprocessable is not None:
        return _refuse(spool, encoded, calling, unprocessable, DOES_NOT_MATCH_SOP_CLASS)
    try:
        outcome = spool.store(encoded, instance, calling)
        if on_stored is not None:
            on_stored(instance.series_instance_uid, association_key(event.assoc), outcome)
    except InvalidIdentifiers as exc:
        return _refuse(spool, encoded, calling, str(exc), MISSING_IDENTIFIERS)
    except (OSError, sqlite3.Error) as exc:
        log.error("C-STORE from %s: not recorded (%s); peer must retry (0xA700)", calling, _why(exc))
        return OUT_OF_RESOURCES
    log.debug(
        "C-STORE from %s: %s %s/%s",
        calling,
        outcome.value,
        instance.series_instance_uid,
        instance.sop_instance_uid,
    )
    return SUCCESS


def _refuse(spool: Spool, encoded: bytes, calling: str, reason: str, status: int) -> int:
    """Quarantine a refused instance with its reason and answer ``status`` (0xA700 if it cannot be kept)."""
    try:
        where = spool.quarantine(encoded, reason, calling)
    except (OSError, sqlite3.Error) as exc:
        log.error("C-STORE from %s: refused (%s), not quarantined (%s) (0xA700)", calling, reason, _why(exc))
        return OUT_OF_RESOURCES
    log.warning("C-STORE from %s: %s; quarantined as %s (0x%04X)", calling, reason, where.name, status)
    return status


def _why(exc: BaseException) -> str:
    """A failure to write, in an operator's words."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    return printable(str(exc), 200)


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
    ae.acse_timeout = settings.acse_timeout_s
    ae.add_supported_context(Verification)
    for sop_class in accepted_sop_classes(settings):
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    return ae


def accepted_sop_classes(settings: NodeSettings) -> list[str]:
    """The storage SOP classes the SCP accepts: the images it denoises, and every other storage class
    where ``forward_unmatched`` says where to send what it does not denoise (unchanged)."""
    classes = sorted(DENOISABLE_SOP_CLASSES)
    if settings.forward_unmatched:
        others = {str(context.abstract_syntax) for context in AllStoragePresentationContexts}
        classes += sorted(others - DENOISABLE_SOP_CLASSES)
    return classes


def start_scp(
    settings: NodeSettings,
    spool: Spool,
    on_stored: StoredHook | None = None,
    on_ended: EndedHook | None = None,
) -> NodeServer:
    """Listen in background threads; call ``shutdown()`` on the result to stop.

    ``on_stored(series_uid, association, outcome)`` follows every stored instance
    and ``on_ended(association, aborted)`` every association that was accepted,
    exactly once when it has ended, however it ended (see :mod:`scp_server.transport`);
    ``aborted`` is True unless it was released.
    """
    if not settings.allowed_calling_aets:
        raise ValueError("allowed_calling_aets is empty: configure who may store to this node")
    judge_uids_ourselves()
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, [spool, on_stored]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_ACCEPTED, _log_association),
        (evt.EVT_RELEASED, _log_association),
        (evt.EVT_ABORTED, _log_association),
        (evt.EVT_REJECTED, _log_association),
    ]

    def closed(assoc: Association, how: str) -> None:
        if on_ended is not None:
            on_ended(association_key(assoc), how != "released")

    server = serve(build_ae(settings), settings, handlers, on_closed=closed)
    log.info(
        "listening as %s on %s:%s%s",
        settings.ae_title,
        settings.bind_address,
        settings.port,
        " (TLS)" if settings.tls else "",
    )
    return server
