"""Sending what the outbox holds: one attempt from the job, then rounds from the node.

A job makes one attempt at delivering its own series and leaves whatever is
left to the outbox: a destination that is down costs a job one failed
association, never minutes of backoff while other series wait for the worker.
The node's outbox rounds (every ``outbox_retry_s``, in a thread of ``n2d serve``)
retry everything pending with ``send_attempts`` and backoff. Destinations are
resolved against the configuration as it is now (see :mod:`scp_server.outbox`).
"""

from __future__ import annotations

import logging
from collections import Counter

from scp_server.config import NodeSettings
from scp_server.dicomweb import AnyDestination
from scp_server.leases import new_owner
from scp_server.outbox import Outbox, destination_key
from scp_server.sender import SendResult

log = logging.getLogger(__name__)

#: How long a delivery may hold its outbox rows before another worker may send them.
SEND_CLAIM_S = 900.0


def configured_destinations(settings: NodeSettings) -> dict[str, AnyDestination]:
    """Every destination the configuration names now, by outbox key."""
    destinations = [d for route in settings.routes for d in route.destinations] + list(
        settings.forward_unmatched
    )
    return {destination_key(d): d for d in destinations}


def deliver(
    settings: NodeSettings, outbox: Outbox, attempts: int, series_instance_uid: str | None = None
) -> list[SendResult]:
    """Send what is pending (of one source series, or all) that nobody else is sending; log what is left."""
    results = outbox.deliver(
        settings.ae_title,
        attempts,
        settings.send_backoff_s,
        new_owner(),
        SEND_CLAIM_S,
        configured_destinations(settings),
        series_instance_uid,
        settings.send_timeout_s,
    )
    undelivered = Counter(
        (result.error or f"status 0x{result.status:04X}", result.refused)
        for result in results
        if not result.delivered
    )
    for (error, refused), count in undelivered.items():
        log.error(
            "%d instance(s) not delivered (%s): %s",
            count,
            error,
            "refused, kept in the outbox as refused" if refused else "kept for the next outbox round",
        )
    return results
