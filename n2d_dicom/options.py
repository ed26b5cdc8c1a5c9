"""Command-line options generated from settings models, so each knob is declared once.

A command that takes, say, ``settings: N2DSettings`` is decorated with
:func:`options_from`; the decorator replaces that parameter with one option per
field of the model (name, type, default, and help from the field's description)
and hands the command the validated model. A field added to the model appears on
every command that takes it, with the same name and default everywhere.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from n2d_dicom.errors import N2DInputError, validation_problems

T = TypeVar("T")
Model = TypeVar("Model", bound=BaseModel)


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1."""
    typer.echo(f"n2d: error: {message}", err=True)
    raise typer.Exit(1)


def guarded(action: Callable[[], T]) -> T:
    """Run ``action``, turning user errors into :func:`fail`."""
    try:
        return action()
    except N2DInputError as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(f"invalid setting: {validation_problems(exc)}")
    except OSError as exc:  # a full disk, a folder made read-only meanwhile: what and where, in one line
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")


def _parameter(name: str, field: FieldInfo, flag: str | None, default: Any) -> inspect.Parameter:
    declared = (flag,) if flag else ()
    option = typer.Option(*declared, help=field.description, case_sensitive=False)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[field.annotation, option]
    )


def options_from(
    model: type[Model],
    into: str,
    *,
    flags: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    only: Collection[str] | None = None,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Replace the command's parameter ``into`` by one option per field of ``model``.

    ``flags`` renames an option (field name to flag, e.g. ``"--description-suffix"``); ``defaults``
    gives a command its own default for a field (the demo's short run); ``only`` keeps a subset of
    the fields. The command receives ``model(**options)``, or the user gets a one-line error.
    """
    fields = {name: f for name, f in model.model_fields.items() if only is None or name in only}

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        signature = inspect.signature(command, eval_str=True)
        generated = [
            _parameter(name, f, (flags or {}).get(name), (defaults or {}).get(name, f.default))
            for name, f in fields.items()
        ]
        parameters: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            if parameter.name == into:
                parameters.extend(generated)
            else:
                parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def run(**options: Any) -> T:
            values = {name: options.pop(name) for name in fields}
            options[into] = guarded(lambda: model(**values))
            return command(**options)

        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {
            **{k: v for k, v in command.__annotations__.items() if k != into},
            **{p.name: p.annotation for p in generated},
        }
        return run

    return decorate
