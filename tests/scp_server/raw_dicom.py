"""A DICOM peer written byte by byte: PDUs as the standard frames them, for what pynetdicom won't send.

The node's tests use it to open associations and send C-STOREs at the level of the upper layer
protocol (PS3.8), so a malformed or hostile request can be built by changing one field.
"""

from __future__ import annotations

import socket
import struct
from io import BytesIO

import pydicom
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from tests.helpers import CALLER

#: Upper bound on any wait in these tests; reaching it means the behaviour is missing, not slow.
PATIENCE_S = 15.0


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def association_request(calling: str = CALLER, called: str = "N2D", padding: int = 0) -> bytes:
    """An A-ASSOCIATE-RQ proposing CT Image Storage in Implicit VR Little Endian as context 1.

    ``padding`` adds made-up transfer syntaxes to that context, about 40 bytes each.
    """
    syntaxes = [ImplicitVRLittleEndian] + [f"1.2.826.0.1.3680043.9.7433.9.{n}" for n in range(padding)]
    proposed = b"".join(item(0x40, uid.encode()) for uid in syntaxes)
    context = bytes([1, 0, 0, 0]) + item(0x30, CTImageStorage.encode()) + proposed
    user = item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.826.0.1.3680043.9.7433.1")
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + item(0x20, context)
        + item(0x50, user)
    )
    return pdu(0x01, body)


def receive_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    pdu_type, _, length = struct.unpack(">BBL", receive_exactly(sock, 6))
    return pdu_type, receive_exactly(sock, length)


def raw_associate(port: int) -> socket.socket:
    """A raw socket with an association established (A-ASSOCIATE-AC received)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    sock.sendall(association_request())
    pdu_type, _ = read_pdu(sock)
    assert pdu_type == 0x02, f"expected A-ASSOCIATE-AC, got PDU type {pdu_type:#04x}"
    return sock


def raw_store(
    sock: socket.socket, dataset: pydicom.Dataset, message_id: int, announced: str | None = None
) -> int:
    """Send a C-STORE-RQ on presentation context 1 and return the status of its C-STORE-RSP.

    ``announced`` is the Affected SOP Instance UID of the request (default: the dataset's).
    """
    sock.sendall(store_request(dataset, message_id, announced))
    return read_status(sock)


def store_request(dataset: pydicom.Dataset, message_id: int, announced: str | None = None) -> bytes:
    """The P-DATA-TF PDUs of a C-STORE-RQ for ``dataset`` on presentation context 1, back to back."""
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = dataset.SOPClassUID
    request.AffectedSOPInstanceUID = announced or dataset.SOPInstanceUID
    request.Priority = 2
    encoded = encode(dataset, True, True)
    assert encoded is not None
    request.DataSet = BytesIO(encoded)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return b"".join(P_DATA_TF(primitive).encode() for primitive in message.encode_msg(1, 16382))


def read_status(sock: socket.socket) -> int:
    """The Status of the next DIMSE response on ``sock`` (a one-PDU command set)."""
    pdu_type, body = read_pdu(sock)
    assert pdu_type == 0x04, f"expected P-DATA-TF, got PDU type {pdu_type:#04x}"
    command = decode(BytesIO(body[6:]), True, True)  # item length (4), context (1), control header (1)
    return int(command.Status)


def command_pdu(command: bytes) -> bytes:
    """A well-framed P-DATA-TF carrying ``command`` as the last fragment of a command set."""
    value = bytes([1, 0x03]) + command  # presentation context 1, command + last fragment
    return pdu(0x04, struct.pack(">L", len(value)) + value)


def answer_to_request(
    port: int, calling: str = CALLER, called: str = "N2D"
) -> tuple[socket.socket, int, bytes]:
    """A raw connection that sent an A-ASSOCIATE-RQ, and the type and body of the PDU answering it.

    Raw rather than pynetdicom's requestor: on a loaded machine its requestor can take an
    A-ASSOCIATE-RJ that its DUL thread read for an abort (its DUL ends before the ACSE looks).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    sock.sendall(association_request(calling, called))
    pdu_type, body = read_pdu(sock)
    return sock, pdu_type, body


def answer_type(port: int, calling: str = CALLER, called: str = "N2D") -> int:
    """The PDU type the node answers an A-ASSOCIATE-RQ with (0x02 accepted, 0x03 rejected)."""
    sock, pdu_type, _ = answer_to_request(port, calling, called)
    sock.close()
    return pdu_type
