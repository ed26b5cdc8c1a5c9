"""A C-STORE SCP that answers every request a byte at a time: a destination trickling its PDUs.

``python -m tests.peers.trickling_storescp PORT SECONDS_PER_BYTE`` listens on 127.0.0.1 as DEST,
accepts CT Image Storage, and sends each P-DATA-TF (its C-STORE responses) one byte every
``SECONDS_PER_BYTE``; association PDUs go out whole. It runs as its own process because it changes
pynetdicom's socket class for the whole process.
"""

from __future__ import annotations

import sys
import time

from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket

P_DATA_TF = 0x04


def trickle(seconds_per_byte: float) -> None:
    """Make every association socket of this process send P-DATA-TF PDUs one byte at a time."""
    send = AssociationSocket.send

    def slowly(self: AssociationSocket, bytestream: bytes) -> None:
        if not bytestream or bytestream[0] != P_DATA_TF:
            send(self, bytestream)
            return
        for byte in bytestream:
            send(self, bytes([byte]))
            time.sleep(seconds_per_byte)

    AssociationSocket.send = slowly  # type: ignore[method-assign]


def main(port: int, seconds_per_byte: float) -> None:
    trickle(seconds_per_byte)
    ae = AE(ae_title="DEST")
    ae.add_supported_context(CTImageStorage)
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=handlers)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]))
