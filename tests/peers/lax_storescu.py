"""A C-STORE SCU that sends what a careless or hostile modality sends: UIDs pynetdicom would refuse.

pynetdicom validates UIDs before it sends them (over 64 characters raises), and
the node under test may share this process's pynetdicom, so this peer runs as
its own process: ``python -m tests.peers.lax_storescu PORT CALLING CALLED FILE...``;
it prints one status per file (hex), or ``none`` where no answer came.
"""

from __future__ import annotations

import sys

import pydicom
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage


def main(port: int, calling: str, called: str, files: list[str]) -> None:
    _config.VALIDATORS["UI"] = lambda value: (True, "")
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        sys.exit("association refused")
    for name in files:
        response = assoc.send_c_store(pydicom.dcmread(name))
        status = response.get("Status") if response else None
        print("none" if status is None else f"{int(status):04X}", flush=True)
    assoc.release()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:])
