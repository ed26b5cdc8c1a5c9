"""``docs/configuration.md``, rendered from the pydantic models that declare every knob.

The settings models are the one place a knob is declared (name, type, default,
bounds, description); this module turns them into Markdown so the documentation
cannot drift from the code. ``tests/scp_server/tools/test_config_docs.py`` fails
when the committed file differs from what this renders.

    python -m scp_server.tools.config_docs --write     # or: ... > docs/configuration.md
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from n2d_dicom.derive import DerivationSettings
from n2d_dicom.settings import N2DSettings
from scp_server.config import NodeSettings

#: Where the rendered text is kept, relative to the repository root.
TARGET = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
#: The models documented, in order; the models nested in their fields follow each one.
ROOTS: tuple[type[BaseModel], ...] = (NodeSettings, N2DSettings, DerivationSettings)
REGENERATE = "python -m scp_server.tools.config_docs --write"

HEADER = f"""# Configuration

Generated from the settings models by `{REGENERATE}`; do not edit by hand
(`tests/scp_server/tools/test_config_docs.py` fails when this file and the models differ).

The node reads one YAML file (`n2d serve --config config/node.yaml`; `config/` holds commented
examples) into [NodeSettings](#nodesettings). An environment variable `N2D_<KEY>` overrides a
top-level key (`N2D_PORT=11113`), and `N2D_<KEY>__<SUBKEY>` a nested one
(`N2D_QUEUE__BACKEND=redis`). Each route carries its own [N2DSettings](#n2dsettings), the same
knobs `n2d denoise` and `n2d denoise-dicom` take as options; [DerivationSettings](#derivationsettings)
label the derived series, in the node and in `n2d denoise-dicom`. Defaults are shown as YAML
values; a model-typed key defaults to that model's defaults.
"""


def _anchor(model: type[BaseModel]) -> str:
    return f"[{model.__name__}](#{model.__name__.lower()})"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation refers to (``list[Route]``, ``TLSSettings | None``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:  # a union told apart by a discriminator: its members are what a reader needs
        return _type_name(args[0])
    if origin is Literal:
        return " \\| ".join(f"`{json.dumps(arg)}`" for arg in args)
    if origin is Union or origin is types.UnionType:
        return " \\| ".join(_type_name(arg) for arg in args)
    if origin is not None:
        inner = ", ".join(_type_name(arg) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _anchor(annotation)
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> list[str]:
    """The field's constraints, in words a YAML author reads."""
    words: list[str] = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            words.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MultipleOf):
            words.append(f"multiple of {item.multiple_of}")
        elif isinstance(item, annotated_types.MinLen):
            words.append(f"length >= {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            words.append(f"length <= {item.max_length}")
        elif getattr(item, "pattern", None) is not None:
            words.append(f"matches `{item.pattern}`")
    return words


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.get_default(call_default_factory=True, validated_data={})
    else:
        value = field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "its defaults"
    if isinstance(value, Path):
        value = str(value)
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(model: type[BaseModel]) -> str:
    lines = [f"## {model.__name__}", ""]
    if model.__doc__:
        lines += [" ".join(model.__doc__.split()), ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = _type_name(field.annotation)
        bounds = _bounds(field)
        if bounds:
            kind += " (" + ", ".join(bounds) + ")"
        description = field.description
        nested = _models_in(field.annotation)
        if description is None and nested:
            description = f"See {', '.join(_anchor(model) for model in nested)}."
        lines.append(f"| `{name}` | {kind} | {_default(field)} | {_cell(description or '')} |")
    return "\n".join(lines) + "\n"


def _all_models(roots: tuple[type[BaseModel], ...]) -> list[type[BaseModel]]:
    """``roots`` and every model nested in their fields, depth first, each once."""
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for nested in _models_in(field.annotation):
                visit(nested)

    for root in roots:
        visit(root)
    return seen


def render(roots: tuple[type[BaseModel], ...] = ROOTS) -> str:
    """The Markdown of every settings model: one section per model, one table row per field."""
    return "\n".join([HEADER, *(_section(model) for model in _all_models(roots))])


def main(argv: list[str] | None = None) -> int:
    """Print the rendered text, or with ``--write`` write it to ``docs/configuration.md``."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if args == ["--write"]:
        TARGET.write_text(text)
        print(f"wrote {TARGET}", file=sys.stderr)
    elif not args:
        sys.stdout.write(text)
    else:
        print("usage: python -m scp_server.tools.config_docs [--write]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
