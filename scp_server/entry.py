"""The ``n2d`` console script: the engine's commands and the node's, under one name.

Each package owns its commands (:mod:`n2d_dicom.cli`, :mod:`scp_server.cli`); this module only
puts them side by side, so the engine never imports the node.
"""

from __future__ import annotations

import sys

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
    """Console-script entry point: a command line n2d cannot take (an unknown option, a value out of
    its choices) ends as every other user error does, one ``n2d: error:`` line and exit status 1,
    with the command's help named."""
    if len(sys.argv) <= 1:
        app()  # no arguments: the help
        return
    try:
        status = app(standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors (its own click's exceptions)
        context = getattr(exc, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        typer.echo(f"n2d: error: {exc.format_message()}{hint}", err=True)
        sys.exit(1)
    except typer.Abort:
        typer.echo("n2d: interrupted", err=True)
        sys.exit(130)
    sys.exit(status if isinstance(status, int) else 0)
