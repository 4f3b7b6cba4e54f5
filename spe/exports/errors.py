"""The export capability's exception family; each message is a sentence a person can act on."""

from __future__ import annotations

from spe.errors import SPEError


class ExportError(SPEError):
    """An export request cannot go ahead; the message says why and what to do."""


class ExportInputError(ExportError):
    """A file or field of an export request is not acceptable (type, size, name, link)."""

    exit_code = 2


class ExportStateError(ExportError):
    """The request's status does not allow this now."""


class BundleError(ExportError):
    """A release bundle is damaged, altered or not signed by the platform."""

    exit_code = 6
