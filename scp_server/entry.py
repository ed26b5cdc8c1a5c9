"""The ``n2d`` console script: the engine's commands and the node's, under one name.

Each package owns its commands (:mod:`n2d_dicom.cli`, :mod:`scp_server.cli`); this module only
puts them side by side, so the engine never imports the node.
"""

from __future__ import annotations

import typer

from n2d_dicom import __version__
from n2d_dicom import cli as engine_cli
from scp_server import cli as node_cli

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Noise2Detail denoising for medical images."
)
app.registered_commands += engine_cli.app.registered_commands + node_cli.app.registered_commands


@app.command()
def version() -> None:
    """Print the n2d-dicom version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
