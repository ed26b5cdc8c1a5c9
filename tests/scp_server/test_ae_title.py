"""Every AE title the node is configured with passes one check, with a message saying what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from scp_server.config import ConfigError, load_settings

DESTINATION = (
    "routes:\n  - name: ct\n    destinations:\n"
    "      - {{ae_title: '{title}', host: 127.0.0.1, port: 11113}}\n"
)
TITLES = [("   ", "(blank)"), ("PACS\\X", "(it holds a backslash)")]


def _load(tmp_path: Path, text: str) -> str:
    """The message ``load_settings`` refuses ``text`` with."""
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    return str(info.value)


@pytest.mark.parametrize("title, problem", TITLES)
def test_a_destination_with_a_blank_or_backslash_ae_title_is_refused(tmp_path, title, problem):
    message = _load(tmp_path, DESTINATION.format(title=title))
    assert "routes.0.destinations.0" in message and "ae_title" in message
    assert "is not an AE title" in message and problem in message


@pytest.mark.parametrize(
    "text",
    [
        "ae_title: 'N2D\\'\n",
        "allowed_calling_aets: [CT01, '  ']\n",
        "routes:\n  - name: ct\n    match: {calling_aets: ['A\\B']}\n"
        "    destinations: [{ae_title: PACS, host: 127.0.0.1, port: 11113}]\n",
    ],
    ids=["node", "allowed calling", "route match"],
)
def test_every_configured_ae_title_is_checked_alike(tmp_path, text):
    assert "is not an AE title" in _load(tmp_path, text)


def test_a_title_longer_than_sixteen_characters_is_refused(tmp_path):
    message = _load(tmp_path, DESTINATION.format(title="A" * 17))
    assert "routes.0.destinations.0" in message and "at most 16 characters" in message


def test_valid_titles_are_kept_as_written(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(
        "allowed_calling_aets: ['CT 01', 'MR-2_x']\n" + DESTINATION.format(title="PACS ARCHIVE 16C")
    )
    settings = load_settings(path)
    assert settings.allowed_calling_aets == ["CT 01", "MR-2_x"]
    assert settings.routes[0].destinations[0].ae_title == "PACS ARCHIVE 16C"
