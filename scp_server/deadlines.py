"""Deadlines for whole exchanges whose libraries bound each read or write only.

http.server, pynetdicom and requests time out a read that waits too long, but a peer
sending a byte just in time resets each wait and can hold a thread for hours. A
timer that shuts the connection down at the deadline makes every blocked read or
write fail at once, wherever the exchange is.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def cut_off_after(seconds: float, cut_off: Callable[[], None]) -> Iterator[threading.Event]:
    """Call ``cut_off`` from a timer thread if the block still runs ``seconds`` after it began;
    yields an event that is set when it did (so the caller can say why the exchange failed)."""
    expired = threading.Event()

    def fire() -> None:
        expired.set()
        cut_off()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()


def shut_down(sock: socket.socket | None) -> None:
    """Shut ``sock`` for reading and writing (what blocks on it fails at once), if it is still open."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
