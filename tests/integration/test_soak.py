"""A short bounded soak (tests/integration/soak.py): every fault once, and the account exact.

About 50 s of sending from three modalities (an HTTP flood and a trickling STOW-RS destination
among the faults; the worker with 2 threads), then the drain; under three minutes on 2 CPU cores.
``python -m tests.integration.soak --seconds 180`` is the long one.
"""

import pytest

from tests.integration.soak import FAULT_KINDS, SoakPlan, describe, run_soak


@pytest.mark.slow
def test_a_short_soak_with_every_fault_loses_nothing_and_delivers_every_series_once(tmp_path):
    figures = run_soak(SoakPlan(seconds=50, scus=3, seed=7), tmp_path)
    block = describe(figures)
    print(block)
    assert figures.lost == 0, block
    assert figures.acknowledged == figures.stored, block
    assert figures.duplicated_series == 0, block
    assert figures.failed_runs == 0, block
    assert figures.undelivered == [] and figures.series_delivered == figures.series_expected, block
    assert figures.series_fully_acknowledged == figures.series - figures.faults["peer_abort_abandoned"], block
    assert (figures.unfinished, figures.outbox_pending, figures.unexpected_exits) == ({}, 0, {}), block
    assert figures.healthz == "ok", block
    injected = [kind for kind in FAULT_KINDS if kind != "disk_full" or figures.mount_namespace]
    assert all(figures.faults[kind] >= 1 for kind in injected), block
    assert figures.worker_kills_mid_job >= 1 and figures.node_kills_mid_series >= 1, block
