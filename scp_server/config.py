"""The node's configuration: one immutable pydantic-settings model, from YAML plus ``N2D_*`` env vars."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

#: An AE title: 1-16 characters of the default repertoire, no backslash (and not all spaces).
AE_TITLE = r"^[ -\[\]-~]{1,16}$"


class NodeSettings(BaseSettings):
    """How the node listens and where it keeps what it receives."""

    model_config = SettingsConfigDict(
        env_prefix="N2D_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    ae_title: str = Field("N2D", pattern=AE_TITLE, description="Our AE title; associations must call it.")
    bind_address: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for all).")
    port: int = Field(11112, ge=1, le=65535, description="DICOM port to listen on.")
    allowed_calling_aets: list[str] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; everyone else is rejected. Empty: nobody.",
    )
    spool_dir: Path = Field(Path("spool"), description="Where received instances and the index are kept.")
    max_associations: int = Field(10, ge=1, le=1000, description="Concurrent associations accepted.")
    network_timeout_s: float = Field(60, gt=0, le=3600, description="Drop a silent peer after this long.")

    @field_validator("ae_title", "allowed_calling_aets")
    @classmethod
    def _not_blank(cls, value: str | list[str]) -> str | list[str]:
        for title in [value] if isinstance(value, str) else value:
            if not title.strip() or len(title) > 16 or "\\" in title:
                raise ValueError(f"{title!r} is not an AE title (1-16 characters, not blank, no backslash)")
        return value

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
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read configuration ({exc})") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        values = loaded
    try:
        return NodeSettings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path or 'environment'}: {problems}") from exc
