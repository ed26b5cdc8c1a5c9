"""The package boundaries the project keeps, checked on the code itself.

``n2d_dicom`` (the engine and its data path) never imports ``scp_server`` (the node); the node's
configuration loads without torch; both denoising commands take one option per field of the
settings models, so a knob declared once appears on every command.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.core
import typer.main
from typer.testing import CliRunner

from n2d_dicom.derive import DerivationSettings
from n2d_dicom.settings import N2DSettings
from scp_server.entry import app

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "n2d_dicom"
#: Fields whose flag is not the field's name with dashes (n2d_dicom.cli.DERIVATION_FLAGS).
RENAMED = {"series_description_suffix": "--description-suffix"}


def loaded_by(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; it prints a JSON object, which is returned."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_importing_every_module_of_n2d_dicom_loads_no_scp_server_module():
    found = loaded_by(
        "import importlib, json, pkgutil, sys\n"
        "import n2d_dicom\n"
        "names = [m.name for m in pkgutil.walk_packages(n2d_dicom.__path__, 'n2d_dicom.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "node = sorted(m for m in sys.modules if m.split('.')[0] == 'scp_server')\n"
        "print(json.dumps({'imported': names, 'node': node}))\n"
    )
    # The walk reached the commands and the tools, not just the package's __init__.
    assert {"n2d_dicom.cli", "n2d_dicom.engine", "n2d_dicom.tools.bench"} <= set(found["imported"])
    assert found["node"] == []


@pytest.mark.slow
def test_the_node_configuration_loads_without_torch():
    found = loaded_by(
        "import json, sys\n"
        "import scp_server.config\n"
        "print(json.dumps({'torch': sorted(m for m in sys.modules if m.split('.')[0] == 'torch')}))\n"
    )
    assert found["torch"] == []


def flag(field: str) -> str:
    return RENAMED.get(field, "--" + field.replace("_", "-"))


def options_of(command: str) -> dict:
    """The click parameters of ``n2d <command>``, by name (the Python parameter's, a field's name)."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return {param.name: param for param in group.commands[command].params if param.name}


@pytest.mark.parametrize(
    ("command", "models"),
    [("denoise", [N2DSettings]), ("denoise-dicom", [N2DSettings, DerivationSettings])],
)
def test_denoising_commands_take_one_option_per_settings_field(command, models):
    fields = [name for model in models for name in model.model_fields]
    options = options_of(command)
    for field in fields:
        assert field in options, f"n2d {command} has no option for {field}"
        assert options[field].opts == [flag(field)], f"n2d {command}: {field} is {options[field].opts}"
    flags = [opt for param in options.values() for opt in param.opts]
    assert len(flags) == len(set(flags))  # no field listed twice

    shown = CliRunner().invoke(app, [command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    for field in fields:
        assert flag(field) in shown.output, f"n2d {command} --help does not list {flag(field)}"


def test_no_module_of_n2d_dicom_imports_scp_server():
    offenders = []
    for path in sorted(ENGINE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            if any("scp_server" in name for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
