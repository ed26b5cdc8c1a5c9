"""``config/node.yaml``, the node's embedded defaults, rendered from :class:`NodeSettings`.

Every key the node knows is in the file, with the model's default and its
description as a comment, so that the file an operator starts from cannot drift
from the code (``tests/scp_server/tools/test_node_yaml.py`` fails when the
committed file differs from what this renders). The few values that depart from
the model's defaults, so that the node does something on first use, are in
:data:`FIRST_USE`, each with why.

    python -m scp_server.tools.node_yaml --write     # or: ... > config/node.yaml
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from scp_server.config import NodeSettings

#: Where the rendered file is kept, relative to the repository root.
TARGET = Path(__file__).resolve().parents[2] / "config" / "node.yaml"
REGENERATE = "python -m scp_server.tools.node_yaml --write"
WIDTH = 100

HEADER = f"""\
# n2d-dicom node: embedded defaults, for one machine (local spool, SQLite-backed queue).
# Start it with:  n2d serve --config config/node.yaml
# Generated from the settings models by `{REGENERATE}`;
# do not edit by hand: copy it and change the copy. Every key is here with its default;
# docs/configuration.md says more, and config/site-pacs.yaml and config/dicomweb.yaml are
# commented examples for a site.
# Every top-level key can be overridden by an environment variable N2D_<KEY> (e.g. N2D_PORT=4242).
"""

#: Values that depart from the model's defaults in this file, and why.
FIRST_USE: dict[str, tuple[Any, str]] = {
    "allowed_calling_aets": (
        ["STORESCU"],
        "Here: STORESCU, dcmtk's default calling AE title, to try the node locally with `storescu`.",
    ),
    "routes": (
        [
            {
                "name": "ct-and-mr",
                "match": {"modalities": ["CT", "MR"]},
                "destinations": [{"ae_title": "VIEWER", "host": "127.0.0.1", "port": 11113}],
            }
        ],
        "Here: CT and MR series, with the default denoising settings, to a local receiver to try it "
        "with, e.g. dcmtk's `storescp -aet VIEWER -od received/ 11113`.",
    ),
}


def _default(field: FieldInfo) -> Any:
    """A field's default as YAML writes it (models as mappings, paths and networks as text)."""
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [str(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _description(field: FieldInfo) -> str:
    """The field's description, or the first line of its model's docstring (nested settings)."""
    if field.description:
        return field.description
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation.__doc__:
        first = annotation.__doc__.strip().splitlines()[0]
        return f"{first} (docs/configuration.md#{annotation.__name__.lower()})"
    return ""


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ")


def _yaml(name: str, value: Any) -> str:
    """``name: value``: lists of scalars on one line, mappings and lists of mappings as blocks."""
    inline = isinstance(value, list) and not any(isinstance(item, (dict, list)) for item in value)
    dumped = yaml.safe_dump(
        {name: value}, sort_keys=False, default_flow_style=None if inline else False, width=WIDTH
    )
    return dumped.rstrip("\n")


def render() -> str:
    """The file: one commented key per setting, in the model's order."""
    lines = [HEADER]
    for name, field in NodeSettings.model_fields.items():
        lines.extend(_comment(_description(field)))
        value = _default(field)
        if name in FIRST_USE:
            value, why = FIRST_USE[name]
            lines.extend(_comment(why))
        lines.append(_yaml(name, value))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print the file, or write it over ``config/node.yaml`` with ``--write``."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--write" in args:
        TARGET.write_text(text)
        print(f"wrote {TARGET}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
