"""pydicom's warnings are swapped under one lock, whichever thread reads and whichever derives."""

from __future__ import annotations

import threading
import time
import warnings

from n2d_dicom.pydicom_warnings import quiet_value_warnings, recorded


def test_reading_and_deriving_threads_leave_the_warning_state_as_they_found_it():
    """With workers >= 2, a derive on one thread and a read on another swapped the process-wide
    warning state under different locks (or none) and could leave a dead recorder installed."""
    filters, show = list(warnings.filters), warnings.showwarning
    start = threading.Barrier(2)

    def read() -> None:
        start.wait()
        for _ in range(300):
            with recorded() as caught:
                time.sleep(0.0002)  # a read takes time: let the other thread in if it can
                warnings.warn("Invalid value for VR UI", UserWarning, stacklevel=1)
            assert len(caught) == 1

    def derive() -> None:
        start.wait()
        for _ in range(300):
            with quiet_value_warnings():
                time.sleep(0.0002)
                warnings.warn("The value length (70) exceeds", UserWarning, stacklevel=1)

    threads = [threading.Thread(target=read), threading.Thread(target=derive)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert warnings.filters == filters and warnings.showwarning is show


def test_readers_in_several_threads_take_turns_with_the_process_wide_warning_state():
    """The node reads series in several worker threads; interleaved catch_warnings blocks would leave
    a dead recorder installed as the process's showwarning for good."""
    inside, second_inside, leave = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with recorded():
            inside.set()
            leave.wait(10)

    def second() -> None:
        with recorded():
            second_inside.set()

    before = warnings.showwarning
    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert inside.wait(10)
    threads[1].start()
    assert not second_inside.wait(0.3)  # waits for the first reader to leave
    leave.set()
    for thread in threads:
        thread.join(10)
    assert second_inside.is_set() and warnings.showwarning is before
