"""config/node.yaml is rendered from NodeSettings, so the embedded defaults are the model's own."""

import yaml

from scp_server.config import NodeSettings, load_settings
from scp_server.tools.node_yaml import FIRST_USE, REGENERATE, TARGET, render


def test_the_embedded_defaults_match_the_settings_model() -> None:
    """The hand-written file lacked max_instance_bytes, warm_start_key, dashboard... and its comments
    said what the code no longer did."""
    assert TARGET.read_text() == render(), f"config/node.yaml is out of date: run `{REGENERATE}`"


def test_every_setting_is_in_the_file_and_it_loads_as_the_defaults_but_for_first_use(monkeypatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("N2D_")]:
        monkeypatch.delenv(name)
    keys = list(yaml.safe_load(TARGET.read_text()))
    assert keys == list(NodeSettings.model_fields)
    loaded = load_settings(TARGET)
    defaults = NodeSettings(**{name: value for name, (value, _) in FIRST_USE.items()})
    assert loaded == defaults
