"""The root of SPE's exception families.

Each capability raises its own subclass of :class:`SPEError`; the message is one sentence a
person can act on, and it is what the CLI prints and the API returns.
"""


class SPEError(Exception):
    """An error whose message tells a person what to fix."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PermissionDenied(SPEError):
    """The acting person may not do this; the message says why and who may."""

    exit_code = 3


class NotFound(SPEError):
    """A named thing does not exist."""

    exit_code = 4
