"""Errors a user can cause, with messages meant to be shown as they are."""


class N2DInputError(ValueError):
    """Input that cannot be denoised: the message names the file and what to do."""
