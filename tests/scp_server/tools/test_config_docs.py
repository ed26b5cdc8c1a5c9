"""docs/configuration.md is rendered from the settings models, so it says what the code accepts."""

from scp_server.tools.config_docs import REGENERATE, TARGET, render


def test_configuration_doc_matches_the_settings_models() -> None:
    assert TARGET.read_text() == render(), f"docs/configuration.md is out of date: run `{REGENERATE}`"


def test_every_setting_of_every_model_has_a_row() -> None:
    text = render()
    for model in ("NodeSettings", "Route", "Destination", "N2DSettings", "DerivationSettings"):
        assert f"## {model}\n" in text
    for key in ("`quiet_period_s`", "`iterations`", "`uid_root`", "`ca_file`", "`redis_url`"):
        assert f"| {key} |" in text
