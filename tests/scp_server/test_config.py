from pathlib import Path

import pytest

from scp_server.config import ConfigError, load_settings


def test_yaml_file_then_environment_override(tmp_path, monkeypatch):
    path = tmp_path / "node.yaml"
    path.write_text("ae_title: DENOISE\nport: 4242\nallowed_calling_aets: [PACS, CT01]\n")
    monkeypatch.setenv("N2D_PORT", "5000")
    settings = load_settings(path)
    assert (settings.ae_title, settings.port, settings.allowed_calling_aets) == (
        "DENOISE",
        5000,
        ["PACS", "CT01"],
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("port: 70000\n", "port"),
        ("ae_title: '   '\n", "not an AE title"),
        ("ae_title: WAY_TOO_LONG_AE_TITLE\n", "ae_title"),
        ("unknown_key: 1\n", "unknown_key"),
        ("- just\n- a list\n", "mapping"),
        (  # round 3, finding 6: accepted, and the node started
            "routes: [{name: x, match: {series_description_regex: '(unclosed'}, "
            "destinations: [{ae_title: P, host: h, port: 104}]}]\n",
            "series_description_regex.*not a regular expression",
        ),
    ],
)
def test_bad_configuration_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_a_configuration_file_that_is_not_utf8_is_one_line(tmp_path):
    """Round 3, finding 6: a Latin-1 config file gave a 47-line traceback."""
    path = tmp_path / "node.yaml"
    path.write_bytes("ae_title: N2D\n# Radiologie Universit\u00e4t\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        load_settings(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def test_example_configs_load():
    local = load_settings(CONFIG_DIR / "node.yaml")
    assert local.ae_title == "N2D" and local.allowed_calling_aets == ["STORESCU"]
    assert local.routes[0].destinations[0].port == 11113
    site = load_settings(CONFIG_DIR / "site-pacs.yaml")
    assert [route.name for route in site.routes] == ["low-dose-ct", "ct-mr"]
    assert site.routes[0].n2d.mode == "per-slice"


def test_routes_pick_the_first_match():
    import pydicom

    from scp_server.config import route_for

    site = load_settings(CONFIG_DIR / "site-pacs.yaml")
    header = pydicom.Dataset()
    header.Modality, header.SeriesDescription = "CT", "Chest LOW DOSE 1.0"
    assert route_for(site, header, "CT01").name == "low-dose-ct"
    header.SeriesDescription = "Abdomen"
    assert route_for(site, header, "CT01").name == "ct-mr"
    header.Modality = "US"
    assert route_for(site, header, "CT01") is None
