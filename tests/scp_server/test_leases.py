"""Claims and their renewal."""

import threading

from scp_server.leases import renewed
from tests.helpers import database_full


def test_a_renewal_that_raises_does_not_end_the_renewal_thread():
    """Finding 3: 'database or disk is full' ended the lease-renewal thread for good."""
    calls: list[int] = []
    enough = threading.Event()

    def renew() -> bool:
        calls.append(1)
        if len(calls) <= 2:
            raise database_full()
        if len(calls) >= 4:
            enough.set()
        return True

    with renewed(renew, 0.01) as lost:
        assert enough.wait(10)
    assert not lost.is_set()


def test_a_renewal_refused_means_the_claim_is_lost():
    with renewed(lambda: False, 0.01) as lost:
        assert lost.wait(10)
