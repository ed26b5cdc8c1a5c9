"""The node's configuration: one immutable pydantic-settings model, from YAML plus ``N2D_*`` env vars."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydicom.dataset import Dataset

from n2d_dicom.derive import DerivationSettings
from n2d_dicom.errors import validation_problems
from n2d_dicom.settings import N2DSettings
from scp_server.ae_title import AETitle
from scp_server.destinations import AnyDestination

#: What makes a protocol for warm starts by default: scanner, kernel, slice size and spacing, description.
WARM_START_KEY = (
    "Modality",
    "StationName",
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "SeriesDescription",
)


class TLSSettings(BaseModel):
    """TLS for incoming associations (DICOM over TLS, e.g. on port 2762)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    certificate: Path = Field(description="PEM certificate (chain) the node presents.")
    private_key: Path = Field(description="PEM private key of that certificate.")
    client_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, peers must present a certificate it signed."
    )

    def server_context(self) -> ssl.SSLContext:
        """The SSL context the SCP listens with (TLS 1.2 or newer)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.certificate, self.private_key)
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class RouteMatch(BaseModel):
    """Which series a route takes; an empty list matches anything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modalities: list[str] = Field(
        default_factory=list, description="Modality (0008,0060) values, e.g. [CT, MR]."
    )
    sop_class_uids: list[str] = Field(default_factory=list, description="SOP Class UIDs.")
    series_description_regex: str | None = Field(None, description="Searched in Series Description.")
    calling_aets: list[AETitle] = Field(default_factory=list, description="AE titles that sent the series.")

    @field_validator("series_description_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        """A pattern that does not compile is a configuration error at start, not a failure per series."""
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc})") from exc
        return pattern

    def matches(self, header: Dataset, calling_aet: str) -> bool:
        """Whether a series whose first instance is ``header``, sent by ``calling_aet``, is taken."""
        description = str(header.get("SeriesDescription") or "")
        return (
            (not self.modalities or str(header.get("Modality", "")) in self.modalities)
            and (not self.sop_class_uids or str(header.get("SOPClassUID", "")) in self.sop_class_uids)
            and (
                not self.series_description_regex
                or re.search(self.series_description_regex, description) is not None
            )
            and (not self.calling_aets or calling_aet in self.calling_aets)
        )


class Route(BaseModel):
    """What to denoise, how, and where the derived series goes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Shown in logs.")
    match: RouteMatch = Field(default_factory=RouteMatch)
    n2d: N2DSettings = Field(default_factory=N2DSettings, description="Denoising settings for this route.")
    destinations: list[AnyDestination] = Field(
        min_length=1, description="Where derived series are sent: DIMSE peers or DICOMweb services."
    )


class QueueSettings(BaseModel):
    """Where jobs wait for a worker: SQLite in the spool (one machine) or Redis (several workers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["sqlite", "redis"] = Field(
        "sqlite", description="sqlite: embedded, no server; redis: workers on several machines."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="The Redis server (backend redis).")
    name: str = Field("n2d", min_length=1, description="Queue name; nodes sharing a Redis use their own.")


class NodeSettings(BaseSettings):
    """How the node listens, where it keeps what it receives, and what it does with it."""

    model_config = SettingsConfigDict(
        env_prefix="N2D_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    ae_title: AETitle = Field("N2D", description="Our AE title; associations must call it.")
    bind_address: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for all).")
    port: int = Field(11112, ge=1, le=65535, description="DICOM port to listen on.")
    allowed_calling_aets: list[AETitle] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; everyone else is rejected. Empty: nobody.",
    )
    allowed_source_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Peer addresses that may connect (CIDR, e.g. 10.1.2.0/24); others are closed before "
        "any DICOM is read. Empty: any address (the AE title allow-list still applies).",
    )
    spool_dir: Path = Field(Path("spool"), description="Where received instances and the index are kept.")
    tls: TLSSettings | None = Field(None, description="Listen with TLS; None: plain TCP.")
    max_associations: int = Field(10, ge=1, le=1000, description="Concurrent associations accepted.")
    network_timeout_s: float = Field(60, gt=0, le=3600, description="Drop a silent peer after this long.")
    acse_timeout_s: float = Field(
        10,
        gt=0,
        le=600,
        description="From TCP accept to a complete A-ASSOCIATE-RQ (TLS handshake included); slower "
        "connections are dropped and logged by address. Also the ARTIM timeout.",
    )
    max_association_request_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest A-ASSOCIATE-RQ PDU read; a larger one is refused after its header, unread.",
    )
    max_instance_bytes: int = Field(
        1 << 30,
        ge=1 << 20,
        le=1 << 34,
        description="Largest instance (DIMSE message) accepted on an association; a larger one aborts it. "
        "pynetdicom holds an instance in memory while it arrives, so this bounds what one peer can pin.",
    )

    max_pending_connections: int = Field(
        32,
        ge=1,
        le=10000,
        description="Connections still negotiating (no complete A-ASSOCIATE-RQ yet) held at once; more are "
        "closed at once. Counted apart from max_associations.",
    )
    quiet_period_s: float = Field(
        30, ge=0, le=3600, description="A released series is complete after this long without a new instance."
    )
    max_wait_s: float = Field(
        3600, gt=0, description="A series is complete this long after its first instance."
    )
    aborted_grace_s: float = Field(
        600,
        ge=0,
        description="A series whose association was aborted (not released) waits this long after its last "
        "instance for the sender to send again before it is complete with what it has.",
    )
    routes: list[Route] = Field(
        default_factory=list, description="First matching route wins; none: not processed."
    )
    forward_unmatched: list[AnyDestination] = Field(
        default_factory=list,
        description="Where series that match no route are sent unchanged; empty: they stay in the spool.",
    )
    derivation: DerivationSettings = Field(default_factory=DerivationSettings)
    device: str = Field("auto", description="Where the worker denoises: auto, cpu, cuda, cuda:N.")
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="CPU threads per worker process; null: one per core. Workers sharing a machine split it.",
    )
    queue: QueueSettings = Field(default_factory=QueueSettings)
    workers: int = Field(
        1,
        ge=0,
        le=64,
        description="Worker threads in `n2d serve`; 0: `n2d worker` processes do the jobs.",
    )
    job_lease_s: float = Field(
        60, gt=0, le=86400, description="A job whose worker stops renewing its lease this long is redone."
    )
    retention_hours: float | None = Field(
        24, ge=0, description="Spool data of a delivered series is deleted after this long; null: kept."
    )
    warm_start: bool = Field(
        True,
        description="Start a per-series run's networks from the pair trained on the last series of the same "
        "protocol (warm_start_key), kept in the spool (warm_start/) for retention_hours; early stopping on "
        "the series' held-out slices decides how many steps it still needs. false: every series starts "
        "from random weights.",
    )
    warm_start_key: list[str] = Field(
        default_factory=lambda: list(WARM_START_KEY),
        min_length=1,
        description="Header attributes (DICOM keywords) of a series' first instance whose values make its "
        "protocol: series alike in all of them share a cached pair.",
    )
    sqlite_journal: Literal["wal", "delete"] = Field(
        "wal", description="wal: one machine; delete: a spool on a network filesystem shared by machines."
    )
    send_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="Associations (or STOW-RS requests) tried per destination in each outbox round; "
        "sending runs on the node's own threads, one per destination, never on a denoising worker.",
    )
    send_backoff_s: float = Field(
        2, ge=0, le=600, description="First wait between an outbox round's attempts; doubles each time."
    )
    send_timeout_s: float = Field(
        30,
        gt=0,
        le=600,
        description="Seconds a destination may take to accept an association, answer a C-STORE or send "
        "the next bytes of an answer.",
    )
    send_deadline_s: float = Field(
        300,
        gt=0,
        le=86400,
        description="Seconds a whole STOW-RS request may take (a destination trickling its answer is cut "
        "off); /healthz reports a destination that has not answered for longer than this.",
    )
    outbox_retry_s: float = Field(
        60, gt=0, le=86400, description="How often the node retries undelivered files (an outbox round)."
    )
    http_port: int = Field(8080, ge=0, le=65535, description="/healthz and /metrics on bind_address; 0: off.")
    http_max_connections: int = Field(
        32,
        ge=1,
        le=1000,
        description="HTTP connections served at once; more are closed as soon as they are accepted, so "
        "the HTTP port cannot take what DICOM reception needs.",
    )
    http_timeout_s: float = Field(
        10, gt=0, le=600, description="An HTTP connection is closed this long after it was accepted."
    )
    dashboard: bool = Field(
        True,
        description="Serve the dashboard page (GET / on http_port) and keep each run's thumbnails (images of "
        "patients, kept in the spool with the run's files); false: neither.",
    )
    dashboard_accession_numbers: bool = Field(
        False, description="Show each run's Accession Number on the dashboard; off: no study identifier."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables win over the YAML file (passed as init values), which wins over defaults."""
        return env_settings, init_settings


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the problem."""


def load_settings(path: Path | None = None) -> NodeSettings:
    """Settings from the YAML file at ``path`` (if any), overridden by ``N2D_*`` environment variables."""
    values: dict[str, object] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read configuration ({' '.join(str(exc).split())})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        values = loaded
    try:
        return NodeSettings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"{path or 'environment'}: {validation_problems(exc)}") from exc


def route_for(settings: NodeSettings, header: Dataset, calling_aet: str) -> Route | None:
    """The first route that takes this series, or ``None``."""
    return next((route for route in settings.routes if route.match.matches(header, calling_aet)), None)
