"""Errors a user can cause, with messages meant to be shown as they are."""

from __future__ import annotations

from pydantic import ValidationError


class N2DInputError(ValueError):
    """Input that cannot be denoised: the message names the file and what to do."""


def validation_problems(exc: ValidationError) -> str:
    """A settings model's complaints on one line: ``where: what; where: what``."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
