"""Where derived series go: a DICOM peer (C-STORE) or a DICOMweb service (STOW-RS), as configured.

The models only: :mod:`scp_server.sender` and :mod:`scp_server.dicomweb` send to
them, :mod:`scp_server.outbox` keeps them (as JSON, by :attr:`key`), and
:mod:`scp_server.config` reads them from a route. Credentials are read from an
environment variable or a file when a request is made, never from the YAML: the
configuration, the run plans and the outbox rows hold only where a secret is.
URLs with credentials in them are refused, so what is logged or shown as a
destination's key (its URL) never holds one.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import requests
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from scp_server.ae_title import AETitle


class DestinationTLS(BaseModel):
    """DICOM over TLS towards a destination: its certificate is verified, ours shown if it asks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = Field(
        None, description="PEM CA bundle that signed the destination's certificate; null: system CAs."
    )
    certificate: Path | None = Field(None, description="PEM client certificate, for mutual TLS.")
    private_key: Path | None = Field(None, description="PEM key of that client certificate.")
    server_name: str | None = Field(
        None, description="Name to verify the destination's certificate against; null: its host."
    )

    def client_context(self) -> ssl.SSLContext:
        """TLS 1.2 or newer, the destination's certificate and host name verified."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.certificate is not None:
            context.load_cert_chain(self.certificate, self.private_key)
        return context


class Destination(BaseModel):
    """A peer that receives derived series (a PACS, a viewer, a research store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: AETitle = Field(description="The destination's AE title.")
    host: str = Field(description="Host name or address.")
    port: int = Field(ge=1, le=65535, description="DICOM port.")
    tls: DestinationTLS | None = Field(None, description="Send over TLS; null: plain TCP.")

    def tls_args(self) -> tuple[ssl.SSLContext, str] | None:
        """pynetdicom's ``tls_args`` for an association to this destination (None: plain TCP)."""
        if self.tls is None:
            return None
        return self.tls.client_context(), self.tls.server_name or self.host

    @property
    def key(self) -> str:
        """How the outbox names this destination, unchanged by edits to its other fields: ``AE@host:port``."""
        return f"{self.ae_title}@{self.host}:{self.port}"


class SecretSource(BaseModel):
    """Where a password or token is read when it is needed: an environment variable or a file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(None, min_length=1, description="Name of the environment variable holding it.")
    file: Path | None = Field(
        None, description="File holding it (a mounted secret, say); surrounding whitespace is dropped."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (a variable's name) or file (a path)")
        return self

    def read(self) -> str:
        """The secret; :class:`CredentialsMissing` names the variable or file (never the value)."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise CredentialsMissing(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            value = self.file.read_text().strip()
        except OSError as exc:
            raise CredentialsMissing(f"cannot read {self.file}: {exc.strerror}") from exc
        if not value:
            raise CredentialsMissing(f"{self.file} is empty")
        return value


class CredentialsMissing(ValueError):
    """A configured password or token cannot be read; the message says where it was looked for."""


class DicomWebTarget(BaseModel):
    """A DICOMweb service that takes STOW-RS, and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        description="Base URL of the DICOMweb service (STOW-RS posts to {url}/studies), e.g. "
        "https://pacs.example.org/dicom-web; no credentials in it (see auth).",
    )
    auth: Literal["none", "basic", "bearer"] = Field(
        "none", description="none; basic: username and password; bearer: token (Authorization: Bearer)."
    )
    username: str | None = Field(None, min_length=1, description="User name (auth basic).")
    password: SecretSource | None = Field(None, description="Where the password is read (auth basic).")
    token: SecretSource | None = Field(None, description="Where the bearer token is read (auth bearer).")
    verify: bool = Field(
        True, description="Verify the server's HTTPS certificate and host name; false only for tests."
    )
    ca_file: Path | None = Field(
        None,
        description="PEM CA bundle that signed the server's certificate; null: requests' bundle (certifi, "
        "or REQUESTS_CA_BUNDLE).",
    )
    timeout_s: float | None = Field(
        None, gt=0, le=600, description="Seconds to connect or to wait for an answer; null: send_timeout_s."
    )
    instances_per_request: int = Field(
        50, ge=1, le=1000, description="Instances per STOW-RS request (each held in memory while sent)."
    )

    @field_validator("url")
    @classmethod
    def _plain_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("the URL holds credentials; give them with auth, username, password or token")
        if parts.query or parts.fragment:
            raise ValueError("the URL is the service's base URL: no query or fragment")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _credentials_fit_auth(self) -> DicomWebTarget:
        given = {name for name in ("username", "password", "token") if getattr(self, name) is not None}
        needed = {"none": set(), "basic": {"username", "password"}, "bearer": {"token"}}[self.auth]
        if given != needed:
            wants = ", ".join(sorted(needed)) or "no credentials"
            raise ValueError(f"auth {self.auth} takes {wants}; got {', '.join(sorted(given)) or 'none'}")
        if self.ca_file is not None and not self.verify:
            raise ValueError("ca_file is set but verify is false: certificates would not be checked")
        return self

    def verification(self) -> str | bool:
        """requests' ``verify`` for each request: the CA file, or whether to verify at all.

        Passed per request because a session's own ``verify`` loses to REQUESTS_CA_BUNDLE.
        """
        return str(self.ca_file) if self.ca_file is not None else self.verify

    def session(self) -> requests.Session:
        """A session with this service's credentials and certificate checks (reads the secrets now)."""
        session = requests.Session()
        session.headers["Accept"] = "application/dicom+json"
        if self.auth == "basic":
            assert self.username is not None and self.password is not None
            session.auth = (self.username, self.password.read())
        elif self.auth == "bearer":
            assert self.token is not None
            session.headers["Authorization"] = f"Bearer {self.token.read()}"
        return session


class DicomWebDestination(BaseModel):
    """A destination reached over DICOMweb (STOW-RS) rather than DIMSE."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dicomweb: DicomWebTarget = Field(description="The DICOMweb service that receives derived series.")

    @property
    def key(self) -> str:
        """How the outbox names this destination: its URL (which never holds credentials)."""
        return self.dicomweb.url


def _kind(value: Any) -> str:
    """Which kind of destination a YAML mapping (or a model) is: one with ``dicomweb`` is DICOMweb."""
    if isinstance(value, dict):
        return "dicomweb" if "dicomweb" in value else "dimse"
    return "dicomweb" if isinstance(value, DicomWebDestination) else "dimse"


#: A route's destination: a DIMSE peer (ae_title, host, port) or a DICOMweb service (dicomweb: {url}).
AnyDestination = Annotated[
    Annotated[Destination, Tag("dimse")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_kind),
]
_DESTINATION: TypeAdapter[AnyDestination] = TypeAdapter(AnyDestination)


def parse_destination(stored: str) -> Destination | DicomWebDestination:
    """A destination from the JSON an outbox row keeps."""
    return _DESTINATION.validate_json(stored)
