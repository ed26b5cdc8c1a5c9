"""The node's dashboard: one server-rendered HTML page at ``GET /``, and each run's thumbnails.

What ``/status`` says in JSON, drawn for a person: health and version, queue depth, runs in
flight, the outbox per destination, quarantine, and the latest runs with what their images
decided, the noise before and after, and the middle slice's input, output and residual
(:mod:`scp_server.run_summary` writes them when a run ends). No build step, no script, no
external asset: a few KB of inline CSS and a refresh every :data:`REFRESH_S` seconds.

Served only where ``/metrics`` is (``bind_address``), and not at all with ``dashboard: false``.
No patient name or ID is ever read for it; UIDs are shortened, the Accession Number is shown
only with ``dashboard_accession_numbers``, and every value that comes from a DICOM header, a
peer or the configuration is HTML-escaped.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from n2d_dicom import __version__
from scp_server.config import NodeSettings
from scp_server.operations import NodeStatus, planned
from scp_server.run_summary import RunSummary, preview_file, preview_key
from scp_server.stores import Stores
from scp_server.tracker import RunRecord

#: Runs listed on the page, newest first.
RUNS_SHOWN = 50
#: Seconds between the page's reloads of itself.
REFRESH_S = 15
#: Characters of a UID shown (its end, where UIDs of one root differ).
UID_SHOWN = 12
#: A thumbnail's URL: ``/runs/<preview key>/<kind>.png``.
THUMBNAIL_PATH = re.compile(r"/runs/([0-9a-f]{16})/([a-z]{1,16})\.png")
#: Headers of every answer: nothing loaded from elsewhere, nothing cached (thumbnails are patients).
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: Labels of :class:`~n2d_dicom.measured.Measured` fields shown by name; others are shown as they are.
SKIPPED_FIELDS = {"seconds", "trained"}

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f4f6f8}
header{background:#1d3557;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:baseline}
header h1{font-size:18px;margin:0}main{padding:12px 20px}h2{font-size:15px;margin:18px 0 6px}
.ok{color:#7fe3a0;font-weight:600}.bad{color:#ffb3b3;font-weight:600}.muted{color:#66707a}
.cards{display:flex;gap:10px;flex-wrap:wrap}.card{background:#fff;border:1px solid #d8dee4;
border-radius:6px;padding:8px 14px;min-width:110px}.card b{display:block;font-size:22px}
table{border-collapse:collapse;background:#fff;width:100%;border:1px solid #d8dee4}
th,td{padding:5px 8px;border-bottom:1px solid #e6eaee;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}.num{text-align:right}
.state{border-radius:4px;padding:1px 6px;font-size:12px;background:#dde3ea}
.done{background:#c9efd6}.failed{background:#ffd0d0}.processing{background:#cfe2ff}
.thumbs{display:flex;gap:3px}.thumbs figure{margin:0;text-align:center;font-size:11px;color:#66707a}
.thumbs img{width:96px;height:96px;object-fit:contain;background:#000;display:block}
.err{color:#a4161a;font-size:12px;max-width:360px;overflow-wrap:anywhere}
"""


def e(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def short_uid(uid: str) -> str:
    """The end of a UID, enough to tell runs apart on one page."""
    return uid if len(uid) <= UID_SHOWN else "\u2026" + uid[-UID_SHOWN:]


def clock(when: float | None, now: float) -> str:
    """A time of day (with its date when not today), or a dash."""
    if when is None:
        return "\u2013"
    same_day = time.localtime(when)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(when))


@dataclass(frozen=True)
class Answer:
    """An HTTP answer of the dashboard: status code, body, content type and its extra headers."""

    body: bytes
    content_type: str
    code: int = 200
    headers: dict[str, str] = field(default_factory=lambda: dict(HEADERS))


@dataclass(frozen=True)
class PageData:
    """Everything the page shows, read at once from the stores and the node."""

    ae_title: str
    problems: list[str]
    status: NodeStatus
    last_error: dict[str, str]
    runs: list[RunRecord]
    delivered_at: dict[str, float]
    with_thumbnails: set[str]
    now: float


class Dashboard:
    """Answers ``GET /`` and ``GET /runs/<key>/<kind>.png``; other paths are not its own."""

    def __init__(
        self,
        settings: NodeSettings,
        stores: Stores,
        status: Callable[[], NodeStatus],
        problems: Callable[[], list[str]],
    ) -> None:
        self.settings, self.stores, self.status, self.problems = settings, stores, status, problems

    def answer(self, path: str) -> Answer | None:
        """The page, a thumbnail, or ``None`` for a path that is neither (the server answers 404)."""
        if path == "/":
            page = render(self.collect(), self.settings.dashboard_accession_numbers)
            return Answer(page.encode(), "text/html; charset=utf-8")
        match = THUMBNAIL_PATH.fullmatch(path)
        if match is None:
            return None
        found = preview_file(self.stores.spool.root, match[1], match[2])
        return None if found is None else Answer(found.read_bytes(), "image/png")

    def collect(self) -> PageData:
        """Read what the page shows."""
        runs = self.stores.tracker.latest(RUNS_SHOWN)
        last_error: dict[str, str] = {}
        for _, destination, _, error in self.stores.outbox.errors(limit=200):
            last_error.setdefault(destination, error)
        root = self.stores.spool.root
        return PageData(
            ae_title=self.settings.ae_title,
            problems=self.problems(),
            status=self.status(),
            last_error=last_error,
            runs=runs,
            delivered_at=self.stores.outbox.delivered_at(),
            with_thumbnails={
                run.series_instance_uid
                for run in runs
                if preview_file(root, preview_key(run.series_instance_uid), "residual") is not None
            },
            now=time.time(),
        )


def render(data: PageData, accession_numbers: bool = False) -> str:
    """The whole page."""
    health = (
        '<span class="ok">healthy</span>'
        if not data.problems
        else '<span class="bad">' + e("; ".join(data.problems)) + "</span>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        f"<title>n2d node {e(data.ae_title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>n2d-dicom node {e(data.ae_title)}</h1>{health}"
        f"<span>version {e(__version__)}</span>"
        f'<span class="muted">updated {clock(data.now, data.now)}</span></header><main>'
        + cards(data.status)
        + in_flight_table(data.status)
        + outbox_table(data.status, data.last_error)
        + runs_table(data, accession_numbers)
        + "</main></body></html>\n"
    )


def cards(status: NodeStatus) -> str:
    """The headline numbers."""
    items = [
        ("queue depth", status.queue_depth),
        ("in flight", len(status.in_flight)),
        ("quarantined", status.quarantined),
    ] + [(f"series {state}", count) for state, count in sorted(status.series.items())]
    return (
        '<section class="cards">'
        + "".join(f'<div class="card"><b>{e(count)}</b>{e(label)}</div>' for label, count in items)
        + "</section>"
    )


def in_flight_table(status: NodeStatus) -> str:
    """The runs workers hold now."""
    if not status.in_flight:
        return '<h2>In flight</h2><p class="muted">No run is being processed.</p>'
    rows = "".join(
        f"<tr><td>{e(short_uid(r.series))}</td><td class=num>{r.run}</td><td>{e(r.route or '')}</td>"
        f"<td>{e(r.worker)}</td><td class=num>{r.running_s:.1f} s</td></tr>"
        for r in status.in_flight
    )
    return (
        "<h2>In flight</h2><table><tr><th>Series</th><th class=num>Run</th><th>Route</th><th>Worker</th>"
        f"<th class=num>Running</th></tr>{rows}</table>"
    )


def outbox_table(status: NodeStatus, last_error: dict[str, str]) -> str:
    """Derived instances per destination and state, with the destination's latest error."""
    if not status.outbox:
        return '<h2>Outbox</h2><p class="muted">Nothing sent yet.</p>'
    rows = "".join(
        f"<tr><td>{e(destination)}</td>"
        + "".join(
            f"<td class=num>{counts.get(state, 0)}</td>" for state in ("pending", "delivered", "refused")
        )
        + f'<td class="err">{e(last_error.get(destination, ""))}</td></tr>'
        for destination, counts in sorted(status.outbox.items())
    )
    return (
        "<h2>Outbox</h2><table><tr><th>Destination</th><th class=num>Pending</th>"
        f"<th class=num>Delivered</th><th class=num>Refused</th><th>Last error</th></tr>{rows}</table>"
    )


def runs_table(data: PageData, accession_numbers: bool) -> str:
    """The latest runs, newest first."""
    if not data.runs:
        return '<h2>Last runs</h2><p class="muted">No series received yet.</p>'
    rows = "".join(run_row(run, data, accession_numbers) for run in data.runs)
    return (
        f"<h2>Latest runs ({len(data.runs)})</h2><table><tr><th>Middle slice: input, output, residual</th>"
        "<th>Series</th><th>Route</th><th>State</th><th>Times</th><th>What the image decided</th>"
        f"<th>Noise &sigma; before &rarr; after</th></tr>{rows}</table>"
    )


def summary_of(run: RunRecord) -> RunSummary | None:
    """The run's recorded summary, or ``None`` (not written yet, or unreadable)."""
    if run.summary is None:
        return None
    try:
        return RunSummary.model_validate_json(run.summary)
    except ValidationError:
        return None


def run_row(run: RunRecord, data: PageData, accession_numbers: bool) -> str:
    """One run's row."""
    summary = summary_of(run)
    route = planned(run.plan).get("route") if run.plan else None
    error = f'<div class="err">{e(run.error)}</div>' if run.error else ""
    return (
        f"<tr><td>{thumbnails(run, data)}</td><td>{series_cell(run, summary, accession_numbers)}</td>"
        f"<td>{e(route or chr(0x2013))}</td>"
        f'<td><span class="state {e(run.state)}">{e(run.state)}</span> run {run.run}{error}</td>'
        f"<td>{times_cell(run, data)}</td><td>{decided_cell(summary)}</td><td>{sigma_cell(summary)}</td></tr>"
    )


def thumbnails(run: RunRecord, data: PageData) -> str:
    """The three pictures of the run's middle slice, each a link to itself; a dash without them."""
    if run.series_instance_uid not in data.with_thumbnails:
        return '<span class="muted">\u2013</span>'
    key = preview_key(run.series_instance_uid)
    return (
        '<div class="thumbs">'
        + "".join(
            f'<figure><a href="/runs/{key}/{kind}.png"><img src="/runs/{key}/{kind}.png" alt="{kind}" '
            f'loading="lazy"></a>{kind}</figure>'
            for kind in ("input", "output", "residual")
        )
        + "</div>"
    )


def series_cell(run: RunRecord, summary: RunSummary | None, accession_numbers: bool) -> str:
    """Shortened UID, modality, slices and size (and the Accession Number, if asked for)."""
    lines = [f"<code>{e(short_uid(run.series_instance_uid))}</code>"]
    if summary is not None:
        lines.append(
            f"{e(summary.modality or '?')}, {summary.slices} slices, {summary.rows}&times;{summary.columns}"
        )
        if accession_numbers and summary.accession_number:
            lines.append(f"accession {e(summary.accession_number)}")
    return "<br>".join(lines)


def times_cell(run: RunRecord, data: PageData) -> str:
    """Queued, processing (start and length) and delivered."""
    processing = clock(run.started_at, data.now)
    if run.started_at is not None and run.finished_at is not None:
        processing += f" ({run.finished_at - run.started_at:.1f} s)"
    delivered = data.delivered_at.get(run.series_instance_uid) if run.state in ("done", "purged") else None
    return (
        f"queued {clock(run.queued_at, data.now)}<br>processing {processing}"
        f"<br>delivered {clock(delivered, data.now)}"
    )


def decided_cell(summary: RunSummary | None) -> str:
    """What each stack's image decided: stride, Anscombe, Wiener side, warm start and the rest."""
    if summary is None or not summary.measured:
        return '<span class="muted">\u2013</span>'
    return "<br>".join(describe(measured) for measured in summary.measured)


def describe(measured: dict[str, Any]) -> str:
    """One stack's decisions in words (fields a newer engine adds are shown by name)."""
    parts = [f"stride {e(measured.get('stride'))}"]
    parts.append("Anscombe " + ("applied" if measured.get("stabilised") else "not applied"))
    rician = measured.get("rician_sigma")
    parts.append(f"Rician floor removed (sigma {float(rician):.3g})" if rician else "no Rician correction")
    side = measured.get("wiener_side")
    parts.append(f"Wiener {e(side)}" if side else "Wiener off")
    if "warm_from" in measured:
        warm = measured["warm_from"]
        parts.append(f"warm start {e(str(warm)[:12])}" if warm else "cold start")
    if measured.get("steps"):
        parts.append("steps " + e("+".join(map(str, measured["steps"]))))
    known = {"stride", "stabilised", "rician_sigma", "wiener_side", "warm_from", "steps"} | SKIPPED_FIELDS
    parts += [
        f"{e(name.replace('_', ' '))} {e(value)}"
        for name, value in measured.items()
        if name not in known and value not in (None, "", [], {}) and not isinstance(value, dict | list)
    ]
    return ", ".join(parts)


def sigma_cell(summary: RunSummary | None) -> str:
    """Noise sigma before and after, in the series' units, and the share removed."""
    if summary is None or summary.sigma_before is None or summary.sigma_after is None:
        return '<span class="muted">\u2013</span>'
    unit = f" {e(summary.unit)}" if summary.unit else " (stored)"
    text = f"{summary.sigma_before:.3g} &rarr; {summary.sigma_after:.3g}{unit}"
    if summary.sigma_before > 0:
        removed = 100 * (1 - summary.sigma_after / summary.sigma_before)
        text += f'<br><span class="muted">{removed:.0f}% less</span>'
    return text
